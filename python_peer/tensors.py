"""numpy <-> wire tensors: the one place the native peer turns frames into arrays and back.

The core codec is stdlib-only; this adapter adds the checks that need numpy (NaN/Inf) and copies
nothing more than once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_peer.core.errors import NonFiniteError, TensorError
from python_peer.core.wire import Frame, WireTensor

_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),  # raw bytes (model file chunks): never a tensor a shard takes
}
_FROM_NUMPY = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int64): "int64"}


def to_wire(name: str, array: np.ndarray) -> WireTensor:
    """``array`` as a wire tensor; a float32 array whose every value is a float16 is carried as float16.

    Narrowing is lossless (a receiver widens exactly, ``from_wire``), so it changes no number a shard
    sees, only the bytes carried: half, for the hidden states of shards exported with
    ``--hidden-float16``, whose outputs are float16 values (docs/wire.md, "Tensor descriptors").
    """
    dtype = _FROM_NUMPY.get(array.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor {name} has dtype {array.dtype}; the wire carries float32, float16 and int64"
        )
    if dtype == "float32" and array.size:
        with np.errstate(over="ignore"):  # a value beyond float16 becomes Inf, and so differs
            narrow = array.astype(np.float16)
        if np.array_equal(narrow, array):  # False if float16 rounds or overflows a value, or for NaN
            dtype, array = "float16", narrow
    data = np.ascontiguousarray(array, dtype=_TO_NUMPY[dtype]).tobytes()
    return WireTensor(name, dtype, tuple(int(d) for d in array.shape), data)


def from_wire(tensor: WireTensor, *, finite: bool = True) -> np.ndarray:
    """The tensor as a numpy array (float16 widened to float32); refuses NaN/Inf when ``finite``."""
    array = np.frombuffer(tensor.data, dtype=_TO_NUMPY[tensor.dtype]).reshape(tensor.shape)
    if array.dtype.kind == "f":
        if finite and not np.isfinite(array).all():
            raise NonFiniteError(f"tensor {tensor.name} holds NaN or Inf")
        return array.astype(np.float32)
    return array


def expect(frame: Frame, name: str, dtype_kind: str, rank: int) -> np.ndarray:
    """Tensor ``name`` of ``frame`` as an array of the given kind ("f" or "i") and rank, or a TensorError."""
    array = from_wire(frame.tensor(name))
    if array.dtype.kind != dtype_kind or array.ndim != rank:
        raise TensorError(
            f"tensor {name} is {array.dtype} of rank {array.ndim}; expected "
            f"{'a float' if dtype_kind == 'f' else 'an int64'} tensor of rank {rank}"
        )
    return array

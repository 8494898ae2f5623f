"""A shard's weights in one external-data file beside its ``.onnx``: ``blocks_0-12.onnx`` + ``.onnx.data``.

One protobuf cannot exceed 2 GB, so torch writes a larger model as one loose file per tensor
(``onnx__MatMul_3325``, ...). Neither a manifest nor a browser should have to know a hundred names:
``write_shard`` rewrites whatever torch (or the quantizer) wrote into the shard's ``.onnx`` and, when its
weights exceed a threshold, one ``<file>.data`` holding every tensor of at least ``TENSOR_MIN_BYTES``.
Tensors are streamed one at a time (loose files in 16 MiB pieces), so memory stays bounded by the
graph without its weights, not by the shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from python_peer.core.manifest import external_data_file

from .errors import ExportFailedError

# Shards whose weights exceed this keep them in <file>.data (the browser then fetches, verifies and caches
# the weights as a file of their own); a test forces it low to exercise the path on a tiny model.
DEFAULT_THRESHOLD = 1 << 30
# Above this one protobuf cannot hold the shard at all, whatever the threshold asked for.
PROTOBUF_LIMIT = (2 << 30) - (64 << 20)
TENSOR_MIN_BYTES = 1024  # smaller tensors (shape constants, norms of tiny models) stay inside the .onnx
ALIGNMENT = 64  # each tensor starts at a multiple of this in the .data file
_COPY_CHUNK = 16 << 20


def _all_tensors(model: Any) -> Iterable[Any]:
    """Every TensorProto of the model: initializers and node attributes, subgraphs included."""
    from onnx import external_data_helper

    # onnx keeps its walk over all tensors private; it has been stable since onnx 1.6.
    return external_data_helper._get_all_tensors(model)


def _location(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _is_external(tensor: Any) -> bool:
    from onnx import TensorProto

    return bool(tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL)


def _inline_bytes(tensor: Any) -> int:
    """Bytes of an inline tensor, its typed fields (float_data, ...) counted as their raw size."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    from onnx import numpy_helper

    return int(numpy_helper.to_array(tensor).nbytes) if tensor.dims else 0


def _source_file(src_dir: Path, tensor: Any) -> tuple[Path, int, int]:
    """Where torch put an external tensor's bytes: (file, offset, length), inside ``src_dir`` only."""
    info = _location(tensor)
    location = info.get("location", "")
    path = (src_dir / location).resolve()
    if not location or path.parent != src_dir.resolve() or not path.is_file():
        raise ExportFailedError(
            f"tensor {tensor.name} is stored in {location!r}, not a file beside the model"
        )
    offset = int(info.get("offset", "0"))
    length = int(info["length"]) if "length" in info else path.stat().st_size - offset
    return path, offset, length


def weight_bytes(model: Any, src_dir: Path) -> int:
    """The size of every tensor of ``model``, inline or in files beside it."""
    total = 0
    for tensor in _all_tensors(model):
        total += _source_file(src_dir, tensor)[2] if _is_external(tensor) else _inline_bytes(tensor)
    return total


def _set_location(tensor: Any, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def _copy_range(src: Path, offset: int, length: int, dst: Any) -> None:
    with src.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            piece = f.read(min(left, _COPY_CHUNK))
            if not piece:
                raise ExportFailedError(f"{src.name} ends {left} bytes before the tensor it holds")
            dst.write(piece)
            left -= len(piece)


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_shard(src: Path, onnx_dst: Path, data_dst: Path, *, final_name: str, threshold: int) -> bool:
    """Rewrite the ONNX model at ``src`` (and any loose tensor files beside it) as ``onnx_dst`` and, when
    its weights exceed ``threshold`` (or one protobuf could not hold them), ``data_dst`` holding them.

    ``final_name`` is the name the ``.onnx`` will have once renamed into place: the ``.onnx`` refers to
    its weights as ``<final_name>.data``. Returns True when ``data_dst`` was written.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors alike
        raise ExportFailedError(f"cannot read the exported {src.name}: {exc}") from exc
    tensors = list(_all_tensors(model))
    total = weight_bytes(model, src.parent)
    loose = any(_is_external(t) for t in tensors)
    if not loose and total <= min(threshold, PROTOBUF_LIMIT):
        _fsync_write(onnx_dst, model.SerializeToString())
        return False
    location = external_data_file(final_name)
    offset = 0
    with data_dst.open("wb") as out:
        for tensor in tensors:
            external = _is_external(tensor)
            if not external and _inline_bytes(tensor) < TENSOR_MIN_BYTES:
                continue
            pad = -offset % ALIGNMENT
            out.write(b"\0" * pad)
            offset += pad
            if external:
                path, start, length = _source_file(src.parent, tensor)
                _copy_range(path, start, length, out)
            else:
                if not tensor.HasField("raw_data"):  # typed fields: carry them as raw little-endian bytes
                    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
                length = len(tensor.raw_data)
                out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            _set_location(tensor, location, offset, length)
            offset += length
        out.flush()
        os.fsync(out.fileno())
    if any(t.data_location == TensorProto.EXTERNAL and not t.external_data for t in tensors):
        raise ExportFailedError(f"{src.name}: a tensor lost its data while moving it to {location}")
    _fsync_write(onnx_dst, model.SerializeToString())
    return True

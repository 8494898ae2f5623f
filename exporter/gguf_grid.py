"""A GGUF source's own quantization grid, decoded into what onnxruntime's operators express exactly.

A GGUF file stores most weights in blocks of 32 values along the input axis with their own scales:
Q4_0 (``x = d*(q-8)``), Q4_1 (``x = d*q + m``) and Q8_0 (``x = d*q``), ``d`` and ``m`` in float16.
MatMulNBits dequantizes ``x = scale*(code - zero_point)`` per block along K, so each of these maps
exactly: Q4_1 is ``scale = d, zero_point = -m/d`` (a float zero point), Q4_0 and Q8_0 are symmetric.
Re-quantizing the dequantized fp32 weights to a fresh symmetric grid instead loses the source's grid.

The ONNX export is traced from the dequantized model, so each MatMul weight of a shard *is* one GGUF
tensor, transposed and sometimes with its rows permuted (transformers undoes llama.cpp's Q/K row order).
``GgufGrid`` finds that tensor by value (row sums, then every value), never by name, so it does not
depend on how the exporter or transformers name things. Types with sub-block scales (the K-quants)
and float tensors are not decoded here: ``Grid.lookup`` says why, and the caller re-quantizes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportFailedError, ModelSourceError

log = logging.getLogger(__name__)

BLOCK = 32  # every type decoded here has blocks of 32 values
# GGUF type name -> bits of its codes; the types this module decodes
GRID_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@dataclass(frozen=True)
class BlockGrid:
    """One weight ``[rows, cols]`` as integer codes per block of 32 along ``cols``.

    ``x[r, b*32 + i] = scale[r, b] * (codes[r, b, i] - zero)`` where ``zero`` is ``zero_point`` (per
    block, float) when given, else the type's fixed offset ``offset`` (8 for Q4_0, 0 for Q8_0's signed
    codes). ``scale`` and ``minimum`` are the file's float16 values, unchanged.
    """

    kind: str  # the GGUF type name
    bits: int
    codes: np.ndarray  # uint8 (Q4_x, 0..15) or int8 (Q8_0), [rows, blocks, 32]
    scale: np.ndarray  # float16 [rows, blocks]
    minimum: np.ndarray | None  # float16 [rows, blocks], Q4_1 only: x = scale*code + minimum
    offset: int  # x = scale*(code - offset) when minimum is None

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def cols(self) -> int:
        return int(self.codes.shape[1] * BLOCK)

    def dequantize(self) -> np.ndarray:
        """The float32 values, computed as the file's own dequantization does."""
        d = self.scale.astype(np.float32)[..., None]
        if self.minimum is not None:
            x = d * self.codes.astype(np.float32) + self.minimum.astype(np.float32)[..., None]
        else:
            x = d * (self.codes.astype(np.float32) - np.float32(self.offset))
        return x.reshape(self.rows, self.cols)

    def take_rows(self, order: np.ndarray) -> BlockGrid:
        minimum = None if self.minimum is None else self.minimum[order]
        return BlockGrid(self.kind, self.bits, self.codes[order], self.scale[order], minimum, self.offset)


def decode(kind: str, raw: np.ndarray, rows: int, cols: int, name: str) -> BlockGrid:
    """Decode the raw blocks of a GGUF tensor ``name`` of type ``kind`` into a ``BlockGrid``."""
    if kind not in GRID_BITS:
        raise ExportFailedError(f"GGUF tensor {name} is {kind}: only {', '.join(GRID_BITS)} are decoded")
    if cols % BLOCK:
        raise ModelSourceError(f"GGUF tensor {name} has rows of {cols} values, not a multiple of {BLOCK}")
    blocks = cols // BLOCK
    size = _BLOCK_BYTES[kind]
    data = np.ascontiguousarray(raw, dtype=np.uint8)
    if data.size != rows * blocks * size:
        raise ModelSourceError(
            f"GGUF tensor {name} ({kind}, {rows}x{cols}) holds {data.size} bytes, "
            f"{rows * blocks * size} expected: the file is truncated or corrupt"
        )
    data = data.reshape(rows, blocks, size)
    scale = data[..., 0:2].copy().view(np.float16)[..., 0]
    minimum: np.ndarray | None = None
    if kind == "Q8_0":
        codes = data[..., 2:].copy().view(np.int8)
        offset = 0
    else:
        start = 4 if kind == "Q4_1" else 2
        if kind == "Q4_1":
            minimum = data[..., 2:4].copy().view(np.float16)[..., 0]
        packed = data[..., start : start + BLOCK // 2]
        # ggml's order: the low nibbles are values 0..15 of the block, the high nibbles values 16..31.
        codes = np.concatenate((packed & 0x0F, packed >> 4), axis=-1)
        offset = 0 if kind == "Q4_1" else 8
    checked = [scale] + ([minimum] if minimum is not None else [])
    if not all(np.isfinite(a.astype(np.float32)).all() for a in checked):
        raise ModelSourceError(f"GGUF tensor {name} ({kind}) holds NaN or Inf scales: the file is corrupt")
    return BlockGrid(kind, GRID_BITS[kind], codes, scale, minimum, offset)


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    rows: int
    cols: int
    sums: np.ndarray  # sorted float64 row sums of the dequantized values: a row-order-free fingerprint


class GgufGrid:
    """The quantized tensors of one GGUF file, found by value for the weights of exported shards."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError, struct.error, OSError... on a bad file
            raise ModelSourceError(f"cannot read GGUF file {path}: {exc}") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._by_shape: dict[tuple[int, int], list[_Entry]] = {}
        # Tensors of a type this module cannot carry over, by shape: named when a weight falls back.
        self._undecoded: dict[tuple[int, int], list[str]] = {}
        for tensor in self._reader.tensors:
            if len(tensor.shape) != 2:
                continue
            cols, rows = (int(n) for n in tensor.shape)  # GGUF lists ne0 (contiguous) first
            kind = tensor.tensor_type.name
            if kind not in GRID_BITS:
                self._undecoded.setdefault((rows, cols), []).append(f"{tensor.name} ({kind})")
                continue
            values = decode(kind, tensor.data, rows, cols, tensor.name).dequantize()
            sums = np.sort(values.astype(np.float64).sum(axis=1))
            self._by_shape.setdefault((rows, cols), []).append(_Entry(tensor.name, kind, rows, cols, sums))

    def lookup(self, weight: np.ndarray) -> tuple[str, BlockGrid] | str:
        """The GGUF tensor whose values are ``weight`` ``[rows, cols]`` (rows in the weight's order).

        Returns ``(tensor name, grid with rows reordered to match)``, or a one-line reason why the
        weight has no grid here (its values are in no decodable tensor, or only in an undecodable one).
        """
        rows, cols = weight.shape
        values = np.asarray(weight, dtype=np.float32)
        sums = values.astype(np.float64).sum(axis=1)
        ordered = np.sort(sums)
        tol = 1e-5 * max(1.0, float(np.abs(ordered).max(initial=0.0)))
        for entry in self._by_shape.get((rows, cols), []):
            if not np.allclose(ordered, entry.sums, rtol=1e-5, atol=tol):
                continue
            tensor = self._tensors[entry.name]
            grid = decode(entry.kind, tensor.data, rows, cols, entry.name)
            order = _row_order(values, sums, grid.dequantize())
            if order is not None:
                return entry.name, grid.take_rows(order)
        undecoded = self._undecoded.get((rows, cols))
        if undecoded:
            return (
                f"its GGUF tensor is one of {', '.join(undecoded[:3])}, a type MatMulNBits cannot carry over"
            )
        return "no quantized GGUF tensor holds these values"

    def types(self) -> dict[str, int]:
        """How many tensors of each GGUF type the file holds."""
        counts: dict[str, int] = {}
        for tensor in self._reader.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        return counts


def _row_order(values: np.ndarray, sums: np.ndarray, source: np.ndarray) -> np.ndarray | None:
    """``order`` with ``source[order] == values`` (to float32 rounding), or None if there is none."""
    source_sums = source.astype(np.float64).sum(axis=1)
    order = np.empty(len(sums), dtype=np.int64)
    order[np.argsort(sums, kind="stable")] = np.argsort(source_sums, kind="stable")
    tol = 1e-6 * max(1.0, float(np.abs(values).max(initial=0.0)))
    bad = np.flatnonzero(~np.isclose(source[order], values, rtol=1e-6, atol=tol).all(axis=1))
    if len(bad) == 0:
        return order
    # Rows whose sums tie within rounding may have been paired crosswise: pair those by content.
    free = set(int(j) for j in order[bad])
    for i in bad:
        match = next(
            (j for j in sorted(free) if np.allclose(source[j], values[i], rtol=1e-6, atol=tol)),
            None,
        )
        if match is None:
            return None
        order[i] = match
        free.discard(match)
    return order


NODE_PREFIX = "gguf "  # names of the nodes that carry a GGUF grid: "gguf Q4_1 blk.0.attn_q.weight"


def describe(model: Any) -> dict[str, int]:
    """What a converted shard holds: weights carried from the GGUF grid, by type and bits, and re-quantized ones."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.name.startswith(NODE_PREFIX):
            kind = node.name.split(" ")[1]
            bits = next((a.i for a in node.attribute if a.name == "bits"), GRID_BITS.get(kind, 0))
            label = f"{node.op_type} {kind} as {bits}-bit"
            if node.op_type == "MatMul":
                label += ", dequantized at load"
        elif node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 0)
            label = f"MatMulNBits re-quantized to {bits}-bit"
        else:
            continue
        counts[label] = counts.get(label, 0) + 1
    return counts

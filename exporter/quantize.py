"""Weight variants of an exported fp32 shard: fp16, and weight-only 8-bit and 4-bit.

Inputs and outputs stay float32 in every variant, so any runner chains any mix of variants.

q8 and q4 from a GGUF source carry the file's own grid (``gguf_grid``): each MatMul weight found in a
Q4_0, Q4_1 or Q8_0 tensor becomes a MatMulNBits with the file's codes, scales and minimums, and the
embedding's Gather becomes a gather of codes dequantized on the fly (plain ONNX ops, so every runtime
has them). Each grid keeps its own width in q4 and q8 alike: a Q8_0 tensor stays 8-bit in q4, and a
4-bit grid stays 4-bit in q8 (wider codes would add nothing to its values, and onnxruntime's CPU kernel
refuses 8-bit weights with the float zero point Q4_1 needs). The dtype decides the width of the weights
that are re-quantized. Scales and minimums are stored as the file's float16 and cast
to float32 when the session loads (onnxruntime folds the casts), so they cost what they cost in the GGUF.
The weights are then exactly the source's. 4-bit grids run with ``accuracy_level`` 0 (float32
activations); 8-bit ones with 4 (int8 activations), because onnxruntime has no fast 8-bit kernel
otherwise, except in the head: its 8-bit grid is stored as codes and scales and dequantized by plain
ops that onnxruntime folds when the session loads, so the logits come from the fast float kernel and
float32 activations (the head runs on the user's machine, holding it as float32 there costs what the
fp32 head costs). Measured on the default model (Q4_1 blocks, Q8_0 embedding and tied head): q4 is
0.197 of fp32 with greedy agreement 1.000 (largest logit difference 3e-4) and decodes about as fast as
fp32. With the head as 8-bit MatMulNBits at level 4 instead: agreement 0.993, and the first token of
"What is the capital of France?" (a near-tie in fp32) flips; at level 0 it is ~6x slower than fp32.

Every other MatMul (non-GGUF sources, float or K-quant GGUF tensors) is re-quantized to symmetric
blocks of 32 by onnxruntime's ``MatMulNBitsQuantizer`` with ``accuracy_level=4`` (int8 activations: the
fast path on CPU, and perplexity 12.96 vs 12.95 at 8-bit on the default model); the embedding then stays
float32. A log line names each weight that falls back and why; ``gguf_grid.describe`` counts both kinds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportFailedError
from .gguf_grid import BLOCK, NODE_PREFIX, BlockGrid, GgufGrid

log = logging.getLogger(__name__)

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # re-quantized weights: int8 activations in MatMulNBits, the fast path on CPU
GRID_ACCURACY_LEVEL = {4: 0, 8: 4}  # by code width: see the module docstring
_BITS = {"q8": 8, "q4": 4}
_MS_DOMAIN = "com.microsoft"
_AUX = "gguf-correction "  # names of the small float MatMuls that complete a Q4_1 grid: never re-quantized


def source_grid(source: Any, dtype: str) -> GgufGrid | None:
    """The GGUF grid to carry into a q8/q4 export of ``source`` (a ``ModelSource``), or None."""
    if dtype not in _BITS or source.kind != "gguf":
        return None
    return GgufGrid(Path(source.location))


def convert(src: Path, dst: Path, dtype: str, grid: GgufGrid | None = None, *, kind: str = "") -> None:
    """Write the ``dtype`` variant of the fp32 shard ``src`` to ``dst``, keeping ``grid``'s weights exact."""
    import onnx

    try:
        model = onnx.load(str(src))
        if dtype == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
            onnx.save(converted, str(dst))
        elif dtype in _BITS:
            if grid is not None:
                carry_grid(model, grid, src.name, dense_at_load=kind == "head")
            _requantize_rest(model, _BITS[dtype])
            onnx.save(model, str(dst))
        else:
            raise ExportFailedError(f"no conversion to {dtype!r}; choose fp16, q8 or q4")
    except ExportFailedError:
        raise
    except Exception as exc:
        raise ExportFailedError(f"converting {src.name} to {dtype} failed: {exc}") from exc


def _requantize_rest(model: Any, bits: int) -> None:
    """Re-quantize every MatMul still holding a float weight to symmetric ``bits``-bit blocks."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ours = [
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith((_AUX, NODE_PREFIX))
    ]
    if not any(n.op_type == "MatMul" and n.name not in ours for n in model.graph.node):
        return  # nothing left to quantize (the embed shard, or every weight carried from the GGUF)
    # The quantizer logs every node at INFO through its own handler; keep our progress readable.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=ours,
    )
    quantizer.process()
    model.CopyFrom(quantizer.model.model)


def carry_grid(model: Any, grid: GgufGrid, shard: str, *, dense_at_load: bool = False) -> None:
    """Replace each MatMul and Gather whose weight is a decodable GGUF tensor by its exact grid.

    ``dense_at_load`` (the head): 8-bit grids are stored as codes but dequantized when the session
    loads, so the logits come from float32 activations on the fast float kernel (see the module doc).
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes: list[Any] = []
    carried = 0
    for node in graph.node:
        weight_name = _weight_input(node, inits)
        if weight_name is None:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[weight_name])
        # A MatMul weight is [K, N] (torch stores Linear weights transposed); a Gather's is [rows, K].
        found = grid.lookup(weight.T if node.op_type == "MatMul" else weight)
        if isinstance(found, str):
            log.warning(
                "%s: %s weight %s %s is re-quantized: %s",
                shard,
                node.op_type,
                weight_name,
                list(weight.shape),
                found,
            )
            new_nodes.append(node)
            continue
        tensor, block_grid = found
        prefix = f"{weight_name}_gguf"
        if node.op_type == "MatMul":
            if dense_at_load and block_grid.bits == 8:
                nodes, inits_new = _matmul_dense_at_load(node, block_grid, tensor, prefix)
            else:
                nodes, inits_new = _matmul_nbits(node, block_grid, tensor, prefix)
        else:
            nodes, inits_new = _gather_dequant(node, block_grid, tensor, prefix)
        new_nodes += nodes
        have = {init.name for init in graph.initializer}
        graph.initializer.extend(init for init in inits_new if init.name not in have)
        carried += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if carried and not any(op.domain == _MS_DOMAIN for op in model.opset_import):
        from onnx import helper

        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    log.info("%s: %d weights carried from the GGUF grid", shard, carried)


def _weight_input(node: Any, inits: dict[str, Any]) -> str | None:
    """The name of a MatMul's or an axis-0 Gather's 2-D float32 initializer weight, else None."""
    from onnx import TensorProto

    if node.op_type == "MatMul":
        name = node.input[1]
    elif node.op_type == "Gather" and all(a.i == 0 for a in node.attribute if a.name == "axis"):
        name = node.input[0]
    else:
        return None
    init = inits.get(name)
    if init is None or init.data_type != TensorProto.FLOAT or len(init.dims) != 2:
        return None
    return str(name)


def _codes(grid: BlockGrid) -> np.ndarray:
    """Unsigned codes for MatMulNBits without zero points, which subtracts ``2**(bits-1)``.

    That is Q4_0's offset 8 as it is, Q8_0's signed codes shifted by 128, and for Q4_1 (``d*q + m``)
    ``d*(q - 8)``, to which ``_matmul_nbits`` adds ``m + 8d`` per block.
    """
    codes = grid.codes.astype(np.int16)
    if grid.minimum is None:
        codes = codes - grid.offset + (1 << (grid.bits - 1))
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= (1 << grid.bits):
        raise ExportFailedError(f"a {grid.kind} grid does not fit {grid.bits}-bit codes")
    return codes.astype(np.uint8)


def _matmul_nbits(node: Any, grid: BlockGrid, tensor: str, prefix: str) -> tuple[list[Any], list[Any]]:
    """MatMulNBits with the grid's codes and scales; for Q4_1 plus ``blocksum(A) @ (m + 8d)``.

    Q4_1's exact form in MatMulNBits needs float zero points (``-m/d``), for which onnxruntime 1.32 has
    no fast CPU kernel (about 20x slower than without zero points). Instead the symmetric product
    ``A @ d*(q-8)`` runs on the fast kernel and the per-block constant ``m + 8d`` is added as a small
    matmul of the activations' block sums (``A @ S``, ``S`` the 0/1 ``[K, K/32]`` block indicator):
    ``d*(q-8) + m + 8d = d*q + m``. A block with ``d == 0`` needs nothing special.
    """
    from onnx import TensorProto, helper, numpy_helper

    codes = _codes(grid)
    rows, blocks = grid.scale.shape
    k = blocks * BLOCK
    # MatMulNBits packs two 4-bit values a byte, the even one in the low nibble.
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4) if grid.bits == 4 else codes
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(packed), f"{prefix}_B"),
        numpy_helper.from_array(grid.scale.reshape(-1), f"{prefix}_scales16"),
    ]
    float32 = TensorProto.FLOAT
    nodes = [helper.make_node("Cast", [f"{prefix}_scales16"], [f"{prefix}_scales"], to=float32)]
    matmul_out = list(node.output) if grid.minimum is None else [f"{prefix}_sym"]
    nodes.append(
        helper.make_node(
            "MatMulNBits",
            [node.input[0], f"{prefix}_B", f"{prefix}_scales"],
            matmul_out,
            name=f"{NODE_PREFIX}{grid.kind} {tensor}",
            domain=_MS_DOMAIN,
            K=k,
            N=rows,
            bits=grid.bits,
            block_size=BLOCK,
            accuracy_level=GRID_ACCURACY_LEVEL[grid.bits],
        )
    )
    if grid.minimum is not None:
        block_sum = f"gguf_block_sum_{k}"  # shared by every weight of this K in the shard
        indicator = np.repeat(np.eye(blocks, dtype=np.float32), BLOCK, axis=0)  # [K, K/32]
        inits += [
            numpy_helper.from_array(grid.minimum.reshape(-1), f"{prefix}_min16"),
            numpy_helper.from_array(np.array(8.0, dtype=np.float32), f"{prefix}_eight"),
            numpy_helper.from_array(np.array([rows, blocks], dtype=np.int64), f"{prefix}_rows_blocks"),
            numpy_helper.from_array(indicator, block_sum),
        ]
        # These depend only on initializers: onnxruntime folds them into one [K/32, N] constant at load.
        nodes += [
            helper.make_node("Cast", [f"{prefix}_min16"], [f"{prefix}_min"], to=float32),
            helper.make_node("Mul", [f"{prefix}_scales", f"{prefix}_eight"], [f"{prefix}_d8"]),
            helper.make_node("Add", [f"{prefix}_min", f"{prefix}_d8"], [f"{prefix}_c"]),
            helper.make_node("Reshape", [f"{prefix}_c", f"{prefix}_rows_blocks"], [f"{prefix}_c2"]),
            helper.make_node("Transpose", [f"{prefix}_c2"], [f"{prefix}_ct"], perm=[1, 0]),
            helper.make_node(
                "MatMul", [node.input[0], block_sum], [f"{prefix}_asum"], name=f"{_AUX}{prefix}_asum"
            ),
            helper.make_node(
                "MatMul", [f"{prefix}_asum", f"{prefix}_ct"], [f"{prefix}_corr"], name=f"{_AUX}{prefix}_corr"
            ),
            helper.make_node("Add", [f"{prefix}_sym", f"{prefix}_corr"], list(node.output)),
        ]
    return nodes, inits


def _matmul_dense_at_load(
    node: Any, grid: BlockGrid, tensor: str, prefix: str
) -> tuple[list[Any], list[Any]]:
    """A float MatMul over ``d*q`` computed from the stored codes and scales (folded when the session loads)."""
    from onnx import TensorProto, helper, numpy_helper

    rows, blocks = grid.scale.shape
    if grid.minimum is not None or grid.offset or grid.bits != 8:
        raise ExportFailedError(f"{tensor}: only Q8_0 grids are dequantized at load, not {grid.kind}")
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(grid.codes), f"{prefix}_codes"),
        numpy_helper.from_array(grid.scale, f"{prefix}_scale16"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{prefix}_last"),
        numpy_helper.from_array(np.array([rows, blocks * BLOCK], dtype=np.int64), f"{prefix}_shape"),
    ]
    float32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", [f"{prefix}_codes"], [f"{prefix}_qf"], to=float32),
        helper.make_node("Cast", [f"{prefix}_scale16"], [f"{prefix}_df"], to=float32),
        helper.make_node("Unsqueeze", [f"{prefix}_df", f"{prefix}_last"], [f"{prefix}_d"]),
        helper.make_node("Mul", [f"{prefix}_d", f"{prefix}_qf"], [f"{prefix}_x"]),
        helper.make_node("Reshape", [f"{prefix}_x", f"{prefix}_shape"], [f"{prefix}_w"]),
        helper.make_node("Transpose", [f"{prefix}_w"], [f"{prefix}_wt"], perm=[1, 0]),
        helper.make_node(
            "MatMul",
            [node.input[0], f"{prefix}_wt"],
            list(node.output),
            name=f"{NODE_PREFIX}{grid.kind} {tensor}",
        ),
    ]
    return nodes, inits


def _gather_dequant(node: Any, grid: BlockGrid, tensor: str, prefix: str) -> tuple[list[Any], list[Any]]:
    """Gather rows of codes and scales, dequantized as the GGUF does (``d*q + m`` or ``d*(q - o)``)."""
    from onnx import TensorProto, helper, numpy_helper

    ids = node.input[1]
    blocks = grid.scale.shape[1]
    if grid.bits == 4:  # keep ggml's packing: low nibbles are values 0..15 of a block, high ones 16..31
        stored = grid.codes[..., : BLOCK // 2] | (grid.codes[..., BLOCK // 2 :] << 4)
    else:
        stored = grid.codes
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(stored), f"{prefix}_codes"),
        numpy_helper.from_array(grid.scale, f"{prefix}_scale16"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{prefix}_last"),
        numpy_helper.from_array(np.array([blocks * BLOCK], dtype=np.int64), f"{prefix}_width"),
    ]
    name = f"{NODE_PREFIX}{grid.kind} {tensor}"
    nodes = [helper.make_node("Gather", [f"{prefix}_codes", ids], [f"{prefix}_g"], name=name, axis=0)]
    codes = f"{prefix}_g"
    if grid.bits == 4:
        inits.append(numpy_helper.from_array(np.array(4, dtype=np.uint8), f"{prefix}_four"))
        nodes += [
            helper.make_node("BitShift", [codes, f"{prefix}_four"], [f"{prefix}_hi"], direction="RIGHT"),
            helper.make_node(
                "BitShift", [f"{prefix}_hi", f"{prefix}_four"], [f"{prefix}_hi4"], direction="LEFT"
            ),
            helper.make_node("Sub", [codes, f"{prefix}_hi4"], [f"{prefix}_lo"]),
            helper.make_node("Concat", [f"{prefix}_lo", f"{prefix}_hi"], [f"{prefix}_q"], axis=-1),
        ]
        codes = f"{prefix}_q"
    nodes += [
        helper.make_node("Cast", [codes], [f"{prefix}_qf"], to=TensorProto.FLOAT),
        helper.make_node("Gather", [f"{prefix}_scale16", ids], [f"{prefix}_dg"], axis=0),
        helper.make_node("Cast", [f"{prefix}_dg"], [f"{prefix}_df"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{prefix}_df", f"{prefix}_last"], [f"{prefix}_d"]),
    ]
    value = f"{prefix}_qf"
    if grid.minimum is None and grid.offset:
        inits.append(numpy_helper.from_array(np.array(grid.offset, dtype=np.float32), f"{prefix}_offset"))
        nodes.append(helper.make_node("Sub", [value, f"{prefix}_offset"], [f"{prefix}_qc"]))
        value = f"{prefix}_qc"
    if grid.minimum is not None:
        inits.append(numpy_helper.from_array(grid.minimum, f"{prefix}_min16"))
        nodes += [
            helper.make_node("Mul", [f"{prefix}_d", value], [f"{prefix}_dq"]),
            helper.make_node("Gather", [f"{prefix}_min16", ids], [f"{prefix}_mg"], axis=0),
            helper.make_node("Cast", [f"{prefix}_mg"], [f"{prefix}_mf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [f"{prefix}_mf", f"{prefix}_last"], [f"{prefix}_m"]),
            helper.make_node("Add", [f"{prefix}_dq", f"{prefix}_m"], [f"{prefix}_x"]),
        ]
    else:
        nodes.append(helper.make_node("Mul", [f"{prefix}_d", value], [f"{prefix}_x"]))
    nodes += [
        helper.make_node("Shape", [ids], [f"{prefix}_ids_shape"]),
        helper.make_node("Concat", [f"{prefix}_ids_shape", f"{prefix}_width"], [f"{prefix}_shape"], axis=0),
        helper.make_node("Reshape", [f"{prefix}_x", f"{prefix}_shape"], list(node.output)),
    ]
    return nodes, inits

"""Small GGUF files and fp32 shards built from them, for the tests of carrying a GGUF grid into q4/q8.

``write_gguf`` quantizes weights with gguf's own quantizers into a real GGUF file; ``fp32_shard``
writes the fp32 ONNX graph torch would export from the dequantized weights (``x @ W`` with ``W`` stored
``[K, N]``, and an axis-0 ``Gather`` for embeddings).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import onnx
from gguf.quants import dequantize, quantize
from onnx import TensorProto, helper, numpy_helper

K = 64  # the input width of every test weight: two blocks of 32

GGUFType = gguf.GGMLQuantizationType


def sample_weight(rng: np.random.Generator, rows: int, cols: int = K) -> np.ndarray:
    """Random weights with a constant block (Q4_1: d == 0, m != 0) and an all-zero block."""
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[0, :32] = 0.25
    w[1, 32:] = 0.0
    return w


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, GGUFType]]) -> dict[str, np.ndarray]:
    """Write ``tensors`` quantized to ``path``; return their dequantized values (what transformers loads)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    values = {}
    for name, (w, kind) in tensors.items():
        data = w if kind == GGUFType.F32 else quantize(w, kind)
        writer.add_tensor(name, data, raw_dtype=kind)
        values[name] = w if kind == GGUFType.F32 else dequantize(data, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


def fp32_shard(path: Path, weights: dict[str, np.ndarray], embeddings: dict[str, np.ndarray]) -> Path:
    """Inputs ``x`` [b, s, K] and ``ids`` [b, s]; outputs ``y_<name> = x @ W.T`` and ``e_<name> = E[ids]``."""
    nodes, inits, outputs = [], [], []
    for name, w in weights.items():
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"onnx::MatMul_{name}"))
        nodes.append(helper.make_node("MatMul", ["x", f"onnx::MatMul_{name}"], [f"y_{name}"]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None))
    for name, e in embeddings.items():
        inits.append(numpy_helper.from_array(e, f"embed_{name}"))
        nodes.append(helper.make_node("Gather", [f"embed_{name}", "ids"], [f"e_{name}"], axis=0))
        outputs.append(helper.make_tensor_value_info(f"e_{name}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "shard",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
        ],
        outputs,
        inits,
    )
    # IR 8, as torch's exporter writes at opset 17 (onnxruntime-web 1.30 reads IR 13 at most)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path

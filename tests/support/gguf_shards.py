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


def tiny_llama_gguf(
    path: Path, tokenizer_source: Path, rng: np.random.Generator, types: dict[str, GGUFType] | None = None
) -> Path:
    """A Llama GGUF transformers loads (hidden 64, 2 layers, tied embeddings), with the tokenizer and
    chat template of ``tokenizer_source`` (the default model's GGUF): matrices in Q4_1, the embedding
    in Q8_0, norms in F32, except the tensors named in ``types``."""
    reader = gguf.GGUFReader(str(tokenizer_source))
    field = {name: f.contents() for name, f in reader.fields.items() if name.startswith("tokenizer.")}
    hidden, ff, heads, kv_heads, layers = 64, 128, 4, 2, 2
    vocab = len(field["tokenizer.ggml.tokens"])
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-gguf")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model(field["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(field["tokenizer.ggml.pre"])
    writer.add_token_list(field["tokenizer.ggml.tokens"])
    writer.add_token_types(field["tokenizer.ggml.token_type"])
    writer.add_token_merges(field["tokenizer.ggml.merges"])
    writer.add_bos_token_id(field["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(field["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(field["tokenizer.ggml.unknown_token_id"])
    writer.add_pad_token_id(field["tokenizer.ggml.padding_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(field["tokenizer.chat_template"])
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv_heads * hidden // heads, hidden),
            f"blk.{i}.attn_v.weight": (kv_heads * hidden // heads, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ff, hidden),
            f"blk.{i}.ffn_up.weight": (ff, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ff),
        }
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            continue
        kind = (types or {}).get(name, GGUFType.Q8_0 if name == "token_embd.weight" else GGUFType.Q4_1)
        w = (rng.standard_normal(shape) * (0.5 if name == "token_embd.weight" else 0.15)).astype(np.float32)
        data = w if kind == GGUFType.F32 else quantize(w, kind)
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

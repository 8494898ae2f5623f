"""A toy model written as ONNX shards with ``onnx.helper``: no torch, no export, built in milliseconds.

It is a real model directory (``manifest.json`` with sha256 and sizes, an embed, blocks and head shard
per the manifest's tensor names), so the real ``ShardRunner``/``BlocksRunner``/``SpanServer`` and the
mesh client's embed and head run it through onnxruntime. Each layer keeps a KV cache that matters: its
output at a position depends on every earlier token of the session (a running sum of its keys), so a
replacement peer that did not get the history replayed answers differently, and greedy tokens change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from python_peer.core import manifest as names

HIDDEN = 8
VOCAB = 32
LAYERS = 4
KV_HEADS = 1
HEAD_DIM = HIDDEN
OPSET = 17


def _save(model_dir: Path, file: str, graph: onnx.GraphProto) -> dict[str, object]:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (model_dir / file).write_bytes(data)
    listed = {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return {**listed, "files": [listed]}


def _io(specs: list[names.TensorSpec]) -> list[onnx.ValueInfoProto]:
    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    return [helper.make_tensor_value_info(s.name, types[s.dtype], list(s.shape)) for s in specs]


def _blocks_graph(start: int, end: int, rng: np.random.Generator) -> onnx.GraphProto:
    inputs, outputs = names.blocks_io(start, end, HIDDEN, KV_HEADS, HEAD_DIM)
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Shape", [names.HIDDEN_IN], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Neg", ["seq"], ["minus_seq"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([1 << 30], dtype=np.int64), "big"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "axis2_scalar"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero_scalar"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one_scalar"),
        numpy_helper.from_array(np.array(0.25, dtype=np.float32), "mix"),
    ]
    hidden = names.HIDDEN_IN
    for layer in range(start, end):
        w_k = numpy_helper.from_array(rng.normal(0, 0.5, (HIDDEN, HIDDEN)).astype(np.float32), f"wk{layer}")
        w_o = numpy_helper.from_array(rng.normal(0, 0.5, (HIDDEN, HIDDEN)).astype(np.float32), f"wo{layer}")
        inits += [w_k, w_o]
        p = f"l{layer}_"
        nodes += [
            helper.make_node("MatMul", [hidden, f"wk{layer}"], [p + "k"]),  # [b, s, H]
            helper.make_node("Unsqueeze", [p + "k", "one"], [p + "k4"]),  # [b, 1, s, H]
            helper.make_node("Concat", [names.past_key(layer), p + "k4"], [names.present_key(layer)], axis=2),
            helper.make_node(
                "Concat", [names.past_value(layer), p + "k4"], [names.present_value(layer)], axis=2
            ),
            # A causal running sum over the whole session: position t sees tokens 0..t, here or cached
            # (a lower-triangular ones matrix times the keys: operators a blocks shard is admitted with).
            helper.make_node("Shape", [names.present_key(layer)], [p + "pshape"]),
            helper.make_node("Gather", [p + "pshape", "axis2_scalar"], [p + "total"], axis=0),
            helper.make_node("Range", ["zero_scalar", p + "total", "one_scalar"], [p + "idx"]),
            helper.make_node("Unsqueeze", [p + "idx", "one"], [p + "rows"]),
            helper.make_node("Unsqueeze", [p + "idx", "zero"], [p + "cols"]),
            helper.make_node("LessOrEqual", [p + "cols", p + "rows"], [p + "causal"]),
            helper.make_node("Cast", [p + "causal"], [p + "tri"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", [p + "tri", names.present_key(layer)], [p + "sum"]),
            helper.make_node("Slice", [p + "sum", "minus_seq", "big", "axis2"], [p + "recent"]),
            helper.make_node("Squeeze", [p + "recent", "one"], [p + "ctx"]),  # [b, s, H]
            helper.make_node("Mul", [p + "ctx", "mix"], [p + "ctx_mixed"]),
            helper.make_node("MatMul", [hidden, f"wo{layer}"], [p + "own"]),
            helper.make_node("Add", [p + "own", p + "ctx_mixed"], [p + "pre"]),
            helper.make_node("Tanh", [p + "pre"], [p + "out"]),
        ]
        hidden = p + "out"
    nodes.append(helper.make_node("Identity", [hidden], [names.HIDDEN_OUT]))
    return helper.make_graph(nodes, f"blocks_{start}_{end}", _io(inputs), _io(outputs), inits)


def build(model_dir: Path, *, spans: tuple[tuple[int, int], ...] = ((0, 1), (1, 3), (3, 4))) -> Path:
    """Write the toy model's shards and manifest into ``model_dir``; return it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    table = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
    shards: list[dict[str, object]] = []

    embed_in, embed_out = names.embed_io(HIDDEN, learned_positions=False)
    embed = helper.make_graph(
        [helper.make_node("Gather", ["table", names.INPUT_IDS], [names.HIDDEN_OUT], axis=0)],
        "embed",
        _io(embed_in),
        _io(embed_out),
        [numpy_helper.from_array(table, "table")],
    )
    shards.append(
        {
            **_save(model_dir, "embed.onnx", embed),
            "kind": "embed",
            "start": 0,
            "end": 0,
            "inputs": [s.to_dict() for s in embed_in],
            "outputs": [s.to_dict() for s in embed_out],
        }
    )
    for start, end in spans:
        graph = _blocks_graph(start, end, rng)
        b_in, b_out = names.blocks_io(start, end, HIDDEN, KV_HEADS, HEAD_DIM)
        shards.append(
            {
                **_save(model_dir, f"blocks_{start}_{end}.onnx", graph),
                "kind": "blocks",
                "start": start,
                "end": end,
                "inputs": [s.to_dict() for s in b_in],
                "outputs": [s.to_dict() for s in b_out],
            }
        )
    head_in, head_out = names.head_io(HIDDEN, VOCAB)
    head = helper.make_graph(
        [helper.make_node("MatMul", [names.HIDDEN_IN, "unembed"], [names.LOGITS])],
        "head",
        _io(head_in),
        _io(head_out),
        [numpy_helper.from_array(np.ascontiguousarray(table.T), "unembed")],
    )
    shards.append(
        {
            **_save(model_dir, "head.onnx", head),
            "kind": "head",
            "start": LAYERS,
            "end": LAYERS,
            "inputs": [s.to_dict() for s in head_in],
            "outputs": [s.to_dict() for s in head_out],
        }
    )
    manifest = {
        "format_version": names.FORMAT_VERSION,
        "model": {
            "name": "toy-model",
            "architecture": "toy",
            "config": {
                "num_layers": LAYERS,
                "hidden_size": HIDDEN,
                "num_key_value_heads": KV_HEADS,
                "head_dim": HEAD_DIM,
                "vocab_size": VOCAB,
                "max_position_embeddings": 256,
            },
        },
        "tokenizer": {},
        "dtype": "fp32",
        "shards": shards,
    }
    (model_dir / names.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return model_dir

"""Regenerate the golden admission vectors: ``python tests/vectors/generate_admission.py [--out DIR]``.

Small ``.onnx`` files (and files that only pretend to be one), each with the shard kind it is checked as
and the admission rule that refuses it (``null`` when it is admitted), in ``admission/index.json``. They
are the contract between ``python_peer/core/admission.py`` (``check_operators``) and its browser twin
``web/src/runtime/admission.js``: ``tests/test_admission.py`` and ``web/test/admission.test.js`` both
check every verdict, and the Python test checks the files on disk are what this script writes.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "admission"


def _model(nodes: list, *, opsets: tuple[tuple[str, int], ...] = (("", 17),), ir: int = 8) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir
    model.producer_name = "ai4all-vectors"
    return model


def _blocks_ok() -> bytes:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node(
            "MatMulNBits", ["h", "w"], ["q"], domain="com.microsoft", K=4, N=4, bits=8, block_size=16
        ),
        helper.make_node("Softmax", ["q"], ["y"], axis=-1),
    ]
    return _model(nodes, opsets=(("", 17), ("com.microsoft", 1))).SerializeToString()


def _one(op: str, domain: str = "", opsets: tuple[tuple[str, int], ...] = (("", 17),), **attrs: Any) -> bytes:
    return _model(
        [helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)], opsets=opsets
    ).SerializeToString()


def _if() -> bytes:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    return _model(
        [helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)]
    ).SerializeToString()


def _function() -> bytes:
    model = _model(
        [helper.make_node("Steal", ["x"], ["y"], domain="ai4all.evil")], opsets=(("", 17), ("ai4all.evil", 1))
    )
    model.functions.append(
        helper.make_function(
            "ai4all.evil",
            "Steal",
            ["x"],
            ["y"],
            [helper.make_node("Identity", ["x"], ["y"])],
            [helper.make_opsetid("", 17)],
        )
    )
    return model.SerializeToString()


def _pickle() -> bytes:
    return pickle.dumps({"weights": [0.0] * 4, "code": "__import__('os').system"}, protocol=4)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("archive/data.pkl", (2024, 1, 1, 0, 0, 0)), b"\x80\x02}q\x00.")
    return buffer.getvalue()


def _truncated() -> bytes:
    return _blocks_ok()[:-7]


VECTORS: dict[str, tuple[str, Callable[[], bytes], str | None]] = {
    "blocks_ok.onnx": ("blocks", _blocks_ok, None),
    "embed_ok.onnx": ("embed", lambda: _one("Gather", axis=0), None),
    "head_ok.onnx": ("head", lambda: _one("MatMulNBits", "com.microsoft", (("", 17), ("com.microsoft", 1))), None),
    "forbidden_op.onnx": ("blocks", lambda: _one("CumSum"), "operator_allowed"),
    "quantized_in_embed.onnx": ("embed", lambda: _one("MatMulNBits", "com.microsoft", (("", 17), ("com.microsoft", 1))), "operator_allowed"),
    "contrib_op.onnx": ("blocks", lambda: _one("Attention", "com.microsoft", (("", 17), ("com.microsoft", 1))), "operator_allowed"),
    "custom_domain.onnx": ("blocks", lambda: _one("Exec", "ai4all.evil", (("", 17), ("ai4all.evil", 1))), "no_custom_ops"),
    "unimported_domain.onnx": ("blocks", lambda: _one("MatMulNBits", "com.microsoft"), "format_version"),
    "nested_graph.onnx": ("blocks", _if, "operator_allowed"),
    "local_function.onnx": ("head", _function, "no_custom_ops"),
    "ir_version.onnx": ("head", lambda: _model([helper.make_node("Add", ["x", "x"], ["y"])], ir=11).SerializeToString(), "format_version"),
    "opset_version.onnx": ("head", lambda: _one("Sqrt", opsets=(("", 99),)), "format_version"),
    "pickle.onnx": ("blocks", _pickle, "onnx_only"),
    "zip.onnx": ("blocks", _zip, "onnx_only"),
    "truncated.onnx": ("blocks", _truncated, "onnx_only"),
    "empty.onnx": ("embed", lambda: b"", "onnx_only"),
}  # fmt: skip


def render() -> dict[str, bytes]:
    """Every vector file's bytes, ``index.json`` included."""
    files = {name: make() for name, (_kind, make, _rule) in VECTORS.items()}
    index = [{"file": name, "kind": kind, "rule": rule} for name, (kind, _make, rule) in VECTORS.items()]
    files["index.json"] = (json.dumps(index, indent=1) + "\n").encode()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the folder to write (default: %(default)s)")
    out = parser.parse_args().out
    out.mkdir(exist_ok=True)
    for name, data in render().items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()

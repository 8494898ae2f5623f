"""Admission (issue 14, point 2): a shard is an ONNX model of allowed operators whose declared inputs,
outputs and sizes agree with the model's config, or nothing of it loads.

Each attack is a model directory as the README documents it (``manifest.json`` and the files it lists,
every sha256 and size matching, so only admission stands in the way), handed to the peer's own loader
(``ShardRunner``), to ``admit_model_dir`` and, once, to the ``ai4all chat`` command.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from python_peer.core.admission import admit_model_dir, allowed, check_operators
from python_peer.core.errors import AdmissionError
from python_peer.core.manifest import load_manifest
from python_peer.core.onnx_summary import summarize
from python_peer.errors import ShardError
from python_peer.runner import ShardRunner
from tests.support.procs import run_cli

BLOCKS = "blocks_1-3.onnx"


def _copy(export: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(export, out)
    return out


def _rewrite(model_dir: Path, file: str, data: bytes) -> None:
    """Replace a shard's bytes and list the new sha256 and size, as a publisher of that file would."""
    (model_dir / file).write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if shard["file"] == file:
            listed = {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            grown = len(data) - shard["bytes"]
            shard.update(listed)
            shard["files"][0] = listed
            if shard["kind"] == "blocks" and grown > 0:  # the memory figures cover the shard's bytes
                manifest["memory"]["block_weight_bytes"][shard["start"]] += grown
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def _edit(model_dir: Path, file: str, change: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(str(model_dir / file))
    change(model)
    _rewrite(model_dir, file, model.SerializeToString())


def _pickle(_: onnx.ModelProto) -> bytes:
    return pickle.dumps({"weights": np.zeros(4), "code": "__import__('os').system"}, protocol=4)


def _zip(_: onnx.ModelProto) -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buffer.getvalue()


def _node(op: str, domain: str = "", **attrs: Any) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        source = model.graph.input[0].name
        model.graph.node.append(helper.make_node(op, [source], ["attack_out"], domain=domain, **attrs))
        if domain and not any(o.domain == domain for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))

    return change


def _unimported_domain(model: onnx.ModelProto) -> None:
    model.graph.node.append(
        helper.make_node("Relu", [model.graph.input[0].name], ["x"], domain="ai4all.evil")
    )


def _if_node(model: onnx.ModelProto) -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["y"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, dtype=np.float32), "c")],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["if_out"], then_branch=branch, else_branch=branch)
    )


def _function(model: onnx.ModelProto) -> None:
    body = helper.make_function(
        "ai4all.evil", "Steal", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    model.functions.append(body)
    model.opset_import.append(helper.make_opsetid("ai4all.evil", 1))
    model.graph.node.append(
        helper.make_node("Steal", [model.graph.input[0].name], ["s"], domain="ai4all.evil")
    )


def _ir(model: onnx.ModelProto) -> None:
    model.ir_version = 99


def _opset(model: onnx.ModelProto) -> None:
    model.opset_import[0].version = 99


def _rename_input(model: onnx.ModelProto) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = "smuggled"
    for node in model.graph.node:
        node.input[:] = ["smuggled" if n == old else n for n in node.input]


def _output_dtype(model: onnx.ModelProto) -> None:
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16


SHARD_ATTACKS: dict[str, tuple[str, Callable[[onnx.ModelProto], Any], str, str]] = {
    # name: (file, change, rule, words of the refusal)
    "pickle": (BLOCKS, _pickle, "onnx_only", "not an ONNX model"),
    "zip archive": (BLOCKS, _zip, "onnx_only", "not an ONNX model"),
    "custom domain": ("embed.onnx", _node("Exec", "ai4all.evil"), "no_custom_ops", "ai4all.evil"),
    "unimported domain": (BLOCKS, _unimported_domain, "no_custom_ops", "ai4all.evil"),
    "forbidden op in blocks": (BLOCKS, _node("CumSum"), "operator_allowed", "CumSum"),
    "quantized op in embed": ("embed.onnx", _node("MatMulNBits", "com.microsoft"), "operator_allowed", "MatMulNBits"),
    "other contrib op": (BLOCKS, _node("Attention", "com.microsoft"), "operator_allowed", "Attention"),
    "nested graph": (BLOCKS, _if_node, "operator_allowed", "If"),
    "local function": ("head.onnx", _function, "no_custom_ops", "functions"),
    "unknown IR version": ("head.onnx", _ir, "format_version", "IR version 99"),
    "unknown opset": ("head.onnx", _opset, "format_version", "version 99"),
    "renamed input": (BLOCKS, _rename_input, "declared_io", "smuggled"),
    "output dtype": ("head.onnx", _output_dtype, "declared_io", "float16"),
}  # fmt: skip


def test_a_real_export_is_admitted(tiny_llama_export: Path) -> None:
    manifest = admit_model_dir(tiny_llama_export)
    for entry in manifest.shards:
        ShardRunner(tiny_llama_export, entry)


@pytest.mark.parametrize("attack", sorted(SHARD_ATTACKS))
def test_a_shard_breaking_a_rule_is_refused_naming_it(
    attack: str, tiny_llama_export: Path, tmp_path: Path
) -> None:
    file, change, rule, words = SHARD_ATTACKS[attack]
    model_dir = _copy(tiny_llama_export, tmp_path)
    if change in (_pickle, _zip):
        _rewrite(model_dir, file, change(onnx.ModelProto()))
    else:
        _edit(model_dir, file, change)
    entry = next(s for s in load_manifest(model_dir).shards if s.file == file)
    with pytest.raises(ShardError, match=f"admission rule {rule}: shard {file}") as refused:
        ShardRunner(model_dir, entry)
    assert words in str(refused.value)
    with pytest.raises(AdmissionError) as admitted:
        admit_model_dir(model_dir)
    assert admitted.value.rule == rule


def _manifest_edit(model_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((model_dir / "manifest.json").read_text())
    change(data)
    (model_dir / "manifest.json").write_text(json.dumps(data))


def _blocks(data: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in data["shards"] if s["file"] == BLOCKS)


def _hidden_65(data: dict[str, Any]) -> None:
    for spec in [*_blocks(data)["inputs"], *_blocks(data)["outputs"]]:
        if spec["name"].startswith("hidden_states"):
            spec["shape"][2] = 65


def _extra_input(data: dict[str, Any]) -> None:
    _blocks(data)["inputs"].append({"name": "cmd", "dtype": "int64", "shape": ["batch"]})


def _oversized(data: dict[str, Any]) -> None:
    shard = _blocks(data)
    external = {"file": BLOCKS + ".data", "sha256": "0" * 64, "bytes": 100 * 2**30}
    shard["files"].append(external)
    data["memory"]["block_weight_bytes"][1] += 50 * 2**30
    data["memory"]["block_weight_bytes"][2] += 50 * 2**30


def _more_kv_heads(data: dict[str, Any]) -> None:
    config = data["model"]["config"]
    config["num_key_value_heads"] = 4  # with memory figures to match: only the shards' shapes disagree
    data["memory"]["kv_bytes_per_token"] = [2 * 4 * config["head_dim"] * 4] * config["num_layers"]


MANIFEST_ATTACKS = {
    "hidden size": (_hidden_65, "declared_io"),
    "extra input": (_extra_input, "declared_io"),
    "oversized file": (_oversized, "declared_size"),
    "config disagrees": (_more_kv_heads, "declared_io"),
}


@pytest.mark.parametrize("attack", sorted(MANIFEST_ATTACKS))
def test_a_manifest_whose_declarations_disagree_with_its_config_is_refused(
    attack: str, tiny_llama_export: Path, tmp_path: Path
) -> None:
    change, rule = MANIFEST_ATTACKS[attack]
    model_dir = _copy(tiny_llama_export, tmp_path)
    _manifest_edit(model_dir, change)
    with pytest.raises(AdmissionError, match=f"admission rule {rule}") as refused:
        load_manifest(model_dir)
    assert refused.value.rule == rule


VECTORS = Path(__file__).resolve().parent / "vectors" / "admission"


def test_the_golden_vectors_get_their_verdicts(tmp_path: Path) -> None:
    """The browser's ``web/test/admission.test.js`` checks the same files and verdicts."""
    script = VECTORS.parent / "generate_admission.py"
    env = {**os.environ, "PYTHONPATH": str(VECTORS.parents[2])}
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, env=env)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert written == {p.name: p.read_bytes() for p in VECTORS.iterdir()}, (
        "run tests/vectors/generate_admission.py"
    )
    for vector in json.loads((VECTORS / "index.json").read_text()):
        try:
            check_operators(
                summarize((VECTORS / vector["file"]).read_bytes()), vector["kind"], vector["file"]
            )
            rule = None
        except AdmissionError as exc:
            rule = exc.rule
        assert rule == vector["rule"], vector["file"]


def test_the_allow_lists_are_per_kind() -> None:
    assert allowed("blocks", "com.microsoft", "MatMulNBits") and not allowed(
        "embed", "com.microsoft", "MatMulNBits"
    )
    assert allowed("blocks", "ai.onnx", "Softmax") and not allowed("head", "", "Softmax")
    assert not allowed("blocks", "", "Loop") and not allowed("blocks", "ai4all.evil", "Add")


def test_the_chat_command_refuses_a_forbidden_operator(tiny_llama_export: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_export, tmp_path)
    _edit(model_dir, BLOCKS, _node("CumSum"))
    result = run_cli(["chat", "hello", "--model", str(model_dir), "--max-tokens", "2"], timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert "admission rule operator_allowed" in result.stderr and "CumSum" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr

"""Streaming export: each shard is built from just its tensors, read lazily from safetensors or GGUF.

The streamed default model (GGUF, dequantized tensor by tensor) gives the same shards as transformers'
whole-model loader; checkpoints whose tensors disagree with their config, are missing, or have a type the
exporter cannot read are refused in one line before anything is written. The attacks write checkpoints in
their public formats (safetensors files and index, GGUF tensor infos) and run ``ai4all export``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from exporter import pipeline, source
from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import parse_spans
from tests.support.procs import run_cli

PROMPTS = ["What is the capital of France?", "def fibonacci(n):"]
DECODE_STEPS = 12


def export_cli(model: Path, out: Path):
    return run_cli(["export", "--quiet", str(model), "--out", str(out), "--shards", "2"], timeout=600)


def assert_refused(result, out: Path, *needles: str) -> str:
    """One line on stderr naming what and where, a non-zero status, and nothing written."""
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("ai4all export: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() or list(out.iterdir()) == [], sorted(out.iterdir())
    return lines[0]


def copy_model(tiny_llama: Path, tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    return model, next(model.glob("*.safetensors"))


# ---- safetensors: shapes, names and types checked against the config before anything is written ----


def test_missing_tensor_is_refused_naming_it(tiny_llama: Path, tmp_path: Path) -> None:
    model, weights = copy_model(tiny_llama, tmp_path)
    tensors = load_file(weights)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, weights)
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "model.layers.2.mlp.up_proj.weight", "missing", str(model))


def test_shape_that_disagrees_with_the_config_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model, weights = copy_model(tiny_llama, tmp_path)
    tensors = load_file(weights)
    tensors["model.layers.3.self_attn.k_proj.weight"] = torch.zeros(64, 64)  # GQA: the config says [32, 64]
    save_file(tensors, weights)
    out = tmp_path / "out"
    line = assert_refused(export_cli(model, out), out, "model.layers.3.self_attn.k_proj.weight", "shape")
    assert "[64, 64]" in line and "[32, 64]" in line, line


def test_integer_weights_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model, weights = copy_model(tiny_llama, tmp_path)
    tensors = load_file(weights)
    tensors["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    save_file(tensors, weights)
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "model.norm.weight", "I32")


def test_sharded_checkpoint_is_streamed_and_a_missing_shard_file_refused(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A checkpoint split over several files by its index exports as the single-file one does."""
    model, weights = copy_model(tiny_llama, tmp_path)
    tensors = load_file(weights)
    weights.unlink()
    names = sorted(tensors)
    halves = {"part-1.safetensors": names[: len(names) // 2], "part-2.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, model / file)
        weight_map.update(dict.fromkeys(part, file))
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    sharded = pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(model)), tmp_path / "a", shards=2)
    )
    whole = pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(tiny_llama)), tmp_path / "b", shards=2)
    )
    assert [s.sha256 for s in sharded.shards] == [s.sha256 for s in whole.shards]

    (model / "part-2.safetensors").unlink()
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "part-2.safetensors", "does not exist")


def test_tensor_in_two_checkpoint_files_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    """Two files of one checkpoint that both hold a tensor (with different values): which one a loader takes
    depends on the order it reads them, so the export refuses rather than pick one."""
    model, weights = copy_model(tiny_llama, tmp_path)
    tensors = load_file(weights)
    weights.unlink()
    names = sorted(tensors)
    twice = "model.layers.1.self_attn.o_proj.weight"
    first = {n: tensors[n] for n in names[: len(names) // 2]}
    second = {n: tensors[n] for n in names[len(names) // 2 :]}
    first[twice], second[twice] = tensors[twice], tensors[twice] * -1.0
    save_file(first, model / "part-1.safetensors")
    save_file(second, model / "part-2.safetensors")
    weight_map = {**dict.fromkeys(first, "part-1.safetensors"), **dict.fromkeys(second, "part-2.safetensors")}
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, twice, "part-1.safetensors", "part-2.safetensors")


def test_index_naming_a_file_outside_the_model_directory_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    """An index may only name files beside it: ``../`` would read weights from anywhere on the disk."""
    model, weights = copy_model(tiny_llama, tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    names = list(load_file(outside))
    weight_map = dict.fromkeys(names, "../elsewhere.safetensors")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "../elsewhere.safetensors", "outside the model directory")


def test_index_that_is_not_json_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model, _ = copy_model(tiny_llama, tmp_path)
    (model / "model.safetensors.index.json").write_text('{"weight_map": ')
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "model.safetensors.index.json", "not a safetensors index")


class RecordingTensors:
    """A tensor source that records every tensor read, under the step the export was in."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.where = inner.where
        self.step = ""
        self.reads: list[tuple[str, str]] = []

    def shapes(self):
        return self.inner.shapes()

    def describe(self, name: str) -> str:
        return self.inner.describe(name)

    def check(self, name: str):
        return self.inner.check(name)

    def load(self, name: str) -> torch.Tensor:
        self.reads.append((self.step, name))
        return self.inner.load(name)


def test_each_shard_is_built_from_its_own_tensors_only(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    """The streaming rule: while a shard is exported, only that shard's tensors are in memory (every other
    parameter is on ``meta``), each tensor is read once, and all are released after the shard."""
    from exporter import onnx_export

    loaded = source.open_model(source.resolve(str(tiny_llama)))
    assert loaded.model is None, "a safetensors directory must be streamed, not loaded whole"
    skeleton = loaded.skeleton
    recorder = RecordingTensors(skeleton.tensors)
    skeleton.tensors = recorder

    def materialized(model) -> set[str]:
        params = model.named_parameters(remove_duplicate=False)
        return {name for name, p in params if not p.is_meta}

    seen: dict[str, set[str]] = {}
    for kind in ("embed", "head", "blocks"):
        real = getattr(onnx_export, f"export_{kind}")

        def spy(model, *args, _real=real, _kind=kind, **options):
            span = f"{args[1]}-{args[2]}" if _kind == "blocks" else _kind
            seen[span] = materialized(model)
            return _real(model, *args, **options)

        monkeypatch.setattr(onnx_export, f"export_{kind}", spy)

    def progress(step: str, done: int, total: int) -> None:
        recorder.step = step

    spans = tuple(parse_spans("0-1,1-3,3-4"))
    pipeline.run_export(
        pipeline.ExportRequest(loaded.source, tmp_path / "out", spans=spans), progress, lambda _: loaded
    )

    expected = {
        "embed": set(skeleton.names("embed")),
        **{f"{s.start}-{s.end}": set(skeleton.names("blocks", s.start, s.end)) for s in spans},
        "head": set(skeleton.names("head")),
    }
    assert seen == expected
    assert all(names for names in expected.values())
    for span, names in expected.items():
        file = "embed.onnx" if span == "embed" else "head.onnx" if span == "head" else f"blocks_{span}.onnx"
        read = [name for step, name in recorder.reads if file in step]
        assert sorted(read) == sorted(str(skeleton.source_name(n)) for n in names), span
    assert len(recorder.reads) == sum(len(n) for n in expected.values())
    assert materialized(skeleton.model) == set(), "every tensor is released after its shard"


# ---- GGUF: tensor infos patched in a copy of the default model's file ----


def patched_gguf(
    tmp_path: Path,
    tensor: str,
    *,
    type_: int | None = None,
    name: str | None = None,
    dims: list[int] | None = None,
) -> Path:
    """A copy of the default GGUF with one tensor's ggml type, name or dimensions (ggml order, the fastest
    axis first) changed in its tensor info."""
    from gguf import GGUFReader

    copy = tmp_path / "patched.gguf"
    shutil.copyfile(source.default_gguf(), copy)
    reader = GGUFReader(str(copy), "r+")
    info = next(t for t in reader.tensors if t.name == tensor)
    name_part, type_part = info.field.parts[1], info.field.parts[4]
    if type_ is not None:
        type_part[0] = type_
    if dims is not None:
        assert len(dims) == len(info.field.parts[3])
        info.field.parts[3][:] = dims
    if name is not None:
        assert len(name) == len(tensor)
        name_part[:] = np.frombuffer(name.encode(), dtype=np.uint8)
    reader.data.flush()
    del reader
    return copy


def test_gguf_tensor_type_the_exporter_cannot_read_is_refused(tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType

    # An f32 norm declared as I8: gguf-py reads the (shorter) bytes, but no dequantizer exists for it.
    model = patched_gguf(tmp_path, "blk.4.attn_norm.weight", type_=int(GGMLQuantizationType.I8))
    out = tmp_path / "out"
    assert_refused(export_cli(model, out), out, "blk.4.attn_norm.weight", "I8", "patched.gguf")


def test_gguf_missing_tensor_is_refused(tmp_path: Path) -> None:
    model = patched_gguf(tmp_path, "blk.3.ffn_up.weight", name="blk.3.ffn_uq.weight")
    out = tmp_path / "out"
    assert_refused(
        export_cli(model, out), out, "model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight", "missing"
    )


def test_gguf_tensor_shape_that_disagrees_with_the_config_is_refused(tmp_path: Path) -> None:
    # The f32 norm of layer 4 declared half as long as the hidden size the GGUF's metadata states.
    model = patched_gguf(tmp_path, "blk.4.ffn_norm.weight", dims=[288])
    out = tmp_path / "out"
    line = assert_refused(
        export_cli(model, out), out, "model.layers.4.post_attention_layernorm.weight", "blk.4.ffn_norm.weight"
    )
    assert "[288]" in line and "[576]" in line, line


# ---- the default model: streamed shards equal the whole-model path's ----


@pytest.mark.slow
def test_streamed_gguf_tensors_equal_transformers_gguf_loader() -> None:
    """Every tensor, dequantized and laid out lazily, equals what ``from_pretrained(gguf_file=...)`` loads."""
    streamed = source.open_model(source.resolve(None))
    whole = source.load(source.resolve(None))
    reference = whole.model.state_dict()
    assert streamed.model is None, "the default model must be streamed, not loaded whole"
    checked = 0
    for kind, start, end in [("embed", 0, 0), ("blocks", 0, streamed.skeleton.num_layers), ("head", 0, 0)]:
        for name in streamed.skeleton.names(kind, start, end):
            found = streamed.skeleton.source_name(name)
            assert found is not None
            tensor = streamed.skeleton.tensors.load(found)
            assert torch.equal(tensor, reference[name]), name
            checked += 1
    assert checked == len(reference)


def _chain_outputs(directory: Path, tokenizer) -> tuple[list[np.ndarray], list[list[int]]]:
    chain = LocalChain(directory)
    logits, tokens = [], []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        session = chain.open(1)
        step = chain.step(session, np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))
        logits.append(step[0])
        generated = []
        for _ in range(DECODE_STEPS):
            token = int(np.argmax(step[0, -1]))
            generated.append(token)
            step = chain.step(session, np.array([[token]], dtype=np.int64), np.ones((1, 1), dtype=np.int64))
        chain.close(session)
        tokens.append(generated)
    return logits, tokens


@pytest.mark.slow
def test_streamed_default_model_export_equals_the_whole_model_export(tmp_path: Path) -> None:
    spans = tuple(parse_spans("0-15,15-30"))
    src = source.resolve(None)
    streamed = tmp_path / "streamed"
    whole = tmp_path / "whole"
    steps: list[str] = []
    pipeline.run_export(
        pipeline.ExportRequest(src, streamed, spans=spans), lambda step, done, total: steps.append(step)
    )
    loaded = source.load(src)
    pipeline.run_export(pipeline.ExportRequest(src, whole, spans=spans), loader=lambda _: loaded)
    assert any("blocks_0-15.onnx" in s and "MB of fp32 weights" in s for s in steps), steps

    a, b = load_manifest(streamed), load_manifest(whole)
    for key in ("model", "tokenizer", "dtype"):
        assert a.raw[key] == b.raw[key], key
    logits_a, tokens_a = _chain_outputs(streamed, loaded.tokenizer)
    logits_b, tokens_b = _chain_outputs(whole, loaded.tokenizer)
    assert tokens_a == tokens_b
    for x, y in zip(logits_a, logits_b, strict=True):
        assert np.abs(x - y).max() < 1e-5

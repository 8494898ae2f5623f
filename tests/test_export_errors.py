"""Every bad input to ``ai4all export`` gets a one-line error, a non-zero status, and leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.procs import run_cli


def assert_one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("ai4all export: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [], sorted(out.iterdir())


def export(*args: str):
    return run_cli(["export", "--quiet", *args], timeout=300)


def test_missing_model_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = export(str(tmp_path / "nowhere"), "--out", str(out))
    assert_one_line_error(result, "nowhere")
    assert_nothing_written(out)


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = export(str(tmp_path / "model"), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "config.json")
    assert_nothing_written(tmp_path / "out")


def test_corrupt_config(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    (model / "config.json").write_text("{not json")
    result = export(str(model), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "config.json")
    assert_nothing_written(tmp_path / "out")


def test_missing_weights(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    result = export(str(model), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no weights")
    assert_nothing_written(tmp_path / "out")


def test_corrupt_weights(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    result = export(str(model), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "cannot load the model")
    assert_nothing_written(tmp_path / "out")


def test_unsupported_architecture_names_the_supported_ones(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "bert"
    (model / "config.json").write_text(json.dumps(config))
    result = export(str(model), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "'bert'", "gpt2, llama, qwen2")
    assert_nothing_written(tmp_path / "out")


def test_missing_gguf(tmp_path: Path) -> None:
    result = export(str(tmp_path / "model.gguf"), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "model.gguf", "does not exist")


def test_not_a_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 certainly not a gguf file")
    result = export(str(fake), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "not a GGUF file")
    assert_nothing_written(tmp_path / "out")


def test_truncated_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    result = export(str(fake), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "cannot load the model")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("spans", "needle"),
    [
        ("0-2,1-4", "overlaps"),
        ("0-1,2-4", "layers 1-2 are covered by no span"),
        ("0-2,2-5", "runs past the last layer"),
        ("0-2", "layers 2-4 are covered by no span"),
        ("0-2,x", "not of the form START-END"),
        ("3-3", "empty"),
    ],
)
def test_bad_spans(tiny_llama: Path, tmp_path: Path, spans: str, needle: str) -> None:
    result = export(str(tiny_llama), "--out", str(tmp_path / "out"), "--spans", spans)
    assert_one_line_error(result, needle)
    assert_nothing_written(tmp_path / "out")


def test_too_many_shards(tiny_llama: Path, tmp_path: Path) -> None:
    result = export(str(tiny_llama), "--out", str(tmp_path / "out"), "--shards", "9")
    assert_one_line_error(result, "9 shards")
    assert_nothing_written(tmp_path / "out")


def test_output_directory_with_other_files(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    result = export(str(tiny_llama), "--out", str(out))
    assert_one_line_error(result, "holiday.jpg", "other files")
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_output_is_a_file(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    result = export(str(tiny_llama), "--out", str(out))
    assert_one_line_error(result, "not a directory")


def test_altered_shard_is_named_on_rerun_and_on_load(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export(str(tiny_llama), "--out", str(out), "--shards", "2").returncode == 0
    shard = out / "blocks_2-4.onnx"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    rerun = export(str(tiny_llama), "--out", str(out), "--shards", "2")
    assert_one_line_error(rerun, "blocks_2-4.onnx", "sha256")

    chat = run_cli(["chat", "hello", "--model", str(out), "--max-tokens", "2"])
    assert chat.returncode != 0
    assert "blocks_2-4.onnx" in chat.stderr and "sha256" in chat.stderr
    assert len(chat.stderr.strip().splitlines()) == 1, chat.stderr


def test_rerun_with_other_arguments_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export(str(tiny_llama), "--out", str(out), "--shards", "2").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = export(str(tiny_llama), "--out", str(out), "--shards", "2", "--dtype", "q8")
    assert_one_line_error(result, "other arguments")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_unreachable_hub_id(tmp_path: Path) -> None:
    result = run_cli(
        ["export", "--quiet", "someorg/some-model", "--out", str(tmp_path / "out")],
        env={"HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert_one_line_error(result, "someorg/some-model", "hub")
    assert_nothing_written(tmp_path / "out")


def test_hidden_float16_refused_for_hidden_states_beyond_half_of_float16s_range(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A model whose hidden states reach past 32752 (embeddings scaled up, as models with massive
    activations have) is refused ``--hidden-float16`` in one line, and nothing of the export is left; the
    same model exports without it."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = load_file(model / "model.safetensors")
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * 1e6
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    result = export(str(model), "--out", str(out), "--hidden-float16")
    assert_one_line_error(result, "--hidden-float16", "float16's range")
    assert_nothing_written(out)
    result = export(str(model), "--out", str(out))
    assert result.returncode == 0, result.stderr

"""Exports are atomic and resumable: an interrupted export leaves only complete files and no manifest,
and a re-run with the same arguments verifies and skips what is already there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter import onnx_export, pipeline, source
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import parse_spans
from python_peer.runner import verify_shard_file

SPANS = tuple(parse_spans("0-1,1-2,2-3,3-4"))


class Interrupt:
    """A progress callback that presses Ctrl-C when a given step starts."""

    def __init__(self, at: str) -> None:
        self.at = at
        self.steps: list[str] = []

    def __call__(self, step: str, done: int, total: int) -> None:
        self.steps.append(step)
        if self.at in step:
            raise KeyboardInterrupt


def temp_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp-*"))


def test_interrupted_export_resumes_and_skips_finished_shards(
    tiny_llama: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    request = pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=SPANS)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_export(request, Interrupt("blocks_2-3.onnx"))
    assert not (out / "manifest.json").exists()
    assert temp_files(out) == []
    assert {"embed.onnx", "blocks_0-1.onnx", "blocks_1-2.onnx"} <= {p.name for p in out.iterdir()}
    assert not (out / "blocks_2-3.onnx").exists()

    exported: list[str] = []
    real_blocks, real_embed = onnx_export.export_blocks, onnx_export.export_embed

    def counting_blocks(model, shape, start, end, path, **options):
        exported.append(f"{start}-{end}")
        return real_blocks(model, shape, start, end, path, **options)

    def counting_embed(model, shape, path, **options):
        exported.append("embed")
        return real_embed(model, shape, path, **options)

    monkeypatch.setattr(onnx_export, "export_blocks", counting_blocks)
    monkeypatch.setattr(onnx_export, "export_embed", counting_embed)
    manifest = pipeline.run_export(request)
    assert exported == ["2-3", "3-4"], "finished shards must be verified and skipped, not exported again"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "embed.onnx",
            "blocks_0-1.onnx",
            "blocks_1-2.onnx",
            "blocks_2-3.onnx",
            "blocks_3-4.onnx",
            "head.onnx",
            "tokenizer.json",
            "chat_template.jinja",
            "manifest.json",
        ]
    )
    for entry in manifest.shards:
        verify_shard_file(out, entry)

    def no_loading(_: source.ModelSource) -> source.LoadedModel:
        raise AssertionError("a finished export must be verified, not loaded and exported again")

    again = pipeline.run_export(request, loader=no_loading)
    assert again.raw == manifest.raw


def test_shard_altered_between_runs_is_exported_again(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    request = pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=SPANS)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_export(request, Interrupt("head.onnx"))
    (out / "blocks_0-1.onnx").write_bytes(b"garbage")
    manifest = pipeline.run_export(request)
    for entry in manifest.shards:
        verify_shard_file(out, entry)


def test_sigkill_mid_export_leaves_no_manifest_and_a_rerun_completes(
    tiny_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "python_peer.cli",
        "export",
        str(tiny_llama),
        "--out",
        str(out),
        "--quiet",
        "--spans",
        ",".join(str(s) for s in SPANS),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / pipeline.JOURNAL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and json.loads(journal.read_text() or "{}").get("done"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "manifest.json").exists():  # the export won the race: it must then be complete
        for entry in load_manifest(out).shards:
            verify_shard_file(out, entry)
    else:
        assert journal.exists(), "the kill came before any shard was finished; the test proved nothing"
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert temp_files(out) == []
    for entry in load_manifest(out).shards:
        verify_shard_file(out, entry)

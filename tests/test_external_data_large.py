"""A blocks shard over 2 GB: exported as ``blocks_0-9.onnx`` + ``blocks_0-9.onnx.data`` (never loose tensor
files), listed and hashed in the manifest, refused when its weights file is tampered with, and generating
the same greedy tokens as transformers in this process.

Slow (a few minutes, ~2.3 GB written twice): the model is built and exported in child processes, under
``nice``, so that the export's peak memory is measured on its own and freed before the chain loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.errors import ShardError
from python_peer.runner import sha256_file
from tests.support.big_models import SHAPES
from tests.support.procs import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PROMPT = [5, 17, 42, 99, 3, 250, 7]
NEW_TOKENS = 6
TWO_GIB = 2**31


def _run(args: list[str], logs: Path) -> tuple[int, str, int]:
    """Run ``args`` under ``nice`` in a child; return its exit status, its stderr and its peak RSS in bytes."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("w") as out, (logs / "stderr").open("w") as err:
        proc = subprocess.Popen(
            ["nice", "-n", "10", *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        # wait4 gives this child's own resource usage (pytest-timeout bounds the wait).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, (logs / "stderr").read_text(), usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def large_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    base = tmp_path_factory.mktemp("large")
    model_dir, out = base / "source", base / "export"
    status, err, _ = _run(
        [sys.executable, "-m", "tests.support.big_models", "build", str(model_dir), "large"], base / "build"
    )
    assert status == 0, err
    export = ["export", str(model_dir), "--out", str(out), "--shards", "1", "--quiet"]
    status, err, peak = _run([sys.executable, "-m", "python_peer.cli", *export], base / "export-logs")
    assert status == 0, err
    return model_dir, out, peak


def test_the_large_blocks_shard_is_one_onnx_and_one_data_file(large_export: tuple[Path, Path, int]) -> None:
    _, out, peak = large_export
    manifest = load_manifest(out)
    (blocks,) = manifest.blocks
    assert [f.file for f in blocks.files] == ["blocks_0-9.onnx", "blocks_0-9.onnx.data"]
    data = blocks.files[1]
    assert data.bytes > TWO_GIB and data.bytes >= 4 * SHAPES["large"].layers * SHAPES["large"].matrix_params()
    assert blocks.bytes < 16 * 2**20  # the graph alone
    for item in blocks.files:
        assert (out / item.file).stat().st_size == item.bytes
    assert sha256_file(out / data.file) == data.sha256
    # The small shards stay single files; no loose tensor file or staging directory is left.
    assert all(len(s.files) == 1 for s in (manifest.embed, manifest.head))
    listed = {f.file for s in manifest.shards for f in s.files}
    assert {p.name for p in out.iterdir()} == listed | {
        "manifest.json",
        "tokenizer.json",
        "chat_template.jinja",
    }
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["shards"][1]["files"][1] == {"file": data.file, "sha256": data.sha256, "bytes": data.bytes}
    print(f"\nexport peak RSS {peak / 2**30:.2f} GiB for a {data.bytes / 2**30:.2f} GiB blocks shard")


def test_a_tampered_large_weights_file_is_refused(large_export: tuple[Path, Path, int]) -> None:
    """Appended bytes, then one changed byte in the middle: both refused; the file is restored after."""
    _, out, _ = large_export
    path = out / "blocks_0-9.onnx.data"
    size = path.stat().st_size
    try:
        with path.open("ab") as f:
            f.write(b"\0")
        with pytest.raises(
            ShardError, match=r"weights file blocks_0-9\.onnx\.data is \d+ bytes, the manifest says"
        ):
            LocalChain(out, threads=1)
    finally:
        os.truncate(path, size)
    with path.open("r+b") as f:
        f.seek(size // 2)
        original = f.read(1)
        f.seek(size // 2)
        f.write(bytes([original[0] ^ 0x01]))
    try:
        with pytest.raises(ShardError, match=r"weights file blocks_0-9\.onnx\.data has sha256 .* altered"):
            LocalChain(out, threads=1)
    finally:
        with path.open("r+b") as f:
            f.seek(size // 2)
            f.write(original)


def test_generation_through_the_large_shard_equals_transformers(large_export: tuple[Path, Path, int]) -> None:
    model_dir, out, _ = large_export
    chain = LocalChain(out, threads=2)
    session = chain.open(1)
    ids = np.array([PROMPT], dtype=np.int64)
    logits = chain.step(session, ids, np.ones_like(ids))[:, -1]
    generated: list[int] = []
    onnx_logits = []
    for _ in range(NEW_TOKENS):
        onnx_logits.append(logits[0])
        token = int(np.argmax(logits[0]))
        generated.append(token)
        step = np.array([[token]], dtype=np.int64)
        logits = chain.step(session, step, np.ones_like(step))[:, -1]
    del chain

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        full = torch.tensor([PROMPT + generated[:-1]])
        reference = model(full).logits[0, len(PROMPT) - 1 :].numpy()
    expected = [int(t) for t in reference.argmax(-1)]
    assert generated == expected
    np.testing.assert_allclose(np.stack(onnx_logits), reference, atol=2e-3, rtol=1e-3)

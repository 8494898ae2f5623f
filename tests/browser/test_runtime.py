"""The browser runtime (``web/src/runtime/``) in Chromium against Python's ``BlocksRunner``.

The tiny Llama export is served on the test server's origin (under ``/model/``, with COOP/COEP like the
rest). In the page, ``BlocksRunner.load`` downloads the 1-3 blocks shard, checks its sha256 and runs a
5-token prefill then 3 decode steps of one session on onnxruntime-web's WASM backend; every step's
output matches Python's runner on the same hidden states (generated here, sent as float32 bytes). A
tampered copy of the shard is refused with the sha256 error before onnxruntime-web is even loaded, and
wrong inputs are refused with clear errors. WebGPU (SwiftShader) runs the same steps when an adapter
exists.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page

from python_peer.core.manifest import Manifest, ShardEntry, load_manifest
from python_peer.runner import BlocksRunner
from tests.support.browser import Harness, script
from tests.support.static_server import HARNESS_PATH, MOUNTS, WebServer

pytestmark = pytest.mark.browser

MODEL_PREFIX = "/model/"
TAMPERED_PREFIX = "/tampered-model/"
ORT_DIST_PREFIX = "/web/node_modules/onnxruntime-web/"
SPAN = (1, 3)
PREFILL = 5
DECODE_STEPS = 3
SESSION = "s1"
TIMED_STEPS = 20  # extra decode steps timed (median) in the page and natively; not compared
WASM_TOLERANCE = 1e-4
WEBGPU_TOLERANCE = 1e-3

# Runs the prefill then the decode steps of one session in the page; returns each step's output as
# base64 float32 bytes and its time in milliseconds, then times `timedSteps` more decode steps.
RUN_STEPS_JS = script("runtime/run_steps")

# Loads a shard through the public API and reports the error it throws.
LOAD_ERROR_JS = script("runtime/load_error")

# One bad call per case on an open session; each must throw ShardInputError (or SessionError).
BAD_INPUTS_JS = script("runtime/bad_inputs")


@dataclass(frozen=True)
class Step:
    hidden: np.ndarray  # [1, seq, hidden] float32
    mask: np.ndarray  # [1, seq] int64
    positions: np.ndarray  # [1, seq] int64

    def to_page(self) -> dict[str, Any]:
        return {
            "hidden": base64.b64encode(self.hidden.tobytes()).decode("ascii"),
            "dims": list(self.hidden.shape),
            "mask": self.mask.ravel().tolist(),
            "positions": self.positions.ravel().tolist(),
        }


@dataclass(frozen=True)
class Reference:
    steps: list[Step]
    outputs: list[np.ndarray]
    ms: list[float]
    decode_median_ms: float


@pytest.fixture(scope="module")
def served_model(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Serve the export under /model/ and a copy with one altered byte in the 1-3 shard under /tampered-model/."""
    shard = span_entry(load_manifest(tiny_llama_export))
    tampered = tmp_path_factory.mktemp("tampered-model")
    shutil.copy2(tiny_llama_export / "manifest.json", tampered / "manifest.json")
    data = bytearray((tiny_llama_export / shard.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / shard.file).write_bytes(bytes(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, MODEL_PREFIX, tiny_llama_export)
        patch.setitem(MOUNTS, TAMPERED_PREFIX, tampered)
        yield tiny_llama_export


def span_entry(manifest: Manifest) -> ShardEntry:
    return next(s for s in manifest.blocks if (s.start, s.end) == SPAN)


@pytest.fixture(scope="module")
def reference(served_model: Path) -> Reference:
    """A prefill and decode steps of deterministic hidden states, run by Python's BlocksRunner (1 thread)."""
    manifest = load_manifest(served_model)
    hidden_size = int(manifest.config["hidden_size"])
    rng = np.random.default_rng(20261122)
    steps: list[Step] = []
    for start, seq in [(0, PREFILL)] + [(PREFILL + i, 1) for i in range(DECODE_STEPS)]:
        hidden = rng.standard_normal((1, seq, hidden_size)).astype(np.float32)
        positions = np.arange(start, start + seq, dtype=np.int64)[None, :]
        steps.append(Step(hidden, np.ones((1, seq), dtype=np.int64), positions))
    runner = BlocksRunner(served_model, span_entry(manifest), manifest, threads=1)
    runner.open(SESSION, 1)
    outputs: list[np.ndarray] = []
    ms: list[float] = []
    for step in steps:
        t0 = time.perf_counter()
        outputs.append(runner.forward(SESSION, step.hidden, step.mask, step.positions))
        ms.append((time.perf_counter() - t0) * 1000)
    last, length, timed = steps[-1], PREFILL + DECODE_STEPS, []
    for i in range(TIMED_STEPS):
        t0 = time.perf_counter()
        runner.forward(SESSION, last.hidden, last.mask, np.array([[length + i]], dtype=np.int64))
        timed.append((time.perf_counter() - t0) * 1000)
    runner.close(SESSION)
    return Reference(steps, outputs, ms, float(np.median(timed)))


def run_steps(
    page: Page, ref: Reference, file: str, *, allow_webgpu: bool, timed_steps: int
) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        RUN_STEPS_JS,
        {
            "base": MODEL_PREFIX,
            "file": file,
            "allowWebGPU": allow_webgpu,
            "steps": [step.to_page() for step in ref.steps],
            "timedSteps": timed_steps,
        },
    )
    return result


def max_diffs(result: dict[str, Any], ref: Reference) -> list[float]:
    diffs: list[float] = []
    for out, expected in zip(result["outputs"], ref.outputs, strict=True):
        got = np.frombuffer(base64.b64decode(out["data"]), dtype=np.float32).reshape(out["dims"])
        assert got.shape == expected.shape
        diffs.append(float(np.abs(got - expected).max()))
    return diffs


def test_wasm_matches_python(harness: Harness, served_model: Path, reference: Reference) -> None:
    entry = span_entry(load_manifest(served_model))
    result = run_steps(harness.page, reference, entry.file, allow_webgpu=False, timed_steps=TIMED_STEPS)
    assert result["backend"] == "wasm"
    assert result["progress"] == entry.bytes
    assert result["length"] == PREFILL + DECODE_STEPS
    diffs = max_diffs(result, reference)
    browser_ms = [round(out["ms"], 2) for out in result["outputs"]]
    native_ms = [round(ms, 2) for ms in reference.ms]
    timing = (
        f"ms/step browser {browser_ms}, native {native_ms}; median decode step over {TIMED_STEPS}: "
        f"browser {result['decodeMedianMs']:.3f} ms, native {reference.decode_median_ms:.3f} ms"
    )
    print(f"\nspan 1-3, WASM 1 thread: max abs diffs {diffs}; {timing}")
    harness.note(f"runtime WASM span 1-3: max abs diff {max(diffs):.2e}; {timing}")
    assert max(diffs) < WASM_TOLERANCE
    assert harness.take_errors() == []


def test_tampered_shard_refused_before_onnxruntime(
    harness: Harness, web_server: WebServer, served_model: Path
) -> None:
    entry = span_entry(load_manifest(served_model))
    page = harness.context.new_page()  # a fresh document: onnxruntime-web not imported yet
    try:
        page.goto(web_server.url_for(HARNESS_PATH))
        seen = len(web_server.requests)
        result = page.evaluate(
            LOAD_ERROR_JS, {"base": TAMPERED_PREFIX, "file": entry.file, "manifestBase": MODEL_PREFIX}
        )
        requests = [path for path, _ in web_server.requests[seen:]]
    finally:
        page.close()
    assert result["ok"] is False
    assert result["isShardError"] is True
    assert result["name"] == "ShardError"
    assert entry.file in result["message"]
    assert "sha256" in result["message"]
    assert entry.sha256[:16] in result["message"]
    assert "altered or corrupted" in result["message"]
    assert TAMPERED_PREFIX + entry.file in requests
    assert not [path for path in requests if path.startswith(ORT_DIST_PREFIX)], requests
    harness.note(f"runtime: tampered {entry.file} refused: {result['message']}")


def test_bad_inputs_refused(harness: Harness, served_model: Path) -> None:
    entry = span_entry(load_manifest(served_model))
    results: dict[str, Any] = harness.page.evaluate(BAD_INPUTS_JS, {"base": MODEL_PREFIX, "file": entry.file})
    expected = {
        "wrong_hidden_size": ("ShardInputError", "hidden states of shape [1,2,32]"),
        "wrong_batch": ("ShardInputError", "(batch 1, hidden 64)"),
        "data_length": ("ShardInputError", "3 float32 values"),
        "not_float32": ("ShardInputError", "not a Float32Array"),
        "mask_length": ("ShardInputError", "must both be BigInt64Array of [1, 2]"),
        "mask_type": ("ShardInputError", "must both be BigInt64Array"),
        "nan_hidden": ("ShardInputError", "input hidden_states holds NaN or Inf"),
        "inf_hidden": ("ShardInputError", "input hidden_states holds NaN or Inf"),
        "unknown_session": ("SessionError", "session nope is not open on span 1-3"),
    }
    for case, (name, fragment) in expected.items():
        got = results[case]
        assert got["ok"] is False, case
        assert got["name"] == name, (case, got)
        assert fragment in got["message"], (case, got)
    assert results["after"] == {"ok": True, "dims": [1, 2, 64], "length": 2}
    assert harness.take_errors() == []


def test_webgpu_matches_python(
    webgpu_browser: Browser, web_server: WebServer, served_model: Path, reference: Reference
) -> None:
    entry = span_entry(load_manifest(served_model))
    context = webgpu_browser.new_context()
    try:
        page = context.new_page()
        page.goto(web_server.url_for(HARNESS_PATH))
        if not page.evaluate("async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter()))"):
            pytest.skip("no WebGPU adapter in this Chromium")
        result = run_steps(page, reference, entry.file, allow_webgpu=True, timed_steps=0)
    finally:
        context.close()
    assert result["backend"] == "webgpu"
    diffs = max_diffs(result, reference)
    webgpu_ms = [round(out["ms"], 1) for out in result["outputs"]]
    print(f"\nspan 1-3, WebGPU (SwiftShader): max abs diffs {diffs}; ms/step {webgpu_ms}")
    assert max(diffs) < WEBGPU_TOLERANCE

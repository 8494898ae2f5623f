"""Shards with external data in Chromium: the tiny Llama exported with the threshold forced to 0, so
each shard is ``<file>.onnx`` + ``<file>.onnx.data`` listed in the manifest's ``files``.

The page loads the 1-3 blocks shard through the public runtime (``BlocksRunner.load``): both files
fetched, each sha256-checked, the weights handed to onnxruntime-web as ``externalData``; a prefill and
decode steps equal Python's runner on the same export. A copy whose ``.onnx.data`` has one altered byte
is refused with the sha256 error naming that file, before onnxruntime-web is loaded; so is a manifest
that points a shard's weights outside the model's folder (no request leaves it); and a manifest that
does not list the weights file gets a load error, the unverified file never fetched. The chat page
shows a tampered head.onnx.data to the user; a contributing tab serves the shard between native peers
(greedy tokens equal the local chain's), caches each file and re-downloads only a corrupt cached one.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, expect

from exporter import pipeline, source
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import parse_spans
from python_peer.runner import BlocksRunner
from tests.support.browser import Harness, script
from tests.support.browser_node import local_tokens, mesh_run
from tests.support.loop_thread import LoopThread
from tests.support.node_page import start, visit, wait_serving
from tests.support.procs import Node, PeerProc
from tests.support.static_server import HARNESS_PATH, MOUNTS, ROOT, WebServer

pytestmark = pytest.mark.browser

MODEL_PREFIX = "/external-model/"
TAMPERED_PREFIX = "/external-tampered/"
ESCAPING_PREFIX = "/external-escaping/"
UNLISTED_PREFIX = "/external-unlisted/"
ORT_DIST_PREFIX = "/web/node_modules/onnxruntime-web/"
SHARD = "blocks_1-3.onnx"
WEIGHTS = SHARD + ".data"
TOLERANCE = 1e-4

RUN_STEPS_JS = script("runtime/run_steps")
LOAD_ERROR_JS = script("runtime/load_error")
CORRUPT_CACHED_JS = script("contribute/corrupt")


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The export with external data under MODEL_PREFIX, a copy with a tampered .onnx.data under
    TAMPERED_PREFIX, one whose manifest names ``../`` weights under ESCAPING_PREFIX, and one whose
    manifest does not list the weights file under UNLISTED_PREFIX."""
    root = tmp_path_factory.mktemp("external-browser")
    out = root / "model"
    pipeline.run_export(
        pipeline.ExportRequest(
            source.resolve(str(tiny_llama)),
            out,
            spans=tuple(parse_spans("0-1,1-3,3-4")),
            external_data_threshold=0,
        )
    )
    tampered = root / "tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / WEIGHTS).write_bytes(bytes(data))
    escaping = root / "escaping"
    shutil.copytree(out, escaping)
    raw = json.loads((escaping / "manifest.json").read_text())
    shard = next(s for s in raw["shards"] if s["file"] == SHARD)
    shard["files"][1]["file"] = "../model/" + WEIGHTS
    (escaping / "manifest.json").write_text(json.dumps(raw))
    unlisted = root / "unlisted"
    shutil.copytree(out, unlisted)
    raw = json.loads((unlisted / "manifest.json").read_text())
    shard = next(s for s in raw["shards"] if s["file"] == SHARD)
    shard["files"] = shard["files"][:1]
    (unlisted / "manifest.json").write_text(json.dumps(raw))
    # the chat page's own shard, tampered: one flipped byte in the weights (same size)
    head = root / "head-tampered"
    shutil.copytree(out, head)
    data = bytearray((head / "head.onnx.data").read_bytes())
    data[len(data) // 3] ^= 0x10
    (head / "head.onnx.data").write_bytes(bytes(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, UNLISTED_PREFIX, unlisted)
        patch.setitem(MOUNTS, MODEL_PREFIX, out)
        patch.setitem(MOUNTS, TAMPERED_PREFIX, tampered)
        patch.setitem(MOUNTS, ESCAPING_PREFIX, escaping)
        yield out


def _steps(hidden_size: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(20261204)
    steps: list[dict[str, Any]] = []
    for first, seq in [(0, 4), (4, 1), (5, 1)]:
        hidden = rng.standard_normal((1, seq, hidden_size)).astype(np.float32)
        steps.append(
            {
                "hidden": base64.b64encode(hidden.tobytes()).decode("ascii"),
                "dims": list(hidden.shape),
                "mask": [1] * seq,
                "positions": list(range(first, first + seq)),
                "array": hidden,
            }
        )
    return steps


def test_a_shard_with_external_data_runs_as_python_does(harness: Harness, served: Path) -> None:
    manifest = load_manifest(served)
    entry = next(s for s in manifest.blocks if s.file == SHARD)
    assert [f.file for f in entry.files] == [SHARD, WEIGHTS]
    steps = _steps(int(manifest.config["hidden_size"]))
    runner = BlocksRunner(served, entry, manifest, threads=1)
    runner.open("s1", 1)
    expected = []
    for step in steps:
        mask = np.ones((1, len(step["mask"])), dtype=np.int64)
        positions = np.array([step["positions"]], dtype=np.int64)
        expected.append(runner.forward("s1", step["array"], mask, positions))
    page_steps = [{k: v for k, v in step.items() if k != "array"} for step in steps]
    result = harness.page.evaluate(
        RUN_STEPS_JS,
        {"base": MODEL_PREFIX, "file": SHARD, "allowWebGPU": False, "steps": page_steps, "timedSteps": 0},
    )
    assert result["backend"] == "wasm"
    assert result["progress"] == entry.total_bytes  # both files counted
    diffs = []
    for out, ref in zip(result["outputs"], expected, strict=True):
        got = np.frombuffer(base64.b64decode(out["data"]), dtype=np.float32).reshape(out["dims"])
        diffs.append(float(np.abs(got - ref).max()))
    harness.note(f"external data in WASM: {SHARD} + {WEIGHTS}, max abs diff {max(diffs):.2e}")
    assert max(diffs) < TOLERANCE, diffs
    assert harness.take_errors() == []


def _load_error(harness: Harness, web_server: WebServer, base: str) -> tuple[dict[str, Any], list[str]]:
    page = harness.context.new_page()  # a fresh document: onnxruntime-web not imported yet
    try:
        page.goto(web_server.url_for(HARNESS_PATH))
        seen = len(web_server.requests)
        result: dict[str, Any] = page.evaluate(
            LOAD_ERROR_JS, {"base": base, "file": SHARD, "manifestBase": base}
        )
        requests = [path for path, _ in web_server.requests[seen:]]
    finally:
        page.close()
    return result, requests


def test_a_tampered_weights_file_is_refused_in_chromium(
    harness: Harness, web_server: WebServer, served: Path
) -> None:
    listed = next(s for s in load_manifest(served).blocks if s.file == SHARD).files[1]
    result, requests = _load_error(harness, web_server, TAMPERED_PREFIX)
    assert result["ok"] is False and result["isShardError"] is True, result
    message = result["message"]
    assert WEIGHTS in message and "sha256" in message and "altered or corrupted" in message, message
    assert listed.sha256[:16] in message
    assert TAMPERED_PREFIX + WEIGHTS in requests
    assert not [path for path in requests if path.startswith(ORT_DIST_PREFIX)], requests
    harness.note(f"external data: tampered {WEIGHTS} refused in Chromium: {message}")


def test_weights_outside_the_model_folder_are_refused_in_chromium(
    harness: Harness, web_server: WebServer, served: Path
) -> None:
    result, requests = _load_error(harness, web_server, ESCAPING_PREFIX)
    assert result["ok"] is False and result["isShardError"] is True, result
    assert "must be a plain file name inside the model directory" in result["message"], result
    assert [path for path in requests if path.endswith(".data")] == [], requests
    assert not [path for path in requests if path.startswith(ORT_DIST_PREFIX)], requests


def test_weights_the_manifest_does_not_list_are_never_read(
    harness: Harness, web_server: WebServer, served: Path
) -> None:
    """The manifest lists the .onnx alone, yet the .onnx reads its weights from the .onnx.data: the page
    neither fetches that unverified file nor lets onnxruntime-web find it; the load fails naming the shard."""
    result, requests = _load_error(harness, web_server, UNLISTED_PREFIX)
    assert result["ok"] is False and result["isShardError"] is True, result
    assert f"cannot load shard {SHARD}" in result["message"], result
    assert [path for path in requests if path.endswith(".data")] == [], requests
    harness.note(f"external data: unlisted {WEIGHTS} never read: {result['message'][:200]}")


def test_the_chat_page_shows_a_tampered_weights_file_to_the_user(
    browser: Browser, served: Path, tmp_path: Path
) -> None:
    """A signaling node serves a model whose head.onnx.data has one flipped byte (same size, so the node
    serves it): the chat page, which runs the head on the user's machine, says which file was altered."""
    tampered = served.parent / "head-tampered"
    listed = load_manifest(served).head.files[1]
    node = Node("external-chat", tmp_path, model_dirs=[tampered])
    context = browser.new_context()
    try:
        node.wait()
        page = context.new_page()
        page.goto(node.http_url + "/chat")
        status = page.get_by_test_id("status")
        expect(status).to_contain_text("altered or corrupted", timeout=120_000)
        text = status.text_content() or ""
        assert "head.onnx.data" in text and "sha256" in text and "altered or corrupted" in text, text
        assert listed.sha256[:16] in text, text
        expect(page.get_by_test_id("send")).to_be_disabled()
        page.screenshot(path=ROOT / "tests" / "artifacts" / "browser" / "external_data_tampered.png")
    finally:
        context.close()
        node.stop()


def test_a_contributing_tab_serves_external_data_and_caches_each_file(
    browser: Browser, served: Path, tmp_path: Path
) -> None:
    """The contribute page serves blocks 1-3 of the external-data export between two native peers (which
    load theirs with external data too): both files fetched and verified, greedy tokens through the tab
    equal the local chain's; after a reload both come from IndexedDB; a corrupt cached .onnx.data is
    dropped and only that file downloaded again."""
    manifest = load_manifest(served)
    shard = next(s for s in manifest.blocks if s.file == SHARD)
    paths = {f.file: f"/models/{manifest.name}/{f.file}" for f in shard.files}
    node = Node("external-node", tmp_path, model_dirs=[served])
    natives: list[PeerProc] = []
    try:
        node.wait()
        natives = [PeerProc(f"x{span}", tmp_path, served, [node.url], span=span) for span in ("0-1", "3-4")]
        for peer in natives:
            peer.wait()
        with visit(browser, node.http_url + "/") as seen:
            start(seen, span="1-3")
            browser_id = wait_serving(seen, manifest.name, "1-3")
            assert set(paths.values()) <= set(seen.paths())
            tokens, route, _ = LoopThread(mesh_run(node, served)).result(timeout=180)
            assert tokens == local_tokens(served)
            assert (browser_id, 1, 3) in route

            seen.page.reload()
            seen.clear()
            start(seen, span="1-3")
            wait_serving(seen, manifest.name, "1-3")
            expect(seen.testid("progress-text")).to_contain_text("cache, sha256 checked")
            assert not set(paths.values()) & set(seen.paths())

            seen.page.reload()
            assert seen.page.evaluate(CORRUPT_CACHED_JS, {"sha": shard.files[1].sha256}) is True
            seen.clear()
            start(seen, span="1-3")
            wait_serving(seen, manifest.name, "1-3")
            expect(seen.testid("progress-text")).to_contain_text("downloaded, sha256 checked")
            assert paths[WEIGHTS] in seen.paths() and paths[SHARD] not in seen.paths()
    finally:
        for peer in natives:
            peer.stop()
        node.stop()

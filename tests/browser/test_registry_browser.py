"""The contribute page verifies the signed manifest of a signaling node's ``--model-dir`` before it uses the
model (issue 14, point 1; docs/manifest.md, "The browser checks the signed manifest"), in Chromium.

A node started with a published model and ``--trust-publisher`` (so its ``/v1/config`` names the
publisher): the page checks the publisher's signature, the pinned ``manifest.json`` and each shard, and
serves. Then the node lies: its files are altered on disk after it started (its own check passed), and
the page refuses an altered ``manifest.json`` and an altered shard, each with an error that names it,
and serves nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from python_peer.core.manifest import load_manifest
from tests.support.node_page import START_TIMEOUT_MS, start, visit, wait_serving
from tests.support.procs import Node, publish_copy

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NO_UNSIGNED = {"AI4ALL_ALLOW_UNSIGNED": ""}


@pytest.fixture(scope="module")
def published(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return publish_copy(tiny_llama_export, tmp_path_factory.mktemp("registry-browser"))


def _node(published: tuple[Path, str], tmp_path: Path, name: str) -> tuple[Node, Path]:
    model = tmp_path / f"{name}-model"
    shutil.copytree(published[0], model)
    node = Node(
        name, tmp_path, model_dirs=[model], env=NO_UNSIGNED, extra_args=("--trust-publisher", published[1])
    )
    node.wait()
    return node, model


def test_a_signed_model_of_a_trusted_publisher_is_served(
    browser: Browser, published: tuple[Path, str], tmp_path: Path
) -> None:
    node, model = _node(published, tmp_path, "signed")
    try:
        config = httpx.get(f"{node.http_url}/v1/config", timeout=5, trust_env=False).json()
        assert config["publishers"] == {"trusted": [published[1]], "allow_unsigned": False}
        name = load_manifest(model).name
        with visit(browser, node.http_url + "/") as seen:
            start(seen, span="1-3")
            wait_serving(seen, name, "1-3")
            assert f"/models/{name}/manifest.sig.json" in seen.paths()
    finally:
        node.stop()


def test_a_node_serving_an_altered_manifest_or_shard_is_refused(
    browser: Browser, published: tuple[Path, str], tmp_path: Path
) -> None:
    node, model = _node(published, tmp_path, "liar")
    try:
        manifest = load_manifest(model)
        text = (model / "manifest.json").read_text()
        data = json.loads(text)
        # the lie: a manifest of the same size whose hash of shard 1-3 is another (one hex digit changed)
        shard = next(s for s in manifest.blocks if (s.start, s.end) == (1, 3))
        flipped = shard.sha256[:-1] + ("0" if shard.sha256[-1] != "0" else "1")
        assert data and shard.sha256 in text
        (model / "manifest.json").write_text(text.replace(shard.sha256, flipped))
        with visit(browser, node.http_url + "/") as seen:
            start(seen, span="1-3")
            expect(seen.testid("error")).to_contain_text(
                "manifest.json is not the manifest publisher", timeout=START_TIMEOUT_MS
            )
            expect(seen.testid("error")).to_contain_text("it was altered")
            expect(seen.testid("serving")).to_have_text("Not serving.")
            assert f"/models/{manifest.name}/{shard.file}" not in seen.paths()

        # the manifest put back, the shard itself altered (same size): refused by its signed hash
        (model / "manifest.json").write_text(text)
        with (model / shard.file).open("r+b") as file:
            file.seek(shard.bytes // 2)
            byte = file.read(1)
            file.seek(shard.bytes // 2)
            file.write(bytes([byte[0] ^ 0xFF]))
        with visit(browser, node.http_url + "/") as seen:
            start(seen, span="1-3")
            expect(seen.testid("error")).to_contain_text("sha256", timeout=START_TIMEOUT_MS)
            expect(seen.testid("error")).to_contain_text("altered or corrupted")
            expect(seen.testid("serving")).to_have_text("Not serving.")
        assert all(not entry["serves"] for entry in node.directory()["entries"]), node.directory()
    finally:
        node.stop()

"""A contribute-page tab fetches its shard from peers over data channels, serves it, and seeds it on
(issue 14, point 3, browser side; docs/chunks.md, "In the browser"), in Chromium.

A published model (``ai4all publish``) on a signaling node that trusts its publisher, and native peers
serving 0-1 and 3-4 that seed the whole directory. A first tab serves 1-3: it takes the signed manifest
and the shard bytes from the native peers in verified chunks over WebRTC data channels, with NO HTTP
request for a shard file (Chromium's network log, through Playwright's request events), and a Python
mesh client's greedy tokens through it equal the local chain's. Then the native peers stop, and a
second tab (a fresh browser context: empty IndexedDB) serving 1-3 gets the manifest and every shard
byte from the first tab, again with no HTTP request for a shard file. A tab whose only seeder lies
about every chunk (a real serving peer, ``tests/support/liar_seeder.py``) bans it at its first bad
chunk, stores nothing, serves nothing and says which chunk and why; it does not take the file over HTTP
instead.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, expect

from python_peer.core.manifest import load_manifest
from tests.support.browser_node import local_tokens, mesh_run
from tests.support.liar_seeder import LiarProc
from tests.support.loop_thread import LoopThread
from tests.support.node_page import START_TIMEOUT_MS, Visit, start, visit, wait_serving
from tests.support.procs import Node, PeerProc, publish_copy

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

NO_UNSIGNED = {"AI4ALL_ALLOW_UNSIGNED": ""}


@pytest.fixture(scope="module")
def published(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the tiny export published with ``ai4all publish``: (dir, publisher id)."""
    return publish_copy(tiny_llama_export, tmp_path_factory.mktemp("browser-chunks"))


def _console(seen: Visit) -> list[str]:
    lines: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        lines.append(message.text)

    seen.page.on("console", on_console)
    return lines


def _shard_requests(seen: Visit, files: set[str]) -> list[str]:
    """The HTTP requests of this tab for a model file other than the manifests."""
    return [p for p in seen.paths() if any(p.endswith("/" + f) for f in files)]


def test_a_tab_fetches_its_shard_from_peers_serves_it_and_seeds_it_to_a_second_tab(
    browser: Browser, published: tuple[Path, str], tmp_path: Path
) -> None:
    model, publisher = published
    manifest = load_manifest(model)
    name = manifest.name
    span_files = {
        f
        for s in manifest.blocks
        if s.start >= 1 and s.end <= 3
        for f in {s.file, *(x.file for x in s.files)}
    }
    every_file = {f for s in manifest.shards for f in {s.file, *(x.file for x in s.files)}}
    assert span_files, "the 1-3 span has files"
    trust = ["--trust-publisher", publisher]
    node = Node("signal", tmp_path, model_dirs=[model], env=NO_UNSIGNED, extra_args=tuple(trust))
    natives: list[PeerProc] = []
    try:
        node.wait()
        natives = [
            PeerProc(f"p{span}", tmp_path, model, [node.url], span=span, extra=trust)
            for span in ("0-1", "3-4")
        ]
        for peer in natives:
            peer.wait()
        native_ids = {peer.peer_id[:8] for peer in natives}

        with visit(browser, node.http_url + "/") as first:
            first_log = _console(first)
            start(first, span="1-3")
            first_id = wait_serving(first, name, "1-3")
            assert _shard_requests(first, every_file) == [], "no shard byte over HTTP"
            text = "\n".join(first_log)
            came = re.search(r"the signed manifest of \S+ \(version \d+\) came from peer ([0-9a-f]{8})", text)
            assert came is not None and came.group(1) in native_ids, text
            for file in span_files:
                assert re.search(rf"fetched {re.escape(file)} from [12] peers in verified chunks", text), text
            # it serves its span: a native client's greedy tokens through it are the local chain's
            tokens, route, _ = LoopThread(mesh_run(node, model)).result(timeout=240)
            assert tokens == local_tokens(model)
            assert any(peer == first_id and (start_, end) == (1, 3) for peer, start_, end in route), route

            for peer in natives:
                peer.stop()
            natives = []

            with visit(browser, node.http_url + "/") as second:
                second_log = _console(second)
                start(second, span="1-3")
                second_id = wait_serving(second, name, "1-3")
                assert second_id != first_id
                assert _shard_requests(second, every_file) == [], "no shard byte over HTTP"
                text = "\n".join(second_log)
                assert f"came from peer {first_id[:8]}" in text, text
                for file in span_files:
                    assert re.search(rf"fetched {re.escape(file)} from 1 peers in verified chunks", text), (
                        text
                    )
                assert "over HTTP" not in text, text
    finally:
        for peer in natives:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


# The shard cache's metadata records (web/src/storage/db.js), read with the page's own IndexedDB.
CACHED_SHARDS_JS = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open('ai4all');
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const db = open.result;
    if (!db.objectStoreNames.contains('shard_meta')) { db.close(); resolve([]); return; }
    const all = db.transaction('shard_meta', 'readonly').objectStore('shard_meta').getAll();
    all.onsuccess = () => { db.close(); resolve(all.result.map((info) => info.meta.file)); };
    all.onerror = () => reject(all.error);
  };
})"""


def test_a_tab_whose_only_seeder_lies_bans_it_stores_nothing_and_says_why(
    browser: Browser, published: tuple[Path, str], tmp_path: Path
) -> None:
    model, publisher = published
    name = load_manifest(model).name
    node = Node(
        "signal", tmp_path, model_dirs=[model], env=NO_UNSIGNED, extra_args=("--trust-publisher", publisher)
    )
    liar: LiarProc | None = None
    try:
        node.wait()
        liar = LiarProc("liar", tmp_path, model, [node.url], span="0-1", lie="corrupt")
        liar.wait()
        with visit(browser, node.http_url + "/") as seen:
            log = _console(seen)
            start(seen, span="1-3")
            error = seen.testid("error")
            expect(error).to_contain_text("no usable peer holds chunk", timeout=START_TIMEOUT_MS)
            expect(error).to_contain_text("banned: it sent a bad chunk")
            expect(error).to_contain_text("its sha256 is not the one the publisher signed")
            expect(seen.testid("serving")).to_have_text("Not serving.")
            text = "\n".join(log)
            assert f"peer {liar.peer_id[:8]} sent a bad chunk" in text, text
            every_file = {
                f for s in load_manifest(model).shards for f in {s.file, *(x.file for x in s.files)}
            }
            assert _shard_requests(seen, every_file) == [], "a seeded file is never taken over HTTP instead"
            assert seen.page.evaluate(CACHED_SHARDS_JS) == [], "nothing unverified is stored"
        assert name not in json.dumps(
            [e["serves"] for e in node.directory()["entries"] if e["peer_id"] != liar.peer_id]
        )
    finally:
        if liar is not None:
            with contextlib.suppress(AssertionError):
                liar.stop()
        with contextlib.suppress(AssertionError):
            node.stop()

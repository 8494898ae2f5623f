"""Spot checks between honest native and browser peers: WASM's answers never count as lies.

Blocks 1-3 are served by a browser tab (onnxruntime-web, WASM) and two native peers; a native client
chats sessions with the default policy, so every session while the peers are new is replayed to another
peer of the span and compared within the fp32 tolerance. The browser's answers are signed too
(``web/src/node/span_server.js``); none is found out of tolerance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from python_peer.generate import SamplingParams, agenerate
from python_peer.node import NodeConfig, open_client
from python_peer.spot_check import CheckStats
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser_node import FAST, PROMPT, browser_peer, local_tokens, wait_listed
from tests.support.loop_thread import LoopThread
from tests.support.procs import Node, PeerProc
from tests.support.static_server import WebServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SESSIONS = 10  # the browser is the routed, checking or settling peer in almost all of them


@pytest.fixture
def served_model(served_model: Path, served_core: None) -> Path:
    """The tiny model with the core beside it: a browser node runs the ledger rules under Pyodide."""
    return served_model


@contextlib.contextmanager
def natives(tmp: Path, model: Path) -> Iterator[tuple[Node, list[PeerProc]]]:
    node = Node("node-a", tmp)
    peers: list[PeerProc] = []
    try:
        node.wait()
        spans = [("p0-1", "0-1"), ("a1-3", "1-3"), ("b1-3", "1-3"), ("p3-4", "3-4")]
        peers = [PeerProc(name, tmp, model, [node.url], span=span) for name, span in spans]
        for peer in peers:
            peer.wait()
        yield node, peers
    finally:
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


async def checked_chats(node: Node, model: Path) -> tuple[list[tuple[int, ...]], CheckStats, dict[str, int]]:
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        replies = []
        for _ in range(SESSIONS):
            result = await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=6))
            replies.append(result.token_ids)
        assert client.spot_checks is not None
        return replies, client.spot_checks.stats, dict(client.spot_checks.passes)
    finally:
        await client.aclose()
        await mesh_node.aclose()


def test_native_and_browser_peers_agree_under_spot_checks(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    expected = local_tokens(served_model)[:6]
    with (
        natives(tmp_path, served_model) as (node, _),
        browser_peer(browser, web_server, node.url, served_model) as (_, browser_id),
    ):
        wait_listed(node, browser_id)
        replies, stats, passes = LoopThread(checked_chats(node, served_model)).result(timeout=240)
    assert all(reply == expected for reply in replies)
    assert stats.caught == 0 and stats.inconclusive == 0, stats
    assert stats.passed >= 5, stats
    print(f"largest native/browser relative difference in passed checks: {stats.largest_agreeing_diff:.2e}")
    assert stats.largest_agreeing_diff < 1e-2
    assert passes.get(browser_id, 0) >= 1, f"the browser took part in no check: {passes}"

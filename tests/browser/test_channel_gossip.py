"""Ledger gossip over the browser's data channels, with gossip through signaling slowed to once an hour.

- A native client generates through a browser tab serving 1-3 (``BrowserNode``): a third party's entry
  only the client held reaches the browser's ledger, and the browser's own entries reach the client,
  through GOSSIP requests ``{kind: "gossip", msg}`` on the session link, which the tab's ``SpanServer``
  answers with ``{replies: [...]}``.
- The browser's ``MeshClient`` (with its ``BrowserLedger``) generates through native peers: a third
  party's entry only the browser held reaches every peer's SQLite ledger, and the peers' entries reach
  the browser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from python_peer.core.economics import network_rules
from python_peer.core.entries import Entry
from python_peer.generate import SamplingParams, agenerate
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from python_peer.node import NodeConfig, open_client
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser import Harness
from tests.support.browser_client import run_generation, setup_client
from tests.support.browser_node import FAST, PROMPT, browser_peer, wait_listed
from tests.support.loop_thread import LoopThread
from tests.support.procs import Node, PeerProc
from tests.support.static_server import WebServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

HOUR_MS = 3_600_000


def third_party_log(identity: Identity) -> list[dict[str, Any]]:
    """The log (the starter grant) of an identity that takes no part in the test."""
    service = LedgerService.open(None, identity)
    try:
        return service.own_entries()
    finally:
        service.close()


@contextlib.contextmanager
def slow_mesh(tmp: Path, model: Path, spans: list[str]) -> Iterator[tuple[Node, list[PeerProc]]]:
    """A signaling node and native peers that gossip through signaling once an hour."""
    node = Node("node-a", tmp)
    peers: list[PeerProc] = []
    try:
        node.wait()
        peers = [
            PeerProc(f"p{span}", tmp, model, [node.url], span=span, extra=["--gossip-interval", "3600"])
            for span in spans
        ]
        for peer in peers:
            peer.wait()
        yield node, peers
    finally:
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


async def generate_holding(node: Node, model: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A native client holding ``entries`` generates; what its ledger holds after its gossip exchanges."""
    config = NodeConfig(signal_urls=(node.url,), gossip_interval_s=3600.0)
    mesh_node, client = await open_client(config, model, FAST)
    try:
        assert client.ledger is not None
        client.ledger.store.insert_many([Entry.from_dict(e) for e in entries])
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=4))
        await client.gossip_settled()
        heads = client.ledger.store.heads()
        return {"gossiped": sorted(client.gossiped), "heads": {a: seq for a, (seq, _) in heads.items()}}
    finally:
        await client.aclose()
        await mesh_node.aclose()


def test_a_native_client_and_a_browser_span_server_gossip_over_the_link(
    browser: Browser,
    web_server: WebServer,
    served_model: Path,
    served_core: None,
    tmp_path: Path,
) -> None:
    stranger = Identity.generate()
    with (
        slow_mesh(tmp_path, served_model, ["0-1", "3-4"]) as (node, peers),
        browser_peer(browser, web_server, node.url, served_model, options={"gossipIntervalMs": HOUR_MS}) as (
            page,
            browser_id,
        ),
    ):
        wait_listed(node, browser_id)
        held = LoopThread(generate_holding(node, served_model, third_party_log(stranger))).result(180)
        browser_heads = page.evaluate("() => window.node.node.ledger.heads()")
    assert held["gossiped"] == sorted([browser_id, *(p.peer_id for p in peers)])
    # The stranger's grant went from the client to the browser over the data channel, and the browser's
    # grant and the receipt it recorded came back.
    assert browser_heads.get(stranger.peer_id, [0])[0] == 1, browser_heads
    assert held["heads"].get(browser_id, 0) >= 2, held


def test_the_browser_client_gossips_with_native_peers_over_the_links(
    harness: Harness,
    served_model: Path,
    served_core: None,
    tmp_path: Path,
) -> None:
    stranger = Identity.generate()
    with slow_mesh(tmp_path, served_model, ["0-1", "1-3", "3-4"]) as (node, peers):
        try:
            browser_id = setup_client(harness.page, "client-channel-gossip", node.url)
            stored = harness.page.evaluate(
                "(entries) => window.t.ledger.acceptEntries(entries)", third_party_log(stranger)
            )
            assert stored == 1
            result = run_generation(harness.page)
            assert result["failures"] == [], result["failures"]
            harness.page.evaluate("() => window.t.client.gossipSettled()")
            heads = harness.page.evaluate("() => window.t.ledger.heads()")
        finally:
            harness.page.evaluate("() => window.t?.client?.close()")
        for peer in peers:
            assert peer.stop() == 0, peer.tail()
    for peer in peers:  # each native peer learned the stranger's grant, which only the browser held
        with LedgerStore.open(peer.data_dir / LEDGER_FILE, rules=network_rules(), create=False) as store:
            head = store.head(stranger.peer_id)
            assert head is not None and head.seq == 1, peer.tail()
            assert store.head(browser_id) is not None
        # ... and the browser learned the peer's grant and the receipt it recorded.
        assert heads.get(peer.peer_id, [0])[0] >= 2, (peer.name, heads)
    assert harness.take_errors() == []

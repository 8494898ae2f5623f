"""Failover before the first token in Chromium: a chat started right after a routed peer dies succeeds.

A signaling node and native ``ai4all peer`` processes serving 0-1, 1-3 (twice) and 3-4 of the tiny Llama;
the browser's mesh client (``web/src/client/``) on the harness page. The 1-3 peer the client would route
through is SIGKILLed, its announcement still listed (it said no ``bye``), and a chat starts at once: the
client's offer to it is refused by signaling (``unknown_peer``) or never answered, the dead peer is
banned, the span goes through the spare, and the reply is the local chain's greedy reply, token for token.

A browser peer that leaves says ``bye`` signed for its last announcement, and the sibling node withdraws
it too (a node takes only a ``gone`` its peer signed).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from python_peer.chain import LocalChain
from python_peer.generate import SamplingParams, generate
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser import Harness, script
from tests.support.browser_client import CLIENT_CONFIG, MAX_TOKENS, MESSAGES, run_generation, setup_client
from tests.support.procs import Node, PeerProc
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def test_chat_right_after_a_listed_peer_is_killed_goes_through_the_spare(
    harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    chain = LocalChain(served_model)
    tokenizer = ModelTokenizer(served_model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat(MESSAGES))
    reference = generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS))
    node = Node("failover-node", tmp_path)
    peers: list[PeerProc] = []
    try:
        node.wait()
        peers = [
            PeerProc(f"f{i}-{span}", tmp_path, served_model, [node.url], span=span)
            for i, span in enumerate(["0-1", "1-3", "1-3", "3-4"])
        ]
        for peer in peers:
            peer.wait()
        setup_client(harness.page, "client-dead-peer", node.url)
        # The peer the client would route 1-3 through, as the directory lists it now.
        route = harness.page.evaluate(
            "async () => (await window.t.client.route(0, window.t.client.numLayers, 1)).map((c) => [c.peerId, c.start, c.end])"
        )
        victim_id = next(peer for peer, start, end in route if (start, end) == (1, 3))
        victim = next(p for p in peers if p.peer_id == victim_id)
        spare = next(p for p in peers if p.span == "1-3" and p is not victim)
        victim.kill()
        started = time.monotonic()
        result = run_generation(harness.page)  # at once: the dead peer is still listed
        took = time.monotonic() - started
        listed = [e["peer_id"] for e in node.directory()["entries"]]
    finally:
        harness.page.evaluate("() => window.t?.client?.close()")
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()
    assert result["tokens"] == list(reference.token_ids), result["failures"]
    assert result["text"] == reference.text
    assert victim_id in listed, "the dead peer's announcement lingers: that is the case under test"
    assert result["failovers"] == 1
    assert [peer for peer, _ in result["failures"]] == [victim_id]
    error = result["failures"][0][1]
    assert ("TransportError" in error and "not connected here nor known to a sibling" in error) or (
        "LinkTimeoutError" in error
    ), error
    assert [(p, a, b) for p, a, b in result["routes"][0] if (a, b) == (1, 3)] == [(spare.peer_id, 1, 3)]
    assert took < CLIENT_CONFIG["connectTimeoutMs"] / 1000 + 30, took
    assert harness.take_errors() == []


def test_js_bye_is_signed_and_withdraws_the_peer_on_a_sibling(harness: Harness, tmp_path: Path) -> None:
    """The browser's ``SignalClient.close()`` sends ``bye`` signed for its last announcement, so the
    sibling node (which only takes a ``gone`` the peer signed) withdraws it too, not at expiry."""
    first = Node("bye-a", tmp_path, accept=("bye-b",))
    second = Node("bye-b", tmp_path, siblings=(first,))
    try:
        first.wait(siblings=1)
        second.wait(siblings=1)
        assert harness.page.evaluate(script("signaling_js/setup"))
        js_id = str(harness.page.evaluate(script("signaling_js/start_client"), ["bye", [first.url], 0, 3]))

        def on_second() -> bool:
            return any(e["peer_id"] == js_id for e in second.directory()["entries"])

        wait_for(on_second, 10, what="the browser's announcement on the sibling", interval=0.1)
        harness.page.evaluate(script("signaling_js/close_client"), "bye")
        wait_for(lambda: not on_second(), 5, what="the browser's signed bye withdrawing it on the sibling")
        assert not any(e["peer_id"] == js_id for e in first.directory()["entries"])
    finally:
        first.stop()
        second.stop()
    assert harness.take_errors() == []

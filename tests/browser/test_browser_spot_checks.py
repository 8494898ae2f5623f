"""The browser's mesh client spot-checks (web/src/client/spot_check.js): it catches a lying native peer with its spot checks (web/src/client/spot_check.js).

Real ``ai4all peer`` processes serve the tiny Llama export; blocks 1-3 are served by three peers, one of
them started with the test-only hook ``AI4ALL_TEST_LIE=zeros`` (``python_peer/server.py``): it returns
zeros for every FORWARD and signs them like honest answers. The browser client (a ``MeshClient`` with
its ``BrowserLedger`` on the harness page) chats until its spot checks catch the liar, as the routed
peer or as a checking one. Then: the evidence entry is in the browser's own log and valid under
Pyodide (the liar's reputation there is ``suspect``), nothing was countersigned for the liar's session,
the liar is never routed again and the replies equal the local reference, and the evidence reaches an
honest native peer's SQLite ledger (pushed with the browser's next holds, and by gossip).

And no false positive: the browser client chats through honest native peers and a Chromium tab serving
1-3 on WASM, checking every session while the peers are new; no check fails.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from python_peer.server import TEST_LIE_ENV
from tests.support.browser import Harness
from tests.support.browser_client import run_generation, setup_client
from tests.support.browser_node import browser_peer, local_tokens, wait_listed
from tests.support.procs import Node, PeerProc, run_cli
from tests.support.static_server import WebServer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

SESSIONS = 12  # every new peer is checked every session: the liar is involved within a few


@contextlib.contextmanager
def lying_mesh(tmp: Path, model: Path, *, liar: bool = True) -> Iterator[tuple[Node, dict[str, PeerProc]]]:
    """A signaling node; native peers for 0-1 and 3-4, three for 1-3 of which ``liar`` lies (with
    ``liar``; else two honest ones)."""
    node = Node("signal", tmp)
    peers: dict[str, PeerProc] = {}
    try:
        node.wait()
        spans = [("p0-1", "0-1"), ("liar", "1-3"), ("h1-3a", "1-3"), ("h1-3b", "1-3"), ("p3-4", "3-4")]
        for name, span in spans if liar else [s for s in spans if s[0] != "liar"]:
            env = {TEST_LIE_ENV: "zeros"} if name == "liar" else None
            peers[name] = PeerProc(name, tmp, model, [node.url], span=span, env=env)
        for peer in peers.values():
            peer.wait()
        yield node, peers
    finally:
        for peer in peers.values():
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


def caught(harness: Harness) -> list[str]:
    return list(harness.page.evaluate("() => [...window.t.client.spotChecks.caught.keys()]"))


def own_entries(harness: Harness, kind: str) -> list[dict[str, Any]]:
    entries = harness.page.evaluate("() => window.t.ledger.log(window.t.identity.peerId, 500)")
    return [e for e in entries if e["body"]["kind"] == kind]


def append_evidence(harness: Harness, body: dict[str, Any]) -> str:
    """What ``BrowserLedger.appendEvidence`` makes of ``body``: ``stored`` or the error's code."""
    return str(
        harness.page.evaluate(
            """async (body) => {
              try { await window.t.ledger.appendEvidence(body); return 'stored'; } catch (e) { return e.code; }
            }""",
            body,
        )
    )


def test_the_browser_client_catches_a_lying_native_peer_and_proves_it(
    harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    expected = list(local_tokens(served_model))
    with lying_mesh(tmp_path, served_model) as (node, peers):
        liar = peers["liar"].peer_id
        honest = [peers["h1-3a"], peers["h1-3b"]]
        try:
            browser_id = setup_client(harness.page, "client-spot-checks", node.url)
            # Routing prefers one honest peer of 1-3, so the liar is involved when it is drawn as the
            # checking peer (one chance in two per checked session). The default policy stops checking
            # every session after 5 passes; keeping every peer "new" here makes the test's odds of not
            # meeting the liar in SESSIONS sessions 2^-SESSIONS instead of about 1%.
            harness.page.evaluate("() => { window.t.client.spotChecks.policy.warmup = 1000; }")
            sessions = 0
            while sessions < SESSIONS and liar not in caught(harness):
                run_generation(harness.page)
                sessions += 1
            assert liar in caught(harness), [p.tail() for p in peers.values()]
            stats = harness.page.evaluate("() => window.t.client.spotChecks.summary()")
            print(f"liar caught after {sessions} browser session(s); checks: {stats}")

            # The evidence is in the browser's own log, valid under Pyodide: the liar is a suspect there.
            evidence = own_entries(harness, "evidence")
            assert len(evidence) == 1, evidence
            body = evidence[0]["body"]
            assert body["liar"]["body"]["server"] == liar
            assert {h["body"]["server"] for h in body["honest"]} <= {p.peer_id for p in honest}
            rep = harness.page.evaluate("(peer) => window.t.ledger.reputation(peer)", liar)
            assert rep["level"] == "suspect", rep
            # Forged evidence is refused by the browser's ledger and leaves its log as it was: an honest
            # answer whose output was changed (its signature no longer covers it), answers given to
            # another client.
            forged = copy.deepcopy(body)
            forged["honest"][0]["body"]["output"] = "f" * 64
            other = copy.deepcopy(body)
            for answer in [other["liar"], *other["honest"]]:
                answer["body"]["client"] = "d" * 64
            assert append_evidence(harness, forged) == "bad_signature"
            assert append_evidence(harness, other) == "bad_evidence"
            assert len(own_entries(harness, "evidence")) == 1
            # Nothing countersigned for the session the liar lied in.
            lying_session = body["liar"]["body"]["session"]
            receipts = [e["body"]["receipt"] for e in own_entries(harness, "receipt")]
            assert not [r for r in receipts if r["server"] == liar and r["session"] == lying_session]

            # After detection: the liar is never routed, and every reply is the honest one.
            for _ in range(2):
                result = run_generation(harness.page)
                assert result["tokens"] == expected, result
                assert all(hop[0] != liar for route in result["routes"] for hop in route), result["routes"]
            harness.page.evaluate("() => window.t.client.gossipSettled()")
        finally:
            harness.page.evaluate("() => window.t?.client?.close()")

        def reached() -> PeerProc | None:
            for peer in honest:
                done = run_cli(
                    ["ledger", "show", liar, "--data-dir", str(peer.data_dir)],
                    timeout=60,
                    env={"COLUMNS": "200"},
                )
                if done.returncode == 0 and "reputation: suspect" in done.stdout:
                    return peer
            return None

        where = wait_for(
            reached, 60, what="the browser's evidence reaching an honest native peer", interval=1.0
        )
        assert where is not None
        assert browser_id
    assert harness.take_errors() == []


HONEST_SESSIONS = 10  # at most: until the browser tab took part in a passed check


def test_no_false_positive_between_native_and_browser_peers_under_browser_checks(
    browser: Browser,
    web_server: WebServer,
    harness: Harness,
    served_model: Path,
    served_core: None,
    tmp_path: Path,
) -> None:
    expected = list(local_tokens(served_model))
    with (
        lying_mesh(tmp_path, served_model, liar=False) as (node, _),
        browser_peer(browser, web_server, node.url, served_model) as (_, tab),
    ):
        wait_listed(node, tab)
        try:
            setup_client(harness.page, "client-spot-checks-honest", node.url)
            sessions = 0
            while sessions < 5 or (
                sessions < HONEST_SESSIONS
                and not harness.page.evaluate("(tab) => window.t.client.spotChecks.passes.has(tab)", tab)
            ):
                result = run_generation(harness.page)
                assert result["tokens"] == expected, result
                sessions += 1
            stats = harness.page.evaluate("() => window.t.client.spotChecks.summary()")
            passes = harness.page.evaluate("() => Object.fromEntries(window.t.client.spotChecks.passes)")
        finally:
            harness.page.evaluate("() => window.t?.client?.close()")
    print(f"browser client, {sessions} sessions: {stats}")
    assert stats["caught"] == 0 and stats["inconclusive"] == 0, stats
    assert stats["passed"] >= 5, stats
    assert stats["largestAgreeingDiff"] < 1e-2, stats
    assert passes.get(tab, 0) >= 1, f"the browser tab took part in no check: {passes}"
    assert harness.take_errors() == []

"""Browser tabs serving blocks of the tiny model in a mesh of native peers, over real WebRTC.

The harness page runs a ``BrowserNode`` (``web/src/node/node.js``): identity and ledger in IndexedDB
(the ledger rules under Pyodide, from ``/py/python_peer/core/``), the JS ``SignalClient`` on an
``ai4all signal`` subprocess, the shards of its span from the tiny Llama export (mounted under
``/model/``) through the IndexedDB cache, and a ``SpanServer`` answering the offers that come through
signaling. Native ``ai4all peer`` processes serve the other spans. A Python mesh client, on its own event
loop in a background thread (Playwright's sync API and asyncio tests do not mix), generates greedy
tokens: they equal ``LocalChain``'s, with one browser in the route and with two, and the browser earns
the receipts the client countersigns; on an export with ``--hidden-float16`` the browser's answers are
float16 values, as native shards' are. Bad frames, bad payments, forged receipts and junk gossip get
Python's error codes (or are dropped), and the tab's log reaches a Python ledger by gossip through
signaling. The span a tab picks when not told is Python's ``least_served_span`` over random meshes.
The last tests take the tab away mid-generation (closed without a word, or paused past its grace)
while a native spare serves 1-3; the client fails over with the same tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page

from python_peer.block_selection import least_served_span
from python_peer.chain import LocalChain
from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.entries import Entry
from python_peer.core.errors import (
    OutOfOrderError,
    PaymentRequiredError,
    RemoteBadFrameError,
    RemoteBadShapeError,
    RemoteNonFiniteError,
    SessionRefusedError,
    UnknownSessionError,
)
from python_peer.core.manifest import load_manifest
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.wire import CHUNK_HEADER, CHUNK_MAGIC, HEADER, MAGIC, Frame, FrameType, chunk_message
from python_peer.errors import PeerError
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.rpc import RpcClient
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tensors import from_wire, to_wire
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import TransportConfig
from tests.support.browser import Harness, script
from tests.support.browser_node import (
    FAST,
    MAX_TOKENS,
    PROMPT,
    browser_peer,
    failover_run,
    local_tokens,
    mesh_run,
    wait_listed,
)
from tests.support.holds import hold_for
from tests.support.loop_thread import LoopThread
from tests.support.procs import Node, PeerProc
from tests.support.static_server import MODEL_PREFIX, MOUNTS, WebServer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# What the page's links saw: Chromium's own candidates, link states, frames answered; the node's status.
STATS_JS = script("browser_peer/stats")


@dataclass
class Mesh:
    node: Node
    peers: list[PeerProc]
    model: Path


@pytest.fixture
def served_model(served_model: Path, served_core: None) -> Path:
    """The tiny model with the core beside it: a browser node runs the ledger rules under Pyodide."""
    return served_model


@contextlib.contextmanager
def running_mesh(tmp: Path, model: Path, spans: list[str]) -> Iterator[Mesh]:
    node = Node("node-a", tmp)
    peers: list[PeerProc] = []
    try:
        node.wait()
        peers = [PeerProc(f"p{span}", tmp, model, [node.url], span=span) for span in spans]
        for peer in peers:
            peer.wait()
        yield Mesh(node, peers, model)
    finally:
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


def announced(node: Node, peer_id: str) -> list[tuple[int, int]] | None:
    """The spans ``peer_id`` announces on ``node`` now, or None when the node has no entry for it."""
    for entry in node.directory()["entries"]:
        if entry["peer_id"] == peer_id:
            return [(s["start"], s["end"]) for s in entry["serves"]]
    return None


def wait_earned(page: Page, timeout: float = 15) -> dict[str, Any]:
    """The node's status once the countersigned receipt has reached its ledger (earned > 0)."""
    last: list[dict[str, Any]] = [{}]

    def earned() -> dict[str, Any] | None:
        last[0] = dict(page.evaluate("() => window.node.node.status()"))
        return last[0] if (last[0]["earned"] or 0) > 0 else None

    return wait_for(earned, timeout, what="the browser earning", interval=0.25, describe=lambda: last[0])


def test_browser_serves_a_span_in_the_mesh(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    expected = local_tokens(served_model)
    assert len(expected) == MAX_TOKENS, "the tiny model must not stop early for this comparison"
    with (
        running_mesh(tmp_path, served_model, ["0-1", "3-4"]) as mesh,
        browser_peer(browser, web_server, mesh.node.url, served_model) as (page, browser_id),
    ):
        wait_listed(mesh.node, browser_id)
        tokens, route, _ = LoopThread(mesh_run(mesh.node, served_model)).result(timeout=180)
        status = wait_earned(page)
        stats = page.evaluate(STATS_JS)
    assert tokens == expected, stats
    assert [(a, b) for _, a, b in route] == [(0, 1), (1, 3), (3, 4)]
    assert route[1][0] == browser_id
    assert route[0][0] == mesh.peers[0].peer_id and route[2][0] == mesh.peers[1].peer_id
    assert stats["answered"]["errors"] == 0 and stats["refusedOffers"] == []
    assert stats["answered"]["frames"] >= MAX_TOKENS
    assert status["state"] == "serving" and status["span"] == {"start": 1, "end": 3}
    assert status["tokensPerSecond"] > 0 and status["sessions"] == 0
    assert (
        status["tokensServed"] >= MAX_TOKENS
        and status["download"]["loaded"] == status["download"]["total"] > 0
    )
    # One link from the client; Chromium gathers on the machine's interfaces only (never loopback), the
    # answer rewrote its host candidates to 127.0.0.1, and the pair in use targets the client on loopback.
    opened = stats["answered"]["opened"]
    assert len(opened) == 1 and opened[0]["gathered"], opened
    assert opened[0]["pairRemote"] == "127.0.0.1", opened


async def rounded_run(node: Node, model: Path, browser_id: str) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Greedy tokens through the mesh, and the hidden states the browser's hop answered with."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        session = await client.open(1, len(ids) + MAX_TOKENS)
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        tokens: list[int] = []
        for step in range(MAX_TOKENS):
            tokens.append(int(np.argmax(logits[0, -1])))
            if step < MAX_TOKENS - 1:
                logits = await session.step(np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
        # A browser peer does not push, so it answers every output in full (none kept).
        outputs = [
            o for o in next(h.outputs for h in session.hops if h.peer_id == browser_id) if o is not None
        ]
        await session.close()
        return tuple(tokens), outputs
    finally:
        await client.aclose()
        await mesh_node.aclose()


def test_browser_serves_a_span_of_a_hidden_float16_export_with_the_same_rounding(
    browser: Browser, web_server: WebServer, tiny_llama_export_h16: Path, served_core: None, tmp_path: Path
) -> None:
    """An export with ``--hidden-float16``: onnxruntime-web keeps the graph's rounding (its answers are
    float16 values, carried as float16), so a chain with a browser gives the local chain's tokens."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, MODEL_PREFIX, tiny_llama_export_h16)
        expected = local_tokens(tiny_llama_export_h16)
        with (
            running_mesh(tmp_path, tiny_llama_export_h16, ["0-1", "3-4"]) as mesh,
            browser_peer(browser, web_server, mesh.node.url, tiny_llama_export_h16) as (page, browser_id),
        ):
            wait_listed(mesh.node, browser_id)
            tokens, outputs = LoopThread(rounded_run(mesh.node, tiny_llama_export_h16, browser_id)).result(
                180
            )
            stats = page.evaluate(STATS_JS)
    assert tokens == expected, stats
    assert len(outputs) == MAX_TOKENS and stats["answered"]["errors"] == 0
    for out in outputs:
        np.testing.assert_array_equal(out.astype(np.float16).astype(np.float32), out)


SPAN_CHOICE_JS = script("browser_peer/span_choice")


def test_span_choice_mirrors_block_selection(harness: Harness, tiny_llama_export: Path) -> None:
    """The browser picks the span Python's ``least_served_span`` picks, over random meshes and budgets."""
    manifest = load_manifest(tiny_llama_export)
    rng = np.random.default_rng(7)
    peers = [f"{i:064x}" for i in range(1, 9)]
    spans = [(0, 1), (1, 3), (3, 4), (0, 4), (1, 4), (0, 3), (2, 3)]
    sizes = sorted({manifest.memory.need(s.span).total for s in manifest.blocks})
    budgets = [10**9, sizes[0] - 1, sizes[0], sizes[-1] - 1, sizes[-1], 2 * sizes[-1]]
    cases: list[dict[str, Any]] = []
    expected: list[Any] = []
    for _ in range(60):
        announcements = []
        for peer in rng.choice(peers, size=int(rng.integers(0, 6)), replace=False):
            serves = [
                spans[int(i)] for i in rng.choice(len(spans), size=int(rng.integers(1, 3)), replace=False)
            ]
            model = manifest.name if rng.random() < 0.85 else "another-model"
            announcements.append(
                Announcement(
                    str(peer), "native", 1, 0, 60_000, tuple(ServedSpan(model, a, b) for a, b in serves)
                )
            )
        budget = int(rng.choice(budgets))
        cases.append(
            {
                "budget": budget,
                "announcements": [
                    {
                        "peer_id": a.peer_id,
                        "serves": [{"model": s.model, "start": s.start, "end": s.end} for s in a.serves],
                    }
                    for a in announcements
                ],
            }
        )
        try:
            span = least_served_span(manifest, announcements, budget)
            expected.append({"start": span.start, "end": span.end})
        except PeerError as exc:
            expected.append(str(exc))
    got = harness.page.evaluate(SPAN_CHOICE_JS, {"manifest": manifest.raw, "cases": cases})
    for case, want, have in zip(cases, expected, got, strict=True):
        if isinstance(want, str):
            assert "error" in have and have["error"] == f"NodeError: {want}", (case, have)
        else:
            assert have == want, case
    assert any(isinstance(w, str) for w in expected) and len({str(w) for w in expected}) >= 3


def test_two_browser_tabs_in_one_chain(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    """Blocks 1-3 and 3-4 in two tabs, 0-1 native: the same greedy tokens, through both tabs."""
    expected = local_tokens(served_model)
    with (
        running_mesh(tmp_path, served_model, ["0-1"]) as mesh,
        browser_peer(browser, web_server, mesh.node.url, served_model, (1, 3)) as (page_a, id_a),
        browser_peer(browser, web_server, mesh.node.url, served_model, (3, 4)) as (page_b, id_b),
    ):
        wait_listed(mesh.node, id_a)
        wait_listed(mesh.node, id_b)
        tokens, route, _ = LoopThread(mesh_run(mesh.node, served_model)).result(timeout=180)
        earned_a, earned_b = wait_earned(page_a)["earned"], wait_earned(page_b)["earned"]
    assert tokens == expected
    assert route == [(mesh.peers[0].peer_id, 0, 1), (id_a, 1, 3), (id_b, 3, 4)]
    assert earned_a > 0 and earned_b > 0


def test_bad_input_to_the_browser_gets_pythons_error_codes(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(served_model)
    bytes_per_token = (
        2 * 2 * int(manifest.config["num_key_value_heads"]) * int(manifest.config["head_dim"]) * 4
    )
    kv_mb = 64 * bytes_per_token / 2**20  # KV caches capped at two sessions of 32 tokens, not three
    with (
        running_mesh(tmp_path, served_model, []) as mesh,
        browser_peer(browser, web_server, mesh.node.url, served_model, options={"kvBudgetMb": kv_mb}) as (
            page,
            browser_id,
        ),
    ):
        recorded = LoopThread(bad_input_run(mesh.node.url, browser_id, served_model)).result(timeout=120)
        stats = page.evaluate(STATS_JS)
        log = page.evaluate("() => window.node.node.ledger.log()")
    assert stats["refusedOffers"] == []
    assert stats["status"]["earned"] > 0
    receipts = [e["body"]["receipt"] for e in log if e["body"]["kind"] == "receipt"]
    assert [Receipt.from_dict(r).id for r in receipts] == [recorded]


async def bad_input_run(signal_url: str, browser_id: str, model_dir: Path) -> str:
    """Bad frames, payments and receipts against the browser; return the id of the receipt it recorded."""
    identity = Identity.generate()
    ledger = await asyncio.to_thread(LedgerService.open, None, identity)
    signal_client = await SignalClient.create(identity, SignalClientConfig(urls=(signal_url,)))
    # With the ledger, the node answers the browser's gossip signals (no rounds of its own: no config).
    node = MeshNode(identity, signal_client, TransportConfig(connect_timeout_s=15.0), ledger)
    try:
        link = await node.links.connect(browser_id)
        assert await link.ping(5) > 0  # PING is answered by the browser's transport
        raw = link._channel
        assert raw is not None
        session = bytes(range(16, 32))
        raw.send(b"garbage, not a chunk")
        raw.send("a text message")
        raw.send(chunk_message(7, HEADER.pack(MAGIC, 0, FrameType.FORWARD, 0, session, 42, 0, 0))[0])
        raw.send(CHUNK_HEADER.pack(CHUNK_MAGIC, 8, 5, 2) + b"x")  # index outside count
        errors: list[Frame] = []
        for _ in range(4):
            async with asyncio.timeout(5):
                errors.append(await link.recv())
        assert [e.type for e in errors] == [FrameType.ERROR] * 4
        assert {e.meta["code"] for e in errors} == {"bad_frame"}
        assert (errors[2].session, errors[2].step) == (session, 42)  # the ERROR names the refused frame
        assert await link.ping(5) > 0  # the link survived

        rpc = RpcClient(link)
        good, bad, third = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
        model = load_manifest(model_dir).name

        def opening(session: bytes, **meta: object) -> Frame:
            base: dict[str, object] = {"model": model, "start": 1, "end": 3, "batch": 1, "max_length": 32}
            return Frame(FrameType.OPEN, session, 0, meta={**base, **meta})

        def forward(
            session: bytes,
            step: int,
            hidden: np.ndarray,
            mask: np.ndarray | None = None,
            pos: np.ndarray | None = None,
        ) -> Frame:
            seq = hidden.shape[1]
            mask = np.ones((1, seq), dtype=np.int64) if mask is None else mask
            pos = np.arange(seq, dtype=np.int64)[None] if pos is None else pos
            tensors = (
                to_wire("hidden_states", hidden),
                to_wire("attention_mask", mask),
                to_wire("position_ids", pos),
            )
            return Frame(FrameType.FORWARD, session, step, tensors=tensors)

        def gossip(meta: dict[str, Any], session: bytes = b"\x09" * 16) -> Frame:
            return Frame(FrameType.GOSSIP, session, 0, meta=meta)

        def holding(session: bytes) -> Frame:
            """OPEN naming a new hold of our log that pays the browser for ``session``."""
            base: dict[str, object] = {"model": model, "start": 1, "end": 3, "batch": 1, "max_length": 32}
            return Frame(FrameType.OPEN, session, 0, meta=hold_for(ledger, browser_id, session, base))

        assert (await rpc.call(gossip({"kind": "push", "entries": []}), 5)).meta == {"stored": 0, "held": 0}
        good_open, bad_open, third_open = holding(good), holding(bad), holding(third)
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):  # our log is not there yet
            await rpc.call(good_open, 5)
        own = ledger.own_entries()
        # the answer says through which seq the browser now holds our log (``held``)
        assert (await rpc.call(gossip({"kind": "push", "entries": own}), 5)).meta == {"stored": 4, "held": 4}
        assert (await rpc.call(gossip({"kind": "push", "entries": own}), 5)).meta == {"stored": 0, "held": 4}
        with pytest.raises(RemoteBadFrameError, match="ledger"):
            await rpc.call(gossip({"kind": "push", "entries": "not a list"}), 5)
        with pytest.raises(RemoteBadFrameError, match="ledger"):
            await rpc.call(gossip({"kind": "push", "entries": own[:1] * 65}), 5)
        with pytest.raises(RemoteBadFrameError, match="unknown ledger request"):
            await rpc.call(gossip({"kind": "steal"}), 5)
        opened = await rpc.call(good_open, 5)
        # ``log: true``: the browser takes our log in OPEN itself (docs/mesh.md), tried at the end
        assert opened.meta == {"opened": True, "kv_free_tokens": 32, "log": True}
        hidden = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
        reference = await rpc.call(forward(good, 0, hidden), 5)

        with pytest.raises(SessionRefusedError, match=r"blocks 1-3, not .* blocks 0-4"):
            await rpc.call(opening(bad, start=0, end=4), 5)
        with pytest.raises(RemoteBadFrameError, match="batch"):
            await rpc.call(opening(bad, batch=0), 5)
        with pytest.raises(RemoteBadFrameError, match="max_length"):
            await rpc.call(opening(bad, max_length=40000), 5)
        with pytest.raises(UnknownSessionError):
            await rpc.call(forward(bad, 0, hidden), 5)
        with pytest.raises(PaymentRequiredError, match="its hold is for session"):
            await rpc.call(Frame(FrameType.OPEN, bad, 0, meta=third_open.meta), 5)
        await rpc.call(bad_open, 5)
        with pytest.raises(PaymentRequiredError, match="already opened a session here"):
            await rpc.call(Frame(FrameType.OPEN, third, 0, meta=bad_open.meta), 5)
        with pytest.raises(SessionRefusedError, match="KV memory budget full"):
            await rpc.call(third_open, 5)
        with pytest.raises(OutOfOrderError, match="step 3 arrived, step 0 was expected"):
            await rpc.call(forward(bad, 3, hidden), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, np.zeros((1, 3, 63), dtype=np.float32)), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, hidden.astype(np.int64)), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, hidden, mask=np.ones((1, 2), dtype=np.int64)), 5)
        with pytest.raises(RemoteBadShapeError, match="max_length"):
            await rpc.call(forward(bad, 0, np.zeros((1, 40, 64), dtype=np.float32)), 5)
        poisoned = hidden.copy()
        poisoned[0, 1, 7] = np.nan
        with pytest.raises(RemoteNonFiniteError):
            await rpc.call(forward(bad, 0, poisoned), 5)
        assert (await rpc.call(Frame(FrameType.CLOSE, bad, 0), 5)).meta == {"closed": True}
        with pytest.raises(UnknownSessionError):
            await rpc.call(forward(bad, 0, hidden), 5)

        # The good session was untouched by all of that: its steps match Python's runner.
        step = np.random.default_rng(1).standard_normal((1, 1, 64)).astype(np.float32)
        answer = await rpc.call(forward(good, 1, step, pos=np.array([[3]])), 5)
        runner = LocalChain(model_dir).blocks[1]
        runner.open("x", 1)
        first = runner.forward("x", hidden, np.ones((1, 3), np.int64), np.arange(3)[None])
        second = runner.forward("x", step, np.ones((1, 1), np.int64), np.array([[3]]))
        np.testing.assert_allclose(from_wire(reference.tensor("hidden_states_out")), first, atol=1e-4)
        np.testing.assert_allclose(from_wire(answer.tensor("hidden_states_out")), second, atol=1e-4)

        # CLOSE proposes the receipt of the 4 token positions served; only that receipt, countersigned,
        # for that session, is recorded, once. Forged ones are refused and lose nothing.
        closed = await rpc.call(Frame(FrameType.CLOSE, good, 2), 5)
        assert closed.meta["closed"] is True and isinstance(closed.meta["server_sig"], str)
        receipt, client_sig = ledger.countersign(
            closed.meta["receipt"],
            closed.meta["server_sig"],
            server=browser_id,
            session=good,
            model=model,
            start=1,
            end=3,
            tokens=4,
        )
        signed = {
            "kind": "receipt",
            "receipt": receipt.to_dict(),
            "client_sig": client_sig,
            "server_sig": closed.meta["server_sig"],
        }
        forged = {**signed, "receipt": {**receipt.to_dict(), "tokens": 400}}
        for meta, session in ((forged, good), (signed, bad), ({**signed, "client_sig": 7}, good)):
            with pytest.raises(RemoteBadFrameError, match="no receipt of this session"):
                await rpc.call(gossip(meta, session), 5)
        with pytest.raises(RemoteBadFrameError, match=r"ledger: .*signature"):  # the ledger checks it
            await rpc.call(gossip({**signed, "client_sig": "0" * 128}, good), 5)
        assert (await rpc.call(gossip(signed, good), 5)).meta == {"recorded": receipt.id}
        with pytest.raises(RemoteBadFrameError, match="no receipt of this session"):
            await rpc.call(gossip(signed, good), 5)

        # OPEN carrying our log (``log``, docs/ledger.md "Holds"): the entries the browser lacks, stored as
        # a push before the hold is checked. A malformed log is bad_frame with nothing stored; a forged
        # hold in it (its amount raised after signing) is refused alone and its OPEN finds no hold.
        fourth = b"\x04" * 16
        fourth_open = holding(fourth)  # a new hold, which the browser does not hold yet
        lacking = ledger.own_entries_after(4)
        assert lacking is not None and Entry.from_dict(lacking[-1]).hash == fourth_open.meta["hold"]
        for bad_log in ("my entries", own[:1] * 65):
            with pytest.raises(RemoteBadFrameError, match="at most 64 entries"):
                await rpc.call(Frame(FrameType.OPEN, fourth, 0, meta={**fourth_open.meta, "log": bad_log}), 5)
        forged = {**lacking[-1], "body": {**lacking[-1]["body"], "amount": 10**9}}
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):
            await rpc.call(
                Frame(FrameType.OPEN, fourth, 0, meta={**fourth_open.meta, "log": [*lacking[:-1], forged]}), 5
            )
        carried = await rpc.call(
            Frame(FrameType.OPEN, fourth, 0, meta={**fourth_open.meta, "log": lacking}), 5
        )
        assert carried.meta["opened"] is True and carried.meta["log"] is True
        with pytest.raises(SessionRefusedError, match="already open"):  # the same OPEN replayed
            await rpc.call(Frame(FrameType.OPEN, fourth, 0, meta={**fourth_open.meta, "log": lacking}), 5)
        with pytest.raises(PaymentRequiredError, match="already opened a session here"):  # its hold again
            await rpc.call(Frame(FrameType.OPEN, third, 0, meta={**fourth_open.meta, "log": lacking}), 5)
        assert (await rpc.call(Frame(FrameType.CLOSE, fourth, 0), 5)).meta == {"closed": True}
        await rpc.aclose()

        # Ledger gossip through signaling: junk is dropped without a word, and rounds we open bring the
        # browser's log (its grant and the receipt it recorded) into our ledger.
        junk: list[dict[str, Any]] = [
            {"kind": "ledger", "msg": "junk"},
            {"kind": "ledger", "msg": {"type": "summary", "v": 1, "buckets": 5}},
            {
                "kind": "ledger",
                "msg": {"type": "entries", "v": 1, "entries": [{"forged": True}], "more": False},
            },
            {"kind": "nonsense"},
        ]
        for payload in junk:
            await signal_client.send_signal(browser_id, payload)
        deadline = asyncio.get_running_loop().time() + 20
        while receipt.id not in {
            e.body.receipt.id
            for e in ledger.store.entries_from(browser_id, 1, 10)
            if isinstance(e.body, ReceiptBody)
        }:
            assert asyncio.get_running_loop().time() < deadline, "the browser's log never came by gossip"
            message = ledger.gossip_start(browser_id)
            if message is not None:
                await signal_client.send_signal(browser_id, {"kind": "ledger", "msg": message})
            await asyncio.sleep(0.5)
        return receipt.id
    finally:
        await node.aclose()  # closes the ledger too


@pytest.mark.parametrize("leave", ["close the tab", "pause past its grace"])
def test_browser_gone_mid_generation_fails_over_with_identical_tokens(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path, leave: str
) -> None:
    """The tab closes without a word, or pauses and closes its open session when the grace runs out:
    the client fails over to a native spare and finishes with the same tokens."""
    expected = local_tokens(served_model)
    reached, go_on = threading.Event(), threading.Event()
    with (
        running_mesh(tmp_path, served_model, ["0-1", "3-4"]) as mesh,
        browser_peer(browser, web_server, mesh.node.url, served_model) as (page, browser_id),
    ):
        wait_listed(mesh.node, browser_id)
        run = LoopThread(failover_run(mesh.node, served_model, reached, go_on))
        assert reached.wait(120), "the generation never reached the pause"
        spare = PeerProc("spare1-3", tmp_path, served_model, [mesh.node.url], span="1-3")
        try:
            spare.wait()
            # Waiting out the client's lookup cache (it predates the spare) is the point: nothing to poll.
            time.sleep(FAST.lookup_cache_s + 0.5)
            if leave == "close the tab":
                page.context.close()  # the browser peer goes away without a word
            else:
                page.evaluate("() => window.node.node.pause({ graceMs: 300 })")  # resolves once closed
                status = page.evaluate("() => window.node.node.status()")
                assert status["state"] == "paused" and status["sessions"] == 0, status
                assert announced(mesh.node, browser_id) == []
            go_on.set()
            tokens, first_route, last_route, failovers = run.result(timeout=120)
        finally:
            go_on.set()
            spare.stop()
    assert tokens == expected
    assert [p for p, a, b in first_route if (a, b) == (1, 3)] == [browser_id]
    assert [p for p, a, b in last_route if (a, b) == (1, 3)] == [spare.peer_id]
    assert failovers >= 1

"""A browser serving blocks 1-3 of the tiny model in a mesh of native peers, over real WebRTC.

The harness page imports ``web/src/transport/peer.js`` and ``web/src/node/span_server.js``, loads the
1-3 shard of the tiny Llama export (mounted under ``/model/``), announces itself with the JS
``SignalClient`` on an ``ai4all signal`` subprocess and answers the offers that come through it.
Native ``ai4all peer`` processes serve 0-1 and 3-4. A Python mesh client, on its own event loop in a
background thread (Playwright's sync API and asyncio tests do not mix), generates greedy tokens: they
equal ``LocalChain``'s, and the route goes through the browser for 1-3. A second test closes the page
mid-generation while a native spare serves 1-3; the client fails over with the same tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from playwright.sync_api import Browser, Page

from python_peer.chain import LocalChain
from python_peer.core.errors import (
    OutOfOrderError,
    RemoteBadFrameError,
    RemoteBadShapeError,
    RemoteNonFiniteError,
    SessionRefusedError,
    UnknownSessionError,
)
from python_peer.core.manifest import load_manifest
from python_peer.core.wire import CHUNK_HEADER, CHUNK_MAGIC, HEADER, MAGIC, Frame, FrameType, chunk_message
from python_peer.generate import SamplingParams, agenerate, generate
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.rpc import RpcClient
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tensors import from_wire, to_wire
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import TransportConfig
from tests.browser.conftest import HARNESS_PATH, MOUNTS, WebServer
from tests.procs import Node, PeerProc

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

T = TypeVar("T")
MODEL_PREFIX = "/model/"
PROMPT = "What is the capital of France?"
MAX_TOKENS = 12
FAST = ClientConfig(request_timeout_s=15.0, connect_timeout_s=15.0, ban_seconds=60.0)

# Load the 1-3 span, announce it with the JS SignalClient, and answer offers; `window.node` keeps it all.
SERVE_JS = """async ({ base, signalUrl, serverConfig }) => {
  const S = await import('/web/src/signaling/client.js');
  const { BrowserTransport } = await import('/web/src/transport/peer.js');
  const { SpanServer } = await import('/web/src/node/span_server.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const server = await SpanServer.load(base, manifest, { start: 1, end: 3 }, serverConfig,
    { runtime: { allowWebGPU: false, threads: 1 } });
  const answered = { frames: 0, errors: 0, refusedOffers: [], opened: [] };
  let client = null;
  const transport = new BrowserTransport({
    sendSignal: (peerId, payload) => client.sendSignal(peerId, payload),
    onFrame: (link, frame) => {
      server.handle(link.remoteId, frame).then((answer) => {
        answered.frames++;
        if (answer.type === 5) answered.errors++;
        return link.send(answer);
      }).catch((err) => console.warn(`answer not sent: ${err.message}`));
    },
    onLinkOpen: async (link) => {
      const report = await link.pc.getStats();
      let pairId = null;
      report.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId; });
      const pair = pairId === null ? undefined : report.get(pairId);
      const address = (id) => (id === undefined ? null : report.get(id)?.address ?? null);
      answered.opened.push({
        remote: link.remoteId,
        gathered: link.gatheredCandidates,
        pairRemote: address(pair?.remoteCandidateId),
      });
    },
    onLinkClosed: (link) => {
      if (!transport.links.some((l) => l.remoteId === link.remoteId)) server.closeClient(link.remoteId);
    },
  });
  client = await S.SignalClient.create(await S.Identity.generate(), {
    urls: [signalUrl],
    serves: [{ model: manifest.model.name, start: 1, end: 3 }],
    kvFreeTokens: server.kvFreeTokens,
    throughputMilli: 1_000_000,
    onSignal: (signal) => {
      if (signal.payload.kind !== 'webrtc') return; // ledger gossip: no ledger in the browser yet
      transport.handleSignal(signal).catch((err) => answered.refusedOffers.push(err.message));
    },
  });
  window.node = { client, transport, server, answered };
  return client.peerId;
}"""

# What the page's links saw: Chromium's own candidates, link states, frames answered.
STATS_JS = """() => ({
  links: window.node.transport.links.map((l) => ({ state: l.state, gathered: l.gatheredCandidates, stats: l.stats })),
  answered: window.node.answered,
  sessions: window.node.server.sessions.size,
})"""


class LoopThread:
    """``asyncio.run`` of one coroutine in a daemon thread; ``result`` waits for it."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.future: Future[Any] = Future()

        def main() -> None:
            try:
                self.future.set_result(asyncio.run(coro))
            except BaseException as exc:  # handed to the test thread
                self.future.set_exception(exc)

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> Any:
        try:
            return self.future.result(timeout)
        finally:
            self.thread.join(1)


@dataclass
class Mesh:
    node: Node
    peers: list[PeerProc]
    model: Path


@pytest.fixture
def served_model(tiny_llama_export: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, MODEL_PREFIX, tiny_llama_export)
        yield tiny_llama_export


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


@contextlib.contextmanager
def browser_peer(
    browser: Browser, web_server: WebServer, signal_url: str, server_config: dict[str, Any] | None = None
) -> Iterator[tuple[Page, str]]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    try:
        page.goto(web_server.url_for(HARNESS_PATH))
        args = {"base": MODEL_PREFIX, "signalUrl": signal_url, "serverConfig": server_config or {}}
        peer_id = page.evaluate(SERVE_JS, args)
        yield page, str(peer_id)
        assert errors == []
    finally:
        if not page.is_closed():
            context.close()


def local_tokens(model: Path) -> tuple[int, ...]:
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS)).token_ids


async def mesh_run(
    node: Node, model: Path
) -> tuple[tuple[int, ...], list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """Generate through the mesh; return the tokens, the route before and the route after."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        route_before = await probe_route(client)
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        result = await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS))
        tokens = result.token_ids
        route_after = await probe_route(client)
        return tokens, route_before, route_after
    finally:
        await client.aclose()
        await mesh_node.aclose()


async def probe_route(client: MeshClient) -> list[tuple[str, int, int]]:
    session = await client.open(1, 8)
    try:
        return [(peer, start, end) for peer, start, end in session.route]
    finally:
        await session.close()


def test_browser_serves_a_span_in_the_mesh(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    expected = local_tokens(served_model)
    assert len(expected) == MAX_TOKENS, "the tiny model must not stop early for this comparison"
    with (
        running_mesh(tmp_path, served_model, ["0-1", "3-4"]) as mesh,
        browser_peer(browser, web_server, mesh.node.url) as (page, browser_id),
    ):
        deadline = time.monotonic() + 10
        while browser_id not in json.dumps(mesh.node.directory()):
            assert time.monotonic() < deadline, f"the browser never showed up: {mesh.node.directory()}"
            time.sleep(0.1)
        tokens, route, _ = LoopThread(mesh_run(mesh.node, served_model)).result(timeout=180)
        stats = page.evaluate(STATS_JS)
    assert tokens == expected, stats
    assert [(a, b) for _, a, b in route] == [(0, 1), (1, 3), (3, 4)]
    assert route[1][0] == browser_id
    assert route[0][0] == mesh.peers[0].peer_id and route[2][0] == mesh.peers[1].peer_id
    assert stats["answered"]["errors"] == 0 and stats["answered"]["refusedOffers"] == []
    assert stats["answered"]["frames"] >= MAX_TOKENS
    # One link from the client; Chromium gathers on the machine's interfaces only (never loopback), the
    # answer rewrote its host candidates to 127.0.0.1, and the pair in use targets the client on loopback.
    opened = stats["answered"]["opened"]
    assert len(opened) == 1 and opened[0]["gathered"], opened
    assert opened[0]["pairRemote"] == "127.0.0.1", opened


def test_bad_input_to_the_browser_gets_pythons_error_codes(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    config = load_manifest(served_model).config
    bytes_per_token = 2 * 2 * int(config["num_key_value_heads"]) * int(config["head_dim"]) * 4  # 2 blocks
    budget = {"memoryBudgetBytes": 64 * bytes_per_token}  # two sessions of 32 tokens, not three
    with (
        running_mesh(tmp_path, served_model, []) as mesh,
        browser_peer(browser, web_server, mesh.node.url, budget) as (page, browser_id),
    ):
        LoopThread(bad_input_run(mesh.node.url, browser_id, served_model)).result(timeout=120)
        stats = page.evaluate(STATS_JS)
    assert stats["answered"]["refusedOffers"] == []


async def bad_input_run(signal_url: str, browser_id: str, model_dir: Path) -> None:
    identity = Identity.generate()
    signal_client = await SignalClient.create(identity, SignalClientConfig(urls=(signal_url,)))
    node = MeshNode(identity, signal_client, TransportConfig(connect_timeout_s=15.0))
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
        errors = [await asyncio.wait_for(link.recv(), 5) for _ in range(4)]
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

        push = Frame(FrameType.GOSSIP, b"\x09" * 16, 0, meta={"kind": "push", "entries": []})
        assert (await rpc.call(push, 5)).meta == {"stored": 0}  # no ledger yet: sessions are free
        opened = await rpc.call(opening(good), 5)
        assert opened.meta == {"opened": True, "kv_free_tokens": 32}
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
        await rpc.call(opening(bad), 5)
        with pytest.raises(SessionRefusedError, match="KV memory budget full"):
            await rpc.call(opening(third), 5)
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
        await rpc.aclose()
    finally:
        await node.aclose()


def test_browser_closed_mid_generation_fails_over_with_identical_tokens(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    expected = local_tokens(served_model)
    reached, go_on = threading.Event(), threading.Event()
    with (
        running_mesh(tmp_path, served_model, ["0-1", "3-4"]) as mesh,
        browser_peer(browser, web_server, mesh.node.url) as (page, browser_id),
    ):
        run = LoopThread(failover_run(mesh.node, served_model, reached, go_on))
        assert reached.wait(120), "the generation never reached the pause"
        spare = PeerProc("spare1-3", tmp_path, served_model, [mesh.node.url], span="1-3")
        try:
            spare.wait()
            time.sleep(FAST.lookup_cache_s + 0.5)  # the client's cached lookup predates the spare
            page.context.close()  # the browser peer goes away without a word
            go_on.set()
            tokens, first_route, last_route, failovers = run.result(timeout=120)
        finally:
            go_on.set()
            spare.stop()
    assert tokens == expected
    assert [p for p, a, b in first_route if (a, b) == (1, 3)] == [browser_id]
    assert [p for p, a, b in last_route if (a, b) == (1, 3)] == [spare.peer_id]
    assert failovers >= 1


async def failover_run(
    node: Node, model: Path, reached: threading.Event, go_on: threading.Event
) -> tuple[tuple[int, ...], list[tuple[str, int, int]], list[tuple[str, int, int]], int]:
    """Greedy tokens step by step; after the fourth, wait for the test to swap the 1-3 peer."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        session = await client.open(1, len(ids) + MAX_TOKENS)
        first_route = list(session.route)
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        tokens: list[int] = []
        for step in range(MAX_TOKENS):
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if step == 3:
                reached.set()
                await asyncio.to_thread(go_on.wait, 120)
            if step < MAX_TOKENS - 1:
                logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
        last_route = list(session.route)
        await session.close()
        return tuple(tokens), first_route, last_route, session.failovers
    finally:
        await client.aclose()
        await mesh_node.aclose()

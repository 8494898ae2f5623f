"""The mesh on loopback, with real processes: signaling nodes, native peers over WebRTC, a client.

No mocks of aiortc, websockets or onnxruntime: every peer is an ``ai4all peer`` process and every
signaling node an ``ai4all signal`` process; the client runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from python_peer.chain import LocalChain
from python_peer.core.canonical import ServedSpan
from python_peer.core.errors import (
    OutOfOrderError,
    PaymentRequiredError,
    RemoteBadFrameError,
    RemoteBadShapeError,
    RemoteNonFiniteError,
    RemoteSignalingError,
    SessionRefusedError,
    UnknownSessionError,
)
from python_peer.core.manifest import load_manifest
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import LinkClosedError, MeshError
from python_peer.generate import SamplingParams, generate
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.rpc import RpcClient
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tensors import to_wire
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import Link, LinkManager, TransportConfig
from tests.support.holds import hold_for
from tests.support.mesh import FAST, FAST_TRANSPORT, PROMPTS, mesh_tokens
from tests.support.procs import Node, PeerProc, run_cli

pytestmark = pytest.mark.timeout(180)


class Mesh:
    """Signaling nodes and peers of one test, stopped at the end."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.tmp = tmp
        self.model = model
        self.nodes: list[Node] = []
        self.peers: list[PeerProc] = []

    def node(self, name: str, *siblings: Node, accept: tuple[str, ...] = ()) -> Node:
        node = Node(name, self.tmp, siblings, accept=accept)
        self.nodes.append(node)
        return node

    def peer(self, name: str, span: str | None, *nodes: Node, extra: list[str] | None = None) -> PeerProc:
        extra = ["--gossip-interval", "0.5", *(extra or [])]
        peer = PeerProc(name, self.tmp, self.model, [n.url for n in nodes], span=span, extra=extra)
        self.peers.append(peer)
        return peer

    def ready(self) -> None:
        for node in self.nodes:
            node.wait(siblings=1 if len(self.nodes) > 1 else 0)
        for peer in self.peers:
            peer.wait()

    def stop(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        for node in self.nodes:
            with contextlib.suppress(AssertionError):
                node.stop()

    def by_id(self, peer_id: str) -> PeerProc:
        return next(p for p in self.peers if p.peer_id == peer_id)


@pytest.fixture
def mesh(tmp_path: Path, tiny_llama_export: Path) -> Iterator[Mesh]:
    """Two federated nodes; peers for 0-1 and 1-3 on A, for 3-4 and a spare 1-3 on B."""
    mesh = Mesh(tmp_path, tiny_llama_export)
    a = mesh.node("node-a", accept=("node-b",))
    b = mesh.node("node-b", a)
    mesh.peer("p0-1", "0-1", a, b)
    mesh.peer("p1-3", "1-3", a, b)
    mesh.peer("p3-4", "3-4", b, a)
    mesh.peer("spare1-3", "1-3", b, a)
    try:
        mesh.ready()
        yield mesh
    finally:
        mesh.stop()


@contextlib.asynccontextmanager
async def client_on(node: Node, model: Path, config: ClientConfig = FAST) -> AsyncIterator[MeshClient]:
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, config)
    try:
        yield client
    finally:
        await client.aclose()
        await mesh_node.aclose()


def local_tokens(model: Path, prompt: str, max_tokens: int = 16) -> tuple[int, ...]:
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=max_tokens)).token_ids


async def test_greedy_through_the_mesh_equals_the_local_chain(mesh: Mesh) -> None:
    expected = local_tokens(mesh.model, PROMPTS[0])
    assert len(expected) == 16, "the tiny model must not stop early for this comparison to cover 16 steps"
    async with client_on(mesh.nodes[1], mesh.model) as client:
        assert await mesh_tokens(client, PROMPTS[0]) == expected
        # The client sits on node B; the peers for 0-1 (and one for 1-3) are on node A: federation did it.
        session = await client.open(1, 8)
        route = session.route
        await session.close()
    assert [(a, b) for _, a, b in route] == [(0, 1), (1, 3), (3, 4)]
    assert mesh.by_id(route[0][0]).name == "p0-1"


async def test_peer_killed_mid_generation_fails_over_with_identical_tokens(mesh: Mesh) -> None:
    expected = local_tokens(mesh.model, PROMPTS[1], 20)
    async with client_on(mesh.nodes[1], mesh.model) as client:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPTS[1]}]))
        session = await client.open(1, len(ids) + 20)
        victim = mesh.by_id(next(p for p, a, b in session.route if (a, b) == (1, 3)))
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        tokens: list[int] = []
        for step in range(20):
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if step == 6:
                victim.kill()  # SIGKILL: no goodbye, the link just goes silent
            logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
        new_route = session.route
        await session.close()
    assert tuple(tokens) == expected
    survivor = next(p for p, a, b in new_route if (a, b) == (1, 3))
    assert survivor != victim.peer_id and mesh.by_id(survivor).name in ("p1-3", "spare1-3")
    assert session.failovers >= 1


async def test_signaling_node_killed_peers_move_and_open_sessions_go_on(mesh: Mesh) -> None:
    expected = local_tokens(mesh.model, PROMPTS[2], 12)
    a, b = mesh.nodes
    async with client_on(b, mesh.model) as client:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPTS[2]}]))
        session = await client.open(1, len(ids) + 12)
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        a.stop(signal.SIGKILL)
        tokens = []
        for _ in range(12):  # the open session runs over WebRTC links, not through signaling
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
        await session.close()
        assert tuple(tokens) == expected and session.failovers == 0

    # New requests succeed within a few seconds: the peers of A re-announce on B.
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        try:
            async with client_on(b, mesh.model) as client:
                assert await mesh_tokens(client, PROMPTS[2], 12) == expected
                break
        except MeshError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_a_chat_right_after_a_peer_and_its_signaling_node_die_goes_through_the_spare(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    """The probe's case: the 1-3 peer and the only signaling node it used are SIGKILLed; node B still lists
    the peer (gossiped from A, until it expires) and refuses offers to it (``unknown_peer``). A chat started
    one second later bans it and goes through the spare on B, with the reference reply."""
    mesh = Mesh(tmp_path, tiny_llama_export)
    a = mesh.node("node-a", accept=("node-b",))
    b = mesh.node("node-b", a)
    mesh.peer("p0-1", "0-1", b)
    victim = mesh.peer("p1-3", "1-3", a)
    mesh.peer("p3-4", "3-4", b)
    spare = mesh.peer("spare1-3", "1-3", b)
    try:
        mesh.ready()
        expected = local_tokens(mesh.model, PROMPTS[0], 8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while victim.peer_id not in {e["peer_id"] for e in b.directory()["entries"]}:
            assert loop.time() < deadline, "node B never learned the victim's announcement from node A"
            await asyncio.sleep(0.1)

        victim.kill()
        a.stop(signal.SIGKILL)
        await asyncio.sleep(1.0)  # the scenario: a chat started one second after the deaths

        async with client_on(b, mesh.model) as client:
            # Make the spare look slow, so that the dead peer is the route's first choice and must be
            # routed around (the victim is still listed on B: its announcement has not expired).
            client.rtts[spare.peer_id] = 1.0
            started = loop.time()
            assert await mesh_tokens(client, PROMPTS[0], 8) == expected
            elapsed = loop.time() - started
            assert client.bans.banned(victim.peer_id), "the dead peer must have been tried, then banned"
            assert not client.bans.banned(spare.peer_id)
        # Signaling refuses the offer at once: the dead peer costs far less than a connect timeout.
        assert elapsed < FAST.connect_timeout_s, f"the chat took {elapsed:.1f} s"
    finally:
        mesh.stop()


async def test_link_manager_connect_raises_link_closed_when_signaling_refuses_the_offer() -> None:
    """The WebRTC connector types the refusal itself: ``connect`` raises ``LinkClosedError``, never a
    signaling error, and leaves no half-open link behind (the fast tier's connector cannot show this)."""

    async def refusing(peer_id: str, payload: dict[str, object]) -> None:
        raise RemoteSignalingError(f"peer {peer_id[:12]}… is not connected here nor known to a sibling")

    async with LinkManager(refusing, config=TransportConfig(connect_timeout_s=5.0)) as links:
        with pytest.raises(LinkClosedError, match="signaling could not relay the offer"):
            await links.connect("ab" * 32)
        assert links.links == ()


async def test_eight_concurrent_sessions_and_a_refused_ninth(tmp_path: Path, tiny_llama_export: Path) -> None:
    # Span 1-3 holds 2 layers x K,V x 2 heads x 16 dims x 4 bytes = 512 B per token: 0.25 MiB is room for
    # exactly eight sessions of 64 tokens.
    mesh = Mesh(tmp_path, tiny_llama_export)
    node = mesh.node("solo")
    for span in ("0-1", "1-3", "3-4"):
        mesh.peer(f"p{span}", span, node, extra=["--max-memory-mb", "0.25"])
    try:
        mesh.ready()
        async with client_on(node, mesh.model) as client:
            tokenizer = ModelTokenizer(client.model_dir, client.manifest)

            async def one(prompt: str) -> tuple[tuple[int, ...], object]:
                ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
                session = await client.open(1, 64)
                logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
                out = []
                for _ in range(10):
                    out.append(int(np.argmax(logits[0, -1])))
                    logits = await session.step(np.array([[out[-1]]]), np.ones((1, 1), dtype=np.int64))
                return tuple(out), session

            prompts = [PROMPTS[i % 3] + " " * (i // 3) for i in range(8)]
            results = await asyncio.gather(*(one(p) for p in prompts))
            for prompt, (tokens, _) in zip(prompts, results, strict=True):
                assert tokens == local_tokens(mesh.model, prompt, 10)
            with pytest.raises(MeshError, match="KV memory budget full"):
                await client.open(1, 64)
            for _, session in results:
                await session.close()  # type: ignore[attr-defined]
    finally:
        mesh.stop()


async def test_bad_input_to_a_peer_gets_typed_errors_and_harms_no_other_session(mesh: Mesh) -> None:
    target = mesh.by_id(next(p.peer_id for p in mesh.peers if p.name == "p1-3"))
    identity = Identity.generate()
    signal_client = await SignalClient.create(identity, SignalClientConfig(urls=(mesh.nodes[0].url,)))
    node = MeshNode(identity, signal_client, FAST_TRANSPORT)
    ledger = LedgerService.open(None, identity)
    try:
        rpc = RpcClient(await node.links.connect(target.peer_id))
        good, bad = b"\x01" * 16, b"\x02" * 16
        model = load_manifest(mesh.model).name

        def opening(session: bytes, **meta: object) -> Frame:
            base: dict[str, object] = {"model": model, "start": 1, "end": 3, "batch": 1, "max_length": 32}
            return Frame(FrameType.OPEN, session, 0, meta={**base, **meta})

        def holding(session: bytes) -> Frame:
            """OPEN naming a new hold of our log for ``session`` (pushed before it is sent)."""
            base: dict[str, object] = {"model": model, "start": 1, "end": 3, "batch": 1, "max_length": 32}
            return Frame(FrameType.OPEN, session, 0, meta=hold_for(ledger, target.peer_id, session, base))

        def forward(session: bytes, step: int, hidden: np.ndarray, mask=None, pos=None) -> Frame:
            seq = hidden.shape[1]
            mask = np.ones((1, seq), dtype=np.int64) if mask is None else mask
            pos = np.arange(seq, dtype=np.int64)[None] if pos is None else pos
            return Frame(
                FrameType.FORWARD,
                session,
                step,
                tensors=(
                    to_wire("hidden_states", hidden),
                    to_wire("attention_mask", mask),
                    to_wire("position_ids", pos),
                ),
            )

        hidden = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
        # A client whose log the peer does not hold is refused: the hold OPEN names is not there.
        good_open = holding(good)
        with pytest.raises(PaymentRequiredError, match=r"does not hold the hold .* push the log"):
            await rpc.call(good_open, 5)
        bad_open = holding(bad)
        push = Frame(
            FrameType.GOSSIP, b"\x09" * 16, 0, meta={"kind": "push", "entries": ledger.own_entries()}
        )
        assert (await rpc.call(push, 5)).meta == {"stored": 3, "held": 3}  # the grant and the two holds
        await rpc.call(good_open, 5)
        reference = await rpc.call(forward(good, 0, hidden), 5)

        with pytest.raises(SessionRefusedError, match=r"blocks 1-3, not .* blocks 0-4"):
            await rpc.call(opening(bad, start=0, end=4), 5)
        with pytest.raises(RemoteBadFrameError, match="batch"):
            await rpc.call(opening(bad, batch=0), 5)
        with pytest.raises(UnknownSessionError):
            await rpc.call(forward(bad, 0, hidden), 5)
        await rpc.call(bad_open, 5)
        with pytest.raises(OutOfOrderError, match="step 3 arrived, step 0 was expected"):
            await rpc.call(forward(bad, 3, hidden), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, np.zeros((1, 3, 63), dtype=np.float32)), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, hidden.astype(np.float64).astype(np.int64)), 5)
        with pytest.raises(RemoteBadShapeError):
            await rpc.call(forward(bad, 0, hidden, mask=np.ones((1, 2), dtype=np.int64)), 5)
        with pytest.raises(RemoteBadShapeError, match="max_length"):
            await rpc.call(forward(bad, 0, np.zeros((1, 40, 64), dtype=np.float32)), 5)
        poisoned = hidden.copy()
        poisoned[0, 1, 7] = np.nan
        with pytest.raises(RemoteNonFiniteError):
            await rpc.call(forward(bad, 0, poisoned), 5)

        # The good session was untouched by all of that: its next step matches a fresh local run.
        step = np.random.default_rng(1).standard_normal((1, 1, 64)).astype(np.float32)
        answer = await rpc.call(forward(good, 1, step, pos=np.array([[3]])), 5)
        local = LocalChain(mesh.model)
        runner = local.blocks[1]
        runner.open("x", 1)
        first = runner.forward("x", hidden, np.ones((1, 3), np.int64), np.arange(3)[None])
        second = runner.forward("x", step, np.ones((1, 1), np.int64), np.array([[3]]))
        np.testing.assert_allclose(_hidden(reference), first, atol=1e-5)
        np.testing.assert_allclose(_hidden(answer), second, atol=1e-5)
        await rpc.aclose()
    finally:
        await node.aclose()
        ledger.close()


def _hidden(frame: Frame) -> np.ndarray:
    from python_peer.tensors import from_wire

    return from_wire(frame.tensor("hidden_states_out"))


async def test_a_peer_that_never_answers_is_routed_around(mesh: Mesh) -> None:
    """A peer announces span 1-3 as the fastest in the mesh, accepts links, and then says nothing."""
    identity = Identity.generate()
    signal_client = await SignalClient.create(
        identity,
        SignalClientConfig(
            urls=(mesh.nodes[1].url,),
            serves=(ServedSpan(load_manifest(mesh.model).name, 1, 3),),
            throughput_milli=10**9,
            kv_free_tokens=10**6,
        ),
    )
    held: list[Link] = []
    silent = LinkManager(signal_client.send_signal, on_link=held.append)

    async def pump() -> None:
        async for incoming in signal_client.signals():
            await silent.handle_signal(incoming.sender, incoming.payload)

    task = asyncio.create_task(pump())
    try:
        expected = local_tokens(mesh.model, PROMPTS[0], 8)
        config = ClientConfig(request_timeout_s=3.0, connect_timeout_s=5.0)
        async with client_on(mesh.nodes[1], mesh.model, config) as client:
            assert await mesh_tokens(client, PROMPTS[0], 8) == expected
            assert client.bans.banned(identity.peer_id), "the silent peer must have been tried, then banned"
    finally:
        task.cancel()
        await silent.aclose()
        await signal_client.close()


async def test_a_chat_moves_tokens_from_the_client_to_the_peers_in_every_ledger(mesh: Mesh) -> None:
    """Receipts co-signed at the end of the session reach every peer's ledger through gossip."""
    config = NodeConfig(signal_urls=(mesh.nodes[1].url,), gossip_interval_s=0.5)
    node, client = await open_client(config, mesh.model, FAST)
    try:
        assert client.ledger is not None
        grant = client.ledger.store.rules.starter_grant
        assert client.ledger.balance() == grant
        await mesh_tokens(client, PROMPTS[0], 8)
        session = await client.open(1, 4)
        route = session.route
        await session.close()
        paid = client.ledger.balance()
        assert paid < grant, "the client must have paid for the blocks it used"
        client_id = client.ledger.peer_id
        servers = {peer for peer, _, _ in route}
    finally:
        await client.aclose()
        await node.aclose()

    def balance_at(peer: PeerProc, who: str) -> int:
        result = run_cli(["ledger", "balance", who, "--units", "--data-dir", str(peer.data_dir)], timeout=60)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    deadline = asyncio.get_running_loop().time() + 30
    while True:
        seen = {peer.name: balance_at(peer, client_id) for peer in mesh.peers}
        if all(v == paid for v in seen.values()) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(1)
    assert seen == {peer.name: paid for peer in mesh.peers}, "every peer's ledger must agree on the client"
    for peer in mesh.peers:
        if peer.peer_id in servers:
            assert balance_at(peer, peer.peer_id) > grant, f"{peer.name} served and must have earned"


def test_chat_command_through_the_mesh_prints_the_local_reply(mesh: Mesh, tmp_path: Path) -> None:
    chain = LocalChain(mesh.model)
    tokenizer = ModelTokenizer(mesh.model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPTS[0]}]))
    expected = generate(chain, tokenizer, ids, SamplingParams(max_tokens=8)).text
    args = [
        "chat",
        PROMPTS[0],
        "--model",
        str(mesh.model),
        "--signal",
        mesh.nodes[0].url,
        "--max-tokens",
        "8",
    ]
    result = run_cli([*args, "--data-dir", str(tmp_path / "client")], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert (tmp_path / "client" / "ledger.sqlite3").exists(), "the client keeps its identity and ledger"

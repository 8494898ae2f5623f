"""Push routing in memory (docs/mesh.md, "Push along the route"): peers push a step's output to the next
peer, the tokens stay those of the local chain, failures of the next peer are that peer's, and what a
client or a peer can make a pushing peer do is bounded. The attacks speak only the wire protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from python_peer.core import manifest as names
from python_peer.core.push_route import PUSH_CLIENT_KEY, PUSH_ERROR_KEY, PUSH_KEY, PUSHED_BY_KEY
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType, WireTensor
from python_peer.errors import LinkClosedError
from python_peer.hop import STEP_OUTPUT, FrameHandler
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.relay import PushRelay
from python_peer.server import SpanServer
from python_peer.spot_check import SpotCheckPolicy
from python_peer.tensors import from_wire, to_wire
from tests.fast.conftest import FAST, ToyMesh, greedy
from tests.support.fakes import MemoryLink
from tests.support.liars import Liar
from tests.support.mesh import reference_greedy
from tests.support.waiting import wait_for_async

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 10
STEPS = NEW_TOKENS  # the prefill and NEW_TOKENS - 1 decode steps


class Spanned:
    """``handler`` (a test's faulty peer) with the span lookups of the ``server`` behind it."""

    def __init__(self, handler: FrameHandler, server: SpanServer) -> None:
        self.handler, self.server = handler, server

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        return self.server.session_span(client, session)

    async def handle(self, client: str, frame: Frame) -> Frame:
        # What the relay pushes is what this faulty peer answers, lie and all: its server behind does not
        # hand its true output on before the answer (``hop.STEP_OUTPUT``).
        hook = STEP_OUTPUT.set(None)
        try:
            return await self.handler.handle(client, frame)
        finally:
            STEP_OUTPUT.reset(hook)

    def close_client(self, client: str) -> None:
        self.handler.close_client(client)


class PushMesh:
    """A ToyMesh whose peers push (through ``relay``, a ``PushRelay`` by default); ``relays`` by peer id."""

    def __init__(self, mesh: ToyMesh) -> None:
        self.mesh = mesh
        self.relays: dict[str, PushRelay] = {}

    def peer(
        self,
        span: tuple[int, int],
        *,
        throughput: float = 1000.0,
        faulty: Callable[[str, SpanServer], FrameHandler] | None = None,
        relay: type[PushRelay] = PushRelay,
        ledger: LedgerService | None = None,
        **options: Any,
    ) -> str:
        """A pushing peer serving ``span``; ``options`` go to its ``relay``."""

        def wrap(peer_id: str, server: SpanServer) -> FrameHandler:
            handler = Spanned(faulty(peer_id, server), server) if faulty is not None else server
            self.relays[peer_id] = relay(handler, peer_id, self.mesh.network.connector(peer_id), **options)
            return self.relays[peer_id]

        return self.mesh.peer(span, throughput=throughput, ledger=ledger, wrap=wrap)


@pytest.fixture
def push(toy_mesh: ToyMesh) -> PushMesh:
    return PushMesh(toy_mesh)


async def test_pushed_route_gives_the_local_tokens_and_each_peer_pushes_every_step(push: PushMesh) -> None:
    m = push.mesh
    first, middle, last = push.peer((0, 1)), push.peer((1, 3)), push.peer((3, 4))
    client = m.client()
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert [h[0] for h in session.route] == [first, middle, last]
    assert (push.relays[first].pushed, push.relays[middle].pushed, push.relays[last].pushed) == (
        STEPS,
        STEPS,
        0,
    )
    assert session.failovers == 0 and session.pushing
    # The client kept every hop's output (replay, spot checks, receipts) and signed answers of each.
    assert all(len(h.outputs) == STEPS and all(a is not None for a in h.answers) for h in session.hops)


class Recorded:
    """An identity that notes each signature in ``events`` (the span server signs its answers with it)."""

    def __init__(self, identity: Identity, events: list[str]) -> None:
        self.identity, self.events, self.peer_id = identity, events, identity.peer_id

    def sign(self, message: bytes) -> str:
        self.events.append("signed")
        return self.identity.sign(message)


class RecordedPusher(PushRelay):
    """A pushing peer that notes each push in ``events``."""

    events: list[str]

    async def _push(self, client: str, route: Any, frame: Frame, hidden: WireTensor) -> str | None:
        self.events.append("pushed")
        return await super()._push(client, route, frame, hidden)


async def test_a_step_is_pushed_on_before_its_answer_is_signed(push: PushMesh) -> None:
    """The push is the critical path: it leaves once the blocks ran, before the RESULT is digested and
    signed; what was pushed is what the RESULT says (the client keeps pushing, nobody failed)."""
    m = push.mesh
    events: list[str] = []

    def wrap(peer_id: str, server: SpanServer) -> FrameHandler:
        assert server.identity is not None
        server.identity = Recorded(server.identity, events)  # type: ignore[assignment]
        relay = RecordedPusher(server, peer_id, m.network.connector(peer_id))
        relay.events = events
        return relay

    first = m.peer((0, 1), wrap=wrap)
    push.peer((1, 3)), push.peer((3, 4))
    tokens, session = await greedy(m.client(), PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert session.route[0][0] == first and session.pushing and session.failovers == 0
    steps = [e for e in events if e in ("pushed", "signed")]
    assert steps == ["pushed", "signed"] * STEPS, steps


async def test_hop_by_hop_when_the_client_does_not_push(push: PushMesh) -> None:
    m = push.mesh
    first = push.peer((0, 1))
    push.peer((1, 3)), push.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, push=False))
    tokens, _ = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert push.relays[first].pushed == 0


async def test_a_mixed_route_pushes_only_between_peers_that_push(push: PushMesh) -> None:
    """A peer that does not say ``push`` at OPEN (a browser node) is called hop by hop; the rest push."""
    m = push.mesh
    m.peer((0, 1))  # a plain server: no relay
    middle, last = push.peer((1, 3)), push.peer((3, 4))
    tokens, session = await greedy(m.client(), PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert [h.pushes for h in session.hops] == [False, True, True]
    assert push.relays[middle].pushed == STEPS and push.relays[last].pushed == 0


class DiesAt:
    def __init__(self, m: ToyMesh, peer_id: str, server: SpanServer, step: int) -> None:
        self.m, self.peer_id, self.server, self.step = m, peer_id, server, step

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.FORWARD and frame.step == self.step:
            self.m.network.kill(self.peer_id)
            raise LinkClosedError("this peer died")
        return await self.server.handle(client, frame)

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


async def test_the_middle_peer_dying_mid_generation_is_its_own_failure_and_the_spare_takes_over(
    push: PushMesh,
) -> None:
    m = push.mesh
    push.peer((0, 1))
    doomed = push.peer((1, 3), throughput=5000, faulty=lambda pid, s: DiesAt(m, pid, s, step=4))
    spare = push.peer((1, 3))
    push.peer((3, 4))
    client = m.client()
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert session.failovers == 1 and f"peer {doomed[:16]}: LinkClosedError" in session.last_failure
    assert client.bans.banned(doomed) and client.bans._until.keys() == {doomed}
    assert spare in [h[0] for h in session.route]
    assert push.relays[spare].pushed > 0  # the replacement is pushed through too


class Slow:
    """Answers FORWARD steps from ``step`` on only after ``delay_s`` (alive: it answers pings)."""

    def __init__(self, server: SpanServer, step: int, delay_s: float) -> None:
        self.server, self.step, self.delay_s = server, step, delay_s

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.FORWARD and frame.step >= self.step:
            await asyncio.sleep(self.delay_s)
        return await self.server.handle(client, frame)

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


async def test_a_next_peer_too_slow_is_its_own_failure(push: PushMesh) -> None:
    m = push.mesh
    push.peer((0, 1))
    slow = push.peer((1, 3), throughput=5000, faulty=lambda pid, s: Slow(s, step=3, delay_s=30))
    push.peer((1, 3))
    push.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, request_timeout_s=1.5, push_grace_s=0.3))
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert session.failovers == 1 and f"peer {slow[:16]}: TimeoutError" in session.last_failure
    assert client.bans._until.keys() == {slow}


class CorruptPusher(PushRelay):
    """A pushing peer that returns its true output to the client but pushes another one on."""

    async def _push(self, client: str, route: Any, frame: Frame, hidden: WireTensor) -> str | None:
        return await super()._push(client, route, frame, to_wire(names.HIDDEN_IN, from_wire(hidden) + 1.0))


async def test_a_pusher_pushing_other_than_it_returns_stops_pushing_and_bans_no_one(push: PushMesh) -> None:
    m = push.mesh
    liar = m.peer((0, 1), wrap=lambda pid, s: CorruptPusher(s, pid, m.network.connector(pid)))
    push.peer((1, 3)), push.peer((3, 4))
    client = m.client()
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert not session.pushing and session.failovers == 1  # hop by hop from then on
    assert not client.bans._until  # the next peer signed what it got: it cannot be told from the liar
    assert session.route[0][0] == liar


async def test_a_lying_middle_peer_that_pushes_its_lie_is_caught_by_spot_checks(push: PushMesh) -> None:
    m = push.mesh
    push.peer((0, 1))
    liar = push.peer((1, 3), throughput=9000, faulty=lambda pid, s: Liar(s, "zeros"))
    push.peer((1, 3)), push.peer((1, 3))  # a second opinion and a third to settle
    push.peer((3, 4))
    checked = dataclasses.replace(FAST, spot_checks=SpotCheckPolicy(seed=3))
    client = m.client(config=checked)
    await greedy(client, PROMPT, 4)  # a new peer is checked in every session
    assert client.spot_checks is not None and liar in client.spot_checks.caught
    assert push.relays[liar].pushed > 0  # it did push (its lie) on


# --- attacks, over raw links, speaking the documented protocol only --------------------------------------


def forward(session: bytes, step: int, hidden: np.ndarray, meta: dict[str, Any] | None = None) -> Frame:
    seq = hidden.shape[1]
    tensors = (
        to_wire(names.HIDDEN_IN, hidden),
        to_wire(names.ATTENTION_MASK, np.ones((hidden.shape[0], seq), np.int64)),
        to_wire(names.POSITION_IDS, np.arange(seq, dtype=np.int64)[None].repeat(hidden.shape[0], 0)),
    )
    return Frame(FrameType.FORWARD, session, step, meta=meta or {}, tensors=tensors)


async def ask(link: MemoryLink, frame: Frame) -> Frame:
    await link.send(frame)
    async with asyncio.timeout(5):
        return await link.recv()


class Raw:
    """A client speaking frames over raw links."""

    def __init__(self, push: PushMesh) -> None:
        self.push = push
        self.id = Identity.generate().peer_id
        self.links: dict[str, MemoryLink] = {}

    async def open(self, peer: str, start: int, end: int, *, batch: int = 1) -> bytes:
        if peer not in self.links:
            self.links[peer] = await self.push.mesh.network.connect(self.id, peer)
        session = os.urandom(16)
        meta = {
            "model": self.push.mesh.manifest.name,
            "start": start,
            "end": end,
            "batch": batch,
            "max_length": 16,
        }
        answer = await ask(self.links[peer], Frame(FrameType.OPEN, session, 0, meta=meta))
        assert answer.type is FrameType.RESULT and answer.meta[PUSH_KEY] is True
        return session


def hidden(batch: int = 1, seq: int = 2) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(batch, seq, 8)).astype(np.float32)


def entry(peer: str, session: bytes, start: int, end: int, step: int = 0) -> dict[str, Any]:
    return {"peer": peer, "session": session.hex(), "step": step, "start": start, "end": end}


@pytest.fixture
async def raw(push: PushMesh) -> tuple[Raw, str, str, str]:
    a, b, c = push.peer((0, 1)), push.peer((1, 3)), push.peer((3, 4))
    return Raw(push), a, b, c


def hidden_size(push: PushMesh) -> int:
    return int(push.mesh.manifest.config["hidden_size"])


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(lambda a, b, c, me, s: [entry(a, s, 1, 3)], id="loop-through-itself"),
        pytest.param(lambda a, b, c, me, s: [entry(b, s, 1, 3), entry(b, s, 3, 4)], id="a-peer-twice"),
        pytest.param(lambda a, b, c, me, s: [entry(me, s, 1, 3)], id="the-client-itself"),
        pytest.param(
            lambda a, b, c, me, s: [entry(b, s, 1, 3), entry(c, s, 3, 4), entry(a, s, 4, 5)],
            id="past-the-model",
        ),
        pytest.param(lambda a, b, c, me, s: [entry(b, s, 2, 3)], id="a-gap"),
        pytest.param(lambda a, b, c, me, s: [entry(b, s, 1, 1)], id="empty-span"),
        pytest.param(lambda a, b, c, me, s: [{**entry(b, s, 1, 3), "extra": 1}], id="unknown-key"),
        pytest.param(lambda a, b, c, me, s: [{**entry(b, s, 1, 3), "session": "zz"}], id="bad-session"),
        pytest.param(lambda a, b, c, me, s: [{**entry(b, s, 1, 3), "step": -1}], id="bad-step"),
        pytest.param(lambda a, b, c, me, s: {"peer": b}, id="not-a-list"),
    ],
)
async def test_a_bad_route_is_refused_before_anything_runs_and_the_session_goes_on(
    push: PushMesh, raw: tuple[Raw, str, str, str], route: Any
) -> None:
    client, a, b, c = raw
    s_a = await client.open(a, 0, 1)
    s_b = await client.open(b, 1, 3)
    h = hidden(seq=2)[..., : hidden_size(push)]
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: route(a, b, c, client.id, s_b)}))
    assert answer.type is FrameType.ERROR and answer.meta["code"] == "bad_frame"
    assert push.mesh.servers[a].tokens_served == 0 and push.relays[a].pushed == 0
    ok = await ask(client.links[a], forward(s_a, 0, h))  # step 0 still expected: the session is intact
    assert ok.type is FrameType.RESULT


async def test_a_push_to_a_third_party_without_a_session_of_the_client_runs_nothing_there(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """The client names a peer it has no session on: the pusher sends one frame (the output it was paid
    to compute), the third party refuses it and runs nothing."""
    client, a, b, _ = raw
    s_a = await client.open(a, 0, 1)
    client.links[b] = await push.mesh.network.connect(client.id, b)  # a link, but no session there
    h = hidden(seq=2)[..., : hidden_size(push)]
    nowhere = os.urandom(16)
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, nowhere, 1, 3)]}))
    assert answer.type is FrameType.RESULT and PUSH_ERROR_KEY not in answer.meta
    assert push.relays[a].pushed == 1
    async with asyncio.timeout(5):
        refusal = await client.links[b].recv()
    assert refusal.type is FrameType.ERROR and refusal.session == nowhere
    assert refusal.meta["code"] == "unknown_session" and refusal.meta[PUSHED_BY_KEY] == a
    assert push.mesh.servers[b].tokens_served == 0


async def test_a_push_into_a_forged_session_is_refused_to_the_client_naming_the_pusher(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    client, a, b, _ = raw
    s_a = await client.open(a, 0, 1)
    s_b = await client.open(b, 1, 3)
    h = hidden(seq=2)[..., : hidden_size(push)]
    forged = os.urandom(16)
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, forged, 1, 3)]}))
    assert answer.type is FrameType.RESULT
    async with asyncio.timeout(5):
        refusal = await client.links[b].recv()
    assert refusal.type is FrameType.ERROR and refusal.session == forged
    assert refusal.meta["code"] == "unknown_session" and refusal.meta[PUSHED_BY_KEY] == a
    assert push.mesh.servers[b].tokens_served == 0
    # The real session on b is untouched: step 0 is still what it expects.
    ok = await ask(client.links[b], forward(s_b, 0, h))
    assert ok.type is FrameType.RESULT


async def test_a_push_of_the_wrong_shape_is_refused_naming_the_pusher(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    client, a, b, _ = raw
    s_a = await client.open(a, 0, 1)
    s_b = await client.open(b, 1, 3, batch=2)  # a batch the pushed output does not have
    h = hidden(seq=2)[..., : hidden_size(push)]
    await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, s_b, 1, 3)]}))
    async with asyncio.timeout(5):
        refusal = await client.links[b].recv()
    assert refusal.type is FrameType.ERROR and refusal.meta["code"] == "bad_shape"
    assert refusal.meta[PUSHED_BY_KEY] == a and push.mesh.servers[b].tokens_served == 0


async def test_a_peer_cannot_push_into_a_session_of_a_client_with_no_link_here(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """A peer pushing on behalf of a client that never opened anything here gets the refusal itself."""
    _, _, b, _ = raw
    rogue = Identity.generate().peer_id
    link = await push.mesh.network.connect(rogue, b)
    h = hidden(seq=2)[..., : hidden_size(push)]
    victim = Identity.generate().peer_id
    answer = await ask(link, forward(os.urandom(16), 0, h, {PUSH_CLIENT_KEY: victim}))
    assert answer.type is FrameType.ERROR and answer.meta["code"] == "unknown_session"
    bad = await ask(link, forward(os.urandom(16), 1, h, {PUSH_CLIENT_KEY: rogue}))
    assert bad.type is FrameType.ERROR and bad.meta["code"] == "bad_frame"
    assert push.mesh.servers[b].tokens_served == 0


async def test_pushes_to_many_peers_keep_a_bounded_number_of_links(push: PushMesh) -> None:
    m = push.mesh
    a = push.peer((0, 1), max_links=2)
    others = [push.peer((1, 3)) for _ in range(5)]
    client = Raw(push)
    s_a = await client.open(a, 0, 1)
    h = hidden(seq=1)[..., : hidden_size(push)]
    for step, other in enumerate(others):
        answer = await ask(
            client.links[a], forward(s_a, step, h[:, :1], {PUSH_KEY: [entry(other, os.urandom(16), 1, 3)]})
        )
        assert answer.type is FrameType.RESULT
    assert push.relays[a].pushed == 5 and len(push.relays[a]._next) <= 2
    # A peer that cannot be reached makes the push fail, said in the RESULT; the step itself is served.
    m.network.kill(others[0])
    answer = await ask(
        client.links[a], forward(s_a, 5, h[:, :1], {PUSH_KEY: [entry(others[0], os.urandom(16), 1, 3)]})
    )
    assert answer.type is FrameType.RESULT and "could not push" in answer.meta[PUSH_ERROR_KEY]


async def test_a_push_error_makes_the_client_send_the_step_itself(push: PushMesh) -> None:
    """A first peer that cannot reach the next one: the client sends the step there itself, tokens same."""
    m = push.mesh
    first = push.peer((0, 1), connect_timeout_s=0.2)
    push.peer((1, 3)), push.peer((3, 4))
    relay = push.relays[first]

    class Unreachable:
        async def connect(self, peer_id: str) -> Any:
            raise LinkClosedError("no route to that peer from here")

    relay.connector = Unreachable()
    tokens, session = await greedy(m.client(), PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert session.failovers == 0 and relay.pushed == 0


async def test_a_peers_sessions_outlive_one_of_its_links_closing(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """A pusher's link to the next peer (closed when evicted) is not the link it opened sessions on as a
    client: the sessions of a remote go only when its last link here goes."""
    client, a, _, _ = raw
    s_a = await client.open(a, 0, 1)
    second = await push.mesh.network.connect(client.id, a)
    await client.links[a].aclose()
    h = hidden(seq=2)[..., : hidden_size(push)]
    answer = await ask(second, forward(s_a, 0, h))
    assert answer.type is FrameType.RESULT
    await second.aclose()
    await wait_for_async(lambda: push.mesh.servers[a].sessions == {}, 5, what="the sessions dropped")


async def test_a_pushed_route_leading_back_to_its_pusher_is_refused(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """A pusher that routes the step back to itself (a loop through the next peer) is refused there,
    before anything runs; the client hears of it, naming the pusher."""
    client, _, b, _ = raw
    s_b = await client.open(b, 1, 3)
    rogue = Identity.generate().peer_id
    link = await push.mesh.network.connect(rogue, b)
    h = hidden(seq=2)[..., : hidden_size(push)]
    loop = {PUSH_CLIENT_KEY: client.id, PUSH_KEY: [entry(rogue, os.urandom(16), 3, 4)]}
    await link.send(forward(s_b, 0, h, loop))
    async with asyncio.timeout(5):
        refusal = await client.links[b].recv()
    assert refusal.type is FrameType.ERROR and refusal.meta["code"] == "bad_frame"
    assert refusal.meta[PUSHED_BY_KEY] == rogue and "loop" in refusal.meta["message"]
    assert push.mesh.servers[b].tokens_served == 0

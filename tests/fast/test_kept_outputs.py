"""Kept outputs in memory (docs/mesh.md, "Kept outputs"): a peer that pushes a step's output on answers the
client with its signed answer alone and keeps the output until the session closes; the client fetches it
only when it needs it (a replay, a spot check). The tokens stay those of the local chain; a peer that will
not hand over what it kept, or hands over something else, is banned and unpaid, and a failover that loses
its replay inputs that way replays the whole route. The attacks speak only the wire protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from python_peer.core import manifest as names
from python_peer.core.answers import ANSWER_META_KEY, wire_digest
from python_peer.core.push_route import KEEP_KEY, PUSH_KEY
from python_peer.core.receipts import ReceiptBody
from python_peer.core.wire import ErrorCode, Frame, FrameType, WireTensor, error_frame
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.relay import PushRelay
from python_peer.spot_check import SpotCheckPolicy
from python_peer.tensors import from_wire, to_wire
from tests.fast.conftest import FAST, ToyMesh, greedy
from tests.fast.test_push import DiesAt, PushMesh, Raw, ask, entry, forward, hidden
from tests.support.fakes import MemoryLink
from tests.support.mesh import reference_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 10
CHECKED = dataclasses.replace(FAST, spot_checks=SpotCheckPolicy(seed=3))  # new peers: checked every session


class Withholder(PushRelay):
    """A pushing peer that keeps its outputs, then answers a FETCH with a refusal (``swap``: with another
    tensor than the one it signed)."""

    swap = False

    def _fetch(self, client: str, frame: Frame) -> Frame:
        answer = super()._fetch(client, frame)
        if answer.type is not FrameType.RESULT:
            return answer
        if self.swap:
            other = to_wire(names.HIDDEN_OUT, from_wire(answer.tensors[0]) + 1.0)
            return dataclasses.replace(answer, tensors=(other,))
        return error_frame(frame.session, frame.step, ErrorCode.UNKNOWN_SESSION, "lost it, sorry")


def width(mesh: PushMesh) -> int:
    return int(mesh.mesh.manifest.config["hidden_size"])


@pytest.fixture
def mesh(toy_mesh: ToyMesh) -> PushMesh:
    return PushMesh(toy_mesh)


async def test_pushing_peers_keep_their_outputs_until_the_session_closes(mesh: PushMesh) -> None:
    m = mesh.mesh
    first, middle, last = mesh.peer((0, 1)), mesh.peer((1, 3)), mesh.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, spot_checks=None))
    session = await client.open(1, len(PROMPT) + NEW_TOKENS)
    logits = await session.step(np.array([PROMPT]), np.ones((1, len(PROMPT)), dtype=np.int64))
    tokens = [int(np.argmax(logits[0, -1]))]
    for _ in range(NEW_TOKENS - 1):
        logits = await session.step(np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
        tokens.append(int(np.argmax(logits[0, -1])))
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    hops = session.hops
    assert [h.peer_id for h in hops] == [first, middle, last] and session.pushing
    # The two peers that push kept every output (signed answers only came back); the last answered in full.
    assert all(o is None for h in hops[:2] for o in h.outputs) and all(a is not None for a in hops[1].answers)
    assert all(isinstance(o, np.ndarray) for o in hops[2].outputs)
    positions = len(PROMPT) + NEW_TOKENS - 1
    each = positions * width(mesh) * 2  # bytes as float16 (float32 carries twice as many)
    assert each // 2 <= mesh.relays[first].kept_bytes <= 2 * each and mesh.relays[last].kept_bytes == 0
    # What the client fetches is what the peers signed (the checks are in RouteHop.fetch) and what the
    # next peer was pushed: the middle hop's history, fetched, is the first hop's outputs.
    outputs = await hops[0].fetch_kept(FAST.request_timeout_s)
    history = await hops[1].fetch_history(FAST.request_timeout_s)
    assert all(np.array_equal(o, h[0]) for o, h in zip(outputs, history, strict=True))
    await session.close()
    assert all(r.kept_bytes == 0 for r in mesh.relays.values())  # CLOSE frees them


async def test_without_keep_every_output_comes_back(mesh: PushMesh) -> None:
    m = mesh.mesh
    mesh.peer((0, 1)), mesh.peer((1, 3)), mesh.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, keep_pushed=False))
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert all(isinstance(o, np.ndarray) for h in session.hops for o in h.outputs)
    assert all(r.kept_bytes == 0 and r.pushed > 0 for r in list(mesh.relays.values())[:2])


class KeepAdder(PushRelay):
    """A pushing peer that asks the next peer to keep its output though the client did not."""

    async def _push(self, client: str, route: Any, frame: Frame, hidden: WireTensor) -> str | None:
        forced = dataclasses.replace(frame, meta={**frame.meta, KEEP_KEY: True})
        return await super()._push(client, route, forced, hidden)


async def test_a_pusher_asking_the_next_peer_to_keep_its_output_unasked_bans_no_one(mesh: PushMesh) -> None:
    """The next peer keeps and answers with its signature alone: the client fetches what it needs."""
    m = mesh.mesh
    mesh.peer((0, 1), relay=KeepAdder, throughput=9000)
    middle = mesh.peer((1, 3))
    mesh.peer((3, 4))
    client = m.client(config=dataclasses.replace(CHECKED, keep_pushed=False))
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert not client.bans._until and session.failovers == 0 and session.pushing
    assert middle in [h[0] for h in session.route] and mesh.relays[middle].kept_bytes == 0  # closed


class Unsigning(PushRelay):
    """A pushing peer that answers without its output and without signing a digest of it either: a claim
    to have kept something it never committed to."""

    def _keep(self, client: str, frame: Frame, answer: Frame) -> Frame:
        lean = super()._keep(client, frame, answer)
        meta = {k: v for k, v in lean.meta.items() if k != ANSWER_META_KEY}
        return dataclasses.replace(lean, meta=meta)


async def test_an_answer_with_neither_output_nor_signature_is_a_hop_failure(mesh: PushMesh) -> None:
    m = mesh.mesh
    cheat = mesh.peer((0, 1), relay=Unsigning, throughput=9000)
    mesh.peer((0, 1)), mesh.peer((1, 3)), mesh.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, spot_checks=None))
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert client.bans.banned(cheat) and cheat not in [h[0] for h in session.route]
    assert "BadAnswerError: unsigned" in session.last_failure


@pytest.mark.parametrize("swap", [False, True], ids=["refuses", "swaps"])
async def test_a_peer_that_will_not_hand_over_what_it_kept_for_a_spot_check_is_banned_and_unpaid(
    mesh: PushMesh, make_ledger: Callable[..., LedgerService], swap: bool
) -> None:
    m = mesh.mesh
    relay = type("W", (Withholder,), {"swap": swap})
    mesh.peer((0, 1), ledger=make_ledger())
    cheat = mesh.peer((1, 3), relay=relay, throughput=9000, ledger=make_ledger())
    mesh.peer((1, 3), ledger=make_ledger()), mesh.peer((3, 4), ledger=make_ledger())
    own = make_ledger()
    client = m.client(own, config=CHECKED)
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert cheat in [h[0] for h in session.route] and client.bans.banned(cheat)
    receipts = [e.body.receipt for e in own.store.entries() if isinstance(e.body, ReceiptBody)]
    assert cheat not in {r.server for r in receipts}, "the client countersigned nothing for it"
    assert {r.server for r in receipts} == {h[0] for h in session.route} - {cheat}  # the others are paid


async def test_a_failover_whose_replay_inputs_are_withheld_replays_the_whole_route(mesh: PushMesh) -> None:
    """The middle peer dies; the first peer, which kept what the middle peer was pushed (its replay),
    refuses it: both are banned, and the route is replayed from the client's own embeddings."""
    m = mesh.mesh
    cheat = mesh.peer((0, 1), relay=Withholder, throughput=9000)
    mesh.peer((0, 1))
    doomed = mesh.peer((1, 3), throughput=9000, faulty=lambda pid, s: DiesAt(m, pid, s, step=4))
    mesh.peer((1, 3)), mesh.peer((3, 4))
    client = m.client(config=dataclasses.replace(FAST, spot_checks=None))
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    assert client.bans.banned(doomed) and client.bans.banned(cheat) and session.failovers == 2
    assert not {cheat, doomed} & {h[0] for h in session.route} and session.pushing


# --- FETCH over raw links ---------------------------------------------------------------------------------


@pytest.fixture
async def kept(mesh: PushMesh) -> tuple[Raw, str, bytes, Frame]:
    """A raw client's step pushed from ``a`` to ``b`` with ``keep``: a's session and its signed answer."""
    a, b = mesh.peer((0, 1)), mesh.peer((1, 4))
    client = Raw(mesh)
    s_a, s_b = await client.open(a, 0, 1), await client.open(b, 1, 4)
    h = hidden(seq=3)[..., : width(mesh)]
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, s_b, 1, 4)], KEEP_KEY: True}))
    async with asyncio.timeout(5):
        last = await client.links[b].recv()  # b pushes nothing: it answers in full
    assert last.type is FrameType.RESULT and last.tensor(names.HIDDEN_OUT).shape == (1, 3, width(mesh))
    return client, a, s_a, answer


async def test_a_kept_output_is_fetched_as_signed(
    mesh: PushMesh, kept: tuple[Raw, str, bytes, Frame]
) -> None:
    client, a, s_a, answer = kept
    assert answer.type is FrameType.RESULT and answer.tensors == ()  # the signed answer alone
    signed = answer.meta[ANSWER_META_KEY]["body"]
    fetched = await ask(client.links[a], Frame(FrameType.FETCH, s_a, 0))
    assert fetched.type is FrameType.RESULT and fetched.session == s_a and fetched.step == 0
    assert wire_digest(fetched.tensor(names.HIDDEN_OUT)) == signed["output"]
    # A step never kept, or one after the session's CLOSE: refused, nothing else changes.
    never = await ask(client.links[a], Frame(FrameType.FETCH, s_a, 1))
    assert never.type is FrameType.ERROR and never.meta["code"] == "unknown_session"
    await ask(client.links[a], Frame(FrameType.CLOSE, s_a, 1))
    gone = await ask(client.links[a], Frame(FrameType.FETCH, s_a, 0))
    assert gone.type is FrameType.ERROR and mesh.relays[a].kept_bytes == 0


async def test_another_client_cannot_fetch_what_was_kept_for_one(
    mesh: PushMesh, kept: tuple[Raw, str, bytes, Frame]
) -> None:
    """Knowing (or guessing) the session id is not enough: outputs are kept per client link."""
    _, a, s_a, _ = kept
    thief = Identity.generate().peer_id
    link: MemoryLink = await mesh.mesh.network.connect(thief, a)
    stolen = await ask(link, Frame(FrameType.FETCH, s_a, 0))
    assert stolen.type is FrameType.ERROR and stolen.meta["code"] == "unknown_session"
    assert mesh.relays[a].kept_bytes > 0


async def test_a_client_link_closing_frees_what_was_kept_for_it(
    mesh: PushMesh, kept: tuple[Raw, str, bytes, Frame]
) -> None:
    client, a, _, _ = kept
    assert mesh.relays[a].kept_bytes > 0
    client.links[a].close()
    async with asyncio.timeout(5):
        while mesh.relays[a].kept_bytes:
            await asyncio.sleep(0.01)


async def test_a_peer_out_of_room_to_keep_answers_in_full(mesh: PushMesh) -> None:
    a, b = mesh.peer((0, 1)), mesh.peer((1, 4))
    mesh.relays[a].max_kept_bytes = 10  # less than one output
    client = Raw(mesh)
    s_a, s_b = await client.open(a, 0, 1), await client.open(b, 1, 4)
    h = hidden(seq=3)[..., : width(mesh)]
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, s_b, 1, 4)], KEEP_KEY: True}))
    assert answer.type is FrameType.RESULT and answer.tensor(names.HIDDEN_OUT).shape == (
        1,
        3,
        width(mesh),
    )
    assert mesh.relays[a].kept_bytes == 0


async def test_what_was_kept_for_a_session_evicted_idle_makes_room_for_others(mesh: PushMesh) -> None:
    """A client that never closes its sessions and keeps its link open: once such a session is evicted
    idle, its kept outputs give way to another session's when room runs out, not only when the link
    closes. While it is open, they stay (and the other is answered in full)."""
    a, b = mesh.peer((0, 1)), mesh.peer((1, 4))
    client = Raw(mesh)
    h = hidden(seq=3)[..., : width(mesh)]

    async def pushed_step() -> tuple[bytes, Frame]:
        s_a, s_b = await client.open(a, 0, 1), await client.open(b, 1, 4)
        answer = await ask(
            client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, s_b, 1, 4)], KEEP_KEY: True})
        )
        async with asyncio.timeout(5):
            assert (await client.links[b].recv()).type is FrameType.RESULT  # b's answer
        return s_a, answer

    first, answer = await pushed_step()
    one = mesh.relays[a].kept_bytes
    assert answer.tensors == () and one > 0
    mesh.relays[a].max_kept_bytes = one  # room for one output
    _, answer = await pushed_step()
    assert answer.tensor(names.HIDDEN_OUT).shape == (1, 3, width(mesh))  # the first session is still open
    assert mesh.relays[a].kept_bytes == one

    server = mesh.mesh.servers[a]
    assert server.evict_idle(now=time.monotonic() + 2 * server.config.idle_timeout_s) == 2
    third, answer = await pushed_step()
    assert answer.tensors == () and mesh.relays[a].kept_bytes == one  # kept, in the evicted one's room
    gone = await ask(client.links[a], Frame(FrameType.FETCH, first, 0))
    assert gone.type is FrameType.ERROR and gone.meta["code"] == "unknown_session"
    kept = await ask(client.links[a], Frame(FrameType.FETCH, third, 0))
    assert wire_digest(kept.tensor(names.HIDDEN_OUT)) == answer.meta[ANSWER_META_KEY]["body"]["output"]


async def test_keep_without_a_push_keeps_nothing(mesh: PushMesh) -> None:
    """A peer keeps only what it pushes on: the client asked ``keep`` of a step it sent alone."""
    a = mesh.peer((0, 1))
    mesh.peer((1, 4))
    client = Raw(mesh)
    s_a = await client.open(a, 0, 1)
    h = hidden(seq=2)[..., : width(mesh)]
    answer = await ask(client.links[a], forward(s_a, 0, h, {KEEP_KEY: True}))
    assert answer.type is FrameType.RESULT and len(answer.tensors) == 1 and mesh.relays[a].kept_bytes == 0

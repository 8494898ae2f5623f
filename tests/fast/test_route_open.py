"""Opening a route: every hop at once (``route_open.py``), with the failure semantics of one at a time.

Each peer here is wrapped to hold its answer to ``OPEN`` a moment (``Gated``), so the hops' opens
overlap in time whenever they are sent together; a hop failing meanwhile is banned and routed around,
the sessions the others opened are reused by the next route where it has the same peer and span (no
new hold: a session closed unused would bind its hold's credit until it expires) and closed where it
does not, and the tokens are the local chain's. A peer refusing payment is routed around too, asked once;
with no other peer for its blocks the chat ends with every session closed. Everything goes through the documented frames (``OPEN``, ``CLOSE``, ``GOSSIP`` pushes), in
memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from python_peer.core.errors import PaymentRequiredError
from python_peer.core.holds import open_holds
from python_peer.core.wire import ErrorCode, Frame, FrameFlags, FrameType, error_frame
from python_peer.errors import MeshError
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import now_ms
from python_peer.server import SpanServer
from tests.fast.conftest import ToyMesh, greedy
from tests.support.fakes import MemoryNetwork
from tests.support.holds import written_holds
from tests.support.mesh import reference_greedy as local_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 8
HOLD_S = 0.2  # how long each peer sits on an OPEN


@dataclass
class Opens:
    """What every peer of a test saw of OPEN and CLOSE, and how many OPENs were in flight at once."""

    in_flight: int = 0
    most: int = 0
    opened: set[tuple[str, bytes]] = field(default_factory=set)  # (peer, session) answered RESULT
    closed: set[tuple[str, bytes]] = field(default_factory=set)


class Gated:
    """A peer that holds each OPEN ``hold_s`` before answering it, then answers as its server does, or
    with ``refuse`` (an error code) instead, calling ``before_refusing`` first if given; it answers the
    FORWARDs ``fails`` picks with an internal error."""

    def __init__(
        self,
        peer_id: str,
        server: SpanServer,
        opens: Opens,
        refuse: ErrorCode | None = None,
        *,
        hold_s: float = HOLD_S,
        before_refusing: Callable[[], None] | None = None,
        fails: Callable[[Frame], bool] | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.server = server
        self.opens = opens
        self.refuse = refuse
        self.hold_s = hold_s
        self.before_refusing = before_refusing
        self.fails = fails

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.CLOSE:
            self.opens.closed.add((self.peer_id, frame.session))
        if frame.type is FrameType.FORWARD and self.fails is not None and self.fails(frame):
            return error_frame(frame.session, frame.step, ErrorCode.INTERNAL, "failed by the test")
        if frame.type is not FrameType.OPEN:
            return await self.server.handle(client, frame)
        self.opens.in_flight += 1
        self.opens.most = max(self.opens.most, self.opens.in_flight)
        try:
            await asyncio.sleep(self.hold_s)
        finally:
            self.opens.in_flight -= 1
        if self.refuse is not None:
            if self.before_refusing is not None:
                self.before_refusing()
            return error_frame(frame.session, frame.step, self.refuse, "refused by the test")
        answer = await self.server.handle(client, frame)
        if answer.type is FrameType.RESULT:
            self.opens.opened.add((self.peer_id, frame.session))
        return answer

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


def gated(
    opens: Opens,
    refuse: ErrorCode | None = None,
    *,
    hold_s: float = HOLD_S,
    before_refusing: Callable[[], None] | None = None,
    fails: Callable[[Frame], bool] | None = None,
) -> Callable[[str, SpanServer], Gated]:
    return lambda peer_id, server: Gated(
        peer_id, server, opens, refuse, hold_s=hold_s, before_refusing=before_refusing, fails=fails
    )


def replays(frame: Frame) -> bool:
    return bool(frame.flags & FrameFlags.REPLAY)


def sessions_of(opens: Opens, peer_id: str) -> set[bytes]:
    """The sessions ``peer_id`` opened."""
    return {session for peer, session in opens.opened if peer == peer_id}


def drop_links(network: MemoryNetwork, peer_id: str) -> None:
    """Close every link to ``peer_id`` (as a dropped connection does); the peer stays up."""
    for link in network.links:
        if peer_id in (link.local_id, link.remote_id):
            link.close()


async def test_every_hop_of_a_route_is_opened_at_once(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    for span in ((0, 1), (1, 3), (3, 4)):
        m.peer(span, wrap=gated(opens))
    client = m.client()

    loop = asyncio.get_running_loop()
    started = loop.time()
    session = await client.open(1, len(PROMPT) + NEW_TOKENS)
    took = loop.time() - started
    await session.close()

    assert opens.most == 3, "the three OPENs were not in flight together"
    assert took < 2 * HOLD_S, f"opening took {took:.2f} s: the hops were opened one after another"
    assert (await greedy(client, PROMPT, NEW_TOKENS))[0] == expected


async def test_a_hop_refusing_open_is_routed_around_and_the_sessions_the_others_opened_are_reused(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The third hop refuses OPEN while the first two opened: the next route, over the same first two
    peers, reuses their sessions and holds, writing one hold and opening one session, the replacement's.
    In the end the only open hold of the client is the refusing peer's (no receipt ever consumes it);
    closing the first two sessions unused would have left theirs binding credit for ten minutes."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    first = m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    second = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens))
    refusing = m.peer(
        (3, 4), throughput=50_000, ledger=make_ledger(), wrap=gated(opens, ErrorCode.SESSION_REFUSED)
    )
    spare = m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens))
    mine = make_ledger()
    client = m.client(mine)

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and f"peer {refusing[:16]}: SessionRefusedError" in session.last_failure
    assert client.bans.banned(refusing)
    assert session.route == [(first, 0, 1), (second, 1, 3), (spare, 3, 4)]
    # One OPEN answered per peer: the first two sessions were opened once, on the first route.
    assert [len(sessions_of(opens, p)) for p in (first, second, spare)] == [1, 1, 1]
    assert opens.opened <= opens.closed
    report = mine.store.report()
    holds = written_holds(mine.store, mine.peer_id)
    assert [h.hold.server for h in holds] == [first, second, refusing, spare], "one new hold on the retry"
    assert [h.hold.server for h in open_holds(report, mine.peer_id, now_ms())] == [refusing]
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"


async def test_sessions_of_a_failed_route_not_on_the_next_are_closed(toy_mesh: ToyMesh) -> None:
    """The first route (0-1, 1-4) fails on its second hop; the next one (0-3, 3-4) has no hop with the
    first's peer and span, so the session opened on 0-1 is closed, not kept."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    first = m.peer((0, 1), throughput=50_000, wrap=gated(opens))
    refusing = m.peer((1, 4), throughput=50_000, wrap=gated(opens, ErrorCode.SESSION_REFUSED))
    m.peer((0, 3), wrap=gated(opens))
    m.peer((3, 4), wrap=gated(opens))
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and client.bans.banned(refusing)
    assert first not in [hop[0] for hop in session.route]
    assert len(sessions_of(opens, first)) == 1 and opens.opened <= opens.closed
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"


async def test_a_spare_whose_link_closed_is_not_reused(toy_mesh: ToyMesh) -> None:
    """The link to the first hop's peer drops after its session opened and before the next route is
    tried: that session went with the link, so the next route opens a new one there (the peer is up, and
    not banned)."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    first = m.peer((0, 1), wrap=gated(opens))
    second = m.peer((1, 3), wrap=gated(opens))
    refusing = m.peer(
        (3, 4),
        throughput=50_000,
        wrap=gated(
            opens,
            ErrorCode.SESSION_REFUSED,
            hold_s=3 * HOLD_S,  # the others have answered OPEN by then
            before_refusing=lambda: drop_links(m.network, first),
        ),
    )
    m.peer((3, 4), wrap=gated(opens))
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and client.bans.banned(refusing) and not client.bans.banned(first)
    assert session.route[:2] == [(first, 0, 1), (second, 1, 3)]
    assert len(sessions_of(opens, first)) == 2, "the session on the dropped link was reused"
    assert len(sessions_of(opens, second)) == 1
    assert opens.opened - opens.closed <= {(first, s) for s in sessions_of(opens, first)}
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"


async def test_two_hops_failing_at_once_are_both_banned_and_routed_around(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    first = m.peer((0, 1), throughput=50_000, wrap=gated(opens, ErrorCode.SESSION_REFUSED))
    m.peer((0, 1), wrap=gated(opens))
    m.peer((1, 3), wrap=gated(opens))
    last = m.peer((3, 4), throughput=50_000, wrap=gated(opens, ErrorCode.INTERNAL))
    m.peer((3, 4), wrap=gated(opens))
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 2
    assert client.bans.banned(first) and client.bans.banned(last)
    assert first not in [hop[0] for hop in session.route] and last not in [hop[0] for hop in session.route]
    assert opens.opened <= opens.closed and all(not s.sessions for s in m.servers.values())


async def test_a_peer_refusing_payment_is_routed_around(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The attack: a peer advertising the cheapest price answers every OPEN with ``payment_required``
    (though the client's own ledger held the price), to keep chats off the other peers. It is banned and
    routed around like any failed hop, asked once, and the chat gets the local chain's tokens."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    refusing = m.peer(
        (1, 3), throughput=50_000, ledger=make_ledger(), wrap=gated(opens, ErrorCode.PAYMENT_REQUIRED)
    )
    honest = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens))
    m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens))
    client = m.client(make_ledger())

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert client.bans.banned(refusing) and session.failovers == 1
    assert [hop[0] for hop in session.route][1] == honest
    assert len(sessions_of(opens, refusing)) == 0
    assert opens.opened <= opens.closed and all(not s.sessions for s in m.servers.values())


async def test_a_payment_refusal_with_no_other_peer_for_its_blocks_ends_the_chat_with_every_session_closed(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The only peer of blocks 1-3 refuses payment: it is not asked again (each ask would write one more
    hold), the chat ends with its refusal (a 402 on the API), and no session stays open."""
    m = toy_mesh
    opens = Opens()
    m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    refusing = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens, ErrorCode.PAYMENT_REQUIRED))
    m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens))
    ledger = make_ledger()
    client = m.client(ledger)

    with pytest.raises(MeshError, match=f"peer {refusing[:16]} refused to serve") as caught:
        await greedy(client, PROMPT, NEW_TOKENS)

    assert isinstance(caught.value.__cause__, PaymentRequiredError)
    holds = [h for h in written_holds(ledger.store, ledger.peer_id) if h.hold.server == refusing]
    assert len(holds) == 1, "asked once"
    assert len(opens.opened) == 2 and opens.opened <= opens.closed
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"


async def test_a_payment_refusal_on_a_retry_closes_the_sessions_kept_from_the_failed_route(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The third hop refuses OPEN, the first two are kept for the next route; there the replacement
    refuses payment: the chat ends, and the kept sessions (opened once, not twice) are closed."""
    m = toy_mesh
    opens = Opens()
    first = m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    second = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens))
    m.peer((3, 4), throughput=50_000, ledger=make_ledger(), wrap=gated(opens, ErrorCode.SESSION_REFUSED))
    paid = m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens, ErrorCode.PAYMENT_REQUIRED))
    client = m.client(make_ledger())

    with pytest.raises(MeshError, match=f"peer {paid[:16]} refused to serve"):
        await greedy(client, PROMPT, NEW_TOKENS)

    assert {p for p, _ in opens.opened} == {first, second} and len(opens.opened) == 2
    assert opens.opened <= opens.closed
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"


@dataclass
class Replacing:
    """A route (0-3 on ``doomed``, 3-4) whose first hop fails at its third step, and the two peers
    (``first`` on 0-1, then ``second`` on 1-3) its replay goes through, with one more of each span."""

    doomed: str
    first: str
    second: str
    other_first: str
    other_second: str


def replacing(m: ToyMesh, opens: Opens, *, first_fails: bool) -> Replacing:
    """``first_fails``: ``first`` fails its replay, else ``second`` does."""
    doomed = m.peer((0, 3), throughput=50_000, wrap=gated(opens, fails=lambda frame: frame.step == 2))
    first = m.peer((0, 1), throughput=5_000, wrap=gated(opens, fails=replays if first_fails else None))
    second = m.peer((1, 3), throughput=5_000, wrap=gated(opens, fails=None if first_fails else replays))
    others = m.peer((0, 1), wrap=gated(opens)), m.peer((1, 3), wrap=gated(opens))
    m.peer((3, 4), wrap=gated(opens))
    return Replacing(doomed, first, second, *others)


async def test_the_hops_after_a_failed_replay_are_reused(toy_mesh: ToyMesh) -> None:
    """The replay fails on the first hop of the replacement: the second hop, sent nothing yet, is kept
    and reused by the next route (one session opened on it in all)."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    r = replacing(m, opens, first_fails=True)
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 2 and client.bans.banned(r.doomed) and client.bans.banned(r.first)
    assert [hop[0] for hop in session.route][:2] == [r.other_first, r.second]
    assert len(sessions_of(opens, r.first)) == 1 and len(sessions_of(opens, r.second)) == 1
    assert opens.opened <= opens.closed and all(not s.sessions for s in m.servers.values())


async def test_the_hops_sent_a_failed_replay_are_closed_not_reused(toy_mesh: ToyMesh) -> None:
    """The replay fails on the second hop of the replacement: the first one holds the replay in its KV
    cache, so it is closed and the next route opens a new session on that peer."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    r = replacing(m, opens, first_fails=False)
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 2 and client.bans.banned(r.doomed) and client.bans.banned(r.second)
    assert [hop[0] for hop in session.route][:2] == [r.first, r.other_second]
    assert len(sessions_of(opens, r.first)) == 2
    assert opens.opened <= opens.closed and all(not s.sessions for s in m.servers.values())

"""Opening a route: every hop at once (``route_open.py``), with the failure semantics of one at a time.

Each peer here is wrapped to hold its answer to ``OPEN`` a moment (``Gated``), so the hops' opens
overlap in time whenever they are sent together; a hop failing meanwhile gets the sessions the others
opened closed, is banned and routed around, and the tokens are the local chain's. A payment refusal ends
the chat with every session closed. Everything goes through the documented frames (``OPEN``, ``CLOSE``,
``GOSSIP`` pushes), in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from python_peer.core.errors import PaymentRequiredError
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame
from python_peer.ledger_service import LedgerService
from python_peer.mesh_client import MeshError
from python_peer.server import SpanServer
from tests.fast.conftest import ToyMesh, greedy
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
    """A peer that holds each OPEN ``HOLD_S`` before answering it, then answers as its server does, or
    with ``refuse`` (an error code) instead."""

    def __init__(
        self, peer_id: str, server: SpanServer, opens: Opens, refuse: ErrorCode | None = None
    ) -> None:
        self.peer_id = peer_id
        self.server = server
        self.opens = opens
        self.refuse = refuse

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.CLOSE:
            self.opens.closed.add((self.peer_id, frame.session))
        if frame.type is not FrameType.OPEN:
            return await self.server.handle(client, frame)
        self.opens.in_flight += 1
        self.opens.most = max(self.opens.most, self.opens.in_flight)
        try:
            await asyncio.sleep(HOLD_S)
        finally:
            self.opens.in_flight -= 1
        if self.refuse is not None:
            return error_frame(frame.session, frame.step, self.refuse, "refused by the test")
        answer = await self.server.handle(client, frame)
        if answer.type is FrameType.RESULT:
            self.opens.opened.add((self.peer_id, frame.session))
        return answer

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


def gated(opens: Opens, refuse: ErrorCode | None = None) -> Callable[[str, SpanServer], Gated]:
    return lambda peer_id, server: Gated(peer_id, server, opens, refuse)


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


async def test_a_hop_refusing_open_while_the_others_opened_is_routed_around_and_theirs_closed(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    opens = Opens()
    m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    refusing = m.peer(
        (1, 3), throughput=50_000, ledger=make_ledger(), wrap=gated(opens, ErrorCode.SESSION_REFUSED)
    )
    spare = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens))
    m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens))
    client = m.client(make_ledger())

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and f"peer {refusing[:16]}: SessionRefusedError" in session.last_failure
    assert client.bans.banned(refusing)
    assert session.route[1][0] == spare
    # The first route's sessions on 0-1 and 3-4 opened and were closed, like the second route's.
    assert len(opens.opened) == 5 and opens.opened <= opens.closed
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"
    assert all(s.exchange is not None and s.exchange.remembered[1] == 0 for s in m.servers.values())


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


async def test_a_payment_refusal_while_the_others_opened_ends_the_chat_with_every_session_closed(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    opens = Opens()
    m.peer((0, 1), ledger=make_ledger(), wrap=gated(opens))
    refusing = m.peer((1, 3), ledger=make_ledger(), wrap=gated(opens, ErrorCode.PAYMENT_REQUIRED))
    m.peer((1, 3), throughput=1.0, ledger=make_ledger(), wrap=gated(opens))  # a spare is not tried
    m.peer((3, 4), ledger=make_ledger(), wrap=gated(opens))
    client = m.client(make_ledger())

    with pytest.raises(MeshError, match=f"peer {refusing[:16]} refused to serve") as caught:
        await greedy(client, PROMPT, NEW_TOKENS)

    assert isinstance(caught.value.__cause__, PaymentRequiredError)
    assert not client.bans.banned(refusing), "a payment refusal is about our balance, not the peer"
    assert len(opens.opened) == 2 and opens.opened <= opens.closed
    assert all(not s.sessions for s in m.servers.values()), "no session stays open"

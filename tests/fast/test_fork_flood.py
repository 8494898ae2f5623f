"""Forks of throwaway identities cost their maker two signatures each (a hold needs no proof of work), and a
node that learns one by gossip publishes its proof in its own log. A neighbour sending a few dozen such
forks must not leave that node unable to push its own log (a frame's metadata holds 64 KiB), which would
get every OPEN of it refused everywhere."""

from __future__ import annotations

import os
from collections.abc import Callable

from python_peer.core import ledger_exchange as lx
from python_peer.core.holds import Hold
from python_peer.core.wire import Frame, FrameType, decode_frame, encode_frame
from python_peer.identity import Identity
from python_peer.ledger_service import CHANNEL_GOSSIP, LedgerService
from python_peer.ledger_store import now_ms
from python_peer.link_ledger import ClientExchange, HoldTerms, ServerExchange
from tests.support.ledger import MODEL, Log

FORKS = 72  # forked throwaway identities: more than one push's worth of proofs


def _forked_pairs(server: str, count: int) -> list[list[dict[str, object]]]:
    """``count`` throwaway identities, each with two different seq-1 holds: the entries of a fork."""
    now = now_ms()
    pairs = []
    for _ in range(count):
        liar = Identity.generate()
        pair = []
        for _ in range(2):
            body = Hold(os.urandom(16).hex(), server, MODEL, 0, 1, 1_010, now + 600_000)
            pair.append(Log(liar).add(body, time=now).to_dict())
        pairs.append(pair)
    return pairs


class _Link:
    """A hop to a ``ServerExchange`` through the wire's encoding, as a data channel carries frames."""

    def __init__(self, client: str, server: ServerExchange) -> None:
        self.client, self.server = client, server
        self.closed = False

    async def call(self, frame: Frame, timeout: float) -> Frame:
        sent = decode_frame(encode_frame(frame))  # a frame over the wire's limits raises here
        meta = await self.server.answer(self.client, sent.session, sent.meta)
        return decode_frame(encode_frame(Frame(FrameType.RESULT, sent.session, sent.step, meta=meta)))

    async def aclose(self) -> None:
        self.closed = True


async def test_forks_gossiped_by_a_neighbour_leave_a_node_able_to_push_its_log_and_open(
    make_ledger: Callable[..., LedgerService],
) -> None:
    victim = make_ledger()
    attacker = Identity.generate().peer_id
    pairs = _forked_pairs(victim.peer_id, FORKS)
    for i in range(0, FORKS, 8):  # the node publishes at most 8 proofs per message that reveals forks
        batch = [entry for pair in pairs[i : i + 8] for entry in pair]
        message = {"type": "entries", "v": 1, "entries": batch, "proofs": [], "more": False}
        victim.gossip_receive(attacker, message, CHANNEL_GOSSIP)
    assert len(victim.store.forks()) == FORKS
    published = victim.store.entries_from(victim.peer_id, 2, 10_000)
    assert len(published) == FORKS and all(e.kind == "fork_proof" for e in published)

    # The victim then opens a session at a peer that never saw its log: hold, log pushed, OPEN admitted.
    server = make_ledger(grant=False)
    exchange = ServerExchange(server)
    client = ClientExchange(victim, request_timeout_s=5.0)
    link = _Link(victim.peer_id, exchange)
    session = os.urandom(16)
    hold = await client.hold(server.peer_id, link, session, model=MODEL, start=0, end=1, tokens=8)
    terms = HoldTerms(server.peer_id, session, MODEL, 0, 1, 8)
    assert await exchange.admit(victim.peer_id, hold, terms, carried=None) > 0

    # A push of the log (the starter grant and the latest entries) always fits one frame.
    frame = Frame(FrameType.GOSSIP, os.urandom(16), 0, meta=lx.push_request(victim.own_entries()))
    encode_frame(frame)

"""The log push before OPEN carries only what the peer lacks (``ClientExchange.push``), in memory.

Once a peer has said (answering a push: ``held``) or shown (opening a session on one of our holds) that
it holds our log through some entry, the next push there carries the entries written since (receipts,
new holds) instead of the grant and the latest 63: the push is what a peer parses, checks and stores
before OPEN. A peer that does not say it holds them all (it lost our log, refused one, or is a peer that
does not answer ``held``) gets the whole push again, and the chat goes on.

A peer that says in its answers to OPEN that it takes our log in OPEN itself (``log: true``) gets those
few entries in the next OPEN instead of a push (one round trip, not two); one that then refuses the hold
(it lost our log, or said so falsely) gets the whole log pushed and the OPEN again, and the chat goes on.
Once a session closed, its peers get the entries they lack (its receipts) pushed in the background, so
that the next OPEN carries only its holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from python_peer.core.ledger_exchange import OPEN_LOG
from python_peer.core.protocol import PUSH_ENTRIES
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import LinkClosedError
from python_peer.ledger_service import LedgerService
from python_peer.link_ledger import ClientExchange
from python_peer.rpc import RpcClient
from python_peer.server import SpanServer
from tests.fast.conftest import ToyMesh, greedy
from tests.support.holds import push_frame, write_hold
from tests.support.mesh import reference_greedy as local_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 4
SPANS = ((0, 1), (1, 3), (3, 4))


class Pushes:
    """A peer recording the size of every log push it answers; ``drop`` pushes are answered unstored."""

    def __init__(self, server: SpanServer) -> None:
        self.server = server
        self.sizes: list[int] = []
        self.carried: list[int] = []  # the entries each OPEN carried (``log``)
        self.drop = 0
        self.drop_log = 0  # OPENs whose log is dropped unstored, as a peer that lost it
        self.claim: int | None = None  # answers every push saying it holds the pusher's log through this

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.OPEN and OPEN_LOG in frame.meta:
            self.carried.append(len(frame.meta[OPEN_LOG]))
            if self.drop_log:
                self.drop_log -= 1
                meta = {k: v for k, v in frame.meta.items() if k != OPEN_LOG}
                frame = Frame(frame.type, frame.session, frame.step, meta=meta)
        if frame.type is FrameType.GOSSIP and frame.meta.get("kind") == "push":
            self.sizes.append(len(frame.meta["entries"]))
            if self.drop:
                self.drop -= 1
                return Frame(FrameType.RESULT, frame.session, frame.step, meta={"stored": 0})
            if self.claim is not None:
                answer = await self.server.handle(client, frame)
                return Frame(
                    answer.type, answer.session, answer.step, meta={**answer.meta, "held": self.claim}
                )
        return await self.server.handle(client, frame)

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


def three_peers(m: ToyMesh, make_ledger: Callable[..., LedgerService]) -> list[Pushes]:
    peers: list[Pushes] = []

    def wrap(_peer_id: str, server: SpanServer) -> Pushes:
        peers.append(Pushes(server))
        return peers[-1]

    for span in SPANS:
        m.peer(span, ledger=make_ledger(), wrap=wrap)
    return peers


async def test_after_a_first_session_a_push_carries_only_the_entries_written_since(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    peers = three_peers(m, make_ledger)
    me = make_ledger()
    other = make_ledger()
    for i in range(PUSH_ENTRIES + 10):  # a log longer than one push: holds at a peer elsewhere
        write_hold(me, other.peer_id, bytes([i]) * 16, m.manifest.name, 0, 1, 1)
    client = m.client(me)
    assert client.exchange is not None

    for _ in range(3):
        assert (await greedy(client, PROMPT, NEW_TOKENS))[0] == expected
        # the background gossip (once per peer) and pushes after the close, done
        await client.gossip_settled()

    for peer in peers:
        # One push, the grant and the latest entries; after each session's close, its three receipts,
        # pushed in the background; so each later OPEN carries only what was written since: the three
        # holds of its route, written together (the peer holds them all once it admitted its own).
        assert peer.sizes == [PUSH_ENTRIES, 3, 3, 3], peer.sizes
        assert peer.carried == [3, 3], peer.carried
    assert all(client.exchange.held[p] >= PUSH_ENTRIES + 10 for p in m.servers)


async def test_a_peer_that_did_not_store_the_short_push_gets_the_whole_log_and_opens(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    peers = three_peers(m, make_ledger)
    client = m.client(make_ledger())
    assert (await greedy(client, PROMPT, NEW_TOKENS))[0] == expected
    # The first session's background gossip with each peer, done: on a loaded machine it could still be
    # running when the next session writes its holds, and deliver them to the peer before its OPEN.
    await client.gossip_settled()
    first = [len(p.sizes) for p in peers]

    peers[1].drop_log = 1  # drops the log the next OPEN carries, as a peer that lost our log
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and session.failovers == 0, session.last_failure
    await client.gossip_settled()
    # The short log carried by OPEN, refused; then the whole log pushed and OPEN again. Not banned. After
    # the close, every peer gets the session's receipts pushed (the last push).
    assert [len(p.sizes) - n for p, n in zip(peers, first, strict=True)] == [1, 2, 1]
    assert peers[1].sizes[-2] > peers[1].carried[-1] and len(peers[1].carried) == 1, peers[1]
    assert [len(p.carried) for p in peers] == [1, 1, 1]

    second = [len(p.sizes) for p in peers]
    peers[1].drop = 1  # answers the next push without storing it (a peer that does not carry logs)
    assert client.exchange is not None and peers[1].server.identity is not None
    client.exchange.takes_log.pop(peers[1].server.identity.peer_id)
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and session.failovers == 0, session.last_failure
    await client.gossip_settled()
    short, whole, _receipts = peers[1].sizes[second[1] :]
    assert short < whole, peers[1].sizes  # the short push, then the whole log again
    assert [len(p.sizes) - n for p, n in zip(peers, second, strict=True)] == [1, 3, 1]


async def test_a_push_answer_says_through_which_seq_the_peer_holds_the_pushers_log(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    server = m.peer((1, 3), ledger=make_ledger())
    me = make_ledger()
    rpc = RpcClient(await m.network.connect(me.peer_id, server))
    try:
        for i in range(3):
            write_hold(me, server, bytes([i]) * 16, m.manifest.name, 1, 3, 8)
        entries = me.own_entries()  # the grant and three holds: seq 1-4
        answer = await rpc.call(push_frame(entries[:2]), 5)
        assert answer.meta == {"stored": 2, "held": 2}
        # A push with a gap: seq 4 without seq 3 is not stored, and the answer says so.
        answer = await rpc.call(push_frame(entries[3:]), 5)
        assert answer.meta == {"stored": 0, "held": 2}
        answer = await rpc.call(push_frame(entries), 5)
        assert answer.meta == {"stored": 2, "held": 4}
        # Someone else's entries pushed by us say nothing about our log.
        other = make_ledger()
        answer = await rpc.call(push_frame(other.own_entries()), 5)
        assert answer.meta == {"stored": 1, "held": 4}
    finally:
        await rpc.aclose()


async def test_a_peer_claiming_to_hold_more_of_our_log_than_we_wrote_is_not_believed(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The attack: a peer answers every push ``held: 10**9``. Believed, the client would push nothing
    there again, the peer would never see its next holds, and every later chat through it would be
    refused for payment. A ``held`` past the newest entry the client sent is taken as unsaid: the next
    push carries the whole log again, and the chats go on."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    peers = three_peers(m, make_ledger)
    peers[1].claim = 10**9
    client = m.client(make_ledger())
    assert client.exchange is not None

    for _ in range(3):
        tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
        assert tokens == expected and session.failovers == 0, session.last_failure

    head = client.exchange.ledger.store.head(client.exchange.ledger.peer_id)
    assert head is not None and max(client.exchange.held.values()) <= head.seq, client.exchange.held
    delivered = peers[1].sizes + peers[1].carried  # pushed or carried by OPEN, every session
    assert len(delivered) >= 3 and min(delivered) > 0, (peers[1].sizes, peers[1].carried)


class DeadLink:
    """A link that closed: every call fails."""

    closed = False

    async def call(self, frame: Frame, timeout: float) -> Frame:
        raise LinkClosedError("the link closed")

    async def aclose(self) -> None:
        pass


async def test_the_push_after_a_close_goes_only_to_a_peer_holding_our_log_and_its_failure_is_only_logged(
    make_ledger: Callable[..., LedgerService], caplog: pytest.LogCaptureFixture
) -> None:
    exchange = ClientExchange(make_ledger(), request_timeout_s=1.0)
    peer = make_ledger().peer_id
    assert exchange.push_soon(peer, DeadLink()) is None  # not known to hold our log: nothing sent
    exchange.held[peer] = 0
    with caplog.at_level(logging.INFO, logger="python_peer.link_ledger"):
        task = exchange.push_soon(peer, DeadLink())
        assert task is not None
        await exchange.settled()
    assert task.exception() is None
    assert "pushing our log to" in caplog.text and "LinkClosedError: the link closed" in caplog.text

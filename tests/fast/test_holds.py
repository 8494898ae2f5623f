"""No spending twice, in memory: holds in the client's own log, spoken raw as docs/ledger.md and docs/mesh.md
describe them (push the log, OPEN naming the hold, CLOSE, the countersigned receipt, gossip).

The attacks: a client with one request's price opening at three peers at once; the same credits promised
in two logs (a fork); a hold replayed to another peer or reused on the same one; a hold naming another
peer; a session outliving its hold. And the honest side: receipts and expiry release holds.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import python_peer.link_ledger as link_ledger
from python_peer.core import chain_store
from python_peer.core import ledger_exchange as lx
from python_peer.core.economics import price
from python_peer.core.entries import Entry
from python_peer.core.errors import PaymentRequiredError, RemoteBadFrameError, SessionRefusedError
from python_peer.core.protocol import PUSH_ENTRIES
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import MeshError
from python_peer.identity import Identity
from python_peer.ledger_service import CHANNEL_GOSSIP, LedgerService
from python_peer.ledger_store import now_ms
from python_peer.rpc import RpcClient
from python_peer.span_gate import SpanGate
from python_peer.tensors import to_wire
from tests.fast.conftest import ToyMesh, greedy
from tests.support.holds import open_meta, push_frame, write_hold, written_holds

SPAN = (1, 3)
ONE_PRICE_TOKENS = 9950  # through 2 blocks: BASE_FEE + 2 x 9950 x 10 = 200 000 units, the starter grant


def _forward(session: bytes, step: int, seq: int, hidden: int, batch: int = 1) -> Frame:
    return Frame(
        FrameType.FORWARD,
        session,
        step,
        tensors=(
            to_wire("hidden_states", np.full((batch, seq, hidden), 0.1, dtype=np.float32)),
            to_wire("attention_mask", np.ones((batch, seq), dtype=np.int64)),
            to_wire("position_ids", np.tile(np.arange(seq, dtype=np.int64), (batch, 1))),
        ),
    )


class Client:
    """A client speaking the documented protocol over one link to one peer."""

    def __init__(self, mesh: ToyMesh, ledger: LedgerService, rpc: RpcClient, server: str) -> None:
        self.mesh, self.ledger, self.rpc, self.server = mesh, ledger, rpc, server

    @classmethod
    async def connect(cls, mesh: ToyMesh, ledger: LedgerService, server: str) -> Client:
        return cls(mesh, ledger, RpcClient(await mesh.network.connect(ledger.peer_id, server)), server)

    async def push(self, entries: list[dict[str, Any]] | None = None) -> int:
        answer = await self.rpc.call(push_frame(self.ledger.own_entries() if entries is None else entries), 5)
        return lx.parse_push_answer(answer.meta)

    async def open(
        self,
        session: bytes,
        hold: str | None,
        max_length: int = ONE_PRICE_TOKENS,
        batch: int = 1,
        log: object = None,
    ) -> Frame:
        """OPEN naming ``hold``; ``log``: the entries it carries instead of a push (``lx.OPEN_LOG``)."""
        meta = open_meta(self.mesh.manifest.name, *SPAN, batch, max_length, hold)
        if log is not None:
            meta[lx.OPEN_LOG] = log
        return await self.rpc.call(Frame(FrameType.OPEN, session, 0, meta=meta), 5)

    async def work(self, session: bytes, length: int = 3, batch: int = 1) -> str:
        """``length`` positions of ``batch`` rows through the session, CLOSE, countersign and return the
        receipt; its id."""
        hidden = int(self.mesh.manifest.config["hidden_size"])
        await self.rpc.call(_forward(session, 0, length, hidden, batch), 5)
        tokens = batch * length
        closed = await self.rpc.call(Frame(FrameType.CLOSE, session, 1), 5)
        proposal = lx.parse_close_answer(closed.meta)
        assert proposal is not None
        proposed, server_sig = proposal
        receipt, client_sig = self.ledger.countersign(
            proposed,
            server_sig,
            server=self.server,
            session=session,
            model=self.mesh.manifest.name,
            start=SPAN[0],
            end=SPAN[1],
            tokens=tokens,
        )
        meta = lx.receipt_request(receipt.to_dict(), client_sig, server_sig)
        answer = await self.rpc.call(Frame(FrameType.GOSSIP, session, 2, meta=meta), 5)
        return lx.parse_receipt_answer(answer.meta)

    def hold(self, session: bytes, **kwargs: Any) -> Entry:
        return write_hold(
            self.ledger,
            self.server,
            session,
            self.mesh.manifest.name,
            *SPAN,
            kwargs.pop("tokens", ONE_PRICE_TOKENS),
            **kwargs,
        )

    async def aclose(self) -> None:
        await self.rpc.aclose()


def gossip(a: LedgerService, b: LedgerService, rounds: int = 64) -> None:
    """Anti-entropy between two nodes' ledgers (``gossip.py`` messages), until nothing is left to send."""
    queue: deque[tuple[LedgerService, LedgerService, dict[str, Any]]] = deque()
    for one, other in ((a, b), (b, a)):
        start = one.gossip_start(other.peer_id, CHANNEL_GOSSIP)
        if start is not None:
            queue.append((one, other, start))
    while queue and rounds:
        rounds -= 1
        sender, receiver, message = queue.popleft()
        for reply in receiver.gossip_receive(sender.peer_id, message, CHANNEL_GOSSIP):
            queue.append((receiver, sender, reply))


def _spent(ledger: LedgerService, client: str) -> int:
    account = ledger.store.report().accounts.get(client)
    return account.spent if account else 0


async def test_one_price_of_balance_opening_at_three_peers_at_once_is_served_once(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    assert price(SPAN[1] - SPAN[0], ONE_PRICE_TOKENS, 0) == 200_000  # the whole starter grant
    peers = [m.peer(SPAN, ledger=make_ledger()) for _ in range(3)]
    attacker = make_ledger()
    clients = [await Client.connect(m, attacker, peer) for peer in peers]
    sessions = [bytes([i + 1]) * 16 for i in range(3)]
    try:
        # The first peer is shown the log up to its own hold only; then all three are opened at once,
        # each hold written and pushed to its peer as the later ones race.
        first = clients[0].hold(sessions[0])
        assert await clients[0].push() == 2

        async def open_other(i: int) -> Frame:
            hold = await asyncio.to_thread(clients[i].hold, sessions[i])
            await clients[i].push()
            return await clients[i].open(sessions[i], hold.hash)

        results = await asyncio.gather(
            clients[0].open(sessions[0], first.hash), open_other(1), open_other(2), return_exceptions=True
        )
        assert isinstance(results[0], Frame) and results[0].meta["opened"] is True
        for refused in results[1:]:
            assert isinstance(refused, PaymentRequiredError), refused
            assert "does not cover the price of 200.000 credits" in str(refused)
            # the other holds it was shown: the first, and the third if it was written by then
            assert re.search(r"beside (200|400)\.000 credits held for its other open sessions", str(refused))
        assert [len(m.servers[p].sessions) for p in peers] == [1, 0, 0]
        # Served once and paid for once: no balance below zero anywhere.
        await clients[0].work(sessions[0])
        for peer in peers:
            report = m.servers[peer].ledger.store.report()  # type: ignore[union-attr]
            assert min(report.balances.values()) >= 0
    finally:
        for client in clients:
            await client.aclose()


async def test_an_honest_client_with_one_price_refuses_its_second_concurrent_request_itself(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """Through the mesh client: three chats at once through three routes; the client's own check of its
    open holds lets one through and refuses the others before any peer is asked."""
    m = toy_mesh
    for span in ((0, 1), (1, 3), (3, 4)):
        m.peer(span, ledger=make_ledger())
    client = m.client(make_ledger())
    # one price: 4 blocks x 12 rows x 250 tokens x 10 + base fee (121,000), less than the grant (200,000);
    # two do not fit (a row is at most the toy model's context of 256 tokens)
    opened = await asyncio.gather(*(client.open(12, 250) for _ in range(3)), return_exceptions=True)
    served = [s for s in opened if not isinstance(s, BaseException)]
    refused = [e for e in opened if isinstance(e, BaseException)]
    assert len(served) == 1, opened
    assert all(isinstance(e, MeshError) and isinstance(e.__cause__, PaymentRequiredError) for e in refused)
    await served[0].close()


async def test_a_generation_writes_one_hold_per_hop_and_its_receipts_consume_them(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    for span in ((0, 1), (1, 3), (3, 4)):
        m.peer(span, ledger=make_ledger())
    ledger = make_ledger()
    client = m.client(ledger)
    await greedy(client, [1, 2, 3], 4)
    report = ledger.store.report()
    holds = written_holds(ledger.store, ledger.peer_id)
    assert sorted((h.hold.start, h.hold.end) for h in holds) == [(0, 1), (1, 3), (3, 4)]
    assert all((ledger.peer_id, *h.hold.key) in report.consumed for h in holds)
    assert ledger.peer_id not in report.holds  # consumed: no open hold is left
    # and again: the credits the first generation held are free once its receipts consumed the holds
    await greedy(client, [1, 2, 3], 4)


async def test_a_receipt_releases_its_hold_and_the_next_session_is_served(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    a, b = m.peer(SPAN, ledger=make_ledger()), m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_a, at_b = await Client.connect(m, me, a), await Client.connect(m, me, b)
    tokens = 7000  # 141 credits: one fits the grant of 200, two do not
    try:
        hold = at_a.hold(b"\x01" * 16, tokens=tokens)
        await at_a.push()
        await at_a.open(b"\x01" * 16, hold.hash, tokens)
        second = at_b.hold(b"\x02" * 16, tokens=tokens)
        await at_b.push()
        with pytest.raises(PaymentRequiredError, match=r"beside 141\.000 credits held"):
            await at_b.open(b"\x02" * 16, second.hash, tokens)
        await at_a.work(b"\x01" * 16)  # 3 tokens used: the receipt pays 1.060 credits, consumes the hold
        # the receipt reaches b in the client's log: the first hold is consumed, the second now fits
        await at_b.push()
        assert (await at_b.open(b"\x02" * 16, second.hash, tokens)).meta["opened"] is True
        # and it binds in turn: a third of the same size does not
        third = at_b.hold(b"\x03" * 16, tokens=tokens)
        await at_b.push()
        with pytest.raises(PaymentRequiredError, match=r"beside 141\.000 credits held"):
            await at_b.open(b"\x03" * 16, third.hash, tokens)
    finally:
        await at_a.aclose()
        await at_b.aclose()


async def test_a_server_forgets_a_hold_once_its_receipt_is_recorded_and_still_refuses_it(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """A long-lived server remembers no session it was paid for: 40 sessions opened, worked and closed
    leave no admitted hold, open session or waiting receipt. The attack: OPEN again with a hold it
    forgot; its own ledger refuses it (the receipt consumed it)."""
    m = toy_mesh
    a = m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_a = await Client.connect(m, me, a)
    exchange = m.servers[a].exchange
    assert exchange is not None
    try:
        for i in range(40):
            session = bytes([i]) * 16
            hold = at_a.hold(session, tokens=10)
            await at_a.push()
            await at_a.open(session, hold.hash, 10)
            await at_a.work(session)
        assert exchange.remembered == (0, 0, 0)
        with pytest.raises(PaymentRequiredError, match="already consumed"):
            await at_a.open(b"\x00" * 16, _first_hold(me), 10)
    finally:
        await at_a.aclose()


def _first_hold(ledger: LedgerService) -> str:
    return written_holds(ledger.store, ledger.peer_id)[0].hash


async def test_a_server_forgets_expired_holds_at_the_next_open(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions opened and never closed (the client vanished): their holds are forgotten once expired,
    and an expired hold is still refused."""
    m = toy_mesh
    a = m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_a = await Client.connect(m, me, a)
    exchange = m.servers[a].exchange
    assert exchange is not None
    try:
        holds = []
        for i in range(5):
            hold = at_a.hold(bytes([i]) * 16, tokens=10, ttl_ms=120_000)
            await at_a.push()
            await at_a.open(bytes([i]) * 16, hold.hash, 10)
            holds.append(hold.hash)
        assert exchange.remembered[0] == 5
        later = now_ms() + 121_000
        monkeypatch.setattr(link_ledger, "now_ms", lambda: later)
        monkeypatch.setattr(chain_store, "wall_clock_ms", lambda: later)
        fresh = at_a.hold(b"\x09" * 16, tokens=10)
        await at_a.push()
        await at_a.open(b"\x09" * 16, fresh.hash, 10)
        assert exchange.remembered[0] == 1  # the five expired ones are gone
        await at_a.rpc.call(Frame(FrameType.CLOSE, b"\x00" * 16, 0), 5)
        with pytest.raises(PaymentRequiredError, match="expires in 0 s"):
            await at_a.open(b"\x00" * 16, holds[0], 10)
    finally:
        await at_a.aclose()


async def test_an_expired_hold_releases_its_credits_and_stops_its_session(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = toy_mesh
    a = m.peer(SPAN, ledger=make_ledger(), wrap=lambda _, server: SpanGate(server))
    b = m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_a, at_b = await Client.connect(m, me, a), await Client.connect(m, me, b)
    try:
        hold = at_a.hold(b"\x01" * 16, ttl_ms=120_000)
        await at_a.push()
        await at_a.open(b"\x01" * 16, hold.hash)
        # Two minutes later the hold has expired: a second hold of the same credits is admitted at b...
        later = now_ms() + 121_000
        second = at_b.hold(b"\x02" * 16)
        await at_b.push()
        with pytest.raises(PaymentRequiredError, match=r"beside 200\.000"):
            await at_b.open(b"\x02" * 16, second.hash)
        report = m.servers[b].ledger.store  # type: ignore[union-attr]
        quote = report.require_hold(
            me.peer_id,
            second.hash,
            server=b,
            session=(b"\x02" * 16).hex(),
            model=m.manifest.name,
            start=SPAN[0],
            end=SPAN[1],
            tokens=ONE_PRICE_TOKENS,
            now=later,
        )
        assert quote.price == 200_000
        # ...and the session the first one paid for stops: its credits may be promised elsewhere now.
        monkeypatch.setattr(link_ledger, "now_ms", lambda: later)
        with pytest.raises(PaymentRequiredError, match="hold that pays for this session has expired"):
            hidden = int(m.manifest.config["hidden_size"])
            await at_a.rpc.call(_forward(b"\x01" * 16, 0, 3, hidden), 5)
    finally:
        await at_a.aclose()
        await at_b.aclose()


async def test_a_hold_replayed_to_another_peer_or_reused_is_refused(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    a, b = m.peer(SPAN, ledger=make_ledger()), m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_a, at_b = await Client.connect(m, me, a), await Client.connect(m, me, b)
    session = b"\x01" * 16
    try:
        hold = at_a.hold(session, tokens=100)
        await at_a.push()
        await at_a.open(session, hold.hash, 100)
        # the same hold at b, for the same session id: it names a, not b
        await at_b.push()
        with pytest.raises(PaymentRequiredError, match="its hold is for server"):
            await at_b.open(session, hold.hash, 100)
        # at a again, for another session: it pays for one session only
        with pytest.raises(PaymentRequiredError, match="already opened a session here"):
            await at_a.open(b"\x02" * 16, hold.hash, 100)
        fresh = at_a.hold(b"\x04" * 16, tokens=100)
        await at_a.push()
        with pytest.raises(PaymentRequiredError, match="its hold is for session"):
            await at_a.open(b"\x05" * 16, fresh.hash, 100)
        # at a again after the session closed with no receipt returned: already used
        await at_a.rpc.call(Frame(FrameType.CLOSE, session, 0), 5)
        with pytest.raises(PaymentRequiredError, match="already opened a session here"):
            await at_a.open(session, hold.hash, 100)
        # a hold for a smaller session does not pay for a bigger one
        small = at_a.hold(b"\x03" * 16, tokens=10)
        await at_a.push()
        with pytest.raises(PaymentRequiredError, match="does not cover the price"):
            await at_a.open(b"\x03" * 16, small.hash, 100)
    finally:
        await at_a.aclose()
        await at_b.aclose()


async def test_a_hold_naming_another_peer_or_unknown_here_is_refused(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    b = m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    at_b = await Client.connect(m, me, b)
    try:
        elsewhere = write_hold(me, Identity.generate().peer_id, b"\x01" * 16, m.manifest.name, *SPAN, 100)
        await at_b.push()
        with pytest.raises(PaymentRequiredError, match="its hold is for server"):
            await at_b.open(b"\x01" * 16, elsewhere.hash, 100)
        # a hold the peer was never shown, and no hold at all
        unseen = at_b.hold(b"\x02" * 16, tokens=100)
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):
            await at_b.open(b"\x02" * 16, unseen.hash, 100)
        with pytest.raises(PaymentRequiredError, match="OPEN must name the hold"):
            await at_b.open(b"\x02" * 16, None, 100)
        # another client's hold, for this very peer and session, pays nothing for us
        victim = make_ledger()
        theirs = write_hold(victim, b, b"\x03" * 16, m.manifest.name, *SPAN, 100)
        await at_b.push(victim.own_entries())
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):
            await at_b.open(b"\x03" * 16, theirs.hash, 100)
    finally:
        await at_b.aclose()


async def test_open_carries_the_log_instead_of_a_push_and_a_bad_one_is_refused(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """OPEN's ``log`` (docs/ledger.md): the entries a push would carry, stored before the hold is checked.
    The attacks: a log that is not a list, one longer than a push, a forged hold in it (its amount raised
    after it was signed), and the same OPEN replayed. Each is refused with a clear error; nothing forged
    is stored and no session opens on it."""
    m = toy_mesh
    b = m.peer(SPAN, ledger=make_ledger())
    server = m.servers[b].ledger
    assert server is not None
    me = make_ledger()
    at_b = await Client.connect(m, me, b)
    try:
        with pytest.raises(RemoteBadFrameError, match="at most"):
            await at_b.open(b"\x01" * 16, None, 100, log="my entries")
        hold = at_b.hold(b"\x01" * 16, tokens=100)
        too_long = me.own_entries() * (PUSH_ENTRIES // 2 + 1)
        with pytest.raises(RemoteBadFrameError, match="at most"):
            await at_b.open(b"\x01" * 16, hold.hash, 100, log=too_long)
        assert server.store.head(me.peer_id) is None  # nothing of a refused log was stored

        # A forged hold: the amount raised after signing. Refused alone; the OPEN on it finds no hold.
        forged = {**hold.to_dict(), "body": {**hold.to_dict()["body"], "amount": 10**9}}
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):
            await at_b.open(b"\x01" * 16, hold.hash, 100, log=[me.own_entries()[0], forged])
        head = server.store.head(me.peer_id)
        assert head is not None and head.seq == 1  # the grant, not the forgery

        # The honest OPEN: the log it carries is stored, the session opens, the answer says it takes logs.
        answer = await at_b.open(b"\x01" * 16, hold.hash, 100, log=me.own_entries())
        assert answer.meta["opened"] is True and answer.meta[lx.OPEN_LOG] is True
        assert server.store.locate(hold.hash) == (me.peer_id, 2)
        # Replayed: the same session is open already; another session on the same hold is not paid.
        with pytest.raises(SessionRefusedError, match="already open"):
            await at_b.open(b"\x01" * 16, hold.hash, 100, log=me.own_entries())
        with pytest.raises(PaymentRequiredError, match="already opened a session here"):
            await at_b.open(b"\x02" * 16, hold.hash, 100, log=me.own_entries())
    finally:
        await at_b.aclose()


async def test_the_same_credits_in_two_logs_are_a_fork_caught_and_gossiped(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The attacker keeps two logs of one key: seq 2 is a hold for a in one and for b in the other. Each
    peer sees one hold that fits and serves; the two logs meet by gossip, which proves the fork; the proof
    reaches a third peer, which refuses the client; no balance is below zero and the client paid at
    most its grant."""
    m = toy_mesh
    a_ledger, b_ledger, c_ledger = make_ledger(), make_ledger(), make_ledger()
    a, b, c = (m.peer(SPAN, ledger=x) for x in (a_ledger, b_ledger, c_ledger))
    key = Identity.generate()
    one = LedgerService.open(None, key)
    other = LedgerService.open(None, key, claim_grant=False)
    try:
        other.accept_entries(one.own_entries())  # the grant, shared: the logs part at seq 2
        at_a, at_b = await Client.connect(m, one, a), await Client.connect(m, other, b)
        # 39 rows x 250 positions through 2 blocks: 196 credits of the 200 the grant gives, twice
        batch, length = 39, 250
        assert price(2, batch * length, 0) == 196_000
        ha, hb = (
            at_a.hold(b"\x01" * 16, tokens=batch * length),
            at_b.hold(b"\x02" * 16, tokens=batch * length),
        )
        assert (ha.seq, hb.seq) == (2, 2)
        await at_a.push()
        await at_b.push()
        assert (await at_a.open(b"\x01" * 16, ha.hash, length, batch)).meta["opened"] is True
        assert (await at_b.open(b"\x02" * 16, hb.hash, length, batch)).meta["opened"] is True
        await at_a.work(b"\x01" * 16, length, batch)
        await at_b.work(b"\x02" * 16, length, batch)
        # The peers gossip: the fork is proven at seq 2, and the proof spreads to c.
        gossip(a_ledger, b_ledger)
        assert a_ledger.store.forks() == {key.peer_id: 2} == b_ledger.store.forks()
        gossip(b_ledger, c_ledger)
        assert c_ledger.store.forks() == {key.peer_id: 2}
        at_c = await Client.connect(m, one, c)
        hc = at_c.hold(b"\x03" * 16, tokens=10)
        await at_c.push()
        with pytest.raises(PaymentRequiredError, match="forked at seq 2"):
            await at_c.open(b"\x03" * 16, hc.hash, 10)
        await at_c.aclose()
        # Every node agrees: the client paid its grant and no more (the second receipt settled is paid
        # 4 of its 196 credits), nobody's balance is below zero.
        gossip(a_ledger, c_ledger)
        for node in (a_ledger, b_ledger, c_ledger):
            report = node.store.report()
            assert min(report.balances.values()) >= 0
            assert _spent(node, key.peer_id) == 200_000
            assert sorted(s.status for s in report.settled.values()) == ["full", "partial"]
        await at_a.aclose()
        await at_b.aclose()
    finally:
        one.close()
        other.close()


async def test_a_log_longer_than_one_push_reaches_a_new_peer_before_its_hold(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """A push carries the grant and the latest 63 entries: a peer that never saw the rest could not link
    them. The client's exchange runs anti-entropy first, so the new peer holds the log up to the hold."""
    m = toy_mesh
    elsewhere, fresh = m.peer(SPAN, ledger=make_ledger()), m.peer(SPAN, ledger=make_ledger())
    me = make_ledger()
    for i in range(70):  # 70 small holds at another peer: the log is longer than one push
        write_hold(me, elsewhere, bytes([i]) * 16, m.manifest.name, *SPAN, 1)
    client = m.client(me)
    assert client.exchange is not None
    rpc = RpcClient(await m.network.connect(me.peer_id, fresh))
    try:
        session = b"\xee" * 16
        hold = await client.exchange.hold(
            fresh, rpc, session, model=m.manifest.name, start=1, end=3, tokens=8
        )
        assert me.store.head(me.peer_id).seq == 72  # type: ignore[union-attr]
        meta = open_meta(m.manifest.name, *SPAN, 1, 8, hold)
        assert (await rpc.call(Frame(FrameType.OPEN, session, 0, meta=meta), 5)).meta["opened"] is True
        # without the exchange, the push alone leaves the new peer a gap: it cannot see the hold
        other = m.peer(SPAN, ledger=make_ledger())
        at_other = await Client.connect(m, me, other)
        late = at_other.hold(b"\xef" * 16, tokens=8)
        await at_other.push()
        with pytest.raises(PaymentRequiredError, match="does not hold the hold"):
            await at_other.open(b"\xef" * 16, late.hash, 8)
        await at_other.aclose()
    finally:
        await rpc.aclose()

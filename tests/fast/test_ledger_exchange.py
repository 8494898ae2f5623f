"""The ledger exchange of a session link, in memory: push, receipt countersigned and recorded once in both
logs, forged and replayed receipt frames refused, gossip converging; and the core's messages themselves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from python_peer.core import ledger_exchange as lx
from python_peer.core.canonical import canonical_bytes
from python_peer.core.errors import RemoteBadFrameError
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.wire import MAX_METADATA_BYTES, Frame, FrameType
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.link_ledger import SignalingExchange, gossip_exchange
from python_peer.rpc import RpcClient
from python_peer.tensors import to_wire
from tests.fast.conftest import ToyMesh, greedy
from tests.support.fakes import MemoryNetwork
from tests.support.holds import open_meta, write_hold


def receipts(ledger: LedgerService, author: str) -> list[Receipt]:
    """The receipts in ``author``'s log as ``ledger`` holds it."""
    head = ledger.store.head(author)
    if head is None:
        return []
    entries = ledger.store.entries_from(author, 1, head.seq)
    return [e.body.receipt for e in entries if isinstance(e.body, ReceiptBody)]


async def test_a_generation_pays_each_peer_once_and_the_logs_converge(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    servers = [make_ledger() for _ in range(3)]
    for ledger, span in zip(servers, ((0, 1), (1, 3), (3, 4)), strict=True):
        m.peer(span, ledger=ledger)
    mine = make_ledger()
    client = m.client(mine)

    _, session = await greedy(client, [4, 8, 15], 5)
    await client.gossip_settled()

    for server, hop in zip(servers, session.hops, strict=True):
        me = server.peer_id
        [served] = [r for r in receipts(server, me) if r.session == hop.session.hex()]  # once, by the server
        [used] = [r for r in receipts(mine, mine.peer_id) if r.server == me]  # once, by the client
        assert served.id == used.id and served.tokens == hop.tokens == 3 + 4
        # Gossip over the link brought the server's log to the client and the client's receipt to it.
        assert mine.store.head(me) == server.store.head(me)
        assert [r.id for r in receipts(server, mine.peer_id) if r.server == me] == [used.id]
    assert set(client.gossiped) == {s.peer_id for s in servers}


def _forward(session: bytes, step: int, seq: int, hidden: int) -> Frame:
    return Frame(
        FrameType.FORWARD,
        session,
        step,
        tensors=(
            to_wire("hidden_states", np.full((1, seq, hidden), 0.1, dtype=np.float32)),
            to_wire("attention_mask", np.ones((1, seq), dtype=np.int64)),
            to_wire("position_ids", np.arange(seq, dtype=np.int64)[None]),
        ),
    )


async def test_forged_and_replayed_receipts_are_refused_and_the_genuine_one_recorded_once(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    server_ledger = make_ledger()
    server = m.peer((1, 3), ledger=server_ledger)
    mine = make_ledger()
    rpc = RpcClient(await m.network.connect(mine.peer_id, server))
    try:
        session = b"\x07" * 16
        hold = write_hold(mine, server, session, m.manifest.name, 1, 3, 8)
        push = Frame(FrameType.GOSSIP, b"\x01" * 16, 0, meta=lx.push_request(mine.own_entries()))
        assert lx.parse_push_answer((await rpc.call(push, 5)).meta) == 2
        meta = open_meta(m.manifest.name, 1, 3, 1, 8, hold.hash)
        await rpc.call(Frame(FrameType.OPEN, session, 0, meta=meta), 5)
        await rpc.call(_forward(session, 0, 3, int(m.manifest.config["hidden_size"])), 5)
        closed = await rpc.call(Frame(FrameType.CLOSE, session, 1), 5)
        proposal = lx.parse_close_answer(closed.meta)
        assert proposal is not None
        proposed, server_sig = proposal
        receipt, client_sig = mine.countersign(
            proposed,
            server_sig,
            server=server,
            session=session,
            model=m.manifest.name,
            start=1,
            end=3,
            tokens=3,
        )

        def returned(data: dict[str, Any], sig: str, step: int) -> Frame:
            return Frame(FrameType.GOSSIP, session, step, meta=lx.receipt_request(data, sig, server_sig))

        forged = Identity.generate().sign(receipt.signing_bytes())  # the right bytes, the wrong key
        with pytest.raises(RemoteBadFrameError, match=r"ledger: .*signature"):
            await rpc.call(returned(proposed, forged, 2), 5)
        with pytest.raises(RemoteBadFrameError, match="no receipt of this session is waiting"):
            await rpc.call(returned({**proposed, "tokens": 300}, client_sig, 3), 5)
        with pytest.raises(RemoteBadFrameError, match="ledger: a returned receipt needs"):
            bad = {"kind": "receipt", "receipt": proposed, "client_sig": 7, "server_sig": server_sig}
            await rpc.call(Frame(FrameType.GOSSIP, session, 4, meta=bad), 5)
        answer = await rpc.call(returned(proposed, client_sig, 5), 5)
        assert lx.parse_receipt_answer(answer.meta) == receipt.id
        with pytest.raises(RemoteBadFrameError, match="no receipt of this session is waiting"):
            await rpc.call(returned(proposed, client_sig, 6), 5)  # replayed
        assert [r.id for r in receipts(server_ledger, server)] == [receipt.id]

        # The server's log, fetched over the link, carries the receipt exactly once.
        assert await gossip_exchange(mine, server, rpc, timeout=5) > 0
        assert [r.id for r in receipts(mine, server)] == [receipt.id]
        with pytest.raises(RemoteBadFrameError, match="unknown ledger request 'gossips'"):
            await rpc.call(Frame(FrameType.GOSSIP, session, 7, meta={"kind": "gossips", "msg": {}}), 5)
    finally:
        await rpc.aclose()


async def test_gossip_through_signaling_converges(make_ledger: Callable[..., LedgerService]) -> None:
    network = MemoryNetwork()
    a, b, c = make_ledger(), make_ledger(), make_ledger()
    nodes = {ledger.peer_id: ledger for ledger in (a, b, c)}
    signals = {pid: network.signal_client(pid) for pid in nodes}
    exchanges = {pid: SignalingExchange(ledger, signals[pid].send_signal) for pid, ledger in nodes.items()}

    async def pump() -> int:
        """Deliver every signal in flight, and what answering them sends, until none is left."""
        delivered = 0
        while any(signal.pending() for signal in signals.values()):
            for pid in signals:
                inbox = network.inboxes[pid]
                while not inbox.empty():
                    incoming = inbox.get_nowait()
                    await exchanges[pid].receive(incoming.sender, incoming.payload)
                    delivered += 1
            assert delivered < 1000, "gossip does not settle"
        return delivered

    await exchanges[a.peer_id].open_round(b.peer_id)
    await exchanges[b.peer_id].open_round(c.peer_id)
    await exchanges[c.peer_id].open_round(a.peer_id)
    assert await pump() > 0
    await exchanges[a.peer_id].open_round(b.peer_id)
    await pump()
    for author in nodes:
        heads = {pid: ledger.store.head(author) for pid, ledger in nodes.items()}
        assert len(set(heads.values())) == 1 and heads[author] is not None, heads


# --- the core's messages ------------------------------------------------------------------------------


def test_requests_build_and_parse_back() -> None:
    assert lx.parse_request(lx.push_request([{"a": 1}])) == lx.PushRequest([{"a": 1}])
    assert lx.parse_request(lx.receipt_request({"r": 1}, "c", "s")) == lx.ReceiptRequest({"r": 1}, "c", "s")
    assert lx.parse_request(lx.gossip_request({"type": "summary"})) == lx.GossipRequest({"type": "summary"})
    # The wire's keys are those every implementation has always sent.
    assert lx.push_request([]) == {"kind": "push", "entries": []}
    assert lx.receipt_request({}, "c", "s") == {
        "kind": "receipt",
        "receipt": {},
        "client_sig": "c",
        "server_sig": "s",
    }
    assert lx.gossip_request({}) == {"kind": "gossip", "msg": {}}
    assert lx.close_answer(None, None) == {"closed": True}
    assert lx.close_answer({"r": 1}, "s") == {"closed": True, "receipt": {"r": 1}, "server_sig": "s"}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("push", "must be a JSON object"),
        ({"kind": "gossips", "msg": {}}, "unknown ledger request 'gossips'"),
        ({"kind": "push", "entries": [{}] * 65}, "a push carries a list of at most 64 entries"),
        ({"kind": "push"}, "a push carries a list"),
        ({"kind": "gossip"}, "a gossip message must be a JSON object"),
        ({"kind": "gossip", "msg": "summary"}, "a gossip message must be a JSON object"),
        ({"kind": "receipt", "receipt": [], "client_sig": "c", "server_sig": "s"}, "must be a JSON object"),
        ({"kind": "receipt", "receipt": {}, "client_sig": "c"}, "needs client_sig and server_sig"),
    ],
)
def test_bad_requests_say_what_is_wrong(meta: object, message: str) -> None:
    with pytest.raises(lx.ExchangeError, match=message):
        lx.parse_request(meta)


def test_answers_parse_and_refuse() -> None:
    assert lx.parse_push_answer(lx.push_answer(3)) == 3
    assert lx.parse_receipt_answer(lx.receipt_answer("ab")) == "ab"
    assert lx.parse_gossip_answer(lx.gossip_answer([{"x": 1}])) == [{"x": 1}]
    assert lx.parse_close_answer({"closed": True}) is None
    assert lx.parse_close_answer(lx.close_answer({"r": 1}, "s")) == ({"r": 1}, "s")
    for parse, meta, message in [
        (lx.parse_push_answer, {"stored": True}, "count"),
        (lx.parse_receipt_answer, {}, "id it recorded"),
        (lx.parse_gossip_answer, {"replies": "x"}, "without a list of replies"),
        (lx.parse_gossip_answer, {"replies": [1]}, "must be a JSON object"),
        (lx.parse_close_answer, {"receipt": {}}, "without the server's signature"),
    ]:
        with pytest.raises(lx.ExchangeError, match=message):
            parse(meta)


def test_gossip_answers_fit_one_frame() -> None:
    big = {"type": "entries", "blob": "x" * (40 * 1024)}
    kept = lx.gossip_answer([big, big, {"type": "want"}])["replies"]
    assert kept == [big]  # the second would outgrow the metadata; what follows waits for the next round
    assert len(canonical_bytes({"replies": kept})) <= MAX_METADATA_BYTES


def test_call_json_is_the_module_behind_json() -> None:
    assert json.loads(lx.call_json("push_request", "[[]]")) == {"kind": "push", "entries": []}
    parsed = json.loads(lx.call_json("parse_request", json.dumps([lx.gossip_request({"v": 1})])))
    assert parsed == {"kind": "gossip", "msg": {"v": 1}}
    assert json.loads(lx.call_json("parse_close_answer", '[{"closed": true}]')) is None
    assert json.loads(
        lx.call_json("parse_close_answer", '[{"closed":true,"receipt":{},"server_sig":"s"}]')
    ) == [
        {},
        "s",
    ]
    for name, args, message in [
        ("eval", "[]", "unknown ledger exchange function"),
        ("parse_request", "{", "not JSON"),
        ("parse_request", "{}", "a JSON list"),
        ("parse_request", "[]", "parse_request"),
        ("parse_request", '[{"kind": "nope"}]', "unknown ledger request 'nope'"),
    ]:
        with pytest.raises(lx.ExchangeError, match=message):
            lx.call_json(name, args)

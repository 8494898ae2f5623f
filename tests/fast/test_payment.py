"""Payment refusal, in memory: a client without balance is refused with its balance and the price."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from python_peer.core.errors import PaymentRequiredError
from python_peer.core.wire import ErrorCode, Frame, FrameType
from python_peer.errors import MeshError
from python_peer.ledger_service import LedgerService
from python_peer.rpc import RpcClient
from python_peer.span_gate import SpanGate
from tests.fast.conftest import ToyMesh, greedy
from tests.support.holds import open_meta, push_frame, write_hold, written_holds

REFUSAL = r"balance 0\.000 credits does not cover the price of \d+\.\d{3} credits"


async def test_a_client_without_balance_is_refused_naming_balance_and_price(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    for span in ((0, 1), (1, 3), (3, 4)):
        m.peer(span, ledger=make_ledger())
    poor = make_ledger(grant=False)
    client = m.client(poor)

    with pytest.raises(MeshError, match=r"refused to serve|refused to hold its price") as caught:
        await greedy(client, [1, 2, 3], 4)
    cause = caught.value.__cause__
    assert isinstance(cause, PaymentRequiredError) and cause.code == ErrorCode.PAYMENT_REQUIRED
    assert re.search(REFUSAL, str(cause)), str(cause)
    assert all(not server.sessions for server in m.servers.values()), "no session stays open"


async def test_the_refusal_is_an_error_frame_with_its_code(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    server = m.peer((1, 3), ledger=make_ledger())
    poor = make_ledger(grant=False)
    rpc = RpcClient(await m.network.connect(poor.peer_id, server))
    try:
        # A client with nothing writes a hold anyway (the protocol lets it) and pushes it: refused.
        hold = write_hold(poor, server, b"\x01" * 16, m.manifest.name, 1, 3, 8)
        assert (await rpc.call(push_frame(poor.own_entries()), 5)).meta == {"stored": 1, "held": 1}
        meta = open_meta(m.manifest.name, 1, 3, 1, 8, hold.hash)
        with pytest.raises(PaymentRequiredError, match=REFUSAL):
            await rpc.call(Frame(FrameType.OPEN, b"\x01" * 16, 0, meta=meta), 5)
        # The same request with a grant on the log, a hold for its session and both pushed opens.
        rich = make_ledger()
        rpc_rich = RpcClient(await m.network.connect(rich.peer_id, server))
        hold = write_hold(rich, server, b"\x03" * 16, m.manifest.name, 1, 3, 8)
        assert (await rpc_rich.call(push_frame(rich.own_entries()), 5)).meta == {"stored": 2, "held": 2}
        meta = open_meta(m.manifest.name, 1, 3, 1, 8, hold.hash)
        opened = await rpc_rich.call(Frame(FrameType.OPEN, b"\x03" * 16, 0, meta=meta), 5)
        assert opened.meta["opened"] is True
        await rpc_rich.aclose()
    finally:
        await rpc.aclose()


async def test_a_node_routes_its_own_span_in_process_and_pays_only_for_the_others(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """An API node serving blocks 1-3 reaches them in process, with no round trip, for free: it routes
    through itself even when another peer of that span announces ten times its throughput and was
    measured 2 ms away, and holds (promises to pay) only the peers of the other spans. (Before, a node
    whose own span had never been tried ranked it at the default round trip of an unmeasured peer and
    paid another peer for it: in the chaos run, the API nodes ran out of credits.)"""
    m = toy_mesh
    mine = make_ledger()
    me = m.peer((1, 3), ledger=mine, throughput=5000)
    faster = m.peer((1, 3), ledger=make_ledger(), throughput=50_000)
    others = {m.peer(span, ledger=make_ledger(), throughput=50_000) for span in ((0, 1), (3, 4))}
    gate = SpanGate(m.servers[me], me)
    client = m.client(mine, local=gate)
    client.rtts[faster] = 0.002

    for _ in range(2):
        _, session = await greedy(client, [1, 2, 3], 4)
        assert [hop[0] for hop in session.route][1] == me
    assert {h.hold.server for h in written_holds(mine.store, me)} == others
    assert m.servers[faster].tokens_served == 0

    # paused, its own span is routed around like any other failing peer, and the other peer is paid
    assert gate.set_serving(False)
    _, session = await greedy(client, [1, 2, 3], 4)
    assert [hop[0] for hop in session.route][1] == faster
    assert faster in {h.hold.server for h in written_holds(mine.store, me)}

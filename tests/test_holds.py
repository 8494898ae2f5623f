"""No spending twice, with real ``ai4all peer`` processes: a client speaking only the documented protocol
(docs/ledger.md "Holds", docs/mesh.md OPEN) against three peers serving the same blocks.

- A client whose balance is one request's price writes a hold for each of three peers, pushes its log
  to each as it goes, then sends the three OPENs at once: the first peer serves, the two others refuse
  (``payment_required``); after the session's receipt, every peer's ledger agrees on what it paid.
- The same credits promised from two logs of one key (a fork): each of two peers serves once, the peers'
  own signaling gossip proves the fork and spreads it to the third, which refuses the client; no
  balance is below zero and the client paid no more than its grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from python_peer.core import ledger_exchange as lx
from python_peer.core.economics import network_rules, price
from python_peer.core.errors import PaymentRequiredError
from python_peer.core.manifest import load_manifest
from python_peer.core.wire import Frame, FrameType
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.node import MeshNode
from python_peer.rpc import RpcClient
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tensors import to_wire
from tests.support.holds import open_meta, push_frame, write_hold
from tests.support.mesh import FAST_TRANSPORT
from tests.support.procs import Node, PeerProc, ProcMesh, ledger_balance, run_cli
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.timeout(240)

SPAN = (1, 3)
FAST_GOSSIP = ["--gossip-interval", "2"]  # peers gossip through signaling every 2 s: a fork spreads


class Mesh(ProcMesh):
    """One signaling node and three peers serving blocks 1-3."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.name = load_manifest(model).name
        node = Node("signal", tmp)
        peers = [PeerProc(f"p{i}", tmp, model, [node.url], span="1-3", extra=FAST_GOSSIP) for i in range(3)]
        super().__init__(model, node, peers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("holds"), tiny_llama_export)
    try:
        mesh.ready()
        yield mesh
    finally:
        mesh.stop()


async def balance_is(peer: PeerProc, who: str, units: int) -> bool:
    return await asyncio.to_thread(ledger_balance, peer, who) == units


async def knows_fork(peer: PeerProc, who: str, seq: int) -> bool:
    """Whether ``ai4all ledger show`` at ``peer`` says ``who`` forked at ``seq``."""
    args = ["ledger", "show", who, "--data-dir", str(peer.data_dir)]
    result = await asyncio.to_thread(run_cli, args, timeout=60)
    assert result.returncode == 0, result.stderr
    return re.search(rf"forked at seq\D*{seq}\b", result.stdout) is not None


@contextlib.asynccontextmanager
async def links(mesh: Mesh, ledger: LedgerService) -> AsyncIterator[dict[str, RpcClient]]:
    """RPC links from ``ledger``'s identity to every peer, by peer id."""
    signal_client = await SignalClient.create(ledger.identity, SignalClientConfig(urls=(mesh.node.url,)))
    node = MeshNode(ledger.identity, signal_client, FAST_TRANSPORT)
    rpcs: dict[str, RpcClient] = {}
    try:
        for peer in mesh.peers:
            rpcs[peer.peer_id] = RpcClient(await node.links.connect(peer.peer_id))
        yield rpcs
    finally:
        for rpc in rpcs.values():
            await rpc.aclose()
        await node.aclose()


async def work(
    mesh: Mesh, ledger: LedgerService, rpc: RpcClient, server: str, session: bytes, batch: int, length: int
) -> None:
    """``batch`` x ``length`` positions through an open session, CLOSE, and the countersigned receipt."""
    hidden = np.random.default_rng(0).standard_normal((batch, length, 64)).astype(np.float32)
    tensors = (
        to_wire("hidden_states", hidden),
        to_wire("attention_mask", np.ones((batch, length), np.int64)),
        to_wire("position_ids", np.tile(np.arange(length, dtype=np.int64), (batch, 1))),
    )
    await rpc.call(Frame(FrameType.FORWARD, session, 0, tensors=tensors), 30)
    closed = await rpc.call(Frame(FrameType.CLOSE, session, 1), 10)
    proposal = lx.parse_close_answer(closed.meta)
    assert proposal is not None
    receipt, client_sig = ledger.countersign(
        proposal[0],
        proposal[1],
        server=server,
        session=session,
        model=mesh.name,
        start=SPAN[0],
        end=SPAN[1],
        tokens=batch * length,
    )
    meta = lx.receipt_request(receipt.to_dict(), client_sig, proposal[1])
    assert lx.parse_receipt_answer((await rpc.call(Frame(FrameType.GOSSIP, session, 2, meta=meta), 10)).meta)


async def test_one_price_opened_at_three_peers_at_once_is_served_once(mesh: Mesh) -> None:
    grant = network_rules().starter_grant
    tokens = (grant - network_rules().base_fee) // (2 * network_rules().cost_per_block_token)
    assert price(2, tokens, 0, network_rules()) == grant  # one request's price is the whole balance
    ledger = LedgerService.open(None, Identity.generate())
    peers = [p.peer_id for p in mesh.peers]
    sessions = [bytes([i + 1]) * 16 for i in range(3)]
    try:
        async with links(mesh, ledger) as rpcs:
            opens = []
            for peer, session in zip(peers, sessions, strict=True):
                hold = write_hold(ledger, peer, session, mesh.name, *SPAN, tokens)
                await rpcs[peer].call(push_frame(ledger.own_entries()), 10)
                meta = open_meta(mesh.name, *SPAN, 1, tokens, hold.hash)
                opens.append(rpcs[peer].call(Frame(FrameType.OPEN, session, 0, meta=meta), 10))
            answers = await asyncio.gather(*opens, return_exceptions=True)
            assert isinstance(answers[0], Frame) and answers[0].meta["opened"] is True, answers[0]
            for refused in answers[1:]:
                assert isinstance(refused, PaymentRequiredError), refused
                assert "does not cover the price" in str(
                    refused
                ) and "held for its other open sessions" in str(refused)
            await work(mesh, ledger, rpcs[peers[0]], peers[0], sessions[0], 1, 8)
        paid = price(2, 8, 0, network_rules())
        assert ledger.balance() == grant - paid
        for proc in mesh.peers:  # the receipt reaches every peer by gossip; all agree, none below zero
            await wait_for_async(
                partial(balance_is, proc, ledger.peer_id, grant - paid), 60, what=f"{proc.name} agreeing"
            )
    finally:
        ledger.close()


async def test_the_same_credits_in_two_logs_are_a_fork_the_peers_prove_and_spread(mesh: Mesh) -> None:
    """Each log's hold fits alone. The two OPENs go out at once; a peer that already heard of the other
    history (peers gossip every 2 s) refuses, one that did not serves: either way the fork is proven,
    reaches every peer, the third refuses the client, and the client pays no more than its grant."""
    rules = network_rules()
    key = Identity.generate()
    one = LedgerService.open(None, key)
    other = LedgerService.open(None, key, claim_grant=False)
    a, b, c = (p.peer_id for p in mesh.peers)
    # 39 rows x 250 positions through 2 blocks: 196 of the grant's 200 credits, promised twice
    batch, length = 39, 250
    cost = price(2, batch * length, 0, rules)
    assert cost == 196_000 < rules.starter_grant < 2 * cost
    try:
        other.accept_entries(one.own_entries())  # one grant, then two histories from seq 2
        async with links(mesh, one) as rpcs:
            plan = ((one, a, b"\x0a" * 16), (other, b, b"\x0b" * 16))
            opens = []
            for ledger, peer, session in plan:
                hold = write_hold(ledger, peer, session, mesh.name, *SPAN, batch * length)
                assert hold.seq == 2
                await rpcs[peer].call(push_frame(ledger.own_entries()), 10)
                meta = open_meta(mesh.name, *SPAN, batch, length, hold.hash)
                opens.append(rpcs[peer].call(Frame(FrameType.OPEN, session, 0, meta=meta), 10))
            answers = await asyncio.gather(*opens, return_exceptions=True)
            served = 0
            for (ledger, peer, session), answer in zip(plan, answers, strict=True):
                if isinstance(answer, Frame):
                    served += 1
                    await work(mesh, ledger, rpcs[peer], peer, session, batch, length)
                else:  # the peer heard of the other history first
                    assert isinstance(answer, PaymentRequiredError) and "forked at seq 2" in str(answer), (
                        answer
                    )
            assert served >= 1
            # The peers' own gossip meets the two histories: the fork is proven and reaches c.
            for proc in mesh.peers:
                await wait_for_async(
                    partial(knows_fork, proc, key.peer_id, 2), 90, what=f"{proc.name} knowing the fork"
                )
            late = b"\x0c" * 16
            hold_c = write_hold(one, c, late, mesh.name, *SPAN, 8)
            await rpcs[c].call(push_frame(one.own_entries()), 10)
            with pytest.raises(PaymentRequiredError, match="forked at seq 2"):
                await rpcs[c].call(
                    Frame(FrameType.OPEN, late, 0, meta=open_meta(mesh.name, *SPAN, 1, 8, hold_c.hash)), 10
                )

        # Every receipt settles everywhere: the client paid what it had and no more, never below zero.
        left = max(0, rules.starter_grant - served * cost)
        for proc in mesh.peers:
            await wait_for_async(
                partial(balance_is, proc, key.peer_id, left), 60, what=f"{proc.name} settling the receipts"
            )
        earned = {p.name: ledger_balance(p, p.peer_id) for p in mesh.peers}
        assert all(value >= 0 for value in earned.values()), earned
    finally:
        one.close()
        other.close()

"""Ledger gossip on session links: real ``ai4all peer`` processes, a client in the test's event loop.

Signaling gossip is slowed to once an hour on every node, so whatever spreads here spread over the data
channels: a client's GOSSIP request ``{kind: "gossip", msg}`` answered with ``{replies: [...]}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_peer.core.canonical import canonical_bytes
from python_peer.core.economics import network_rules
from python_peer.core.entries import Entry
from python_peer.core.errors import RemoteBadFrameError
from python_peer.core.manifest import load_manifest
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.wire import MAX_METADATA_BYTES, Frame, FrameType
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from python_peer.link_ledger import gossip_exchange
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.rpc import RpcClient
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tensors import to_wire
from tests.support.holds import hold_for
from tests.support.mesh import FAST, FAST_TRANSPORT, PROMPTS, mesh_tokens
from tests.support.procs import Node, PeerProc, ProcMesh, ledger_balance

pytestmark = pytest.mark.timeout(180)

SLOW_GOSSIP = ["--gossip-interval", "3600"]  # signaling gossip never runs during a test


def third_party_log(identity: Identity) -> list[Entry]:
    """The log (the starter grant) of an identity that takes no part in the test."""
    service = LedgerService.open(None, identity)
    try:
        return [Entry.from_dict(e) for e in service.own_entries()]
    finally:
        service.close()


class Mesh(ProcMesh):
    """One signaling node and peers for 0-1, 1-3 and 3-4; the 1-3 peer starts holding ``planted``'s log."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.planted = Identity.generate()
        (tmp / "p1-3").mkdir()
        store = LedgerStore.open(tmp / "p1-3" / LEDGER_FILE, rules=network_rules())
        store.insert_many(third_party_log(self.planted))
        store.close()
        node = Node("signal", tmp)
        peers = [
            PeerProc(name, tmp, model, [node.url], span=span, extra=SLOW_GOSSIP)
            for name, span in (("p0-1", "0-1"), ("p1-3", "1-3"), ("p3-4", "3-4"))
        ]
        super().__init__(model, node, peers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("channel-gossip"), tiny_llama_export)
    try:
        mesh.ready()
        yield mesh
    finally:
        mesh.stop()


@contextlib.asynccontextmanager
async def raw_link(mesh: Mesh, name: str) -> Any:
    """A fresh identity with a ledger (its grant pushed) and an RPC link to one peer."""
    identity = Identity.generate()
    signal_client = await SignalClient.create(identity, SignalClientConfig(urls=(mesh.node.url,)))
    node = MeshNode(identity, signal_client, FAST_TRANSPORT)
    ledger = LedgerService.open(None, identity)
    try:
        rpc = RpcClient(await node.links.connect(mesh.peer(name).peer_id))
        push = Frame(
            FrameType.GOSSIP, b"\x09" * 16, 0, meta={"kind": "push", "entries": ledger.own_entries()}
        )
        assert (await rpc.call(push, 5)).meta == {"stored": 1, "held": 1}
        yield ledger, rpc
        await rpc.aclose()
    finally:
        await node.aclose()
        ledger.close()


def gossip(msg: object) -> Frame:
    return Frame(FrameType.GOSSIP, b"\x05" * 16, 0, meta={"kind": "gossip", "msg": msg})


async def test_a_generation_gossips_third_party_entries_both_ways_over_the_links(mesh: Mesh) -> None:
    config = NodeConfig(signal_urls=(mesh.node.url,), gossip_interval_s=3600.0)
    node, client = await open_client(config, mesh.model, FAST)
    stranger = Identity.generate()
    try:
        assert client.ledger is not None
        store = client.ledger.store
        store.insert_many(third_party_log(stranger))
        assert store.head(mesh.planted.peer_id) is None
        await mesh_tokens(client, PROMPTS[0], 4)
        await client.gossip_settled()
        servers = {p.peer_id for p in mesh.peers}
        assert set(client.gossiped) == servers, "an exchange with every peer that served a receipt"
        # The client learned the planted third party's log, and each server's receipt entry.
        assert store.head(mesh.planted.peer_id) is not None
        for peer_id in servers:
            head = store.head(peer_id)
            assert head is not None and head.seq >= 2, "the server's grant and its receipt"
        # At most one exchange per peer per 30 s: the next receipt does not start another.
        assert client.gossip_soon(mesh.peers[0].peer_id, await client.rpc(mesh.peers[0].peer_id)) is None
    finally:
        await client.aclose()
        await node.aclose()
    grant = network_rules().starter_grant
    for peer in mesh.peers:  # every server now holds the stranger's log, which only the client had
        assert ledger_balance(peer, stranger.peer_id) == grant, peer.tail()


async def test_a_forged_receipt_does_not_keep_the_genuine_one_from_being_recorded_once(mesh: Mesh) -> None:
    model = load_manifest(mesh.model).name
    server = mesh.peer("p1-3").peer_id
    async with raw_link(mesh, "p1-3") as (ledger, rpc):
        session = b"\x07" * 16
        opening = {"model": model, "start": 1, "end": 3, "batch": 1, "max_length": 8}
        opening = hold_for(ledger, server, session, opening)  # a hold that pays for it, pushed
        push = Frame(
            FrameType.GOSSIP, b"\x0a" * 16, 0, meta={"kind": "push", "entries": ledger.own_entries()}
        )
        assert (await rpc.call(push, 5)).meta == {"stored": 1, "held": 2}
        await rpc.call(Frame(FrameType.OPEN, session, 0, meta=opening), 5)
        hidden = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
        tensors = (
            to_wire("hidden_states", hidden),
            to_wire("attention_mask", np.ones((1, 3), np.int64)),
            to_wire("position_ids", np.arange(3, dtype=np.int64)[None]),
        )
        await rpc.call(Frame(FrameType.FORWARD, session, 0, tensors=tensors), 5)
        closed = (await rpc.call(Frame(FrameType.CLOSE, session, 1), 5)).meta
        proposed, server_sig = closed["receipt"], closed["server_sig"]
        receipt, client_sig = ledger.countersign(
            proposed, server_sig, server=server, session=session, model=model, start=1, end=3, tokens=3
        )

        def returned(receipt_data: dict[str, Any], sig: str, step: int) -> Frame:
            meta = {"kind": "receipt", "receipt": receipt_data, "client_sig": sig, "server_sig": server_sig}
            return Frame(FrameType.GOSSIP, session, step, meta=meta)

        forged = Identity.generate().sign(receipt.signing_bytes())  # the right bytes, the wrong key
        with pytest.raises(RemoteBadFrameError, match=r"ledger: .*signature"):
            await rpc.call(returned(proposed, forged, 2), 5)
        more_tokens = {**proposed, "tokens": 300}
        with pytest.raises(RemoteBadFrameError, match="no receipt of this session is waiting"):
            await rpc.call(returned(more_tokens, client_sig, 3), 5)
        answer = await rpc.call(returned(proposed, client_sig, 4), 5)
        assert answer.meta == {"recorded": receipt.id}
        with pytest.raises(RemoteBadFrameError, match="no receipt of this session is waiting"):
            await rpc.call(returned(proposed, client_sig, 5), 5)

        # The server's log, fetched over the link, carries the receipt exactly once.
        assert await gossip_exchange(ledger, server, rpc, timeout=5) > 0
        head = ledger.store.head(server)
        assert head is not None
        carried = [
            e
            for e in ledger.store.entries_from(server, 1, head.seq)
            if isinstance(e.body, ReceiptBody) and e.body.receipt.id == receipt.id
        ]
        assert len(carried) == 1
        assert carried[0].body == ReceiptBody(Receipt.from_dict(proposed), client_sig, server_sig)


async def test_malformed_gossip_requests_are_answered_without_harm(mesh: Mesh) -> None:
    server = mesh.peer("p3-4").peer_id
    async with raw_link(mesh, "p3-4") as (ledger, rpc):
        with pytest.raises(RemoteBadFrameError, match="ledger: a gossip message must be a JSON object"):
            await rpc.call(gossip("summary"), 5)
        with pytest.raises(RemoteBadFrameError, match="ledger: a gossip message must be a JSON object"):
            await rpc.call(Frame(FrameType.GOSSIP, b"\x05" * 16, 1, meta={"kind": "gossip"}), 5)
        with pytest.raises(RemoteBadFrameError, match="unknown ledger request 'gossips'"):
            await rpc.call(Frame(FrameType.GOSSIP, b"\x05" * 16, 2, meta={"kind": "gossips", "msg": {}}), 5)
        dropped: list[object] = [
            {},
            {"type": "nope", "v": 1},
            {"type": "summary", "v": 2, "buckets": {}},
            {"type": "summary", "v": 1, "buckets": "ab"},
            {"type": "want", "v": 1, "want": [["not a peer id", 1]], "forks": []},
            {"type": "entries", "v": 1, "entries": [{"author": 1}], "proofs": [], "more": False},
        ]
        # Over the 63 KiB a gossip message may have, while the frame is within the wire's 64 KiB.
        oversized = {"type": "entries", "v": 1, "entries": ["x" * 64600], "proofs": [], "more": False}
        assert 63 * 1024 < len(canonical_bytes(oversized)) < MAX_METADATA_BYTES - 64
        for msg in [*dropped, oversized]:
            assert (await rpc.call(gossip(msg), 5)).meta == {"replies": []}, msg
        assert ledger.store.head(server) is None
        # The peer still gossips (and serves) this client: a whole exchange brings its log over.
        assert await gossip_exchange(ledger, server, rpc, timeout=5) >= 3
        assert ledger.store.head(server) is not None
        opening = {"model": load_manifest(mesh.model).name, "start": 3, "end": 4, "batch": 1, "max_length": 4}
        opening = hold_for(ledger, server, b"\x08" * 16, opening)  # the hold reaches the peer by gossip too
        assert await gossip_exchange(ledger, server, rpc, timeout=5) >= 1
        assert (await rpc.call(Frame(FrameType.OPEN, b"\x08" * 16, 0, meta=opening), 5)).meta["opened"]

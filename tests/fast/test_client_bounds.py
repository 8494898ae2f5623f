"""What a long-lived mesh client keeps per peer is bounded, whatever the peers do (links, round trips,
the times of its ledger exchanges).

The attack: one operator announces a span under identity after identity, each withdrawn when the next
comes (so the client moves to it), and leaves the old ones running and answering their links. A client that kept a link and a round trip per
peer it ever used would hold every one of them open forever. It keeps the ``MAX_HOPS`` it used last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from python_peer.core.wire import Frame
from python_peer.errors import LinkClosedError
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.link_ledger import MAX_GOSSIPED, ClientExchange
from python_peer.mesh_client import MAX_HOPS
from tests.fast.conftest import FAST, ToyMesh, greedy
from tests.support.fakes import announcement
from tests.support.mesh import reference_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 2


async def test_a_span_announced_under_throwaway_identities_leaves_at_most_max_hops_links(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    expected = reference_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    m.peer((0, 1))
    m.peer((3, 4))
    client = m.client(config=replace(FAST, lookup_cache_s=0.0))
    identities: list[str] = []
    for _ in range(MAX_HOPS + 10):
        if identities:
            del m.network.directory[identities[-1]]  # withdrawn, still running
        identities.append(m.peer((1, 3)))
        tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
        assert tokens == expected
        assert [hop[0] for hop in session.route][1] == identities[-1]

    open_links = [
        link for link in m.network.links if link.local_id == client.signal.peer_id and not link.closed
    ]
    assert len(open_links) <= MAX_HOPS
    assert len(client.rtts) <= MAX_HOPS
    # the identities used longest ago lost their link; the recent ones and the two other spans kept theirs
    linked = {link.remote_id for link in open_links}
    assert identities[0] not in linked and identities[-1] in linked
    assert set(identities[-(MAX_HOPS - 2) :]) <= linked
    # and an old identity that is announced again is simply connected again
    del m.network.directory[identities[-1]]
    m.network.directory[identities[0]] = announcement(identities[0], m.manifest.name, 1, 3)
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and [hop[0] for hop in session.route][1] == identities[0]


class GoneHop:
    """A hop whose peer is gone: every call fails as a closed link does."""

    closed = True

    async def call(self, frame: Frame, timeout: float) -> Frame:
        raise LinkClosedError("the link is closed")

    async def aclose(self) -> None:
        return None


async def test_ledger_exchanges_with_throwaway_identities_are_remembered_up_to_max_gossiped(
    make_ledger: Callable[..., LedgerService],
) -> None:
    exchange = ClientExchange(make_ledger(), request_timeout_s=1.0, gossip_every_s=30.0)
    peers = [Identity.generate().peer_id for _ in range(MAX_GOSSIPED + 50)]
    for peer in peers:
        assert exchange.gossip_soon(peer, GoneHop()) is not None
    await exchange.settled()
    assert len(exchange.gossiped) == MAX_GOSSIPED  # every one is recent: the oldest went first
    assert peers[0] not in exchange.gossiped and peers[-1] in exchange.gossiped
    # the cadence still holds for the ones remembered
    assert exchange.gossip_soon(peers[-1], GoneHop()) is None
    # and exchanges older than the cadence are the first to go
    for peer in peers[-10:]:
        exchange.gossiped[peer] -= 60.0
    fresh = Identity.generate().peer_id
    assert exchange.gossip_soon(fresh, GoneHop()) is not None
    await exchange.settled()
    assert fresh in exchange.gossiped and not set(peers[-10:]) & set(exchange.gossiped)

"""Failover with replay, in memory: a peer dies mid-generation and the greedy tokens do not change."""

from __future__ import annotations

import pytest

from python_peer.core.wire import Frame, FrameType
from python_peer.errors import LinkClosedError, MeshError
from python_peer.server import SpanServer
from python_peer.span_gate import SpanGate
from tests.fast.conftest import ToyMesh, greedy
from tests.support.fakes import MemoryNetwork
from tests.support.mesh import reference_greedy as local_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 10


class DiesAt:
    """A peer that dies (its links drop, nothing answers it) when FORWARD step ``step`` arrives."""

    def __init__(self, network: MemoryNetwork, peer_id: str, server: SpanServer, step: int) -> None:
        self.network, self.peer_id, self.server, self.step = network, peer_id, server, step
        self.died = False

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.FORWARD and frame.step == self.step and not self.died:
            self.died = True
            self.network.kill(self.peer_id)
            raise LinkClosedError("this peer died")
        return await self.server.handle(client, frame)

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


async def test_a_peer_dying_mid_generation_is_routed_around_and_replayed(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    m.peer((0, 1))
    doomed = m.peer((1, 3), throughput=5000, wrap=lambda pid, s: DiesAt(m.network, pid, s, step=4))
    spare = m.peer((1, 3))
    m.peer((3, 4))
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and f"peer {doomed[:16]}: LinkClosedError" in session.last_failure
    assert client.bans.banned(doomed)
    peers = [hop[0] for hop in session.route]
    assert spare in peers and doomed not in peers
    # The replacement rebuilt its KV cache from the replayed history: prompt + 3 decode steps, then on.
    assert m.servers[spare].tokens_served == len(PROMPT) + NEW_TOKENS - 1


async def test_the_replay_is_what_makes_the_tokens_right(toy_mesh: ToyMesh) -> None:
    """Without the replayed history the replacement's cache is empty and the toy model answers otherwise:
    the test above could not pass by luck."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    forgetful = local_greedy(m.model_dir, PROMPT[-1:], NEW_TOKENS)
    assert forgetful != expected


async def test_with_no_peer_left_the_generation_fails_naming_the_last_failure(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    m.peer((0, 1))
    m.peer((1, 3), wrap=lambda pid, s: DiesAt(m.network, pid, s, step=1))
    m.peer((3, 4))
    client = m.client()
    with pytest.raises(MeshError, match="gave up after"):
        await greedy(client, PROMPT, 4)


async def test_routes_through_the_own_span_run_in_process_and_pausing_routes_around(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    me = m.peer((1, 3), throughput=9000)
    gate = SpanGate(m.servers[me], me)
    other = m.peer((1, 3))
    m.peer((0, 1))
    m.peer((3, 4))
    client = m.client(client_id=me, local=gate)

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and me in [hop[0] for hop in session.route]
    assert not any(link.remote_id == me and link.local_id == me for link in m.network.links), (
        "no link to itself"
    )
    assert m.servers[me].tokens_served > 0

    assert gate.set_serving(False)
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and other in [hop[0] for hop in session.route]
    assert "paused" in session.last_failure

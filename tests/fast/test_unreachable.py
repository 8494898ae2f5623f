"""Failover before the first token: a routed peer that cannot be reached is a hop failure, routed around.

A peer stays listed for a while after it dies (its announcement lingers until it expires), so a new chat
may be routed to it. Whether signaling refuses the offer, the link never opens or the peer never answers
OPEN, the client bans it, routes the span through a spare, and the chat gives the reference tokens.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from python_peer.core.wire import Frame, FrameType
from python_peer.server import SpanServer
from tests.fast.conftest import FAST, ToyMesh, greedy
from tests.support.mesh import reference_greedy as local_greedy

PROMPT = [3, 5, 7, 11]
NEW_TOKENS = 10


class SilentOnOpen:
    """A peer whose links open and answer pings, but that never answers OPEN."""

    def __init__(self, server: SpanServer) -> None:
        self.server = server
        self.opens = 0

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.OPEN:
            self.opens += 1
            await asyncio.Event().wait()  # cancelled when the link closes
        return await self.server.handle(client, frame)

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


def three_spans_and_a_doomed_favourite(m: ToyMesh) -> tuple[str, str]:
    """Peers for 0-1 and 3-4, and two for 1-3: the favourite (fastest announced) and a spare."""
    m.peer((0, 1))
    favourite = m.peer((1, 3), throughput=50_000)
    spare = m.peer((1, 3))
    m.peer((3, 4))
    return favourite, spare


async def test_a_listed_but_dead_peer_is_routed_around_before_the_first_token(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    dead, spare = three_spans_and_a_doomed_favourite(m)
    m.network.kill(dead)  # its announcement stays in the directory
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1 and f"peer {dead[:16]}: LinkTimeoutError" in session.last_failure
    assert client.bans.banned(dead)
    assert [hop[0] for hop in session.route][1] == spare


async def test_a_peer_signaling_refuses_to_reach_is_routed_around(toy_mesh: ToyMesh) -> None:
    """The case of the probe: the peer and its signaling node died, another node still lists it and answers
    the offer with ``unknown_peer``."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    gone, spare = three_spans_and_a_doomed_favourite(m)
    m.network.refuse_signals(gone)
    client = m.client()

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 1
    assert f"peer {gone[:16]}: LinkClosedError" in session.last_failure
    assert "not connected here nor known to a sibling" in session.last_failure
    assert client.bans.banned(gone)
    assert [hop[0] for hop in session.route][1] == spare
    # A second chat does not knock on the banned peer again.
    connects = client.links.connects  # type: ignore[attr-defined]
    assert (await greedy(client, PROMPT, NEW_TOKENS))[0] == expected
    assert client.links.connects == connects  # type: ignore[attr-defined]


async def test_a_peer_that_never_answers_open_is_given_up_on_within_the_open_timeout(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    silent: list[SilentOnOpen] = []

    def wrap(_peer_id: str, server: SpanServer) -> SilentOnOpen:
        silent.append(SilentOnOpen(server))
        return silent[-1]

    m.peer((0, 1))
    mute = m.peer((1, 3), throughput=50_000, wrap=wrap)
    spare = m.peer((1, 3))
    m.peer((3, 4))
    client = m.client(config=replace(FAST, open_timeout_s=0.5))

    started = time.monotonic()
    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    elapsed = time.monotonic() - started

    assert tokens == expected
    assert silent[0].opens == 1 and client.bans.banned(mute)
    assert f"peer {mute[:16]}: TimeoutError" in session.last_failure and "OPEN" in session.last_failure
    assert [hop[0] for hop in session.route][1] == spare
    assert elapsed < 0.5 + 3.0, f"the silent peer held the chat {elapsed:.1f} s"


async def test_every_way_of_being_unreachable_at_once_still_serves_the_chat(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    m.peer((0, 1))
    dead = m.peer((1, 3), throughput=90_000)
    gone = m.peer((1, 3), throughput=80_000)
    mute = m.peer((1, 3), throughput=70_000, wrap=lambda _pid, server: SilentOnOpen(server))
    spare = m.peer((1, 3))
    m.peer((3, 4))
    m.network.kill(dead)
    m.network.refuse_signals(gone)
    client = m.client(config=replace(FAST, open_timeout_s=0.5))

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)

    assert tokens == expected
    assert session.failovers == 3
    assert all(client.bans.banned(p) for p in (dead, gone, mute))
    assert [hop[0] for hop in session.route][1] == spare


async def test_when_every_server_of_a_span_is_banned_the_oldest_failure_is_tried_first(
    toy_mesh: ToyMesh,
) -> None:
    """Found by the chaos run (bench/chaos.py): two peers of a span were killed and restarted a minute
    ago (still banned), then the third died while listed. Retrying every banned peer by cost sent each
    session back to the dead favourite until the client gave up; the oldest ban is lifted first instead."""
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    m.peer((0, 1))
    dead = m.peer((1, 3), throughput=90_000)
    back_first = m.peer((1, 3))
    back_later = m.peer((1, 3))
    m.peer((3, 4))
    m.network.refuse_signals(dead)
    client = m.client()
    now = time.monotonic()
    client.bans.ban(back_first, now=now - 40)  # failed 40 s ago, restarted since
    client.bans.ban(back_later, now=now - 20)
    client.bans.ban(dead, now=now)  # failed a moment ago

    for _ in range(3):
        tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
        assert tokens == expected
        assert session.failovers == 0, session.last_failure
        assert [hop[0] for hop in session.route][1] == back_first


async def test_lifting_bans_still_reaches_a_peer_that_failed_a_moment_ago_if_it_is_the_only_one(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    expected = local_greedy(m.model_dir, PROMPT, NEW_TOKENS)
    m.peer((0, 1))
    only = m.peer((1, 3))
    m.peer((3, 4))
    client = m.client()
    client.bans.ban(only)  # it failed once under load; it is fine now

    tokens, session = await greedy(client, PROMPT, NEW_TOKENS)
    assert tokens == expected and [hop[0] for hop in session.route][1] == only

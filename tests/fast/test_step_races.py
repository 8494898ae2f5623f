"""Attacks on a serving peer's sessions over the documented frames, in memory: a step whose link goes away
while its blocks run, a session closed and reopened under a step still waiting for it, kept outputs of a
session id opened again, and a next peer that never takes a push. Each leaves the peer's books and its KV
caches in step, and blames no honest peer."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from python_peer.core import manifest as names
from python_peer.core.push_route import KEEP_KEY, PUSH_CLIENT_KEY, PUSH_ERROR_KEY, PUSH_KEY
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import LinkClosedError
from python_peer.identity import Identity
from python_peer.runner import BlocksRunner
from tests.fast.conftest import ToyMesh
from tests.fast.test_push import PushMesh, Raw, ask, entry, forward, hidden, hidden_size
from tests.support.waiting import wait_for_async


@pytest.fixture
def push(toy_mesh: ToyMesh) -> PushMesh:
    return PushMesh(toy_mesh)


@pytest.fixture
async def raw(push: PushMesh) -> tuple[Raw, str, str, str]:
    a, b, c = push.peer((0, 1)), push.peer((1, 3)), push.peer((3, 4))
    return Raw(push), a, b, c


@contextmanager
def held(runner: BlocksRunner) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``runner``'s forward blocks until ``release`` is set; ``entered`` says one is running."""
    entered, release = threading.Event(), threading.Event()
    original = runner.forward

    def forward(*args: Any) -> np.ndarray:
        entered.set()
        release.wait(5)
        return original(*args)

    runner.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield entered, release
    finally:
        release.set()
        runner.forward = original  # type: ignore[method-assign]


async def answers(link: Any, count: int) -> list[Frame]:
    async with asyncio.timeout(5):
        return [await link.recv() for _ in range(count)]


async def test_a_step_whose_link_closes_while_it_runs_is_not_run_again(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """The client's link closes while its step's blocks run (its other link keeps its sessions): the step
    still counts, so sending it again is ``out_of_order`` rather than a second copy of its tokens in the
    cache, past what ``max_length`` reserved."""
    client, a, _, _ = raw
    s_a = await client.open(a, 0, 1)
    second = await push.mesh.network.connect(client.id, a)
    server = push.mesh.servers[a]
    runner = server.runners[0]
    h = hidden(seq=4)[..., : hidden_size(push)]
    with held(runner) as (entered, release):
        await client.links[a].send(forward(s_a, 0, h))
        assert await asyncio.to_thread(entered.wait, 5)
        await client.links[a].aclose()
        await wait_for_async(lambda: len(push.relays[a]._clients[client.id]) == 1, 5, what="link gone")
        release.set()
        again = await ask(second, forward(s_a, 0, h))
    assert again.type is FrameType.ERROR and again.meta["code"] == "out_of_order"
    session = server.sessions[server._key(client.id, s_a)]
    assert runner.sessions[session.runs].length == session.length == 4
    nxt = await ask(second, forward(s_a, 1, h[:, :1]))
    assert nxt.type is FrameType.RESULT and runner.sessions[session.runs].length == 5


async def test_a_pushed_step_is_answered_to_its_client_though_the_pushers_link_closes(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """A pusher's link to the next peer closes while the pushed step runs there (say, the pusher closed it
    as its least recently used): the answer goes to the client on its own link all the same."""
    client, _, b, _ = raw
    s_b = await client.open(b, 1, 3)
    pusher = Identity.generate().peer_id
    link = await push.mesh.network.connect(pusher, b)
    server = push.mesh.servers[b]
    h = hidden(seq=3)[..., : hidden_size(push)]
    with held(server.runners[0]) as (entered, release):
        await link.send(forward(s_b, 0, h, {PUSH_CLIENT_KEY: client.id}))
        assert await asyncio.to_thread(entered.wait, 5)
        await link.aclose()
        await wait_for_async(lambda: pusher not in push.relays[b]._clients, 5, what="the pusher's link gone")
        release.set()
        (answer,) = await answers(client.links[b], 1)
    assert answer.type is FrameType.RESULT and answer.session == s_b and answer.step == 0
    assert server.sessions[server._key(client.id, s_b)].next_step == 1


async def test_a_step_waiting_for_a_session_closed_and_opened_again_runs_nothing(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """Step 1 waits behind step 0 when the client closes the session and opens the same id again: it was
    sent to the old session, so it is refused and the new session's cache stays empty (else the new one
    held tokens its books never counted)."""
    client, a, _, _ = raw
    s_a = await client.open(a, 0, 1)
    server = push.mesh.servers[a]
    runner = server.runners[0]
    h = hidden(seq=4)[..., : hidden_size(push)]
    with held(runner) as (entered, release):
        await client.links[a].send(forward(s_a, 0, h))
        assert await asyncio.to_thread(entered.wait, 5)
        await client.links[a].send(forward(s_a, 1, h))
        await asyncio.sleep(0.05)  # step 1 waits for step 0
        closed = await ask(client.links[a], Frame(FrameType.CLOSE, s_a, 2))
        assert closed.type is FrameType.RESULT
        meta = {"model": push.mesh.manifest.name, "start": 0, "end": 1, "batch": 1, "max_length": 16}
        reopened = await ask(client.links[a], Frame(FrameType.OPEN, s_a, 0, meta=meta))
        assert reopened.type is FrameType.RESULT
        release.set()
        got = {frame.step: frame for frame in await answers(client.links[a], 2)}
    assert got[1].type is FrameType.ERROR and got[1].meta["code"] == "unknown_session"
    session = server.sessions[server._key(client.id, s_a)]
    assert runner.sessions[session.runs].length == session.length == 0
    fresh = await ask(client.links[a], forward(s_a, 0, h))
    assert fresh.type is FrameType.RESULT


async def test_a_session_id_opened_again_has_nothing_kept_and_its_room_is_counted_once(
    push: PushMesh,
) -> None:
    """A session evicted idle and opened again under the same id: the old session's kept outputs are not
    the new one's (a FETCH of a step the new one never ran is refused), and keeping its step 0 again does
    not count the room twice (which, repeated, would leave no room to keep for anyone)."""
    a, b = push.peer((0, 1)), push.peer((1, 4))
    client = Raw(push)
    s_a, s_b = await client.open(a, 0, 1), await client.open(b, 1, 4)
    h = hidden(seq=3)[..., : hidden_size(push)]
    relay, server = push.relays[a], push.mesh.servers[a]

    async def kept_step(s_b: bytes) -> None:
        answer = await ask(
            client.links[a], forward(s_a, 0, h, {PUSH_KEY: [entry(b, s_b, 1, 4)], KEEP_KEY: True})
        )
        assert answer.type is FrameType.RESULT and answer.tensors == ()
        (last,) = await answers(client.links[b], 1)
        assert last.type is FrameType.RESULT

    await kept_step(s_b)
    one = relay.kept_bytes
    assert server.evict_idle(now=time.monotonic() + 2 * server.config.idle_timeout_s) == 1
    meta = {"model": push.mesh.manifest.name, "start": 0, "end": 1, "batch": 1, "max_length": 16}
    assert (await ask(client.links[a], Frame(FrameType.OPEN, s_a, 0, meta=meta))).type is FrameType.RESULT
    stale = await ask(client.links[a], Frame(FrameType.FETCH, s_a, 0))
    assert stale.type is FrameType.ERROR and stale.meta["code"] == "unknown_session"
    await kept_step(await client.open(b, 1, 4))
    assert relay.kept_bytes == one
    await ask(client.links[a], Frame(FrameType.CLOSE, s_a, 1))
    assert relay.kept_bytes == 0


class Stuck:
    """A next peer's link that connects, then never takes a frame (its transport stalls for good)."""

    def __init__(self, remote_id: str) -> None:
        self.remote_id = remote_id
        self._closed = asyncio.Event()

    async def send(self, frame: Frame) -> None:
        await self._closed.wait()
        raise LinkClosedError("closed")

    async def recv(self) -> Frame:
        await self._closed.wait()
        raise LinkClosedError("closed")

    async def ping(self, timeout_s: float | None = None) -> float:
        return 0.0

    async def aclose(self) -> None:
        self._closed.set()


async def test_a_next_peer_that_never_takes_the_push_is_a_push_error_not_a_silent_hop(
    push: PushMesh,
) -> None:
    """The route's next peer stalls the push forever: the pusher answers its client with ``push_error``
    in time (else the client, hearing nothing, bans the honest pusher), and its session goes on."""
    a = push.peer((0, 1), send_timeout_s=0.2)
    client = Raw(push)
    s_a = await client.open(a, 0, 1)
    stuck: list[Stuck] = []

    class Connector:
        async def connect(self, peer_id: str) -> Stuck:
            stuck.append(Stuck(peer_id))
            return stuck[-1]

    push.relays[a].connector = Connector()
    h = hidden(seq=2)[..., : hidden_size(push)]
    nowhere = entry(Identity.generate().peer_id, os.urandom(16), 1, 4)
    answer = await ask(client.links[a], forward(s_a, 0, h, {PUSH_KEY: [nowhere]}))
    assert answer.type is FrameType.RESULT and "could not push" in answer.meta[PUSH_ERROR_KEY]
    assert answer.tensor(names.HIDDEN_OUT).shape == (1, 2, hidden_size(push))
    nxt = await ask(client.links[a], forward(s_a, 1, h[:, :1]))
    assert nxt.type is FrameType.RESULT


async def test_a_step_of_no_tokens_is_refused_before_anything_runs_or_is_pushed_or_kept(
    push: PushMesh, raw: tuple[Raw, str, str, str]
) -> None:
    """A FORWARD of zero tokens is paid for by nothing (a receipt counts tokens), yet it ran the blocks,
    pushed to the next peer and kept an entry of 0 bytes that ``max_kept_bytes`` never bounds, once per
    step number: refused with ``bad_shape``, and the session stays at its step."""
    client, a, b, _ = raw
    s_a, s_b = await client.open(a, 0, 1), await client.open(b, 1, 3)
    empty = np.zeros((1, 0, hidden_size(push)), np.float32)
    route = {PUSH_KEY: [entry(b, s_b, 1, 3)], KEEP_KEY: True}
    refused = await ask(client.links[a], forward(s_a, 0, empty, route))
    assert refused.type is FrameType.ERROR and refused.meta["code"] == "bad_shape"
    assert push.relays[a].pushed == 0 and push.relays[a]._kept == {}
    ok = await ask(client.links[a], forward(s_a, 0, hidden(seq=2)[..., : hidden_size(push)]))
    assert ok.type is FrameType.RESULT

"""python_peer/transport.py over real aiortc on 127.0.0.1: two managers in one loop, and two processes.

Signaling between managers is an in-memory relay that calls the other manager's ``handle_signal`` (a
stand-in for a signaling node); the cross-process test relays it over the child's stdin and stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_peer.core.errors import RemoteBadFrameError
from python_peer.core.wire import (
    CHUNK_HEADER,
    CHUNK_MAGIC,
    HEADER,
    MAGIC,
    Frame,
    FrameType,
    WireTensor,
    chunk_message,
    raise_for_error,
)
from python_peer.errors import (
    LinkClosedError,
    LinkOverflowError,
    LinkTimeoutError,
    SignalPayloadError,
    TransportError,
)
from python_peer.ice import filter_remote_candidates
from python_peer.transport import (
    Link,
    LinkManager,
    LinkState,
    TransportConfig,
)
from tests.support.waiting import wait_for_async

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


class Relay:
    """In-memory signaling between named managers; records every payload it carries."""

    def __init__(self) -> None:
        self.managers: dict[str, LinkManager] = {}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def sender(self, src: str) -> Callable[[str, dict[str, Any]], Any]:
        async def send_signal(dst: str, payload: dict[str, Any]) -> None:
            self.sent.append((src, dst, json.loads(json.dumps(payload))))  # JSON-able, like the real thing
            await self.managers[dst].handle_signal(src, payload)

        return send_signal

    def add(self, name: str, config: TransportConfig | None = None, on_link: Any = None) -> LinkManager:
        manager = LinkManager(self.sender(name), config=config, on_link=on_link)
        self.managers[name] = manager
        return manager


@contextlib.asynccontextmanager
async def linked(
    config: TransportConfig | None = None, relay: Relay | None = None
) -> AsyncIterator[tuple[Link, Link]]:
    """Managers "a" and "b" and one open link between them (a connected to b)."""
    relay = relay or Relay()
    async with relay.add("a", config) as a, relay.add("b", config) as b:
        link_a = await a.connect("b")
        async with asyncio.timeout(5):
            link_b = await b.accept()
        yield link_a, link_b


def tensor_frame(step: int, numel: int, seed: int, ftype: FrameType = FrameType.FORWARD) -> Frame:
    values = np.random.default_rng(seed).standard_normal(numel, dtype=np.float32)
    tensor = WireTensor("hidden_states", "float32", (1, numel), values.tobytes())
    return Frame(ftype, bytes(range(16)), step, meta={"seed": seed}, tensors=(tensor,))


async def test_eight_megabyte_tensors_both_ways_concurrently() -> None:
    mb8 = 2 * 1024 * 1024  # float32 elements in 8 MiB: 513 chunks of 16 KiB
    sizes = [mb8, 7, 1000, mb8]
    async with linked() as (link_a, link_b):
        out_a = [tensor_frame(i, n, seed=i) for i, n in enumerate(sizes)]
        out_b = [tensor_frame(i, n, seed=100 + i) for i, n in enumerate(sizes)]

        async def send_all(link: Link, frames: list[Frame]) -> None:
            for frame in frames:
                await link.send(frame)

        async def recv_all(link: Link) -> list[Frame]:
            return [await link.recv() for _ in sizes]

        started = time.perf_counter()
        _, _, got_b, got_a = await asyncio.gather(
            send_all(link_a, out_a), send_all(link_b, out_b), recv_all(link_b), recv_all(link_a)
        )
        elapsed = time.perf_counter() - started
    assert got_b == out_a  # contents identical, order preserved
    assert got_a == out_b
    assert link_a.stats.frames_received == len(sizes) and link_a.stats.bad_frames == 0
    assert elapsed < 30, f"2 x 16 MiB took {elapsed:.1f} s"


async def test_backpressure_keeps_buffered_amount_under_high_water() -> None:
    config = TransportConfig(chunk_size=16 * 1024, high_water_bytes=128 * 1024, low_water_bytes=32 * 1024)
    count, numel = 48, 16 * 1024  # 48 frames of 64 KiB, 3 MiB in all
    async with linked(config) as (link_a, link_b):
        samples: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                samples.append(link_a.buffered_amount)
                await asyncio.sleep(0.0005)  # the sampling period of the measurement, not a wait

        async def send_all() -> None:
            for i in range(count):
                await link_a.send(tensor_frame(i, numel, seed=i))
            done.set()

        sampler = asyncio.create_task(sample())
        _, got = await asyncio.gather(send_all(), asyncio.gather(*(link_b.recv() for _ in range(count))))
        await sampler
    assert [f.step for f in got] == list(range(count))
    assert max(samples) <= config.high_water_bytes + config.chunk_size
    assert link_a.stats.peak_buffered_bytes <= config.high_water_bytes
    assert link_a.stats.peak_buffered_bytes > config.high_water_bytes - 2 * config.chunk_size  # it filled up
    assert link_a.stats.backpressure_waits > 0


async def test_ping_measures_rtt_and_is_not_delivered() -> None:
    async with linked() as (link_a, link_b):
        assert link_a.rtt() is None
        rtts = [await link_a.ping() for _ in range(3)]
        assert all(0 < r < 1 for r in rtts)
        assert link_a.rtt() is not None and link_a.rtt() > 0  # type: ignore[operator]
        assert 0 < await link_b.ping() < 1
        await link_a.send(Frame(FrameType.CLOSE, step=9))
        assert (await link_b.recv()).step == 9  # the PING and PONG never reached recv()


async def test_sdp_candidates_are_loopback_only() -> None:
    relay = Relay()
    async with linked(relay=relay):
        pass
    kinds = {payload["type"] for _, _, payload in relay.sent}
    assert kinds == {"offer", "answer"}
    for _, _, payload in relay.sent:
        assert set(payload) == {"kind", "type", "sdp", "link"} and payload["kind"] == "webrtc"
        candidates = re.findall(r"^a=candidate:(.*)$", payload["sdp"], re.M)
        assert candidates, payload["sdp"]
        for line in candidates:
            fields = line.split()
            assert fields[4] == "127.0.0.1" and fields[7] == "host", line
        for address in re.findall(r"^c=IN IP[46] (\S+)", payload["sdp"], re.M):
            assert address == "127.0.0.1"


def test_remote_candidates_outside_the_allowed_addresses_are_dropped() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            "a=candidate:2 1 udp 2130706431 192.0.2.2 5001 typ host",
            "a=candidate:3 1 udp 2130706431 3f2a1b.local 5002 typ host",
            "a=candidate:4 1 udp 1694498815 203.0.113.9 5003 typ srflx raddr 0.0.0.0 rport 0",
        ]
    )
    kept, dropped = filter_remote_candidates(sdp, frozenset({"127.0.0.1"}))
    assert dropped == 3
    assert "127.0.0.1 5000" in kept and "192.0.2.2" not in kept and ".local" not in kept
    assert filter_remote_candidates(sdp, None) == (sdp, 0)


async def test_malformed_input_gets_error_frames_and_the_link_survives() -> None:
    relay = Relay()
    async with linked(relay=relay) as (link_a, link_b):
        other = await relay.managers["a"].connect("b")  # a second link between the same peers
        other_b = await relay.managers["b"].accept()
        raw = link_a._channel
        assert raw is not None
        raw.send(b"garbage, not a chunk")
        raw.send("a text message")
        session = bytes(range(16, 32))
        bad_frame = HEADER.pack(MAGIC, 0, FrameType.FORWARD, 0, session, 42, 0, 0)  # version 0
        raw.send(chunk_message(7, bad_frame)[0])
        raw.send(CHUNK_HEADER.pack(CHUNK_MAGIC, 8, 5, 2) + b"x")  # index outside count
        errors: list[Frame] = []
        for _ in range(4):
            async with asyncio.timeout(5):
                errors.append(await link_a.recv())
        assert [e.type for e in errors] == [FrameType.ERROR] * 4
        assert {e.meta["code"] for e in errors} == {"bad_frame"}
        assert "chunk" in errors[0].meta["message"]
        assert (errors[2].session, errors[2].step) == (session, 42)  # the ERROR names the refused frame
        with pytest.raises(RemoteBadFrameError, match="version 0"):
            raise_for_error(errors[2])
        assert link_b.stats.bad_frames == 4
        # the link keeps working, both ways, and so does the other link
        await link_a.send(tensor_frame(1, 5000, seed=1))
        assert await link_b.recv() == tensor_frame(1, 5000, seed=1)
        await link_b.send(tensor_frame(2, 5000, seed=2))
        assert await link_a.recv() == tensor_frame(2, 5000, seed=2)
        await other.send(Frame(FrameType.CLOSE, step=3))
        assert (await other_b.recv()).step == 3
        assert link_a.state is LinkState.OPEN and link_b.state is LinkState.OPEN


async def test_remote_close_fails_pending_and_later_calls_promptly() -> None:
    relay = Relay()
    async with linked(relay=relay) as (link_a, link_b):
        pending = asyncio.create_task(link_b.recv())
        sending = asyncio.create_task(link_b.send(tensor_frame(0, 2 * 1024 * 1024, seed=0)))  # 8 MiB
        # the send is under way, waiting on bufferedAmount
        await wait_for_async(lambda: link_b.stats.backpressure_waits, 10.0, what="a backpressure wait")
        started = time.perf_counter()
        await link_a.aclose()
        with pytest.raises(LinkClosedError, match="'a'"):
            async with asyncio.timeout(5):
                await pending
        with pytest.raises(LinkClosedError, match="'a'"):
            async with asyncio.timeout(5):
                await sending
        assert time.perf_counter() - started < 2
        with pytest.raises(LinkClosedError, match="'a'"):
            await link_b.send(Frame(FrameType.CLOSE))
        with pytest.raises(LinkClosedError):
            await link_b.recv()
        with pytest.raises(LinkClosedError, match="closed locally"):
            await link_a.send(Frame(FrameType.CLOSE))
        assert link_b.state is LinkState.CLOSED and link_b.close_error is not None
        assert relay.managers["a"].links == () and relay.managers["b"].links == ()
        assert [f async for f in link_b] == []  # iteration simply ends on a closed link


async def test_connect_to_a_silent_peer_times_out_and_closes_everything() -> None:
    seen: list[Link] = []

    async def black_hole(peer_id: str, payload: dict[str, Any]) -> None:
        seen.extend(manager.links)

    async with LinkManager(black_hole, config=TransportConfig(connect_timeout_s=0.5)) as manager:
        started = time.perf_counter()
        with pytest.raises(LinkTimeoutError, match="no answer came"):
            await manager.connect("nobody")
        assert time.perf_counter() - started < 3
        assert len(seen) == 1 and seen[0].state is LinkState.CLOSED
        assert seen[0]._pc.connectionState == "closed"
        assert manager.links == ()
        # a late answer finds no pending connect: a typed error, and the manager carries on
        late = {
            "kind": "webrtc",
            "type": "answer",
            "sdp": "v=0\r\nm=application 9 x\r\n",
            "link": seen[0].link_id,
        }
        with pytest.raises(SignalPayloadError, match="no connect"):
            await manager.handle_signal("nobody", late)
    assert not manager._tasks


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "offer",
        {},
        {"kind": "sip", "type": "offer", "sdp": "m=application", "link": "x"},
        {"kind": "webrtc", "type": "pranswer", "sdp": "m=application", "link": "x"},
        {"kind": "webrtc", "type": "offer", "sdp": 5, "link": "x"},
        {"kind": "webrtc", "type": "offer", "sdp": "m=application" + " " * 70000, "link": "x"},
        {"kind": "webrtc", "type": "offer", "sdp": "v=0\r\nm=audio 9 x\r\n", "link": "x"},
        {"kind": "webrtc", "type": "offer", "sdp": "m=application", "link": "../etc"},
        {"kind": "webrtc", "type": "offer", "sdp": "m=application", "link": None},
        {
            "kind": "webrtc",
            "type": "offer",
            "sdp": "v=0\r\nm=application 9 garbage\r\nnonsense\r\n",
            "link": "x",
        },
        {"kind": "webrtc", "type": "answer", "sdp": "m=application", "link": "nope"},
    ],
)
async def test_malformed_signals_raise_a_typed_error(payload: Any) -> None:
    async with LinkManager(Relay().sender("a")) as manager:
        with pytest.raises(SignalPayloadError):
            await manager.handle_signal("b", payload)
        assert manager.links == ()


async def test_manager_survives_bad_signals_then_connects() -> None:
    relay = Relay()
    async with relay.add("a") as a, relay.add("b") as b:
        with pytest.raises(SignalPayloadError):
            await b.handle_signal(
                "a", {"kind": "webrtc", "type": "offer", "sdp": "m=application\r\n", "link": "z"}
            )
        with pytest.raises(SignalPayloadError):
            await b.handle_signal(17, {})  # type: ignore[arg-type]
        link = await a.connect("b")
        assert 0 < await link.ping() < 1
        assert len(a.links) == 1 and len(b.links) == 1
    assert link.state is LinkState.CLOSED  # aclose() of the manager closed it
    with pytest.raises(TransportError, match="closed"):
        await a.connect("b")
    with pytest.raises(TransportError, match="closed"):
        await b.accept()


async def test_on_link_callback_serves_incoming_links() -> None:
    async def echo(link: Link) -> None:  # runs in a task the manager owns
        async for frame in link:
            await link.send(Frame(FrameType.RESULT, frame.session, frame.step, tensors=frame.tensors))

    relay = Relay()
    async with relay.add("a") as a, relay.add("b", on_link=echo):
        links = [await a.connect("b") for _ in range(2)]
        for i, link in enumerate(links):
            await link.send(tensor_frame(i, 100, seed=i))
        for i, link in enumerate(links):
            async with asyncio.timeout(5):
                reply = await link.recv()
            assert (reply.type, reply.step, reply.tensors) == (
                FrameType.RESULT,
                i,
                tensor_frame(i, 100, i).tensors,
            )


async def test_slow_consumer_overflow_closes_the_link_with_a_clear_error() -> None:
    config = TransportConfig(recv_queue_frames=4)
    async with linked(config) as (link_a, link_b):
        for i in range(10):
            await link_b.send(Frame(FrameType.CLOSE, step=i))
        with pytest.raises(LinkClosedError):  # the remote sees its link close
            async with asyncio.timeout(10):
                while True:
                    await link_b.send(Frame(FrameType.CLOSE, step=99))
                    await asyncio.sleep(0.01)  # the pace of the flood that overflows the consumer
        assert [(await link_a.recv()).step for _ in range(4)] == [0, 1, 2, 3]  # what arrived stays readable
        with pytest.raises(LinkOverflowError, match="consumer is too slow"):
            await link_a.recv()


async def test_stale_partial_messages_expire() -> None:
    config = TransportConfig(reassembly_timeout_s=0.2)
    async with linked(config) as (link_a, link_b):
        raw = link_a._channel
        assert raw is not None
        raw.send(chunk_message(77, bytes(40000))[0])  # the first of 3 chunks; the rest never come
        await link_a.ping()  # round trip: the chunk has arrived
        assert len(link_b._reassembler) == 1
        await asyncio.sleep(0.3)  # waiting out reassembly_timeout_s IS the test: no condition to poll
        await link_a.send(Frame(FrameType.CLOSE, step=5))
        assert (await link_b.recv()).step == 5
        assert len(link_b._reassembler) == 0 and link_b.stats.bad_frames == 0


def test_config_refuses_thresholds_that_could_stall() -> None:
    with pytest.raises(ValueError, match="low_water_bytes"):
        TransportConfig(chunk_size=16384, high_water_bytes=20000, low_water_bytes=8000)
    with pytest.raises(ValueError, match="chunk_size"):
        TransportConfig(chunk_size=12)
    with pytest.raises(ValueError, match="ice_addresses"):
        TransportConfig(ice_addresses=("localhost",))
    with pytest.raises(ValueError, match="socket_buffer_bytes 1000 is not 0"):
        TransportConfig(socket_buffer_bytes=1000)
    with pytest.raises(ValueError, match="socket_buffer_bytes"):
        TransportConfig(socket_buffer_bytes=1 << 30)
    with pytest.raises(ValueError, match="max_flight_bytes 100 is not 0"):
        TransportConfig(max_flight_bytes=100)
    TransportConfig(socket_buffer_bytes=0, max_flight_bytes=0)  # aioice's and aiortc's own behaviour


def _rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


async def test_link_sockets_are_sized_and_the_congestion_window_capped() -> None:
    config = TransportConfig()
    async with linked(config) as (link_a, link_b):
        for link in (link_a, link_b):
            rmem_max = _rmem_max()
            if rmem_max is not None:  # Linux grants twice the request, at most twice rmem_max
                assert link.stats.receive_buffer_bytes == 2 * min(config.socket_buffer_bytes, rmem_max)
            sctp = link._pc.sctp
            assert sctp is not None
            assert sctp._cwnd <= config.max_flight_bytes
            sctp._cwnd = 10 * config.max_flight_bytes  # what aiortc's slow start would do after a while
            assert sctp._cwnd == config.max_flight_bytes
            await link.send(tensor_frame(0, 1000, seed=1))
        await link_a.recv()
        await link_b.recv()


async def _saturate(config: TransportConfig, frames: int, numel: int) -> tuple[int | None, int | None, float]:
    """Both ends send ``frames`` frames of ``numel`` floats at once; (drops at a, drops at b, seconds)."""
    async with linked(config) as (link_a, link_b):
        sent = {link: [tensor_frame(i, numel, seed=i) for i in range(frames)] for link in (link_a, link_b)}

        async def send_all(link: Link) -> None:
            for frame in sent[link]:
                await link.send(frame)

        started = time.perf_counter()
        _, _, got_b, got_a = await asyncio.gather(
            send_all(link_a),
            send_all(link_b),
            asyncio.gather(*(link_b.recv() for _ in range(frames))),
            asyncio.gather(*(link_a.recv() for _ in range(frames))),
        )
        elapsed = time.perf_counter() - started
        assert list(got_b) == sent[link_a] and list(got_a) == sent[link_b]
        return link_a.udp_drops(), link_b.udp_drops(), elapsed


@pytest.mark.timeout(180)
async def test_a_saturated_link_drops_no_datagram() -> None:
    """4 MiB each way at once over one link. Left to aiortc and aioice (an uncapped window, 256 KiB
    sockets) the kernel drops datagrams at both ends; with the default config it drops none."""
    uncapped = await _saturate(TransportConfig(socket_buffer_bytes=0, max_flight_bytes=0), 16, 64 * 1024)
    if uncapped[0] is None:
        pytest.skip("no SO_MEMINFO drop counter on this system")
    capped = await _saturate(TransportConfig(), 16, 64 * 1024)
    assert capped[:2] == (0, 0), f"default config: {capped}"
    assert (uncapped[0] or 0) + (uncapped[1] or 0) > 0, f"aiortc's own window dropped nothing: {uncapped}"


async def test_link_between_two_processes_over_loopback() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.transport_peer",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def send_signal(peer_id: str, payload: dict[str, Any]) -> None:
        stdin.write((json.dumps({"from": "parent", "payload": payload}) + "\n").encode())
        await stdin.drain()

    try:
        async with LinkManager(send_signal, config=TransportConfig(connect_timeout_s=20)) as manager:

            async def pump() -> None:
                while line := await stdout.readline():
                    await manager.handle_signal("child", json.loads(line)["payload"])

            pump_task = asyncio.create_task(pump())
            link = await manager.connect("child")
            frames = [tensor_frame(i, n, seed=i) for i, n in enumerate([10, 300_000, 1])]
            for frame in frames:
                await link.send(frame)
            echoed: list[Frame] = []
            for _ in frames:
                async with asyncio.timeout(10):
                    echoed.append(await link.recv())
            assert [f.type for f in echoed] == [FrameType.RESULT] * 3
            assert [(f.step, f.meta, f.tensors) for f in echoed] == [
                (f.step, f.meta, f.tensors) for f in frames
            ]
            assert await link.ping() > 0
            await link.aclose()
            async with asyncio.timeout(10):
                assert await proc.wait() == 0  # the child saw the link close and left
            pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

"""What a frame costs the data channel transport: aiortc as the mesh runs it vs libdatachannel, side by side.

Every hidden state of the mesh crosses a WebRTC data channel; with aiortc that is SCTP and DTLS in Python
(``bench/README.md``, "What a message costs the transport"). This bench sends the mesh's own frames one
way over a loopback data channel, one at a time, and times each until the other end has decoded it:

- **aiortc**: two ``LinkManager``\\ s (the mesh's ``TransportConfig``) in one event loop, signalling through
  an in-memory relay; ``Link.send`` and ``Link.recv`` (chunking, reassembly, frame decoding included).
- **libdatachannel**: two ``pylibdatachannel`` peer connections (C++: libjuice, usrsctp, OpenSSL) in one
  process; the same frames encoded and cut with the same chunk size, each chunk one data channel message,
  handed to the event loop, joined by ``Reassembler`` and decoded by ``decode_frame``, as ``Link`` does.
- **aiolibdatachannel**: the same over ``aiolibdatachannel`` (libdatachannel with an asyncio API:
  ``await channel.send``, ``await channel.recv``, its own back-pressure), which has wheels for Python 3.12
  and later only.
  Neither binding is a dependency (``pip install pylibdatachannel``, on 3.11; ``aiolibdatachannel``, on
  3.12+); a contender whose module does not import is skipped with a line saying so.

Each contender runs in a child process of its own (its CPU time is the whole process's, its own threads
included, both ends of the link; a crash of one cannot touch the other's figures); the repeats alternate
the contenders so that the machine's load hits all alike; ratios to aiortc are per repeat, then the median.

    python -m bench.bench_transport [--repeats R] [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from python_peer import event_loop
from python_peer.core.wire import (
    Frame,
    FrameType,
    Reassembler,
    WireTensor,
    chunk_message,
    decode_frame,
    encode_frame,
)
from python_peer.transport import LinkManager, TransportConfig

HIDDEN = 576  # SmolLM2-135M's hidden size, the default model's
SHAPES = {"decode token": 1, "37-token prompt": 37}  # tokens per frame
ANSWER_META = 624  # bytes of signed answer a RESULT carries besides its hidden states (bench/README.md)
WARMUP = 5


def result_frame(tokens: int, step: int) -> Frame:
    """A RESULT the size of a shard's answer for ``tokens`` tokens (seeded hidden states, padded meta)."""
    values = np.random.default_rng(step).standard_normal((1, tokens, HIDDEN), dtype=np.float32)
    tensor = WireTensor("hidden_states_out", "float32", values.shape, values.tobytes())
    return Frame(FrameType.RESULT, bytes(16), step, meta={"answer": "a" * ANSWER_META}, tensors=(tensor,))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


SendRecv = Callable[[Frame], Awaitable[Frame]]


async def measure(send_recv: SendRecv, frames: int) -> dict[str, Any]:
    """Per frame size: ms of wall and CPU per frame, sent one at a time and awaited decoded."""
    out: dict[str, Any] = {}
    for label, tokens in SHAPES.items():
        sample = [result_frame(tokens, i) for i in range(8)]
        for i in range(WARMUP):
            await send_recv(sample[i % len(sample)])
        cpu0, wall0 = cpu_s(), time.perf_counter()
        for i in range(frames):
            got = await send_recv(sample[i % len(sample)])
            if got != sample[i % len(sample)]:
                raise AssertionError(f"{label}: frame {i} arrived changed")
        cpu1, wall1 = cpu_s(), time.perf_counter()
        out[label] = {
            "bytes": len(encode_frame(sample[0])),
            "wall_ms": 1e3 * (wall1 - wall0) / frames,
            "cpu_ms": 1e3 * (cpu1 - cpu0) / frames,
        }
    return out


async def run_aiortc(frames: int) -> dict[str, Any]:
    managers: dict[str, LinkManager] = {}

    def relay(src: str) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
        async def send_signal(dst: str, payload: dict[str, Any]) -> None:
            await managers[dst].handle_signal(src, json.loads(json.dumps(payload)))

        return send_signal

    config = TransportConfig()
    async with LinkManager(relay("a"), config=config) as a, LinkManager(relay("b"), config=config) as b:
        managers.update(a=a, b=b)
        link_a = await a.connect("b")
        async with asyncio.timeout(10):
            link_b = await b.accept()

        async def send_recv(frame: Frame) -> Frame:
            await link_a.send(frame)
            return await link_b.recv()

        return await measure(send_recv, frames)


async def run_libdatachannel(frames: int) -> dict[str, Any]:
    import pylibdatachannel as dc  # not a dependency: see the module's docstring

    loop = asyncio.get_running_loop()
    config = TransportConfig()
    a, b = dc.PeerConnection(), dc.PeerConnection()

    def signal(src: Any, dst: Any) -> None:  # libdatachannel calls back on its own threads
        src.on_local_description(
            lambda d: loop.call_soon_threadsafe(
                dst.set_remote_description, dc.Description(d.description, d.type)
            )
        )
        src.on_local_candidate(
            lambda c: loop.call_soon_threadsafe(dst.add_remote_candidate, dc.Candidate(c.candidate, c.mid))
        )

    signal(a, b)
    signal(b, a)
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    accepted: asyncio.Future[Any] = loop.create_future()
    opened: asyncio.Future[None] = loop.create_future()

    def on_channel(channel: Any) -> None:
        channel.on_message(lambda m: loop.call_soon_threadsafe(chunks.put_nowait, m))
        loop.call_soon_threadsafe(_settle, accepted, channel)

    b.on_data_channel(on_channel)
    channel = a.create_data_channel("ai4all")
    channel.on_open(lambda: loop.call_soon_threadsafe(_settle, opened, None))
    async with asyncio.timeout(10):
        await opened
    async with asyncio.timeout(10):
        await accepted
    joiner = Reassembler()
    ids = iter(range(2**32))

    async def send_recv(frame: Frame) -> Frame:
        for chunk in chunk_message(next(ids), encode_frame(frame), config.chunk_size):
            channel.send(chunk)
        while True:
            whole = joiner.feed(await chunks.get(), loop.time())
            if whole is not None:
                return decode_frame(whole)

    return await measure(send_recv, frames)


async def run_aiolibdatachannel(frames: int) -> dict[str, Any]:
    import aiolibdatachannel as dc  # not a dependency, Python 3.12+: see the module's docstring

    loop = asyncio.get_running_loop()
    a, b = dc.PeerConnection(), dc.PeerConnection()
    channel = await a.create_data_channel("ai4all")
    offer = await a.create_offer()  # ICE gathered, candidates in the SDP
    await b.set_remote_description(offer.sdp, offer.type)
    answer = await b.create_answer()
    await a.set_remote_description(answer.sdp, answer.type)
    async with asyncio.timeout(10):
        remote = await b.accept_data_channel()
    async with asyncio.timeout(10):
        await channel.wait_open()
    joiner, ids, chunk_size = Reassembler(), iter(range(2**32)), TransportConfig().chunk_size

    async def send_recv(frame: Frame) -> Frame:
        for chunk in chunk_message(next(ids), encode_frame(frame), chunk_size):
            await channel.send(chunk)
        while True:
            whole = joiner.feed(await remote.recv(), loop.time())
            if whole is not None:
                return decode_frame(whole)

    return await measure(send_recv, frames)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


@dataclass(frozen=True)
class Contender:
    module: str | None  # the binding it needs beyond the project's dependencies, None for none
    run: Callable[[int], Coroutine[Any, Any, dict[str, Any]]]  # its figures for so many frames of each size


CONTENDERS = {
    "aiortc": Contender(None, run_aiortc),
    "libdatachannel": Contender("pylibdatachannel", run_libdatachannel),
    "aiolibdatachannel": Contender("aiolibdatachannel", run_aiolibdatachannel),
}


def child(name: str, frames: int) -> None:
    print(json.dumps(event_loop.run(CONTENDERS[name].run(frames))), flush=True)
    # pylibdatachannel 0.2.0 aborts while its threads are torn down at exit ("terminate called without an
    # active exception"); the figures are out by then.
    os._exit(0)


def available(name: str) -> str | None:
    """None if contender ``name`` can run here, else why not."""
    module = CONTENDERS[name].module
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} does not import here ({exc}); `pip install {module}` to race it"
    return None


def run_child(name: str, frames: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_transport", "--child", name, "--frames", str(frames)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name} printed no figures (exit {done.returncode}): {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each contender")
    parser.add_argument("--frames", type=int, default=100, help="frames of each size per run")
    parser.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.frames)
        return
    contenders = [c for c in CONTENDERS if available(c) is None]
    for name in CONTENDERS:
        if (why := available(name)) is not None:
            print(f"{name}: not run: {why}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for repeat in range(args.repeats):
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for name in order:
            print(f"repeat {repeat + 1}/{args.repeats}: {name}", file=sys.stderr)
            runs[name].append(run_child(name, args.frames))
    report: dict[str, Any] = {"repeats": args.repeats, "frames": args.frames, "contenders": {}}
    print(f"{'frame':<16} {'contender':<18} {'bytes':>7} {'wall ms/frame':>22} {'CPU ms/frame':>22}")
    for label in SHAPES:
        for name in contenders:
            walls = [r[label]["wall_ms"] for r in runs[name]]
            cpus = [r[label]["cpu_ms"] for r in runs[name]]
            report["contenders"].setdefault(name, {})[label] = {
                "bytes": runs[name][0][label]["bytes"],
                "wall_ms": statistics.median(walls),
                "cpu_ms": statistics.median(cpus),
            }
            print(
                f"{label:<16} {name:<18} {runs[name][0][label]['bytes']:>7} "
                f"{statistics.median(walls):>8.3f} ({min(walls):.3f}-{max(walls):.3f}) "
                f"{statistics.median(cpus):>8.3f} ({min(cpus):.3f}-{max(cpus):.3f})"
            )
        for name in contenders[1:]:
            ratio = {
                key: statistics.median(
                    mine[label][key] / base[label][key]
                    for base, mine in zip(runs["aiortc"], runs[name], strict=True)
                )
                for key in ("wall_ms", "cpu_ms")
            }
            report.setdefault("ratios", {}).setdefault(name, {})[label] = ratio
            print(
                f"{label:<16} {name} / aiortc: wall {ratio['wall_ms']:.2f}, CPU {ratio['cpu_ms']:.2f} "
                f"(median of per-repeat ratios; below 1: {name} costs less)"
            )
    print("median (min-max) over repeats; one frame at a time, both ends in one process")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

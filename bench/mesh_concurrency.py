"""Aggregate decode tokens/s with 1, 4 and 8 concurrent mesh sessions, and the UDP drops around them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from bench.mesh_processes import BenchError
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, open_client

SESSION_COUNTS = (1, 4, 8)


async def wait_for_route(client: MeshClient, manifest: Manifest, timeout: float = 30.0) -> None:
    """Until the client's node knows a peer for every blocks shard (gossip from the other node)."""
    deadline = time.monotonic() + timeout
    wanted = {(s.start, s.end) for s in manifest.blocks}
    while True:
        seen = {(c.start, c.end) for c in await client.candidates(0, manifest.num_layers)}
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the client's node knows spans {sorted(seen)}, not all of {sorted(wanted)}")
        await asyncio.sleep(0.2)


@dataclass
class Aggregate:
    tok_s: list[float | None] = field(default_factory=list)  # None: that repeat's run failed
    failures: list[str] = field(default_factory=list)
    udp_drops: list[int | None] = field(default_factory=list)  # the whole host (/proc/net/snmp)
    mesh_udp_drops: list[int | None] = field(default_factory=list)  # the mesh's own sockets (ss)
    same_tokens: bool = True  # every session of every run produced the single-session tokens


class MeshConnection:
    """The benchmark's mesh client, renewable: a failed hop bans its peer client-wide for a minute."""

    def __init__(self, urls: tuple[str, ...], model_dir: Path, manifest: Manifest, threads: int) -> None:
        self.urls = urls
        self.model_dir = model_dir
        self.manifest = manifest
        self.threads = threads
        self._node: MeshNode | None = None
        self._client: MeshClient | None = None

    @property
    def client(self) -> MeshClient:
        if self._client is None:
            raise BenchError("the mesh client is not open")
        return self._client

    async def open(self) -> MeshClient:
        self._node, self._client = await open_client(
            NodeConfig(signal_urls=self.urls), self.model_dir, ClientConfig(threads=self.threads)
        )
        await wait_for_route(self._client, self.manifest)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._node is not None:
            await self._node.aclose()
        self._node = self._client = None

    async def renew(self) -> MeshClient:
        await self.close()
        return await self.open()


def udp_receive_drops() -> int | None:
    """Datagrams the kernel dropped for a full socket receive buffer (``/proc/net/snmp``), if readable."""
    try:
        rows = [
            line.split()
            for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")
        ]
        return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["RcvbufErrors"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


_SS_SOCKET = re.compile(r"(\S+:\d+)\s+\S+\s+users:\(.*?pid=(\d+),")
_SS_DROPS = re.compile(r"skmem:\(.*\bd(\d+)\)")


def socket_drops(pids: Sequence[int]) -> dict[str, int] | None:
    """Drop counters of the UDP sockets these processes own (``ss -uampn``: skmem's ``d``), by socket."""
    try:
        text = subprocess.run(
            ["ss", "-uampnH"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wanted, drops, key = {str(p) for p in pids}, {}, None
    for line in text.splitlines():
        sock = _SS_SOCKET.search(line)
        if sock is not None:
            key = f"{sock.group(2)}/{sock.group(1)}" if sock.group(2) in wanted else None
            continue
        dropped = _SS_DROPS.search(line)
        if dropped is not None and key is not None:
            drops[key] = int(dropped.group(1))
            key = None
    return drops


def drops_between(before: dict[str, int] | None, after: dict[str, int] | None) -> int | None:
    """Datagrams dropped between two ``socket_drops`` readings (sockets opened since count from 0)."""
    if before is None or after is None:
        return None
    return sum(max(0, n - before.get(k, 0)) for k, n in after.items())


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = next(
            (e for e in error.exceptions if not isinstance(e, asyncio.CancelledError)), error.exceptions[0]
        )
    return error


async def concurrent_run(
    client: MeshClient, prompt: list[int], steps: int, sessions: int, max_length: int
) -> tuple[float, list[list[int]]]:
    """``sessions`` independent mesh sessions: open and prefill each, then all decode at once (timed)."""
    barrier = asyncio.Barrier(sessions)
    ids = np.array([prompt], dtype=np.int64)

    async def one() -> tuple[float, float, list[int]]:
        session = await client.open(1, max_length)
        try:
            try:
                tokens = [int(np.argmax((await session.step(ids, np.ones_like(ids)))[0, -1]))]
            except BaseException:
                await barrier.abort()
                raise
            await barrier.wait()
            start = time.perf_counter()
            for _ in range(steps):
                step = np.array([[tokens[-1]]], dtype=np.int64)
                tokens.append(int(np.argmax((await session.step(step, np.ones_like(step)))[0, -1])))
            return start, time.perf_counter(), tokens
        finally:
            await session.close()

    try:  # one session failing cancels the others
        async with asyncio.timeout(600), asyncio.TaskGroup() as group:
            tasks = [group.create_task(one()) for _ in range(sessions)]
    except BaseExceptionGroup as exc:
        error = _first_error(exc)
        if isinstance(error, Exception):
            raise error from None
        raise
    results = [t.result() for t in tasks]
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    return sessions * steps / elapsed, [r[2] for r in results]


async def concurrency(
    mesh: MeshConnection,
    prompt: list[int],
    steps: int,
    repeats: int,
    max_length: int,
    reference: list[int],
    log: Console,
    pids: Sequence[int] = (),
) -> dict[int, Aggregate]:
    """Every count of sessions once per repeat, each run with a fresh client; a failure is recorded.

    A fresh client is a fresh identity with its starter grant: one client's credits paid for the 8
    sessions of the first repeat and then ran out ("does not cover the price ... held for open
    sessions"), so later runs measured the ledger, not the mesh; the first run too gets a fresh one, as
    the single-session runs before it (two mesh contenders) leave holds open. Its links open during the
    run's prefill, before the timed decoding.
    """
    result = {n: Aggregate() for n in SESSION_COUNTS}
    for repeat in range(repeats):
        for n in SESSION_COUNTS:
            await mesh.renew()  # the single-session runs' client may hold too much already
            drops, own = udp_receive_drops(), socket_drops(pids)
            try:
                tok_s, tokens = await concurrent_run(mesh.client, prompt, steps, n, max_length)
            except (AI4AllError, TimeoutError) as exc:
                result[n].tok_s.append(None)
                result[n].failures.append(f"{type(exc).__name__}: {exc}")
                log.log(f"[red]{n} concurrent sessions failed: {type(exc).__name__}: {escape(str(exc))}")
            else:
                result[n].tok_s.append(tok_s)
                result[n].same_tokens &= all(t == reference for t in tokens)
            after = udp_receive_drops()
            result[n].udp_drops.append(None if drops is None or after is None else after - drops)
            result[n].mesh_udp_drops.append(drops_between(own, socket_drops(pids)))
        line = ", ".join(f"{n} sessions {_tok_s(a.tok_s[-1])}" for n, a in result.items())
        log.log(f"concurrent sessions, repeat {repeat + 1}/{repeats}: {line}")
    return result


def _tok_s(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} tok/s"

"""The chaos run's mesh: federated signaling nodes and peers on loopback that can be SIGKILLed and restarted.

Every node dials every other (``--sibling URL#KEY``); each peer lists its home node first and the
others for fail-over. A restarted process keeps its port, its key and its data directory (identity and
SQLite ledger), as a machine rebooting would; each incarnation logs to a file of its own
(``<name>.<n>.log``). The load's native users (``chaos_user``) are processes of the mesh too, started by
the harness (``launch``) and never killed, so not among the schedule's targets (``procs``). Memory is
the resident set size of each process (psutil).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.chaos_schedule import NODE, PEER, Target
from bench.mesh_processes import BenchError, Child, free_port, node_health
from python_peer.core.manifest import Manifest
from python_peer.identity import Identity

USER = "user"  # a native user's process (``chaos_user``): sampled and stopped, never a kill's target
READY = re.compile(r"peer ([0-9a-f]{64}) serves \S+ blocks (\d+)-(\d+)")
START_TIMEOUT_S = 180.0


@dataclass
class Incarnation:
    """One life of a process: when it started and became ready, its memory then and last seen."""

    number: int
    pid: int
    started: float  # monotonic
    ready: float | None = None
    rss_ready: int | None = None  # bytes, when it became ready
    rss_start: int | None = None  # at the start of the load, for a life that was there then
    rss_last: int | None = None
    series: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes) every sample


@dataclass
class Proc:
    """A process of the mesh and how to start it again."""

    name: str
    kind: str  # NODE, PEER or USER
    args: list[str]
    span: str = ""
    url: str = ""  # a node's ws:// URL
    api_url: str = ""  # an API peer's http://.../v1
    data_dir: Path | None = None
    protected: bool = False
    child: Child | None = None
    peer_id: str = ""
    lives: list[Incarnation] = field(default_factory=list)

    @property
    def target(self) -> Target:
        return Target(self.name, self.kind, self.span, self.protected)

    @property
    def ready(self) -> bool:
        return bool(self.lives) and self.lives[-1].ready is not None and self.alive

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.proc.poll() is None


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes, None if it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class ChaosMesh:
    """``nodes`` signaling nodes and ``peers_per_span`` peers per blocks shard; one peer of each span also
    serves the OpenAI-compatible API (never killed with ``protect_api``), and the last ``spared`` peers of
    each span are never killed (so a peer lives through the whole load and its memory is judged)."""

    def __init__(
        self,
        log_dir: Path,
        model_dir: Path,
        manifest: Manifest,
        *,
        nodes: int = 3,
        peers_per_span: int = 3,
        protect_api: bool = False,
        spared: int = 0,
    ) -> None:
        if nodes < 2 or peers_per_span < 2:
            raise BenchError("a chaos mesh needs 2+ signaling nodes and 2+ peers per span")
        if not 0 <= spared < peers_per_span - 1:
            raise BenchError(
                f"spared peers per span must be in [0, {peers_per_span - 2}]: the API peer and at least one "
                "other peer of each span can be killed"
            )
        self.log_dir = log_dir
        self.model_dir = model_dir
        self.manifest = manifest
        names = [f"node-{chr(ord('a') + i)}" for i in range(nodes)]
        keys = {n: Identity.load_or_create(log_dir / f"{n}.node").peer_id for n in names}
        urls = {n: f"ws://127.0.0.1:{free_port()}" for n in names}
        self.nodes: list[Proc] = []
        for name in names:
            args = ["signal", "--port", urls[name].rsplit(":", 1)[1], "--node-id", name]
            args += ["--data-dir", str(log_dir / f"{name}.node")]
            for other in names:
                if other != name:
                    args += ["--sibling", f"{urls[other]}#{keys[other]}"]
            self.nodes.append(Proc(name, NODE, args, url=urls[name]))
        self.peers: list[Proc] = []
        count = 0
        for shard in manifest.blocks:
            span = f"{shard.start}-{shard.end}"
            for copy in range(peers_per_span):
                home = self.nodes[count % nodes]
                order = [home.url] + [n.url for n in self.nodes if n is not home]
                count += 1
                name = f"peer-{span}-{copy}"
                data_dir = log_dir / name
                args = ["peer", "--model", str(model_dir), "--span", span, "--data-dir", str(data_dir)]
                args.append("--allow-unsigned")  # a local export
                for url in order:
                    args += ["--signal", url]
                proc = Proc(name, PEER, args, span=span, data_dir=data_dir)
                if copy == 0:
                    port = free_port()
                    args += ["--api-port", str(port), "--api-rate", "1000", "--api-burst", "1000"]
                    proc.api_url = f"http://127.0.0.1:{port}/v1"
                    proc.protected = protect_api
                elif copy >= peers_per_span - spared:
                    proc.protected = True
                self.peers.append(proc)
        self.users: list[Proc] = []

    @property
    def procs(self) -> list[Proc]:
        """The nodes and peers: what the schedule may kill."""
        return [*self.nodes, *self.peers]

    @property
    def everyone(self) -> list[Proc]:
        return [*self.procs, *self.users]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(n.url for n in self.nodes)

    @property
    def api_peers(self) -> list[Proc]:
        return [p for p in self.peers if p.api_url]

    def by_name(self, name: str) -> Proc:
        for proc in self.procs:
            if proc.name == name:
                return proc
        raise BenchError(f"no process {name!r} in the chaos mesh")

    def down(self) -> set[str]:
        """Processes dead or not ready again: what the schedule's rules count as down."""
        return {p.name for p in self.procs if not p.ready}

    def start(self, proc: Proc) -> None:
        if proc.alive:
            raise BenchError(f"{proc.name} is already running")
        self.launch(proc, Child(f"{proc.name}.{len(proc.lives) + 1}", proc.args, self.log_dir))

    def launch(self, proc: Proc, child: Child) -> None:
        """``child`` as ``proc``'s next life (a user's process is started by ``chaos_user``, which pipes
        its input and output); a USER joins ``users``, whose memory is sampled and who are stopped."""
        if proc.kind == USER and proc not in self.users:
            self.users.append(proc)
        proc.child = child
        proc.lives.append(Incarnation(len(proc.lives) + 1, child.proc.pid, time.monotonic()))

    def kill(self, proc: Proc) -> None:
        """SIGKILL: no goodbye to signaling, no closing of sessions or of the ledger."""
        if proc.child is None or not proc.alive:
            raise BenchError(f"{proc.name} is not running")
        proc.child.proc.send_signal(signal.SIGKILL)
        proc.child.proc.wait()

    async def wait_ready(self, proc: Proc, *, siblings: int = 0, timeout: float = START_TIMEOUT_S) -> None:
        """Until ``proc`` serves (a node answers /healthz with ``siblings`` siblings; a peer announced)."""
        child, life = proc.child, proc.lives[-1]
        if child is None:
            raise BenchError(f"{proc.name} was never started")
        deadline = time.monotonic() + timeout
        while True:
            child.check_alive()
            if proc.kind == NODE:
                health = await asyncio.to_thread(node_health, proc.url.replace("ws://", "http://"))
                done = health is not None and len(health.get("siblings", [])) >= siblings
            else:
                text = child.log.read_text(errors="replace")
                match = READY.search(text)
                done = match is not None and (not proc.api_url or "\napi http" in text)
                if match is not None:
                    proc.peer_id = match.group(1)
            if done:
                life.ready = time.monotonic()
                life.rss_ready = life.rss_last = rss(life.pid)
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} was not ready within {timeout:.0f} s:\n{child.tail()}")
            await asyncio.sleep(0.2)

    async def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)
        await asyncio.gather(*(self.wait_ready(n, siblings=len(self.nodes) - 1) for n in self.nodes))
        for peer in self.peers:
            self.start(peer)
        await asyncio.gather(*(self.wait_ready(p) for p in self.peers))

    def mark_start(self) -> None:
        """Take every live process's memory as the start of the load (after the warm-up chats)."""
        self.sample_memory()
        for proc in self.everyone:
            if proc.alive and proc.lives:
                proc.lives[-1].rss_start = proc.lives[-1].rss_last

    def sample_memory(self) -> None:
        for proc in self.everyone:
            if proc.alive and proc.lives:
                value = rss(proc.lives[-1].pid)
                if value is not None:
                    proc.lives[-1].rss_last = value
                    proc.lives[-1].series.append((time.monotonic(), value))

    def stop(self) -> None:
        """SIGTERM every process still running, users first, then peers, then SIGKILL what ignores it."""
        running = [p.child for p in reversed(self.everyone) if p.child is not None and p.alive]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)
        for child in running:
            child.stop()

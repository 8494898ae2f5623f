"""The mesh on loopback vs the same shards in one process vs the whole model, and signaling's own costs.

One run starts two federated signaling nodes and one ``ai4all peer`` process per blocks shard of the
model (0-10, 10-20, 20-30 for the default), all on 127.0.0.1, and a mesh client in this process on the
other node than two of the peers (as ``ai4all up`` places them). It measures time to first token and
decode tokens/s through the mesh, through the same shards chained here (``LocalChain``) and through the
whole model (optimum's graph from ``bench_export``, else one 0-L blocks shard), interleaved per repeat;
then aggregate decode tokens/s with 1, 4 and 8 concurrent mesh sessions; then the round trip of a
``signal`` through two nodes and through one, and how many signed announcements a node accepts per
second. Every process it started is stopped at the end, on errors and on Ctrl-C too. ``bench/README.md``
says what each figure means.

    python -m bench.bench_mesh [--model DIR] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType as PyFrame
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

from bench.bench_export import ChainDecoder, Decoder, WholeOnnxDecoder, first_difference
from python_peer.core.canonical import ANNOUNCE_CONTEXT, AUTH_CONTEXT, Announcement
from python_peer.core.errors import AI4AllError, RemoteSignalingError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient, MeshSession
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.runner import session_options
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tokenizer import ModelTokenizer

PROMPT = "What is the capital of France?"
DEFAULT_SPANS = (Span(0, 10), Span(10, 20), Span(20, 30))
WARMUP_TOKENS = 4
SESSION_COUNTS = (1, 4, 8)
RELAY_SAMPLES = 50  # per client pair: within a connection's burst of 60 messages
RELAY_WARMUP = 3
ANNOUNCE_CONNECTIONS = 200  # one identity each
ANNOUNCES_PER_CONNECTION = 10  # a peer id's announce burst on a node
START_TIMEOUT_S = 180.0
READY = re.compile(r"peer ([0-9a-f]{64}) serves \S+ blocks (\d+)-(\d+)")

MESH = "mesh (3 peers, loopback)"
CHAIN = "local chain (same shards)"
WHOLE_OPTIMUM = "whole model (optimum graph)"
WHOLE_SHARD = "whole model (one blocks shard)"


class BenchError(AI4AllError):
    """The benchmark could not set up or check what it measures."""


# --- processes ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Child:
    """One ``ai4all`` subprocess (no ``-v``: debug logs would slow it), its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "python_peer.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
            )

    def tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}")

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log.read_text(errors="replace"))
            if match:
                return match
            self.check_alive()
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _health(http: str) -> dict[str, Any] | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(f"{http}/healthz", timeout=1) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


def _directory(http: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{http}/v1/directory", timeout=10) as response:
        return dict(json.load(response))


@dataclass
class PeerInfo:
    name: str
    span: str
    home: str
    peer_id: str = ""


class LocalMesh:
    """Two federated signaling nodes, one peer per blocks shard, and a lone node for the announce test."""

    def __init__(self, log_dir: Path, model_dir: Path, manifest: Manifest, log: Console) -> None:
        self.log_dir = log_dir
        self.model_dir = model_dir
        self.manifest = manifest
        self.console = log
        ports = [free_port() for _ in range(3)]
        self.urls = [f"ws://127.0.0.1:{p}" for p in ports[:2]]
        self.solo_url = f"ws://127.0.0.1:{ports[2]}"
        self.children: list[Child] = []
        self.peers: list[PeerInfo] = []

    @staticmethod
    def http(url: str) -> str:
        return url.replace("ws://", "http://")

    def __enter__(self) -> LocalMesh:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        a, b = self.urls
        for name, url, sibling in (("node-a", a, b), ("node-b", b, a)):
            port = url.rsplit(":", 1)[1]
            self.children.append(
                Child(name, ["signal", "--port", port, "--sibling", sibling, "--node-id", name], self.log_dir)
            )
        solo_port = self.solo_url.rsplit(":", 1)[1]
        self.children.append(
            Child("node-solo", ["signal", "--port", solo_port, "--node-id", "node-solo"], self.log_dir)
        )
        for child, url, siblings in zip(self.children, [a, b, self.solo_url], [1, 1, 0], strict=True):
            self._wait_node(child, url, siblings)
        peer_children = []
        for i, shard in enumerate(self.manifest.blocks):
            # As ``ai4all up`` places them: 0-10 on A, 10-20 on B, 20-30 on A; the client is on B.
            home, other = self.urls[i % 2], self.urls[(i + 1) % 2]
            info = PeerInfo(f"peer-{shard.start}-{shard.end}", f"{shard.start}-{shard.end}", home)
            args = ["peer", "--signal", home, "--signal", other, "--model", str(self.model_dir)]
            args += ["--span", info.span, "--data-dir", str(self.log_dir / info.name)]
            peer_children.append(Child(info.name, args, self.log_dir))
            self.peers.append(info)
        self.children += peer_children
        for child, info in zip(peer_children, self.peers, strict=True):
            info.peer_id = child.wait_line(READY, START_TIMEOUT_S).group(1)
            self.console.log(f"{info.name} ({info.peer_id[:12]}) serves blocks {info.span} via {info.home}")

    def _wait_node(self, child: Child, url: str, siblings: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            child.check_alive()
            health = _health(self.http(url))
            if health is not None and len(health.get("siblings", [])) >= siblings:
                return
            time.sleep(0.1)
        raise BenchError(f"signaling node {child.name} at {url} was not ready within 30 s:\n{child.tail()}")

    def stop(self) -> None:
        for child in reversed(self.children):  # peers first, then the nodes
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            child.stop()

    def failed(self) -> str:
        """Log tails of children that died, for an error message."""
        dead = [c for c in self.children if c.proc.poll() not in (None, 0, -signal.SIGTERM)]
        return "\n".join(f"--- {c.name} (status {c.proc.returncode}):\n{c.tail()}" for c in dead)


# --- contenders ---------------------------------------------------------------------------------------


class AsyncDecoder(Protocol):
    """One contender, async: a fresh session per ``begin``, greedy steps with ``next``, then ``end``."""

    name: str

    async def begin(self, ids: Sequence[int]) -> np.ndarray: ...

    async def next(self, token: int) -> np.ndarray: ...

    async def end(self) -> None: ...


class InProcess:
    """A ``bench_export`` decoder run in a worker thread, so the event loop (and its links) stays live."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.name = decoder.name

    async def begin(self, ids: Sequence[int]) -> np.ndarray:
        return await asyncio.to_thread(self.decoder.begin, ids)

    async def next(self, token: int) -> np.ndarray:
        return await asyncio.to_thread(self.decoder.next, token)

    async def end(self) -> None:
        await asyncio.to_thread(self.decoder.end)


class MeshDecoder:
    """One mesh session per ``begin``: embed and head here, every block on the peers."""

    def __init__(self, name: str, client: MeshClient, max_length: int) -> None:
        self.name = name
        self.client = client
        self.max_length = max_length
        self._session: MeshSession | None = None

    async def begin(self, ids: Sequence[int]) -> np.ndarray:
        self._session = await self.client.open(1, self.max_length)
        return await self._step(np.array([ids], dtype=np.int64))

    async def next(self, token: int) -> np.ndarray:
        return await self._step(np.array([[token]], dtype=np.int64))

    async def _step(self, ids: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BenchError(f"{self.name}: step before begin")
        logits = await self._session.step(ids, np.ones_like(ids))
        last: np.ndarray = logits[0, -1]
        return last

    async def end(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class Run:
    ttft_s: float  # session open + prompt + the first token's logits and argmax
    decode_s: float  # the decode steps after it
    tokens: list[int]


async def greedy(decoder: AsyncDecoder, prompt: Sequence[int], steps: int) -> Run:
    start = time.perf_counter()
    try:
        tokens = [int(np.argmax(await decoder.begin(prompt)))]
        first = time.perf_counter()
        for _ in range(steps):
            tokens.append(int(np.argmax(await decoder.next(tokens[-1]))))
        return Run(first - start, time.perf_counter() - first, tokens)
    finally:
        await decoder.end()


@dataclass
class Samples:
    """One contender's single-session runs across repeats."""

    ttft_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the first repeat's
    deterministic: bool = True


async def single_sessions(
    decoders: list[AsyncDecoder], prompt: list[int], steps: int, repeats: int, log: Console
) -> dict[str, Samples]:
    """Warm up, then A, B, C, A, B, C, ...: every contender once per repeat, back to back."""
    for decoder in decoders:
        await greedy(decoder, prompt, WARMUP_TOKENS)
    samples = {d.name: Samples() for d in decoders}
    for repeat in range(repeats):
        for decoder in decoders:
            run = await greedy(decoder, prompt, steps)
            s = samples[decoder.name]
            s.ttft_s.append(run.ttft_s)
            s.decode_tok_s.append(steps / run.decode_s)
            if not s.tokens:
                s.tokens = run.tokens
            elif run.tokens != s.tokens:
                s.deterministic = False
        line = ", ".join(
            f"{n}: {s.ttft_s[-1] * 1e3:.0f} ms, {s.decode_tok_s[-1]:.1f} tok/s" for n, s in samples.items()
        )
        log.log(f"single session, repeat {repeat + 1}/{repeats}: {line}")
    return samples


# --- concurrent sessions ------------------------------------------------------------------------------


@dataclass
class Aggregate:
    tok_s: list[float | None] = field(default_factory=list)  # None: that repeat's run failed
    failures: list[str] = field(default_factory=list)
    udp_drops: list[int | None] = field(default_factory=list)
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
) -> dict[int, Aggregate]:
    """Every count of sessions once per repeat; a failed run is recorded and the client renewed."""
    result = {n: Aggregate() for n in SESSION_COUNTS}
    for repeat in range(repeats):
        for n in SESSION_COUNTS:
            drops = udp_receive_drops()
            try:
                tok_s, tokens = await concurrent_run(mesh.client, prompt, steps, n, max_length)
            except (AI4AllError, TimeoutError) as exc:
                result[n].tok_s.append(None)
                result[n].failures.append(f"{type(exc).__name__}: {exc}")
                log.log(f"[red]{n} concurrent sessions failed: {type(exc).__name__}: {escape(str(exc))}")
                log.log("opening a fresh mesh client (the failed one keeps the peer banned for a minute)")
                await mesh.renew()
            else:
                result[n].tok_s.append(tok_s)
                result[n].same_tokens &= all(t == reference for t in tokens)
            after = udp_receive_drops()
            result[n].udp_drops.append(None if drops is None or after is None else after - drops)
        line = ", ".join(f"{n} sessions {_tok_s(a.tok_s[-1])}" for n, a in result.items())
        log.log(f"concurrent sessions, repeat {repeat + 1}/{repeats}: {line}")
    return result


def _tok_s(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} tok/s"


# --- signaling ----------------------------------------------------------------------------------------


async def relay_rtts(url_a: str, url_b: str, samples: int) -> list[float]:
    """Round trips of a ``signal`` from a client on ``url_a`` to one on ``url_b``, echoed back."""
    a = await SignalClient.create(Identity.generate(), SignalClientConfig(urls=(url_a,), learn_urls=False))
    b = await SignalClient.create(Identity.generate(), SignalClientConfig(urls=(url_b,), learn_urls=False))

    async def echo() -> None:
        async for incoming in b.signals():
            await b.send_signal(incoming.sender, incoming.payload)

    echo_task = asyncio.create_task(echo(), name="relay-echo")
    try:
        deadline = time.monotonic() + 10
        while True:  # b's announcement must first reach a's node by gossip
            try:
                await a.send_signal(b.peer_id, {"warmup": 0})
                break
            except RemoteSignalingError as exc:
                if exc.code != "unknown_peer" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await asyncio.wait_for(a.recv_signal(), 5)
        rtts: list[float] = []
        for i in range(RELAY_WARMUP + samples):
            start = time.perf_counter()
            await a.send_signal(b.peer_id, {"n": i})
            reply = await asyncio.wait_for(a.recv_signal(), 5)
            if reply.payload != {"n": i} or reply.sender != b.peer_id:
                raise BenchError(f"signal {i} came back as {reply.payload} from {reply.sender[:12]}")
            if i >= RELAY_WARMUP:
                rtts.append(time.perf_counter() - start)
        return rtts
    finally:
        echo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, AI4AllError):
            await echo_task
        await a.close()
        await b.close()


@dataclass(frozen=True)
class AnnounceRun:
    accepted: int
    replies: dict[str, int]  # reply type (or error code) -> count
    seconds: float
    last_seq: dict[str, int]  # peer id -> seq of its last announcement


async def _hello(url: str) -> tuple[ClientConnection, str, str]:
    ws = await connect(url, proxy=None, open_timeout=10, ping_interval=None, max_size=2**20)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, str(hello["node_id"]), str(hello["nonce"])


def _signed_announces(identity: Identity, url: str, node_id: str, nonce: str, count: int) -> list[str]:
    """``count`` announcements of one peer with rising seq, each a complete ``announce`` message."""
    proof = identity.sign_body(AUTH_CONTEXT, {"node_id": node_id, "nonce": nonce})
    now = time.time_ns() // 1_000_000
    messages = []
    for k in range(count):
        ann = Announcement(
            peer_id=identity.peer_id,
            kind="native",
            seq=now + k,
            issued_ms=now,
            expires_ms=now + 120_000,
            signaling=(url,),
        )
        body = ann.to_dict()
        sig = identity.sign_body(ANNOUNCE_CONTEXT, body)
        messages.append(
            json.dumps({"type": "announce", "id": k + 1, "body": body, "sig": sig, "proof": proof})
        )
    return messages


async def announce_burst(url: str, connections: int, per_connection: int) -> AnnounceRun:
    """Connections (one fresh identity each) all send pre-signed announcements at once; count the answers."""
    sockets = await asyncio.gather(*(_hello(url) for _ in range(connections)))
    try:
        identities = [Identity.generate() for _ in sockets]
        batches = [
            _signed_announces(ident, url, node_id, nonce, per_connection)
            for ident, (_, node_id, nonce) in zip(identities, sockets, strict=True)
        ]
        replies: Counter[str] = Counter()

        async def send(ws: ClientConnection, batch: list[str]) -> None:
            for message in batch:
                await ws.send(message)

        async def read(ws: ClientConnection) -> None:
            for _ in range(per_connection):
                reply = json.loads(await ws.recv())
                kind = str(reply.get("type"))
                replies[f"error: {reply.get('code')}" if kind == "error" else kind] += 1

        start = time.perf_counter()
        async with asyncio.timeout(120):
            await asyncio.gather(
                *(send(ws, batch) for (ws, _, _), batch in zip(sockets, batches, strict=True)),
                *(read(ws) for ws, _, _ in sockets),
            )
        seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(ws.close() for ws, _, _ in sockets), return_exceptions=True)
    last_seq = {i.peer_id: json.loads(b[-1])["body"]["seq"] for i, b in zip(identities, batches, strict=True)}
    return AnnounceRun(replies["announced"], dict(replies), seconds, last_seq)


async def gossip_reached(http: str, last_seq: dict[str, int]) -> int:
    """How many of these peers' last announcements the sibling at ``http`` holds (after a short wait)."""
    await asyncio.sleep(1.0)
    view = await asyncio.to_thread(_directory, http)
    held = {e["peer_id"]: e["seq"] for e in view.get("entries", [])}
    return sum(1 for peer_id, seq in last_seq.items() if held.get(peer_id) == seq)


@dataclass
class SignalingResults:
    relay_two_nodes: list[float]
    relay_one_node: list[float]
    announce: dict[str, list[AnnounceRun]]
    gossip_reached: list[int]


async def signaling(mesh: LocalMesh, repeats: int, log: Console) -> SignalingResults:
    a, b = mesh.urls
    log.log(f"signal round trips: {RELAY_SAMPLES} through node A and node B, {RELAY_SAMPLES} through node B")
    two = await relay_rtts(a, b, RELAY_SAMPLES)
    one = await relay_rtts(b, b, RELAY_SAMPLES)
    targets = {"lone node": mesh.solo_url, "federated node A": a}
    announce: dict[str, list[AnnounceRun]] = {name: [] for name in targets}
    reached: list[int] = []
    for repeat in range(repeats):
        for name, url in targets.items():
            run = await announce_burst(url, ANNOUNCE_CONNECTIONS, ANNOUNCES_PER_CONNECTION)
            announce[name].append(run)
            if url == a:
                reached.append(await gossip_reached(mesh.http(b), run.last_seq))
        line = ", ".join(f"{n} {r[-1].accepted / r[-1].seconds:.0f}/s" for n, r in announce.items())
        log.log(f"announcements, repeat {repeat + 1}/{repeats}: {line}")
    return SignalingResults(two, one, announce, reached)


# --- the whole run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WholeModel:
    """Which whole-model contender this run has, and how to build it."""

    name: str
    what: str
    build: Callable[[], Decoder]


def whole_model(manifest: Manifest, work: Path, threads: int, log: Console) -> WholeModel:
    """optimum's graph from ``bench_export`` if made from the same source, else one 0-L blocks shard."""
    source = manifest.raw.get("model", {}).get("source")
    optimum = work / "optimum"
    try:
        marker = json.loads((optimum / ".ai4all-bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if marker is not None and marker.get("source") == source and (optimum / "model.onnx").is_file():
        path = optimum / "model.onnx"
        return WholeModel(
            WHOLE_OPTIMUM,
            f"optimum's whole-model graph {path}",
            lambda: WholeOnnxDecoder(WHOLE_OPTIMUM, path, threads),
        )
    from exporter.pipeline import ExportRequest, run_export
    from exporter.source import ModelSource

    if not isinstance(source, dict):
        raise BenchError("the model's manifest names no source to export a whole-model shard from")
    out = work / f"mesh-whole-{manifest.name}"
    span = Span(0, manifest.num_layers)
    log.log(f"no optimum export of this model in {optimum}: exporting one blocks shard {span} to {out}")
    model_source = ModelSource(str(source["kind"]), str(source["location"]), manifest.name)
    run_export(ExportRequest(model_source, out, spans=(span,)))
    return WholeModel(
        WHOLE_SHARD,
        f"LocalChain over one blocks shard {span} in {out} (no optimum export in {optimum})",
        lambda: ChainDecoder(WHOLE_SHARD, out, threads),
    )


def ensure_model(model_dir: Path, default: bool, log: Console) -> None:
    if (model_dir / "manifest.json").is_file():
        return
    if not default:
        raise BenchError(f"{model_dir} has no manifest.json: export a model there first (ai4all export)")
    from exporter.pipeline import ExportRequest, run_export
    from exporter.source import resolve

    log.log(f"exporting the default model to {model_dir} (spans 0-10, 10-20, 20-30)")
    run_export(ExportRequest(resolve(None), model_dir, spans=DEFAULT_SPANS))


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
class MeshResults:
    samples: dict[str, Samples]
    aggregate: dict[int, Aggregate]
    route: list[tuple[str, int, int]]
    hop_rtt_ms: dict[str, float]
    signaling: SignalingResults


async def measure(
    args: argparse.Namespace,
    mesh: LocalMesh,
    prompt: list[int],
    whole: WholeModel,
    threads: int,
    log: Console,
) -> MeshResults:
    max_length = len(prompt) + max(args.tokens, WARMUP_TOKENS) + 1
    connection = MeshConnection((mesh.urls[1], mesh.urls[0]), mesh.model_dir, mesh.manifest, threads)
    client = await connection.open()
    try:
        chain = InProcess(await asyncio.to_thread(ChainDecoder, CHAIN, mesh.model_dir, threads))
        whole_decoder = InProcess(await asyncio.to_thread(whole.build))
        decoders: list[AsyncDecoder] = [MeshDecoder(MESH, client, max_length), chain, whole_decoder]
        log.log(
            f"measuring: {args.repeats} repeats of {args.tokens} decode steps after {len(prompt)} prompt "
            f"tokens, {threads} threads per onnxruntime session"
        )
        samples = await single_sessions(decoders, prompt, args.tokens, args.repeats, log)
        session = await client.open(1, max_length)  # only to read the route the client picks
        route = session.route
        await session.close()
        rtts = {p[:12]: round(r * 1e3, 2) for p, r in client.rtts.items()}
        aggregate = await concurrency(
            connection, prompt, args.tokens, args.repeats, max_length, samples[MESH].tokens, log
        )
    finally:
        await connection.close()
    return MeshResults(samples, aggregate, route, rtts, await signaling(mesh, args.repeats, log))


# --- tables -------------------------------------------------------------------------------------------


def _spread(values: Sequence[float], scale: float, digits: int) -> str:
    median, low, high = (
        f"{v * scale:.{digits}f}" for v in (statistics.median(values), min(values), max(values))
    )
    return f"{median} ({low}-{high})"


def _ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of per-repeat ratios (each repeat's values were measured back to back)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def speed_ratios(samples: dict[str, Samples], whole_name: str) -> dict[str, dict[str, float]]:
    mesh = samples[MESH]
    result = {}
    for other in (CHAIN, whole_name):
        s = samples[other]
        result[f"mesh/{'local chain' if other == CHAIN else 'whole model'}"] = {
            "decode_tok_s": _ratio(mesh.decode_tok_s, s.decode_tok_s),
            "ttft_s": _ratio(mesh.ttft_s, s.ttft_s),
        }
    return result


def single_table(samples: dict[str, Samples], steps: int, prompt_tokens: int) -> Table:
    table = Table(title=f"One session: {prompt_tokens}-token chat prompt, then {steps} greedy decode steps")
    table.add_column("contender")
    table.add_column("time to first token, ms", justify="right")
    table.add_column("decode tok/s", justify="right")
    table.add_column("ms per token", justify="right")
    for name, s in samples.items():
        per_token = [1 / v for v in s.decode_tok_s]
        table.add_row(
            name, _spread(s.ttft_s, 1e3, 0), _spread(s.decode_tok_s, 1, 1), _spread(per_token, 1e3, 1)
        )
    table.caption = "median (min-max) over repeats"
    return table


def ratio_table(ratios: dict[str, dict[str, float]], overhead_ms: float) -> Table:
    table = Table(title="Ratios (median of per-repeat ratios)")
    table.add_column("ratio")
    table.add_column("decode tok/s (<1: mesh slower)", justify="right")
    table.add_column("time to first token (>1: mesh slower)", justify="right")
    for key, value in ratios.items():
        table.add_row(key, f"{value['decode_tok_s']:.2f}", f"{value['ttft_s']:.2f}")
    table.caption = f"the mesh adds {overhead_ms:.1f} ms per decoded token over the local chain (medians)"
    return table


def agreement_table(
    samples: dict[str, Samples], tokenizer: ModelTokenizer
) -> tuple[Table, dict[str, dict[str, Any]]]:
    table = Table(title=f"Greedy tokens on {PROMPT!r} (chat template), first repeat")
    table.add_column("contender")
    table.add_column(f"same as {CHAIN}", justify="center")
    table.add_column("reply (to the first end-of-sequence)")
    summary: dict[str, dict[str, Any]] = {}
    reference = samples[CHAIN].tokens
    for name, s in samples.items():
        diff = first_difference(s.tokens, reference)
        cut = next((i for i, t in enumerate(s.tokens) if t in tokenizer.eos_token_ids), len(s.tokens))
        text = tokenizer.decode(s.tokens[:cut]) + (" <eos>" if cut < len(s.tokens) else " ...")
        if not s.deterministic:
            text += " (tokens varied between repeats!)"
        table.add_row(name, "yes" if diff is None else f"NO: from token {diff}", escape(text))
        summary[name] = {"same_as_local_chain": diff is None, "first_difference": diff}
        summary[name]["deterministic"] = s.deterministic
    return table, summary


def _paired_ratio(num: Sequence[float | None], den: Sequence[float | None]) -> float | None:
    """Median of per-repeat ratios over the repeats where both runs succeeded."""
    pairs = [a / b for a, b in zip(num, den, strict=True) if a is not None and b is not None]
    return statistics.median(pairs) if pairs else None


def _ok(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def concurrency_table(aggregate: dict[int, Aggregate], steps: int) -> Table:
    table = Table(title=f"Concurrent mesh sessions, each decoding {steps} tokens")
    table.add_column("sessions", justify="right")
    table.add_column("aggregate tok/s", justify="right")
    table.add_column("per session tok/s", justify="right")
    table.add_column("vs 1 session", justify="right")
    table.add_column("tokens as 1 session's", justify="center")
    table.add_column("failed runs", justify="right")
    table.add_column("UDP drops", justify="right")
    base = aggregate[SESSION_COUNTS[0]].tok_s
    for n, a in aggregate.items():
        ok = _ok(a.tok_s)
        ratio = _paired_ratio(a.tok_s, base)
        drops = [str(d) if d is not None else "?" for d in a.udp_drops]
        table.add_row(
            str(n),
            _spread(ok, 1, 1) if ok else "-",
            f"{statistics.median(ok) / n:.1f}" if ok else "-",
            "-" if ratio is None else f"{ratio:.2f}x",
            ("yes" if a.same_tokens else "NO") if ok else "-",
            f"{len(a.failures)} of {len(a.tok_s)}",
            ", ".join(drops),
        )
    failures = [f"{n} sessions: {f}" for n, a in aggregate.items() for f in a.failures]
    table.caption = (
        "aggregate = sessions x steps / (last session done - decoding started); median (min-max) of the runs "
        "that finished; UDP drops: datagrams the kernel dropped for full receive buffers during each run "
        "(whole host, /proc/net/snmp)"
    )
    if failures:
        table.caption += "\nfailures: " + escape("; ".join(dict.fromkeys(failures)))
    return table


def _ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered) * 1e3, 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 3),
        "min": round(ordered[0] * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
    }


def signaling_table(sig: SignalingResults) -> Table:
    table = Table(title="Signaling")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("range / detail", justify="right")
    for what, values in (
        ("signal round trip, 2 federated nodes, ms", sig.relay_two_nodes),
        ("signal round trip, 1 node, ms", sig.relay_one_node),
    ):
        ms = _ms(values)
        table.add_row(what, f"{ms['median']:.2f}", f"p90 {ms['p90']:.2f}, {ms['min']:.2f}-{ms['max']:.2f}")
    for name, runs in sig.announce.items():
        rates = [r.accepted / r.seconds for r in runs]
        refused = Counter[str]()
        for r in runs:
            refused.update({k: v for k, v in r.replies.items() if k != "announced"})
        detail = f"{min(rates):.0f}-{max(rates):.0f}; accepted {sum(r.accepted for r in runs)}"
        detail += f" of {len(runs) * ANNOUNCE_CONNECTIONS * ANNOUNCES_PER_CONNECTION}"
        if refused:
            detail += ", refused " + ", ".join(f"{k} x{v}" for k, v in refused.items())
        table.add_row(f"announcements accepted/s, {name}", f"{statistics.median(rates):.0f}", detail)
    if sig.gossip_reached:
        table.add_row(
            "  ...of which node B holds the last one",
            f"{statistics.median(sig.gossip_reached):.0f} of {ANNOUNCE_CONNECTIONS} peers",
            "per repeat: " + ", ".join(str(n) for n in sig.gossip_reached),
        )
    table.caption = (
        f"round trip: {RELAY_SAMPLES} signals a -> b echoed b -> a (after {RELAY_WARMUP} warm-up); "
        f"announcements: {ANNOUNCE_CONNECTIONS} connections x {ANNOUNCES_PER_CONNECTION} pre-signed, "
        "sent at once, default node limits (a peer id's burst is 10)"
    )
    return table


# --- entry point --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.bench_mesh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=cache_dir() / "models" / DEFAULT_MODEL_NAME,
        help="an exported model directory (default: %(default)s, exported if absent)",
    )
    parser.add_argument("--tokens", type=int, default=32, help="greedy decode steps per run (default: 32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats of every measurement (default: 3)"
    )
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be at least 1")
    args.default_model = args.model == parser.get_default("model")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    from exporter.source import cache_dir

    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 120)
    threads = session_options().intra_op_num_threads
    model_dir: Path = args.model.expanduser()
    ensure_model(model_dir, args.default_model, log)
    manifest = load_manifest(model_dir)
    tokenizer = ModelTokenizer(model_dir, manifest)
    prompt = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    whole = whole_model(manifest, cache_dir() / "bench", threads, log)

    with tempfile.TemporaryDirectory(prefix="ai4all-bench-mesh-") as tmp:
        log.log(f"starting 2 federated signaling nodes, a lone node and {len(manifest.blocks)} peers")
        with LocalMesh(Path(tmp), model_dir, manifest, log) as mesh:
            try:
                results = asyncio.run(measure(args, mesh, prompt, whole, threads, log))
            except AI4AllError as exc:
                raise BenchError(f"{exc}\n{mesh.failed()}".rstrip()) from exc
            peers = [(p.name, p.span, p.home, p.peer_id) for p in mesh.peers]
            urls = mesh.urls

    samples = results.samples
    ratios = speed_ratios(samples, whole.name)
    overhead_ms = 1e3 / statistics.median(samples[MESH].decode_tok_s) - 1e3 / statistics.median(
        samples[CHAIN].decode_tok_s
    )
    homes = {p[3]: p[2] for p in peers}
    route = ", ".join(
        f"{s}-{e} on {p[:8]} via node {'A' if homes.get(p) == urls[0] else 'B'}" for p, s, e in results.route
    )
    out.print(
        f"model {manifest.name} ({model_dir}); onnxruntime {onnxruntime.__version__}, {threads} threads per "
        f"session; client on node B; route: {route}; WebRTC ping per hop (ms): {results.hop_rtt_ms}; "
        f"whole model: {whole.what}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(single_table(samples, args.tokens, len(prompt)))
    out.print(ratio_table(ratios, overhead_ms))
    table, agreement = agreement_table(samples, tokenizer)
    out.print(table)
    out.print(concurrency_table(results.aggregate, args.tokens))
    out.print(signaling_table(results.signaling))

    base = results.aggregate[SESSION_COUNTS[0]].tok_s
    sig = results.signaling
    return {
        "bench": "bench_mesh",
        "model": manifest.name,
        "threads": threads,
        "decode_tokens": args.tokens,
        "prompt_tokens": len(prompt),
        "repeats": args.repeats,
        "onnxruntime": onnxruntime.__version__,
        "whole_model": whole.what,
        "peers": [{"span": p[1], "node": "A" if p[2] == urls[0] else "B", "peer_id": p[3]} for p in peers],
        "route": [{"peer_id": p, "start": s, "end": e} for p, s, e in results.route],
        "hop_rtt_ms": results.hop_rtt_ms,
        "ttft_ms": {n: round(statistics.median(s.ttft_s) * 1e3, 1) for n, s in samples.items()},
        "decode_tok_s": {n: round(statistics.median(s.decode_tok_s), 2) for n, s in samples.items()},
        "ratios": {k: {m: round(v, 3) for m, v in r.items()} for k, r in ratios.items()},
        "mesh_overhead_ms_per_token": round(overhead_ms, 2),
        "agreement": agreement,
        "concurrent": {
            str(n): {
                "aggregate_tok_s": round(statistics.median(_ok(a.tok_s)), 2) if _ok(a.tok_s) else None,
                "ratio_vs_1": _round(_paired_ratio(a.tok_s, base)),
                "same_tokens": a.same_tokens,
                "failed_runs": len(a.failures),
                "failures": a.failures,
                "udp_drops": a.udp_drops,
            }
            for n, a in results.aggregate.items()
        },
        "signal_rtt_ms": {"two_nodes": _ms(sig.relay_two_nodes), "one_node": _ms(sig.relay_one_node)},
        "announces_per_s": {
            name: round(statistics.median(r.accepted / r.seconds for r in runs), 1)
            for name, runs in sig.announce.items()
        },
        "announce_replies": {
            name: dict(sum((Counter(r.replies) for r in runs), Counter[str]()))
            for name, runs in sig.announce.items()
        },
        "gossip_reached_sibling": sig.gossip_reached,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _interrupt(signum: int, frame: PyFrame | None) -> None:
    raise KeyboardInterrupt  # SIGTERM too unwinds through the finally blocks that stop the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(args)
    except AI4AllError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process this run started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Signaling's own costs: a ``signal``'s round trip through two nodes and through one, announcements per second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from websockets.asyncio.client import ClientConnection, connect

from bench.mesh_processes import BenchError, LocalMesh, directory
from python_peer.core.canonical import ANNOUNCE_CONTEXT, AUTH_CONTEXT, Announcement
from python_peer.core.errors import AI4AllError, RemoteSignalingError
from python_peer.identity import Identity
from python_peer.signal_client import SignalClient, SignalClientConfig

RELAY_SAMPLES = 50  # per client pair: within a connection's burst of 60 messages
RELAY_WARMUP = 3
ANNOUNCE_CONNECTIONS = 200  # one identity each
ANNOUNCES_PER_CONNECTION = 10  # a peer id's announce burst on a node


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
        async with asyncio.timeout(5):
            await a.recv_signal()
        rtts: list[float] = []
        for i in range(RELAY_WARMUP + samples):
            start = time.perf_counter()
            await a.send_signal(b.peer_id, {"n": i})
            async with asyncio.timeout(5):
                reply = await a.recv_signal()
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
    async with asyncio.timeout(10):
        hello = json.loads(await ws.recv())
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
    view = await asyncio.to_thread(directory, http)
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

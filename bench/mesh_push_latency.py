"""What push routing saves per token when links have latency: the toy model's three span servers in this
process, over in-memory links that deliver every frame ``delay`` later, decoded with steps pushed peer
to peer and hop by hop, interleaved. The toy model computes almost nothing, so the figures are the round
trips (and this process's own work); ``bench_mesh.py`` measures the real thing on loopback.

    python -m bench.mesh_push_latency [--delays-ms 0,5,20,50] [--tokens 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from python_peer import event_loop
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.relay import PushRelay
from python_peer.rpc import serve_link
from python_peer.server import ServerConfig, SpanServer
from tests.fast import toy_model
from tests.support.fakes import MemoryLink, MemoryNetwork, announcement

SPANS = ((0, 1), (1, 3), (3, 4))


class DelayedLink(MemoryLink):
    """A ``MemoryLink`` whose frames (PING and PONG too) arrive ``delay`` seconds after they are sent."""

    delay = 0.0

    def _arrive(self, data: bytes) -> None:
        if self.delay <= 0:
            super()._arrive(data)
        else:
            asyncio.get_running_loop().call_later(self.delay, self._late, data)

    def _late(self, data: bytes) -> None:
        if not self.closed:
            super()._arrive(data)


class DelayedNetwork(MemoryNetwork):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def connect(self, client_id: str, peer_id: str) -> MemoryLink:
        handler = self.handlers[peer_id]
        mine, theirs = DelayedLink(client_id, peer_id), DelayedLink(peer_id, client_id)
        mine.other, theirs.other = theirs, mine
        mine.delay = theirs.delay = self.delay
        self.links += [mine, theirs]
        task = asyncio.create_task(serve_link(theirs, handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return mine


async def ms_per_token(client: MeshClient, push: bool, tokens: int) -> float:
    session = await client.open(1, tokens + 8)
    session.pushing = push
    logits = await session.step(np.array([[3, 5, 7, 11]]), np.ones((1, 4), dtype=np.int64))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(logits[0, -1]))
        logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
    elapsed = time.perf_counter() - start
    await session.close()
    return elapsed / tokens * 1e3


async def measure(model: Path, delay_ms: float, tokens: int, repeats: int) -> dict[str, float]:
    manifest = load_manifest(model)
    network = DelayedNetwork(delay_ms / 1e3)
    for span in SPANS:
        identity = Identity.generate()
        server = SpanServer(model, manifest, Span(*span), ServerConfig(threads=1), identity=identity)
        relay = PushRelay(server, identity.peer_id, network.connector(identity.peer_id))
        network.serve(identity.peer_id, relay, announcement(identity.peer_id, manifest.name, *span))
    client_id = Identity.generate().peer_id
    config = ClientConfig(threads=1, spot_checks=None, push_grace_s=5.0)
    client = MeshClient(
        model, manifest, network.signal_client(client_id), network.connector(client_id), config
    )
    try:
        await ms_per_token(client, True, 2)  # warm-up: every link opened, the pushers' too
        await ms_per_token(client, False, 2)
        push, hop = [], []
        for _ in range(repeats):
            push.append(await ms_per_token(client, True, tokens))
            hop.append(await ms_per_token(client, False, tokens))
    finally:
        await client.aclose()
        await network.aclose()
    return {
        "delay_ms": delay_ms,
        "push_ms_per_token": round(statistics.median(push), 1),
        "hop_by_hop_ms_per_token": round(statistics.median(hop), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--delays-ms", default="0,5,20,50", help="one-way delay of every link, ms")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = toy_model.build(Path(tmp) / "toy")
        rows = [
            event_loop.run(measure(model, float(d), args.tokens, args.repeats))
            for d in args.delays_ms.split(",")
        ]
    print(f"{'one-way delay ms':>16} {'push ms/token':>14} {'hop by hop ms/token':>20}")
    for row in rows:
        print(
            f"{row['delay_ms']:>16.0f} {row['push_ms_per_token']:>14.1f} {row['hop_by_hop_ms_per_token']:>20.1f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

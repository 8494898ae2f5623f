"""Batched decode without WebRTC: 1 vs 8 concurrent sessions through the real mesh client and span servers
of a model (one per blocks shard) over in-memory links, with batching off (every step and head alone,
as before issue 15) and on, interleaved per repeat.

    python -m bench.bench_batching [--model DIR] [--tokens N] [--repeats R]

It isolates what batching does from the costs of aiortc and separate processes that ``bench_mesh``
also measures. One line per run on stdout, then one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from python_peer import event_loop
from python_peer.batching import BatchConfig, RowBatcher
from python_peer.core.manifest import load_manifest
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.server import ServerConfig, SpanServer
from tests.support.fakes import MemoryNetwork, announcement

PROMPT = list(range(100, 137))  # 37 tokens, as bench_mesh's chat prompt


async def aggregate(client: MeshClient, sessions: int, steps: int) -> tuple[float, list[list[int]]]:
    """Aggregate decode tok/s of ``sessions`` greedy sessions started together, and their tokens."""
    barrier = asyncio.Barrier(sessions)
    ids = np.array([PROMPT], dtype=np.int64)

    async def one() -> tuple[float, float, list[int]]:
        session = await client.open(1, len(PROMPT) + steps + 1)
        try:
            logits = await session.step(ids, np.ones_like(ids))
            tokens: list[int] = []
            await barrier.wait()
            start = time.perf_counter()
            for _ in range(steps):
                tokens.append(int(np.argmax(logits[0, -1])))
                logits = await session.step(np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
            return start, time.perf_counter(), tokens
        finally:
            await session.close()

    runs = await asyncio.gather(*(one() for _ in range(sessions)))
    elapsed = max(r[1] for r in runs) - min(r[0] for r in runs)
    return sessions * steps / elapsed, [r[2] for r in runs]


async def measure(model: Path, steps: int, repeats: int) -> dict[str, object]:
    manifest = load_manifest(model)
    network = MemoryNetwork()
    servers: list[SpanServer] = []
    for shard in manifest.blocks:
        identity = Identity.generate()
        servers.append(SpanServer(model, manifest, shard.span, ServerConfig(), identity=identity))
        network.serve(
            identity.peer_id,
            servers[-1],
            announcement(identity.peer_id, manifest.name, shard.start, shard.end),
        )
    client_id = Identity.generate().peer_id
    client = MeshClient(
        model, manifest, network.signal_client(client_id), network.connector(client_id), ClientConfig()
    )
    stacked = client.heads
    figures: dict[str, dict[str, list[float]]] = {m: {"1": [], "8": [], "ratio": []} for m in ("off", "on")}
    reference: list[int] | None = None
    same = True
    try:
        await aggregate(client, 2, 4)  # warm-up
        for repeat in range(repeats):
            for mode in ("off", "on"):
                for server in servers:
                    server.batcher.config = BatchConfig(enabled=mode == "on")
                    server.batcher.stats.sizes.clear()
                heads: RowBatcher = stacked
                client.heads = heads if mode == "on" else _alone(client)
                one, tokens_1 = await aggregate(client, 1, steps)
                eight, tokens_8 = await aggregate(client, 8, steps)
                reference = reference or tokens_1[0]
                same = same and all(t == reference for t in tokens_1 + tokens_8)
                for key, value in (("1", one), ("8", eight), ("ratio", eight / one)):
                    figures[mode][key].append(value)
                sizes = dict(sorted(servers[0].batcher.stats.sizes.items()))
                print(
                    f"repeat {repeat + 1}, batching {mode}: 1 session {one:.1f} tok/s, 8 sessions {eight:.1f} "
                    f"tok/s ({eight / one:.2f}x); first peer's batch sizes {sizes}",
                    flush=True,
                )
    finally:
        await client.aclose()
        await network.aclose()
    return {
        "bench": "bench_batching",
        "model": manifest.name,
        "spans": [str(s.span) for s in manifest.blocks],
        "decode_tokens": steps,
        "repeats": repeats,
        "same_tokens": same,
        "median": {m: {k: round(statistics.median(v), 2) for k, v in f.items()} for m, f in figures.items()},
        "runs": {m: {k: [round(x, 2) for x in v] for k, v in f.items()} for m, f in figures.items()},
    }


class _Alone:
    """Heads as before: each session's head in its own thread, concurrently (no stacking, no waiting)."""

    def __init__(self, client: MeshClient) -> None:
        self.client = client

    async def __call__(self, hidden: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self.client.head, hidden)

    def expecting(self, rows: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _alone(client: MeshClient):  # type: ignore[no-untyped-def]
    return _Alone(client)


def main(argv: list[str] | None = None) -> int:
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_batching", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", type=Path, default=cache_dir() / "models" / DEFAULT_MODEL_NAME)
    parser.add_argument("--tokens", type=int, default=24, help="greedy decode steps per run (default: 24)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: 3)")
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        print(
            f"error: {args.model} holds no exported model (ai4all export, or run bench_mesh once)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(event_loop.run(measure(args.model.expanduser(), args.tokens, args.repeats))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

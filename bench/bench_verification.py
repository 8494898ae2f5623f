"""Verification benchmark: how fast spot checks catch each kind of liar, false positives, and overhead.

    .venv/bin/python -m bench.bench_verification [--trials N] [--sessions S] [--established E]

Runs on the toy model (``tests/fast/toy_model.py``) over in-memory links, in seconds, with the client's
default ``SpotCheckPolicy`` (seeded per trial). Every span is served by three peers; for the liar runs,
the liar serves blocks 1-3 and announces the best throughput, so routing picks it until it is caught.
Sessions are a 4-token prompt and 8 greedy tokens (8 FORWARD steps per hop). Prints a table per part and,
as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from python_peer import event_loop
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.server import ServerConfig, SpanServer
from python_peer.spot_check import SpotCheckPolicy
from tests.fast import toy_model
from tests.support.fakes import MemoryNetwork, announcement
from tests.support.liars import LIAR_KINDS, Liar, decode_only, one_in_twenty

SPANS = ((0, 1), (1, 3), (3, 4))
NEW_TOKENS = 8


def always(frame: object, rng: object) -> bool:
    return True


def prompt(i: int) -> list[int]:
    return [(3 + 5 * i) % 32, (7 + 3 * i) % 32, (11 + i) % 32, 13]


async def greedy(client: MeshClient, ids: list[int]) -> None:
    session = await client.open(1, len(ids) + NEW_TOKENS)
    try:
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        for _ in range(NEW_TOKENS - 1):
            token = int(np.argmax(logits[0, -1]))
            logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
    finally:
        await session.close()


class Mesh:
    """Three peers per span of the toy model on a ``MemoryNetwork``; ``liar`` wraps one of blocks 1-3."""

    def __init__(self, model_dir: Path, manifest: Manifest, liar: str | None, seed: int) -> None:
        self.network = MemoryNetwork()
        self.liar_id = ""
        self.liar: Liar | None = None
        for span in SPANS:
            for k in range(3):
                identity = Identity.generate()
                server = SpanServer(
                    model_dir, manifest, Span(*span), ServerConfig(threads=1), identity=identity
                )
                handler: Any = server
                best = span == (1, 3) and k == 0
                if best and liar is not None:
                    when = {"decode_only": decode_only, "one_in_twenty": one_in_twenty}.get(liar)
                    kind = "noise" if when is not None else liar
                    handler = self.liar = Liar(server, kind, when=when or always, seed=seed)
                    self.liar_id = identity.peer_id
                throughput = 9000 if best else 1000 + 10 * k
                self.network.serve(
                    identity.peer_id,
                    handler,
                    announcement(identity.peer_id, manifest.name, *span, throughput=throughput),
                )
        config = ClientConfig(request_timeout_s=5, connect_timeout_s=5, threads=1, gossip_every_s=None)
        config = ClientConfig(**{**config.__dict__, "spot_checks": SpotCheckPolicy(seed=seed)})
        me = Identity.generate().peer_id
        self.client = MeshClient(
            model_dir, manifest, self.network.signal_client(me), self.network.connector(me), config
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.network.aclose()


async def detection(
    model_dir: Path, manifest: Manifest, kind: str, trials: int, limit: int
) -> dict[str, Any]:
    """Sessions of the liar (and its lying steps) until caught, over ``trials`` meshes."""
    sessions: list[int] = []
    lying_sessions: list[int] = []
    lies: list[int] = []
    missed = 0
    for trial in range(trials):
        mesh = Mesh(model_dir, manifest, kind, seed=100 + trial)
        assert mesh.liar is not None and mesh.client.spot_checks is not None
        lied_in = 0
        try:
            for i in range(limit):
                before = mesh.liar.lies
                await greedy(mesh.client, prompt(i))
                lied_in += mesh.liar.lies > before
                if mesh.liar_id in mesh.client.spot_checks.caught:
                    sessions.append(i + 1)
                    lying_sessions.append(lied_in)
                    lies.append(mesh.liar.lies)
                    break
            else:
                missed += 1
        finally:
            await mesh.aclose()
    return {
        "kind": kind,
        "detected": len(sessions) / trials,
        "sessions_mean": statistics.mean(sessions) if sessions else None,
        "sessions_max": max(sessions) if sessions else None,
        "lying_sessions_mean": statistics.mean(lying_sessions) if lying_sessions else None,
        "lying_sessions_max": max(lying_sessions) if lying_sessions else None,
        "lying_steps_mean": statistics.mean(lies) if lies else None,
        "missed": missed,
    }


async def honest(
    model_dir: Path, manifest: Manifest, sessions: int, established: int, wasm: bool
) -> dict[str, Any]:
    """An honest mesh (one peer perturbed like WASM when ``wasm``): false positives and the checks' cost."""
    mesh = Mesh(model_dir, manifest, "wasm_like" if wasm else None, seed=7)
    checks = mesh.client.spot_checks
    assert checks is not None
    try:
        for i in range(sessions - established):
            await greedy(mesh.client, prompt(i))
        used0, cost0 = checks.stats.used_block_tokens, checks.stats.check_block_tokens
        for i in range(established):
            await greedy(mesh.client, prompt(1000 + i))
        s = checks.stats
        return {
            "runtime_perturbation": "2e-3 of max |x|" if wasm else "none",
            "sessions": sessions,
            "checks": s.sessions_checked,
            "false_positives": s.caught,
            "inconclusive": s.inconclusive,
            "overhead_all": s.check_block_tokens / s.used_block_tokens,
            "overhead_established": (s.check_block_tokens - cost0) / (s.used_block_tokens - used0),
        }
    finally:
        await mesh.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = toy_model.build(Path(tmp) / "toy")
        manifest = load_manifest(model_dir)
        kinds = [*LIAR_KINDS, "decode_only", "one_in_twenty"]
        results = []
        for kind in kinds:
            found = await detection(model_dir, manifest, kind, args.trials, args.limit)
            print(json.dumps(found), file=sys.stderr)
            results.append(found)
        fp = [
            await honest(model_dir, manifest, args.sessions, args.established, wasm) for wasm in (False, True)
        ]
    print(
        f"{'liar':<16}{'detected':>10}{'sessions mean':>15}{'max':>6}{'lying sessions':>16}{'max':>6}{'lies':>7}"
    )
    for r in results:
        mean = f"{r['sessions_mean']:.2f}" if r["sessions_mean"] is not None else "-"
        lying = f"{r['lying_sessions_mean']:.2f}" if r["lying_sessions_mean"] is not None else "-"
        steps = f"{r['lying_steps_mean']:.1f}" if r["lying_steps_mean"] is not None else "-"
        print(
            f"{r['kind']:<16}{r['detected']:>10.0%}{mean:>15}{r['sessions_max'] or '-':>6}{lying:>16}"
            f"{r['lying_sessions_max'] or '-':>6}{steps:>7}"
        )
    print()
    print(
        f"{'honest mesh':<22}{'sessions':>9}{'checks':>8}{'false +':>8}{'overhead all':>14}{'established':>13}"
    )
    for r in fp:
        print(
            f"{r['runtime_perturbation']:<22}{r['sessions']:>9}{r['checks']:>8}{r['false_positives']:>8}"
            f"{r['overhead_all']:>14.1%}{r['overhead_established']:>13.1%}"
        )
    return {"liars": results, "honest": fp, "trials": args.trials, "limit": args.limit}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=10, help="meshes per liar kind")
    parser.add_argument("--limit", type=int, default=30, help="sessions before a liar counts as missed")
    parser.add_argument("--sessions", type=int, default=300, help="sessions of the honest runs")
    parser.add_argument("--established", type=int, default=100, help="last sessions measured as established")
    args = parser.parse_args()
    print(json.dumps(event_loop.run(main_async(args))))


if __name__ == "__main__":
    main()

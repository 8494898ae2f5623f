"""Where a peer's decode step goes, and which runner settings make it faster, side by side in one run.

One blocks shard of an exported model (the middle one by default) is run as a peer runs it: a prefill
of ``--past`` tokens, then ``--tokens`` decode steps of one token, each feeding the step's ``present.*``
back as the next ``past_key_values.*``. Contenders differ in one thing each from ``current`` (the
runner's ``session_options`` and ``ShardRunner.run``); they run interleaved per repeat, and each ratio
is taken against the run of ``current`` just before each of its runs (current runs once before every
contender, so each pair shares the machine's load of the moment), then the median. The per-step costs
around the run (NaN/Inf scans, wire encoding and decoding, digests) are timed alone. The race with
llama.cpp is ``bench_llama.py``'s. ``bench/README.md`` says what each figure means.

    python -m bench.bench_runner [--model DIR] [--span A-B] [--tokens N] [--repeats R] [--past P,...]
                                 [--threads T]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from python_peer.core import manifest as names
from python_peer.core.manifest import ShardEntry, load_manifest
from python_peer.core.wire import Frame, FrameType, chunk_message, decode_frame, encode_frame
from python_peer.runner import ShardRunner, session_options
from python_peer.tensors import from_wire, to_wire

CURRENT = "current"
Feeds = dict[str, Any]


@dataclass(frozen=True)
class Contender:
    """One way of running the shard: its session options, and whether the cache stays in onnxruntime."""

    name: str
    what: str
    options: Callable[[int], ort.SessionOptions]
    bound: bool = False  # run_bound: the KV cache stays OrtValues between steps


def _options(threads: int | None = None, **changes: Any) -> Callable[[int], ort.SessionOptions]:
    """``session_options`` with some settings changed: ``session.*`` keys are config entries."""

    def build(default_threads: int) -> ort.SessionOptions:
        options = session_options(threads or default_threads)
        for key, value in changes.items():
            if key.startswith("session_"):
                options.add_session_config_entry(key.replace("_", ".", 1), value)
            else:
                setattr(options, key, value)
        return options

    return build


def contenders(threads: int) -> list[Contender]:
    return [
        Contender(CURRENT, f"session_options({threads}), run(): numpy in and out", _options()),
        Contender("run_bound", "the same options; KV cache kept as OrtValues (run_bound)", _options(), True),
        Contender("1 thread", "intra_op_num_threads 1", _options(1)),
        Contender(
            "spinning on", "session.intra_op.allow_spinning 1", _options(session_intra_op_allow_spinning="1")
        ),
        Contender("no mem pattern", "enable_mem_pattern False", _options(enable_mem_pattern=False)),
        Contender("no arena", "enable_cpu_mem_arena False", _options(enable_cpu_mem_arena=False)),
        Contender(
            "basic graph opts",
            "graph_optimization_level ORT_ENABLE_BASIC",
            _options(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ),
    ]


@dataclass
class ShardLoop:
    """A runner of one contender, and the decode loop a peer runs over it."""

    contender: Contender
    runner: ShardRunner
    entry: ShardEntry
    kv_heads: int
    head_dim: int

    def _feeds(self, hidden: np.ndarray, past: dict[str, Any], length: int) -> Feeds:
        seq = hidden.shape[1]
        feeds: Feeds = {
            names.HIDDEN_IN: hidden,
            names.ATTENTION_MASK: np.ones((1, length + seq), dtype=np.int64),
            names.POSITION_IDS: np.arange(length, length + seq, dtype=np.int64)[None, :],
        }
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        for layer in self.entry.span.layers():
            for past_name in (names.past_key(layer), names.past_value(layer)):
                feeds[past_name] = past.get(past_name, empty)
        return feeds

    def _step(
        self, hidden: np.ndarray, past: dict[str, Any], length: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        feeds = self._feeds(hidden, past, length)
        cache = frozenset(n for n in feeds if n.startswith("past_key_values."))
        if self.contender.bound:
            out = self.runner.run_bound(feeds, trusted=cache)
            hidden_out = out[names.HIDDEN_OUT].numpy()
        else:
            out = self.runner.run(feeds, trusted=cache)
            hidden_out = out[names.HIDDEN_OUT]
        new_past = {}
        for layer in self.entry.span.layers():
            new_past[names.past_key(layer)] = out[names.present_key(layer)]
            new_past[names.past_value(layer)] = out[names.present_value(layer)]
        return hidden_out, new_past

    def decode(self, prompt: np.ndarray, steps: list[np.ndarray]) -> tuple[float, np.ndarray]:
        """Prefill ``prompt`` (untimed), then one step per hidden state of ``steps``: (seconds, last output)."""
        out, past = self._step(prompt, {}, 0)
        length = prompt.shape[1]
        start = time.perf_counter()
        for hidden in steps:
            out, past = self._step(hidden, past, length)
            length += 1
        return time.perf_counter() - start, out


@dataclass
class Samples:
    seconds: dict[int, list[float]] = field(default_factory=dict)  # past length -> one per repeat
    max_diff: dict[int, float] = field(default_factory=dict)  # vs current's last output


def _timeit(fn: Callable[[], object], repeat: int = 200) -> float:
    """Median microseconds of one call."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _costs(hidden: np.ndarray) -> dict[str, float]:
    mask = np.ones(hidden.shape[:2], dtype=np.int64)
    tensors = (to_wire(names.HIDDEN_IN, hidden), to_wire(names.ATTENTION_MASK, mask))
    frame = Frame(FrameType.FORWARD, bytes(16), 1, tensors=tensors)
    data = encode_frame(frame)
    decoded = decode_frame(data)
    return {
        "isfinite scan": _timeit(lambda: np.isfinite(hidden).all()),
        "to_wire": _timeit(lambda: to_wire(names.HIDDEN_IN, hidden)),
        "encode_frame": _timeit(lambda: encode_frame(frame)),
        "chunk_message": _timeit(lambda: chunk_message(1, data)),
        "decode_frame": _timeit(lambda: decode_frame(data)),
        "from_wire (with scan)": _timeit(lambda: from_wire(decoded.tensor(names.HIDDEN_IN))),
        "sha256 of the tensor": _timeit(lambda: hashlib.sha256(tensors[0].data).digest()),
    }


def step_costs(hidden_size: int, prompt: int) -> dict[str, dict[str, float]]:
    """Microseconds of the work around one run, for one decode token and for a ``prompt``-token prefill."""
    rng = np.random.default_rng(1)
    return {
        label: _costs(rng.standard_normal((1, seq, hidden_size), dtype=np.float32))
        for label, seq in (("decode (1 token)", 1), (f"prefill ({prompt} tokens)", prompt))
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.bench_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=cache_dir() / "models" / DEFAULT_MODEL_NAME)
    parser.add_argument("--span", default=None, help="the blocks shard, e.g. 10-20 (default: the middle one)")
    parser.add_argument("--tokens", type=int, default=16, help="decode steps per run (default: 16)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default: 5)")
    parser.add_argument(
        "--past",
        default="37,1024",
        help="prefill lengths before decoding, comma-separated (default: 37,1024)",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: what the runner uses")
    args = parser.parse_args(argv)
    args.past = [int(p) for p in args.past.split(",")]
    if args.tokens < 1 or args.repeats < 1 or min(args.past) < 1:
        parser.error("--tokens, --repeats and every --past must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 140)
    threads = args.threads or session_options().intra_op_num_threads
    model_dir: Path = args.model.expanduser()
    manifest = load_manifest(model_dir)
    blocks = manifest.blocks
    entry = (
        blocks[len(blocks) // 2]
        if args.span is None
        else next((b for b in blocks if f"{b.span.start}-{b.span.end}" == args.span), None)
    )
    if entry is None:
        raise SystemExit(f"no blocks shard {args.span} in {model_dir}")
    hidden_size = int(manifest.config["hidden_size"])
    kv_heads, head_dim = int(manifest.config["num_key_value_heads"]), int(manifest.config["head_dim"])
    log.log(f"loading {len(contenders(threads))} sessions of {entry.file}, {threads} threads each")
    loops = [
        ShardLoop(c, ShardRunner(model_dir, entry, options=c.options(threads)), entry, kv_heads, head_dim)
        for c in contenders(threads)
    ]
    rng = np.random.default_rng(0)
    inputs = {
        p: (
            rng.standard_normal((1, p, hidden_size), dtype=np.float32),
            [rng.standard_normal((1, 1, hidden_size), dtype=np.float32) for _ in range(args.tokens)],
        )
        for p in args.past
    }
    for loop in loops:  # warm-up
        loop.decode(inputs[args.past[0]][0], inputs[args.past[0]][1][:4])
    samples = {loop.contender.name: Samples() for loop in loops}
    base, others = loops[0], loops[1:]
    for repeat in range(args.repeats):
        for past, (prompt, steps) in inputs.items():
            for loop in others:  # current right before each contender: the pair shares the machine's load
                for each in (base, loop):
                    seconds, last = each.decode(prompt, steps)
                    sample = samples[each.contender.name]
                    sample.seconds.setdefault(past, []).append(seconds)
                    if each is base:
                        reference = last
                    sample.max_diff[past] = max(
                        sample.max_diff.get(past, 0.0), float(np.abs(last - reference).max())
                    )
        log.log(f"repeat {repeat + 1}/{args.repeats} done")

    table = Table(title=f"{entry.file}: decode ms per step (median, min-max), ratio to {CURRENT}")
    table.add_column("contender")
    for past in args.past:
        table.add_column(f"past {past}: ms/step", justify="right")
        table.add_column("speed-up", justify="right")
        table.add_column("max |diff|", justify="right")
    result: dict[str, Any] = {}
    for loop in loops:
        name = loop.contender.name
        row = [f"{name} ({loop.contender.what})"]
        result[name] = {}
        for past in args.past:
            secs = samples[name].seconds[past]
            if name == CURRENT:
                ratio = 1.0
            else:  # the run of current just before each run of this contender
                index = [lp.contender.name for lp in others].index(name)
                pairs = samples[CURRENT].seconds[past][index :: len(others)]
                ratio = statistics.median(b / s for b, s in zip(pairs, secs, strict=True))
            ms = [s / args.tokens * 1e3 for s in secs]
            row += [
                f"{statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f})",
                f"{ratio:.3f}",
                f"{samples[name].max_diff[past]:.1e}",
            ]
            result[name][str(past)] = {
                "ms_per_step": round(statistics.median(ms), 3),
                "speedup": round(ratio, 3),
                "max_abs_diff": samples[name].max_diff[past],
            }
        table.add_row(*row)
    out.print(table)

    costs = step_costs(hidden_size, args.past[0])
    cost_table = Table(title="work around one run, microseconds (median of 200)")
    cost_table.add_column("what")
    for label in costs:
        cost_table.add_column(label, justify="right")
    for what in next(iter(costs.values())):
        cost_table.add_row(what, *(f"{costs[label][what]:.1f}" for label in costs))
    out.print(cost_table)

    return {
        "bench": "bench_runner",
        "shard": entry.file,
        "threads": threads,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "onnxruntime": ort.__version__,
        "contenders": result,
        "step_costs_us": {k: {w: round(v, 2) for w, v in c.items()} for k, c in costs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

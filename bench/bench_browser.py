"""One blocks span in the browser (onnxruntime-web, WASM) vs native onnxruntime, per token, side by side.

The real activations that enter the span are recorded first: the model's own greedy generation for a
chat-templated prompt runs natively (embed, the blocks before the span), and the hidden states entering
the span at prefill and at every decode step are kept. Then the same inputs are replayed through the
same shard file in three contenders, interleaved per repeat:

- **browser WASM**: Chromium (``playwright.config.py``'s binary) loads the shard from a signaling node
  (``ai4all signal --model-dir``, the way a contributing page loads it) into ``web/src/runtime/shard.js``'s
  ``BlocksRunner`` on the WASM backend with one thread, and times each ``forward`` in the page;
- **native, 1 thread**: ``python_peer.runner.BlocksRunner`` with one intra-op thread (same compute budget);
- **native, default threads**: what ``ai4all peer`` runs with.

Each contender first runs a warm-up pass that is not timed (session creation, first-run allocations).

Each contender's outputs are compared with the first native run's (max |diff|): a fast wrong answer would
show. Figures: prefill ms, median decode ms per token, and their ratios to native (1 thread), measured in
one run. Tables go to stdout, then one JSON line with every figure.

    python -m bench.bench_browser [--model DIR] [--span A-B] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.mesh_processes import Child, free_port, node_health
from python_peer.chain import LocalChain, position_ids_for
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import ShardEntry, load_manifest
from python_peer.core.spans import Span
from python_peer.runner import BlocksRunner
from python_peer.tokenizer import ModelTokenizer

PROMPT = "What is the capital of France?"
DEFAULT_MODEL = Path.home() / ".cache" / "ai4all" / "bench" / "shards-fp32"
BROWSER = "browser WASM (1 thread)"
NATIVE_1 = "native onnxruntime (1 thread)"
NATIVE_N = "native onnxruntime (default threads)"
START_TIMEOUT_S = 60.0

# Load the span in the page and replay the recorded steps; returns per-step milliseconds and outputs.
BROWSER_JS = """async ({ base, file, steps, repeats }) => {
  const { loadRuntime } = await import('/web/src/runtime/onnx.js');
  const { ShardRunner, BlocksRunner } = await import('/web/src/runtime/shard.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const entry = manifest.shards.find((s) => s.file === file);
  const t0 = performance.now();
  const runner = new BlocksRunner(await ShardRunner.load(base, entry, { runtime: { allowWebGPU: false, threads: 1 } }), manifest);
  const loadMs = performance.now() - t0;
  const decode = (b64, type) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new type(raw.buffer);
  };
  const inputs = steps.map((s) => ({
    hidden: { data: decode(s.hidden, Float32Array), dims: s.dims },
    mask: decode(s.mask, BigInt64Array),
    positions: decode(s.positions, BigInt64Array),
  }));
  const runs = [];
  let last = null;
  for (let r = -1; r < repeats; r++) { // run -1 warms the session up and is not kept
    const id = `bench-${r}`;
    runner.open(id, 1);
    const times = [];
    const outs = [];
    for (const step of inputs) {
      const t = performance.now();
      const out = await runner.forward(id, step.hidden, step.mask, step.positions);
      times.push(performance.now() - t);
      outs.push(out.data);
    }
    runner.close(id);
    if (r < 0) continue;
    runs.push(times);
    last = outs;
  }
  const encode = (f32) => {
    const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const backend = runner.runner.runtime?.backend ?? 'wasm';
  await runner.release();
  return { loadMs, runs, outputs: last.map(encode), backend };
}"""


class BenchError(AI4AllError):
    """The benchmark could not set up or check what it measures."""


@dataclass
class Step:
    hidden: np.ndarray  # [1, seq, hidden]
    mask: np.ndarray  # [1, seq] int64
    positions: np.ndarray  # [1, seq] int64


def record_steps(model: Path, span: Span, tokens: int) -> tuple[list[Step], ShardEntry]:
    """The hidden states entering ``span`` during the model's own greedy generation of ``tokens`` tokens."""
    chain = LocalChain(model)
    entry = next((e for e in chain.manifest.blocks if e.span == span), None)
    if entry is None:
        spans = ", ".join(str(e.span) for e in chain.manifest.blocks)
        raise BenchError(f"{model} has no blocks shard {span} (it has {spans})")
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = np.array(
        [tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))], dtype=np.int64
    )
    session = chain.open(1)
    steps: list[Step] = []
    past = np.zeros((1, 0), dtype=np.int64)
    try:
        current = ids
        for _ in range(tokens + 1):
            mask = np.ones_like(current)
            positions = position_ids_for(mask, past)
            hidden = chain.embed(current, positions)
            for runner in chain.blocks:
                if runner.span == span:
                    steps.append(Step(hidden.copy(), mask, positions))
                hidden = runner.forward(session, hidden, mask, positions)
            past = np.concatenate([past, mask], axis=1)
            logits = chain.head(hidden)
            current = np.array([[int(np.argmax(logits[0, -1]))]], dtype=np.int64)
    finally:
        chain.close(session)
    return steps, entry


def native_run(
    model: Path, entry: ShardEntry, steps: list[Step], threads: int | None
) -> tuple[list[float], list[np.ndarray]]:
    manifest = load_manifest(model)
    runner = BlocksRunner(model, entry, manifest, threads=threads)
    runner.open("warm-up", 1)  # not timed, as in the page
    for step in steps[:2]:
        runner.forward("warm-up", step.hidden, step.mask, step.positions)
    runner.close("warm-up")
    runner.open("bench", 1)
    times: list[float] = []
    outs: list[np.ndarray] = []
    for step in steps:
        t = time.perf_counter()
        out = runner.forward("bench", step.hidden, step.mask, step.positions)
        times.append((time.perf_counter() - t) * 1000)
        outs.append(out)
    runner.close("bench")
    return times, outs


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _launch_config() -> Any:
    """``playwright.config.py`` (Chromium's binary and switches), loaded by path: its name is not importable."""
    path = Path(__file__).resolve().parents[1] / "playwright.config.py"
    spec = importlib.util.spec_from_file_location("ai4all_playwright_config", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load the browser launch settings from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def browser_runs(
    url: str, model_name: str, entry: ShardEntry, steps: list[Step], repeats: int
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    launch_config = _launch_config()

    payload = {
        "base": f"/models/{model_name}/",
        "file": entry.file,
        "repeats": repeats,
        "steps": [
            {
                "hidden": _b64(s.hidden.astype(np.float32)),
                "dims": list(s.hidden.shape),
                "mask": _b64(s.mask.astype(np.int64)),
                "positions": _b64(s.positions.astype(np.int64)),
            }
            for s in steps
        ],
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_config.browser_launch_options())
        try:
            page = browser.new_page()
            page.goto(f"{url}/healthz")
            result: dict[str, Any] = page.evaluate(BROWSER_JS, payload)
        finally:
            browser.close()
    result["outputs"] = [
        np.frombuffer(base64.b64decode(o), dtype=np.float32).reshape(s.hidden.shape)
        for o, s in zip(result["outputs"], steps, strict=True)
    ]
    return result


def max_diff(outs: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(outs, ref, strict=True))


def summarize(times: list[list[float]]) -> tuple[float, float]:
    """Median prefill ms and median decode ms per token over repeats."""
    prefill = statistics.median(t[0] for t in times)
    decode = statistics.median(statistics.median(t[1:]) for t in times)
    return prefill, decode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_browser", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="an exported model dir (default: %(default)s)"
    )
    parser.add_argument("--span", default=None, help="the blocks shard to measure (default: the middle one)")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (default: %(default)s)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model: Path = args.model
    if not (model / "manifest.json").is_file():
        raise BenchError(
            f"{model} holds no exported model: run `ai4all export --out {model}` (or bench.bench_export) first"
        )
    manifest = load_manifest(model)
    blocks = manifest.blocks
    span = Span.parse(args.span) if args.span else blocks[len(blocks) // 2].span
    print(f"recording the inputs of span {span} over {args.tokens} greedy steps ...", file=sys.stderr)
    steps, entry = record_steps(model, span, args.tokens)
    native1: list[list[float]] = []
    nativen: list[list[float]] = []
    browser: list[list[float]] = []
    reference: list[np.ndarray] | None = None
    diffs: dict[str, float] = {}
    load_ms: list[float] = []  # the page's download + sha256 + session creation of the shard
    with tempfile.TemporaryDirectory(prefix="ai4all-bench-browser-") as tmp:
        port = free_port()
        command = ["signal", "--port", str(port), "--model-dir", str(model), "--allow-unsigned"]
        node = Child("signal", command, Path(tmp))
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while node_health(url) is None:
                node.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"the signaling node did not start:\n{node.tail()}")
                time.sleep(0.1)
            for r in range(args.repeats):
                print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr)
                times, outs = native_run(model, entry, steps, 1)
                native1.append(times)
                if reference is None:
                    reference = outs
                diffs[NATIVE_1] = max(diffs.get(NATIVE_1, 0.0), max_diff(outs, reference))
                times, outs = native_run(model, entry, steps, None)
                nativen.append(times)
                diffs[NATIVE_N] = max(diffs.get(NATIVE_N, 0.0), max_diff(outs, reference))
                result = browser_runs(url, manifest.name, entry, steps, 1)
                browser.extend(result["runs"])
                load_ms.append(float(result["loadMs"]))
                diffs[BROWSER] = max(diffs.get(BROWSER, 0.0), max_diff(result["outputs"], reference))
        finally:
            node.stop()
    figures: dict[str, Any] = {
        "model": manifest.name,
        "span": str(span),
        "prompt_tokens": int(steps[0].hidden.shape[1]),
        "browser_load_ms": round(statistics.median(load_ms), 1),
    }
    table = Table(
        title=f"{manifest.name} blocks {span}: {len(steps) - 1} decode steps, median of {args.repeats}"
    )
    columns = (
        "contender",
        "prefill ms",
        "prefill vs native 1t",
        "decode ms/token",
        "decode vs native 1t",
        "max |diff|",
    )
    for column in columns:
        table.add_column(column, justify="right" if column != "contender" else "left")
    base_prefill, base_decode = summarize(native1)
    for name, runs in ((BROWSER, browser), (NATIVE_1, native1), (NATIVE_N, nativen)):
        prefill, decode = summarize(runs)
        ratio = decode / base_decode
        prefill_ratio = prefill / base_prefill
        figures[name] = {
            "prefill_ms": round(prefill, 2),
            "decode_ms": round(decode, 3),
            "decode_ratio": round(ratio, 3),
            "prefill_ratio": round(prefill_ratio, 3),
            "max_diff": diffs[name],
        }
        table.add_row(
            name,
            f"{prefill:.1f}",
            f"{prefill_ratio:.2f}x",
            f"{decode:.2f}",
            f"{ratio:.2f}x",
            f"{diffs[name]:.2e}",
        )
    Console(width=150).print(table)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (BenchError, AI4AllError) as exc:
        print(f"bench_browser: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

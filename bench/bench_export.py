"""Chained shards vs one whole-model ONNX graph (optimum) vs PyTorch, side by side, on the default model.

Every speed figure comes from one run with the contenders interleaved per repeat (A, B, C, A, B, C, ...),
so the noise of a shared machine hits them alike: read the ratios, not the absolute numbers. The exports
it needs go to a work directory and are reused by later runs. ``bench/README.md`` says what each figure
means.

    python -m bench.bench_export [--work DIR] [--tokens N] [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from exporter.pipeline import ExportRequest, run_export
from exporter.source import LoadedModel, ModelSource, cache_dir, load, resolve
from python_peer.chain import LocalChain
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest
from python_peer.core.spans import parse_spans
from python_peer.runner import session_options

SPANS = "0-10,10-20,20-30"
DTYPES = ("fp32", "fp16", "q8", "q4")
PROMPT = "What is the capital of France?"
PREFILL_SENTENCE = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all."
PREFILL_TOKENS = 128
ROPE_THETA = 100000.0  # SmolLM2-135M; transformers 4.x reads 10000 from a config.json without it
OPTIMUM_TASK = "text-generation-with-past"
OPTIMUM_MARKER = ".ai4all-bench.json"  # what the whole-model export in a work dir was made from
WARMUP_TOKENS = 4

# The contenders, in the order they run within each repeat.
CHAIN = "chain fp32"
CHAIN_Q8 = "chain q8"
WHOLE = "whole ONNX (optimum)"
TORCH = "PyTorch"


class Decoder(Protocol):
    """One contender: a fresh session per ``begin``, greedy steps with ``next``, then ``end``."""

    name: str

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        """Start a session and read the prompt; return the logits of its last token."""
        ...

    def next(self, token: int) -> np.ndarray:
        """Feed one token; return its logits."""
        ...

    def end(self) -> None: ...


class ChainDecoder:
    """The shards of one export, chained in this process by ``LocalChain``.

    The head computes logits for every position it is fed, as the whole-model graph and PyTorch do here;
    ``last_only`` feeds it the last position alone, as the mesh client does (what generation needs).
    """

    def __init__(self, name: str, model_dir: Path, threads: int, *, last_only: bool = False) -> None:
        self.name = name
        self.chain = LocalChain(model_dir, threads=threads)
        self.last_only = last_only
        self._session: str | None = None

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        self._session = self.chain.open(1)
        return self._step(np.array([ids], dtype=np.int64))

    def next(self, token: int) -> np.ndarray:
        return self._step(np.array([[token]], dtype=np.int64))

    def _step(self, ids: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"{self.name}: step before begin")
        if self.last_only:
            hidden = self.chain.forward(self._session, ids, np.ones_like(ids))
            return self.chain.head(hidden[:, -1:])[0, -1]
        return self.chain.step(self._session, ids, np.ones_like(ids))[0, -1]

    def end(self) -> None:
        if self._session is not None:
            self.chain.close(self._session)
            self._session = None


class WholeOnnxDecoder:
    """optimum's whole-model graph, run with onnxruntime directly and the chain's session options."""

    def __init__(self, name: str, path: Path, threads: int) -> None:
        import onnxruntime as ort

        self.name = name
        self.session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        declared = {i.name: i for i in self.session.get_inputs()}
        self._inputs = set(declared)
        # past_key_values.{i}.{key,value}: [batch, kv_heads, past_sequence, head_dim] -> present.{i}.{...}
        self._past: dict[str, tuple[int, int, str]] = {}
        for name_, spec in declared.items():
            if name_.startswith("past_key_values."):
                heads, dim = spec.shape[1], spec.shape[3]
                if not isinstance(heads, int) or not isinstance(dim, int):
                    raise RuntimeError(
                        f"{path}: input {name_} has a symbolic head count or size {spec.shape}"
                    )
                self._past[name_] = (heads, dim, "present." + name_.removeprefix("past_key_values."))
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._cache: dict[str, np.ndarray] = {}
        self._length = 0

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        self._cache, self._length = {}, 0
        return self._run(ids)

    def next(self, token: int) -> np.ndarray:
        return self._run([token])

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        seq = len(ids)
        feeds: dict[str, np.ndarray] = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones((1, self._length + seq), dtype=np.int64)
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(self._length, self._length + seq, dtype=np.int64)[None, :]
        for name, (heads, dim, _) in self._past.items():
            feeds[name] = self._cache.get(name, np.zeros((1, heads, 0, dim), dtype=np.float32))
        outputs = dict(zip(self._outputs, self.session.run(self._outputs, feeds), strict=True))
        for name, (_, _, present) in self._past.items():
            self._cache[name] = outputs[present]
        self._length += seq
        logits: np.ndarray = outputs["logits"][0, -1]
        return logits

    def end(self) -> None:
        self._cache, self._length = {}, 0


class TorchDecoder:
    """The transformers model itself: greedy steps over its own KV cache (``use_cache=True``)."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model
        self._past: Any = None

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        self._past = None
        return self._run(ids)

    def next(self, token: int) -> np.ndarray:
        return self._run([token])

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([list(ids)], dtype=torch.int64),
                past_key_values=self._past,
                use_cache=True,
            )
        self._past = out.past_key_values
        logits: np.ndarray = out.logits[0, -1].numpy()
        return logits

    def end(self) -> None:
        self._past = None


def greedy(decoder: Decoder, prompt: Sequence[int], steps: int) -> tuple[list[int], float]:
    """Greedy tokens after ``prompt`` (the first from its logits) and the seconds of the ``steps`` steps."""
    try:
        tokens = [int(np.argmax(decoder.begin(prompt)))]
        start = time.perf_counter()
        for _ in range(steps):
            tokens.append(int(np.argmax(decoder.next(tokens[-1]))))
        return tokens, time.perf_counter() - start
    finally:
        decoder.end()


def prefill(decoder: Decoder, ids: Sequence[int]) -> float:
    """Seconds for one step over ``ids`` in a fresh session."""
    try:
        start = time.perf_counter()
        decoder.begin(ids)
        return time.perf_counter() - start
    finally:
        decoder.end()


@dataclass
class Samples:
    """One contender's measurements across repeats."""

    decode_tok_s: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # greedy tokens of the first repeat
    deterministic: bool = True  # every repeat gave the same tokens


@dataclass(frozen=True)
class ShardExport:
    """One dtype's export in the work directory."""

    dtype: str
    path: Path
    manifest: Manifest
    seconds: float
    reused: bool


def export_shards(
    source: ModelSource, loaded: LoadedModel, work: Path, log: Console
) -> dict[str, ShardExport]:
    """Export every dtype with the same spans; run_export verifies and skips an identical export."""
    spans = tuple(parse_spans(SPANS))
    exports: dict[str, ShardExport] = {}
    for dtype in DTYPES:
        out = work / f"shards-{dtype}"
        reused = (out / "manifest.json").is_file()

        def progress(step: str, done: int, total: int, dtype: str = dtype) -> None:
            log.log(f"[{dtype}] {done}/{total} {step}")

        start = time.perf_counter()
        manifest = run_export(
            ExportRequest(source, out, dtype=dtype, spans=spans), progress, loader=lambda _: loaded
        )
        exports[dtype] = ShardExport(dtype, out, manifest, time.perf_counter() - start, reused)
    return exports


def save_hf(loaded: LoadedModel, hf_dir: Path, log: Console) -> Path:
    """Save the GGUF-loaded model as a Hugging Face directory that reloads to the same model."""
    model = loaded.model
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # the weights are dequantized fp32; nothing should treat them as GGUF
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    in_memory = getattr(model.config, "rope_theta", None)
    if in_memory != ROPE_THETA:
        log.log(
            f"[red]the loaded model has rope_theta {in_memory}, expected {ROPE_THETA}: every contender is off"
        )
    shutil.rmtree(hf_dir, ignore_errors=True)
    model.save_pretrained(hf_dir)
    loaded.tokenizer.save_pretrained(hf_dir)
    config_path = hf_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("rope_theta") != ROPE_THETA:
        log.log(f"config.json had rope_theta {config.get('rope_theta')!r}; writing {ROPE_THETA}")
        config["rope_theta"] = ROPE_THETA
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return hf_dir


def export_whole(
    source: ModelSource, loaded: LoadedModel, work: Path, log: Console
) -> tuple[Path, float, bool]:
    """optimum's whole-model export (with past) into ``work/optimum``; reused if made from the same inputs."""
    import torch
    import transformers

    out = work / "optimum"
    marker = {
        "source": source.describe(),
        "task": OPTIMUM_TASK,
        "optimum-onnx": importlib.metadata.version("optimum-onnx"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "rope_theta": ROPE_THETA,
    }
    try:
        previous = json.loads((out / OPTIMUM_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == marker and (out / "model.onnx").is_file():
        return out / "model.onnx", 0.0, True

    from optimum.exporters.onnx import main_export

    start = time.perf_counter()
    hf_dir = save_hf(loaded, work / "hf", log)
    staging = work / "optimum.staging"
    shutil.rmtree(staging, ignore_errors=True)
    log.log(f"exporting the whole model with optimum ({OPTIMUM_TASK})")
    # No validation pass: the greedy tokens below are compared with the chain's and PyTorch's anyway.
    main_export(str(hf_dir), staging, task=OPTIMUM_TASK, device="cpu", do_validation=False)
    (staging / OPTIMUM_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out / "model.onnx", time.perf_counter() - start, False


def measure(
    decoders: list[Decoder], prompt: list[int], prefill_ids: list[int], steps: int, repeats: int, log: Console
) -> dict[str, Samples]:
    """Warm every contender up, then interleave them: each repeat runs every decode, then every prefill."""
    for decoder in decoders:  # first runs allocate arenas and caches
        greedy(decoder, prompt, WARMUP_TOKENS)
        prefill(decoder, prefill_ids)
    samples = {d.name: Samples() for d in decoders}
    for repeat in range(repeats):
        for decoder in decoders:
            tokens, seconds = greedy(decoder, prompt, steps)
            sample = samples[decoder.name]
            sample.decode_tok_s.append(steps / seconds)
            if not sample.tokens:
                sample.tokens = tokens
            elif tokens != sample.tokens:
                sample.deterministic = False
        for decoder in decoders:
            samples[decoder.name].prefill_s.append(prefill(decoder, prefill_ids))
        line = ", ".join(
            f"{n} {s.decode_tok_s[-1]:.1f} tok/s {s.prefill_s[-1] * 1e3:.0f} ms" for n, s in samples.items()
        )
        log.log(f"repeat {repeat + 1}/{repeats}: {line}")
    return samples


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def reply_text(tokenizer: Any, tokens: list[int], eos: set[int]) -> str:
    cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
    text: str = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
    return text + (" <eos>" if cut < len(tokens) else " ...")


def _spread(values: list[float], scale: float, digits: int) -> str:
    """Median with the range in brackets."""
    median, low, high = (
        f"{v * scale:.{digits}f}" for v in (statistics.median(values), min(values), max(values))
    )
    return f"{median} ({low}-{high})"


def speed_table(samples: dict[str, Samples]) -> Table:
    table = Table(title="Decode and prefill: median (range) over repeats")
    table.add_column("contender")
    table.add_column("decode tok/s", justify="right")
    table.add_column(f"prefill {PREFILL_TOKENS} tok, ms", justify="right")
    for name, s in samples.items():
        table.add_row(name, _spread(s.decode_tok_s, 1.0, 1), _spread(s.prefill_s, 1e3, 0))
    return table


def ratios(samples: dict[str, Samples]) -> dict[str, dict[str, float]]:
    """Per-repeat ratios (each repeat's contenders ran back to back), then their median."""
    chain = samples[CHAIN]
    result: dict[str, dict[str, float]] = {}
    for other in (WHOLE, TORCH, CHAIN_Q8):
        if other not in samples:
            continue
        s = samples[other]
        key = f"{CHAIN_Q8}/{CHAIN}" if other == CHAIN_Q8 else f"{CHAIN}/{other}"
        num, den = (s, chain) if other == CHAIN_Q8 else (chain, s)
        result[key] = {
            "decode_tok_s": statistics.median(
                a / b for a, b in zip(num.decode_tok_s, den.decode_tok_s, strict=True)
            ),
            "prefill_s": statistics.median(a / b for a, b in zip(num.prefill_s, den.prefill_s, strict=True)),
        }
    return result


def ratio_table(result: dict[str, dict[str, float]]) -> Table:
    table = Table(title="Ratios (median of per-repeat ratios)")
    table.add_column("ratio")
    table.add_column("decode tok/s (>1: first is faster)", justify="right")
    table.add_column("prefill time (<1: first is faster)", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value['decode_tok_s']:.2f}", f"{value['prefill_s']:.2f}")
    return table


def agreement_table(
    samples: dict[str, Samples], tokenizer: Any, eos: set[int]
) -> tuple[Table, dict[str, Any]]:
    """Each contender's greedy tokens against the fp32 chain's and PyTorch's."""
    references = (CHAIN, TORCH)
    table = Table(title=f"Greedy tokens on {PROMPT!r} (chat template), first repeat")
    table.add_column("contender")
    for ref in references:
        table.add_column(f"same as {ref}", justify="center")
    table.add_column("reply (to the first end-of-sequence)")
    summary: dict[str, Any] = {}
    for name, s in samples.items():
        cells: list[str] = []
        summary[name] = {"deterministic": s.deterministic}
        for ref in references:
            diff = first_difference(s.tokens, samples[ref].tokens)
            cells.append("yes" if diff is None else f"no: from token {diff}")
            summary[name][f"first_difference_vs_{ref}"] = diff
        text = escape(reply_text(tokenizer, s.tokens, eos))
        table.add_row(name, *cells, text if s.deterministic else text + " (tokens varied between repeats!)")
    return table, summary


def size_table(exports: dict[str, ShardExport], whole_bytes: int) -> Table:
    table = Table(title=f"Shard sizes (MB = 10^6 bytes), spans {SPANS}, and measured quality vs fp32")
    table.add_column("shard")
    for dtype in exports:
        table.add_column(dtype, justify="right")
    files = [e.file for e in exports["fp32"].manifest.shards]
    for file in files:
        cells = []
        for export in exports.values():
            entry = next((e for e in export.manifest.shards if e.file == file), None)
            cells.append("-" if entry is None else f"{entry.bytes / 1e6:.1f}")
        table.add_row(file, *cells)
    table.add_row(
        "total",
        *(f"{sum(e.bytes for e in x.manifest.shards) / 1e6:.1f}" for x in exports.values()),
        end_section=True,
    )
    for key in ("max_abs_logit_diff", "mean_abs_logit_diff", "greedy_agreement"):
        table.add_row(key, *(_quality(x.manifest, key) for x in exports.values()))
    table.caption = f"whole model as one optimum graph (fp32): {whole_bytes / 1e6:.1f} MB"
    return table


def _quality(manifest: Manifest, key: str) -> str:
    if manifest.quality is None:
        return "reference" if manifest.dtype == "fp32" else "-"
    value = manifest.quality.get(key)
    return f"{value:g}" if isinstance(value, int | float) else "-"


def prefill_prompt(tokenizer: Any) -> list[int]:
    """Exactly PREFILL_TOKENS ids: a sentence's ids repeated and cut."""
    ids: list[int] = tokenizer.encode(PREFILL_SENTENCE, add_special_tokens=False)
    return (ids * (PREFILL_TOKENS // len(ids) + 1))[:PREFILL_TOKENS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=cache_dir() / "bench",
        help="where exports go and are reused (default: %(default)s)",
    )
    parser.add_argument("--tokens", type=int, default=64, help="greedy decode steps per run (default: 64)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved repeats per contender (default: 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for onnxruntime and torch (default: what the peer's runner picks)",
    )
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--tokens, --repeats and --threads must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 120)
    threads = args.threads or session_options().intra_op_num_threads
    torch.set_num_threads(threads)
    work: Path = args.work.expanduser()
    work.mkdir(parents=True, exist_ok=True)

    source = resolve(None)
    log.log(f"loading {source.name} from {source.location}")
    start = time.perf_counter()
    loaded = load(source)
    load_s = time.perf_counter() - start
    exports = export_shards(source, loaded, work, log)
    whole_path, whole_s, whole_reused = export_whole(source, loaded, work, log)
    whole_bytes = sum(p.stat().st_size for p in whole_path.parent.glob("model.onnx*"))

    tokenizer = loaded.tokenizer
    prompt: list[int] = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True
    )
    prefill_ids = prefill_prompt(tokenizer)
    eos = {int(i) for i in exports["fp32"].manifest.tokenizer.get("eos_token_ids", [])}

    decoders: list[Decoder] = [
        ChainDecoder(CHAIN, exports["fp32"].path, threads),
        WholeOnnxDecoder(WHOLE, whole_path, threads),
        TorchDecoder(TORCH, loaded.model),
        ChainDecoder(CHAIN_Q8, exports["q8"].path, threads),
    ]
    log.log(
        f"measuring: {args.repeats} repeats of {args.tokens} decode steps after {len(prompt)} prompt tokens, "
        f"and a {PREFILL_TOKENS}-token prefill, {threads} threads"
    )
    samples = measure(decoders, prompt, prefill_ids, args.tokens, args.repeats, log)

    out.print(
        f"model {source.name}; {threads} threads; onnxruntime {onnxruntime.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}; load {load_s:.1f} s; exports: "
        + ", ".join(f"{d} {'reused' if x.reused else 'made'} {x.seconds:.0f} s" for d, x in exports.items())
        + f", optimum {'reused' if whole_reused else 'made'} {whole_s:.0f} s",
        highlight=False,
    )
    out.print(speed_table(samples))
    result_ratios = ratios(samples)
    out.print(ratio_table(result_ratios))
    table, agreement = agreement_table(samples, tokenizer, eos)
    out.print(table)
    out.print(size_table(exports, whole_bytes))

    return {
        "bench": "bench_export",
        "model": source.name,
        "threads": threads,
        "decode_tokens": args.tokens,
        "prompt_tokens": len(prompt),
        "prefill_tokens": PREFILL_TOKENS,
        "repeats": args.repeats,
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "optimum-onnx": importlib.metadata.version("optimum-onnx"),
        },
        "decode_tok_s": {n: round(statistics.median(s.decode_tok_s), 2) for n, s in samples.items()},
        "prefill_ms": {n: round(statistics.median(s.prefill_s) * 1e3, 1) for n, s in samples.items()},
        "ratios": {k: {m: round(v, 3) for m, v in r.items()} for k, r in result_ratios.items()},
        "agreement": agreement,
        "shard_bytes": {d: {e.file: e.bytes for e in x.manifest.shards} for d, x in exports.items()},
        "total_bytes": {d: sum(e.bytes for e in x.manifest.shards) for d, x in exports.items()},
        "whole_onnx_bytes": whole_bytes,
        "quality": {d: x.manifest.quality for d, x in exports.items() if x.manifest.quality is not None},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except AI4AllError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

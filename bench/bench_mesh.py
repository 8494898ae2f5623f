"""The mesh on loopback vs the same shards in one process vs the whole model, and signaling's own costs.

One run starts two federated signaling nodes and one ``ai4all peer`` process per blocks shard of the
model (0-10, 10-20, 20-30 for the default), all on 127.0.0.1, and a mesh client in this process on the
other node than two of the peers (as ``ai4all up`` places them). It measures time to first token and
decode tokens/s through the mesh, through the same shards chained here (``LocalChain``) and through the
whole model (optimum's graph from ``bench_export``, else one 0-L blocks shard), interleaved per repeat;
then aggregate decode tokens/s with 1, 4 and 8 concurrent mesh sessions; then the round trip of a
``signal`` through two nodes and through one, and how many signed announcements a node accepts per
second. Every process it started is stopped at the end, on errors and on Ctrl-C too. ``bench/README.md``
says what each figure means. This file runs the whole and prints the report; the parts are
``mesh_processes``, ``mesh_contenders``, ``mesh_concurrency``, ``mesh_signaling`` and ``mesh_report``.

    python -m bench.bench_mesh [--model DIR | --hidden-float16] [--tokens N] [--repeats R]

``--hidden-float16`` runs it on the default model exported with ``ai4all export --hidden-float16``
(hidden states rounded to float16 values at every shard boundary, carried in half the bytes; exported
beside the default model on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType as PyFrame
from typing import Any

from rich.console import Console

from bench.bench_export import ChainDecoder, Decoder, WholeOnnxDecoder
from bench.mesh_concurrency import SESSION_COUNTS, Aggregate, MeshConnection, concurrency
from bench.mesh_contenders import (
    CHAIN,
    MESH,
    MESH_BACK_COPIES,
    MESH_HOP_BY_HOP,
    MESH_ONE_BY_ONE,
    PROMPT,
    WARMUP_TOKENS,
    WHOLE_OPTIMUM,
    WHOLE_SHARD,
    AsyncDecoder,
    InProcess,
    Interleaved,
    MeshDecoder,
    Samples,
    greedy,
    interleaved_decode,
    single_sessions,
)
from bench.mesh_processes import BenchError, LocalMesh
from bench.mesh_report import (
    agreement_table,
    concurrency_table,
    ms_summary,
    ok_values,
    paired_ratio,
    ratio_table,
    signaling_table,
    single_table,
    speed_ratios,
)
from bench.mesh_signaling import SignalingResults, signaling
from bench.mesh_ttft import Trace, TtftProbe, ttft_json, ttft_table
from python_peer import event_loop
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span
from python_peer.runner import session_options
from python_peer.tokenizer import ModelTokenizer

DEFAULT_SPANS = (Span(0, 10), Span(10, 20), Span(20, 30))


@dataclass(frozen=True)
class WholeModel:
    """Which whole-model contender this run has, and how to build it."""

    name: str
    what: str
    build: Callable[[], Decoder]


def whole_model(manifest: Manifest, work: Path, threads: int, log: Console) -> WholeModel:
    """optimum's graph from ``bench_export`` if made from the same source, else one 0-L blocks shard."""
    source = manifest.raw.get("model", {}).get("source")
    optimum = work / "optimum"
    try:
        marker = json.loads((optimum / ".ai4all-bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if marker is not None and marker.get("source") == source and (optimum / "model.onnx").is_file():
        path = optimum / "model.onnx"
        return WholeModel(
            WHOLE_OPTIMUM,
            f"optimum's whole-model graph {path}",
            lambda: WholeOnnxDecoder(WHOLE_OPTIMUM, path, threads),
        )
    from exporter.pipeline import ExportRequest, run_export
    from exporter.source import ModelSource

    if not isinstance(source, dict):
        raise BenchError("the model's manifest names no source to export a whole-model shard from")
    out = work / f"mesh-whole-{manifest.name}"
    span = Span(0, manifest.num_layers)
    log.log(f"no optimum export of this model in {optimum}: exporting one blocks shard {span} to {out}")
    model_source = ModelSource(str(source["kind"]), str(source["location"]), manifest.name)
    run_export(ExportRequest(model_source, out, spans=(span,)))
    return WholeModel(
        WHOLE_SHARD,
        f"LocalChain over one blocks shard {span} in {out} (no optimum export in {optimum})",
        lambda: ChainDecoder(WHOLE_SHARD, out, threads),
    )


def ensure_model(model_dir: Path, default: bool, log: Console, *, hidden_float16: bool = False) -> None:
    if (model_dir / "manifest.json").is_file():
        return
    if not default:
        raise BenchError(f"{model_dir} has no manifest.json: export a model there first (ai4all export)")
    from exporter.pipeline import ExportRequest, run_export
    from exporter.source import resolve

    how = ", hidden states rounded to float16 values" if hidden_float16 else ""
    log.log(f"exporting the default model to {model_dir} (spans 0-10, 10-20, 20-30{how})")
    run_export(ExportRequest(resolve(None), model_dir, spans=DEFAULT_SPANS, hidden_float16=hidden_float16))


@dataclass
class MeshResults:
    samples: dict[str, Samples]
    aggregate: dict[int, Aggregate]
    route: list[tuple[str, int, int]]
    hop_rtt_ms: dict[str, float]
    signaling: SignalingResults
    ttft_traces: dict[str, list[Trace]]  # the traced mesh contenders' timed repeats (``mesh_ttft.py``)
    interleaved: Interleaved  # the mesh's decode steps and the local chain's, taken in turn


async def measure(
    args: argparse.Namespace,
    mesh: LocalMesh,
    prompt: list[int],
    whole: WholeModel,
    threads: int,
    log: Console,
) -> MeshResults:
    max_length = len(prompt) + max(args.tokens, WARMUP_TOKENS) + 1

    def connect() -> MeshConnection:
        return MeshConnection((mesh.urls[1], mesh.urls[0]), mesh.model_dir, mesh.manifest, threads)

    connection = connect()
    client = await connection.open()
    # Each mesh contender runs on a client of its own: one client's starter grant pays for the sessions of
    # two contenders over three repeats, not more.
    one_by_one, hop_by_hop, back_copies, paired = connect(), connect(), connect(), connect()
    probe = TtftProbe().install()
    try:
        # The head over the last position alone, as the mesh client runs it.
        chain = InProcess(
            await asyncio.to_thread(ChainDecoder, CHAIN, mesh.model_dir, threads, last_only=True)
        )
        whole_decoder = InProcess(await asyncio.to_thread(whole.build))
        decoders: list[AsyncDecoder] = [
            MeshDecoder(MESH, client, max_length, probe=probe),
            MeshDecoder(MESH_ONE_BY_ONE, await one_by_one.open(), max_length, probe=probe, one_by_one=True),
            MeshDecoder(MESH_HOP_BY_HOP, await hop_by_hop.open(), max_length, push=False),
            MeshDecoder(MESH_BACK_COPIES, await back_copies.open(), max_length, keep=False, probe=probe),
            chain,
            whole_decoder,
        ]
        log.log(
            f"measuring: {args.repeats} repeats of {args.tokens} decode steps after {len(prompt)} prompt "
            f"tokens, {threads} threads per onnxruntime session"
        )
        samples = await single_sessions(decoders, prompt, args.tokens, args.repeats, log)
        probe.uninstall()
        for other in (one_by_one, hop_by_hop, back_copies):
            await other.close()
        in_turn = MeshDecoder(MESH, await paired.open(), max_length)
        await greedy(in_turn, prompt, WARMUP_TOKENS)  # its links
        interleaved = await interleaved_decode(in_turn, chain, prompt, args.tokens, args.repeats, log)
        await paired.close()
        session = await client.open(1, max_length)  # only to read the route the client picks
        route = session.route
        await session.close()
        rtts = {p[:12]: round(r * 1e3, 2) for p, r in client.rtts.items()}
        pids = [os.getpid(), *(child.proc.pid for child in mesh.children)]
        aggregate = await concurrency(
            connection, prompt, args.tokens, args.repeats, max_length, samples[MESH].tokens, log, pids
        )
    finally:
        probe.uninstall()
        for other in (one_by_one, hop_by_hop, back_copies, paired, connection):
            await other.close()
    traces = {name: runs[1:] for name, runs in probe.traces.items()}  # the first is the warm-up's
    sig = await signaling(mesh, args.repeats, log)
    return MeshResults(samples, aggregate, route, rtts, sig, traces, interleaved)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.bench_mesh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=cache_dir() / "models" / DEFAULT_MODEL_NAME,
        help="an exported model directory (default: %(default)s, exported if absent)",
    )
    parser.add_argument(
        "--hidden-float16",
        action="store_true",
        help=f"the default model exported with --hidden-float16 (in {DEFAULT_MODEL_NAME}-hidden-float16)",
    )
    parser.add_argument("--tokens", type=int, default=32, help="greedy decode steps per run (default: 32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats of every measurement (default: 3)"
    )
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be at least 1")
    args.default_model = args.model == parser.get_default("model")
    if args.hidden_float16:
        if not args.default_model:
            parser.error(
                "--hidden-float16 exports the default model: give --model a directory or it, not both"
            )
        args.model = args.model.with_name(f"{DEFAULT_MODEL_NAME}-hidden-float16")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    from exporter.source import cache_dir

    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 120)
    threads = session_options().intra_op_num_threads
    model_dir: Path = args.model.expanduser()
    ensure_model(model_dir, args.default_model, log, hidden_float16=args.hidden_float16)
    manifest = load_manifest(model_dir)
    tokenizer = ModelTokenizer(model_dir, manifest)
    prompt = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    whole = whole_model(manifest, cache_dir() / "bench", threads, log)

    with tempfile.TemporaryDirectory(prefix="ai4all-bench-mesh-") as tmp:
        log.log(f"starting 2 federated signaling nodes, a lone node and {len(manifest.blocks)} peers")
        with LocalMesh(Path(tmp), model_dir, manifest, log) as mesh:
            try:
                results = event_loop.run(measure(args, mesh, prompt, whole, threads, log))
            except AI4AllError as exc:
                raise BenchError(f"{exc}\n{mesh.failed()}".rstrip()) from exc
            peers = [(p.name, p.span, p.home, p.peer_id) for p in mesh.peers]
            urls = mesh.urls

    samples = results.samples
    ratios = speed_ratios(samples, whole.name)
    overhead_ms = 1e3 / statistics.median(samples[MESH].decode_tok_s) - 1e3 / statistics.median(
        samples[CHAIN].decode_tok_s
    )
    homes = {p[3]: p[2] for p in peers}
    route = ", ".join(
        f"{s}-{e} on {p[:8]} via node {'A' if homes.get(p) == urls[0] else 'B'}" for p, s, e in results.route
    )
    out.print(
        f"model {manifest.name} ({model_dir}); onnxruntime {onnxruntime.__version__}, {threads} threads per "
        f"session; client on node B; route: {route}; WebRTC ping per hop (ms): {results.hop_rtt_ms}; "
        f"whole model: {whole.what}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(single_table(samples, args.tokens, len(prompt)))
    out.print(ratio_table(ratios, overhead_ms))
    in_turn = results.interleaved
    out.print(
        f"decode in turn, token by token (mesh / local chain, tok/s): {statistics.median(in_turn.ratios()):.2f} "
        f"(per repeat {', '.join(f'{r:.2f}' for r in in_turn.ratios())}; median of every token's ratio "
        f"{statistics.median(in_turn.token_ratios()):.2f}; same tokens: {in_turn.same_tokens})",
        highlight=False,
        soft_wrap=True,
    )
    out.print(ttft_table(results.ttft_traces))
    table, agreement = agreement_table(samples, tokenizer)
    out.print(table)
    out.print(concurrency_table(results.aggregate, args.tokens))
    out.print(signaling_table(results.signaling))

    base = results.aggregate[SESSION_COUNTS[0]].tok_s
    sig = results.signaling
    return {
        "bench": "bench_mesh",
        "model": manifest.name,
        "threads": threads,
        "decode_tokens": args.tokens,
        "prompt_tokens": len(prompt),
        "repeats": args.repeats,
        "onnxruntime": onnxruntime.__version__,
        "whole_model": whole.what,
        "peers": [{"span": p[1], "node": "A" if p[2] == urls[0] else "B", "peer_id": p[3]} for p in peers],
        "route": [{"peer_id": p, "start": s, "end": e} for p, s, e in results.route],
        "hop_rtt_ms": results.hop_rtt_ms,
        "ttft_ms": {n: round(statistics.median(s.ttft_s) * 1e3, 1) for n, s in samples.items()},
        "decode_tok_s": {n: round(statistics.median(s.decode_tok_s), 2) for n, s in samples.items()},
        "ttft_breakdown_ms": ttft_json(results.ttft_traces),
        "ratios": {k: {m: round(v, 3) for m, v in r.items()} for k, r in ratios.items()},
        "mesh_overhead_ms_per_token": round(overhead_ms, 2),
        "decode_in_turn": {
            "ratio": round(statistics.median(results.interleaved.ratios()), 3),
            "per_repeat": [round(r, 3) for r in results.interleaved.ratios()],
            "token_ratio_median": round(statistics.median(results.interleaved.token_ratios()), 3),
            "ms_per_token": {
                name: round(statistics.median(sum(t) / len(t) for t in runs) * 1e3, 2)
                for name, runs in ((MESH, results.interleaved.first), (CHAIN, results.interleaved.other))
            },
            "same_tokens": results.interleaved.same_tokens,
        },
        "agreement": agreement,
        "concurrent": {
            str(n): {
                "aggregate_tok_s": round(statistics.median(ok_values(a.tok_s)), 2)
                if ok_values(a.tok_s)
                else None,
                "ratio_vs_1": _round(paired_ratio(a.tok_s, base)),
                "same_tokens": a.same_tokens,
                "failed_runs": len(a.failures),
                "failures": a.failures,
                "udp_drops": a.udp_drops,
                "udp_drops_mesh": a.mesh_udp_drops,
            }
            for n, a in results.aggregate.items()
        },
        "signal_rtt_ms": {
            "two_nodes": ms_summary(sig.relay_two_nodes),
            "one_node": ms_summary(sig.relay_one_node),
        },
        "announces_per_s": {
            name: round(statistics.median(r.accepted / r.seconds for r in runs), 1)
            for name, runs in sig.announce.items()
        },
        "announce_replies": {
            name: dict(sum((Counter(r.replies) for r in runs), Counter[str]()))
            for name, runs in sig.announce.items()
        },
        "gossip_reached_sibling": sig.gossip_reached,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _interrupt(signum: int, frame: PyFrame | None) -> None:
    raise KeyboardInterrupt  # SIGTERM too unwinds through the finally blocks that stop the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(args)
    except AI4AllError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process this run started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

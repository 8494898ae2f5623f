"""Where a decode token's time and CPU go on the real mesh: messages and bytes per token on every link,
the steps each peer's batches hold, and (with py-spy) a sampled profile of the client and every peer
(``--gil``: where each holds the GIL), and the CPU time each process spends per token (and how many
cores the four processes keep busy together: fewer than the machine has means they wait for each other).

    python -m bench.mesh_profile [--model DIR] [--tokens N] [--sessions 1,8] [--py-spy PATH] [--out DIR]

It starts the mesh as ``bench_mesh`` does (``LocalMesh``: two signaling nodes, one peer process per blocks
shard, the client in this process), then for each session count: opens and prefills that many sessions,
reads every peer's status (``ai4all status``: per-link traffic, batch sizes), starts ``py-spy record``
on the client and each peer if given, decodes ``--tokens`` tokens in every session at once, stops the
profilers and reads the status again. The report (stdout) gives per decoded token: frames and bytes on
each link, each direction; the peers' batch sizes; and per process the share of samples by category and
the functions with most samples. py-spy is not a dependency: install it into a venv of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.mesh_concurrency import MeshConnection
from bench.mesh_contenders import PROMPT
from bench.mesh_processes import LocalMesh
from python_peer import event_loop
from python_peer.core.economics import Rules, format_units, network_rules
from python_peer.core.holds import route_hold
from python_peer.core.manifest import load_manifest
from python_peer.mesh_client import MeshClient
from python_peer.rpc import RpcClient
from python_peer.runner import session_options
from python_peer.status import ask_status
from python_peer.tokenizer import ModelTokenizer

# Categories of a sampled stack, by the first of these substrings found in it (innermost frame first).
CATEGORIES = (
    ("onnxruntime", ("onnxruntime", "run_bound (python_peer/runner.py)", "run (python_peer/runner.py)")),
    ("ed25519", ("nacl", "native_verify", "sign_answer", "verify_answer")),
    ("frame codec", ("encode_frame", "decode_frame", "chunk_message", "Reassembler", "_canonical")),
    ("dtls", ("rtcdtlstransport", "OpenSSL", "cryptography")),
    ("sctp", ("rtcsctptransport",)),
    ("ice/udp", ("aioice", "selector_events", "datagram")),
    ("numpy/tensors", ("numpy", "tensors.py", "wire_digest", "to_wire", "from_wire")),
    ("asyncio", ("asyncio",)),
)


def category(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other python"


def read_raw(path: Path) -> Counter[str]:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` per line."""
    stacks: Counter[str] = Counter()
    if not path.is_file():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summarize(stacks: Counter[str], top: int) -> dict[str, Any]:
    total = sum(stacks.values())
    cats: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        cats[category(stack)] += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "categories_pct": {k: pct(v) for k, v in cats.most_common()},
        "self_pct": [(k, pct(v)) for k, v in own.most_common(top)],
        "inclusive_pct": [(k, pct(v)) for k, v in inclusive.most_common(top)],
    }


def traffic(status: dict[str, Any]) -> dict[str, list[int]]:
    return {
        t["remote"]: [t["frames_sent"], t["bytes_sent"], t["frames_received"], t["bytes_received"]]
        for t in status.get("traffic", [])
    }


def client_traffic(client: MeshClient) -> dict[str, list[int]]:
    out = {}
    for peer, hop in client._rpcs.items():
        if isinstance(hop, RpcClient):
            s = getattr(hop.link, "stats", None)
            if s is not None:
                out[peer] = [s.frames_sent, s.bytes_sent, s.frames_received, s.bytes_received]
    return out


def diff(after: dict[str, list[int]], before: dict[str, list[int]], tokens: int) -> dict[str, list[float]]:
    return {
        k: [round((v - before.get(k, [0, 0, 0, 0])[i]) / tokens, 2) for i, v in enumerate(vals)]
        for k, vals in after.items()
        if any(v - before.get(k, [0, 0, 0, 0])[i] for i, v in enumerate(vals))
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_spy(py_spy: str, pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    args = ["record", "--pid", str(pid), "--format", "raw", "-o", str(out), "--rate", str(rate)]
    return subprocess.Popen(
        [py_spy, *args, "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def session_length(prompt: int, steps: int) -> int:
    """The length ``one_run`` opens each session with: a ``prompt``-token prompt and ``steps`` steps after it."""
    return prompt + steps + 2


async def one_run(
    client: MeshClient,
    prompt: list[int],
    sessions: int,
    steps: int,
    mesh: LocalMesh,
    py_spy: str | None,
    out: Path,
    rate: int,
) -> dict[str, Any]:
    ids = np.array([prompt], dtype=np.int64)
    opened = [await client.open(1, session_length(len(prompt), steps)) for _ in range(sessions)]
    firsts = []
    for s in opened:
        logits = await s.step(ids, np.ones_like(ids))
        firsts.append(int(np.argmax(logits[0, -1])))
    dirs = {p.name: mesh.log_dir / p.name for p in mesh.peers}
    before = {n: await asyncio.to_thread(ask_status, d) for n, d in dirs.items()}
    client_before = client_traffic(client)
    heads_before = Counter(client.heads.stats.sizes)
    spies = []
    pids = {"client": os.getpid()} | {n: int(before[n]["pid"]) for n in dirs}
    if py_spy:
        spies = [(n, start_spy(py_spy, pid, out / f"{sessions}-{n}.raw", rate)) for n, pid in pids.items()]
        await asyncio.sleep(1.0)  # py-spy attaches
    cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}

    async def decode(session: Any, token: int) -> list[int]:
        tokens = [token]
        for _ in range(steps):
            step = np.array([[tokens[-1]]], dtype=np.int64)
            tokens.append(int(np.argmax((await session.step(step, np.ones_like(step)))[0, -1])))
        return tokens

    start = time.perf_counter()
    results = await asyncio.gather(*(decode(s, t) for s, t in zip(opened, firsts, strict=True)))
    elapsed = time.perf_counter() - start
    cpu = {n: cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
    for _, proc in spies:
        proc.send_signal(signal.SIGINT)
    for _, proc in spies:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    after = {n: await asyncio.to_thread(ask_status, d) for n, d in dirs.items()}
    total = sessions * steps
    report: dict[str, Any] = {
        "sessions": sessions,
        "tok_s": round(total / elapsed, 2),
        "ms_per_token_per_session": round(1e3 * elapsed / steps, 2),
        "cpu_ms_per_token": {n: round(1e3 * c / total, 2) for n, c in cpu.items()},
        "cores_busy": round(sum(cpu.values()) / elapsed, 2),  # all four processes' CPU a wall second
        "same_tokens": all(r == results[0] for r in results),
        "per_token_traffic": {
            "client": diff(client_traffic(client), client_before, total),
            **{n: diff(traffic(after[n]), traffic(before[n]), total) for n in dirs},
        },
        "batches": {
            n: {
                size: after[n]["batches"]["sizes"].get(size, 0) - before[n]["batches"]["sizes"].get(size, 0)
                for size in after[n]["batches"]["sizes"]
            }
            for n in dirs
        },
        "peer_ids": {n: after[n]["peer_id"][:8] for n in dirs},
        "client_heads": dict(sorted((Counter(client.heads.stats.sizes) - heads_before).items())),
    }
    if py_spy:
        report["profiles"] = {n: summarize(read_raw(out / f"{sessions}-{n}.raw"), 25) for n, _ in spies}
    for s in opened:
        await s.close()
    return report


def unaffordable(spans: Sequence[int], prompt: int, sessions: int, tokens: int, rules: Rules) -> str | None:
    """Why one identity cannot open ``sessions`` sessions of ``tokens`` steps after a ``prompt``-token
    prompt through spans of ``spans`` blocks, or None if it can: before each OPEN a client holds the
    undiscounted price of the session's whole length on every hop (``core/holds.py``), and a fresh
    identity has only its starter grant. The run would otherwise stop half-way with a payment error."""

    def held(steps: int) -> int:
        return sessions * route_hold(spans, session_length(prompt, steps), rules)

    if held(tokens) <= rules.starter_grant:
        return None
    fits = tokens
    while fits > 0 and held(fits) > rules.starter_grant:
        fits -= 1
    return (
        f"{sessions} sessions of {tokens} tokens hold {format_units(held(tokens))} credits, more than a fresh "
        f"identity's starter grant of {format_units(rules.starter_grant)}: at most {fits} tokens at {sessions} sessions"
    )


async def measure(args: argparse.Namespace, mesh: LocalMesh, prompt: list[int], log: Console) -> list[Any]:
    threads = session_options().intra_op_num_threads
    connection = MeshConnection((mesh.urls[1], mesh.urls[0]), mesh.model_dir, mesh.manifest, threads)
    await connection.open()
    reports = []
    try:
        for n in args.sessions:
            client = await connection.renew()  # a fresh identity: credits never decide a run
            await one_run(client, prompt, n, 4, mesh, None, args.out, args.rate)  # warm-up: links, batchers
            log.log(f"{n} sessions: warmed up, measuring")
            client = await connection.renew()  # the warm-up's holds stay open until their receipts
            report = await one_run(client, prompt, n, args.tokens, mesh, args.py_spy, args.out, args.rate)
            log.log(f"{n} sessions: {report['tok_s']} tok/s, {report['cores_busy']} cores busy")
            reports.append(report)
    finally:
        await connection.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    from exporter.source import DEFAULT_MODEL_NAME, cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.mesh_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=cache_dir() / "models" / DEFAULT_MODEL_NAME)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sessions", default="1,8", help="session counts, comma-separated (default 1,8)")
    parser.add_argument("--py-spy", dest="py_spy", default=None, help="path of a py-spy binary: profile too")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--out", type=Path, default=None, help="where py-spy's raw files go (default: temp)")
    args = parser.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",")]
    log = Console(stderr=True)
    model_dir = args.model.expanduser()
    manifest = load_manifest(model_dir)
    tokenizer = ModelTokenizer(model_dir, manifest)
    prompt = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    spans = [s.end - s.start for s in manifest.blocks]
    for n in args.sessions:
        if (why := unaffordable(spans, len(prompt), n, args.tokens, network_rules())) is not None:
            parser.error(why)
    with tempfile.TemporaryDirectory(prefix="ai4all-mesh-profile-") as tmp:
        args.out = args.out or Path(tmp)
        args.out.mkdir(parents=True, exist_ok=True)
        with LocalMesh(Path(tmp), model_dir, manifest, log) as mesh:
            reports = event_loop.run(measure(args, mesh, prompt, log))
    for report in reports:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The big-model demonstration's moving parts, shared by ``tests/test_big_model_mesh.py`` and
``bench/bench_big_mesh.py``: export a ``big_models`` Llama in a child process, start native peers sized by
``--memory-budget`` (no ``--span``), and run greedy decoding through the mesh and through the same shards
chained in one process, timing the decode steps.

``PLANS`` says how each shape is cut: blocks shards of ``shard_layers`` layers, and a budget that holds
``shards_per_peer`` of them (weights + KV room for ``PLAN_SESSIONS`` sessions, ``core/memory_budget.py``).
For the 1.5b model: shards of 3 layers, budgets of 9 layers (1.89 GB, under a third of its 5.81 GB), so
four peers take 0-9, 9-18, 18-27 and 27-30 by themselves.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from python_peer import event_loop
from python_peer.chain import LocalChain
from python_peer.core.manifest import Manifest
from python_peer.core.spans import Span
from tests.support.big_models import SHAPES, measure_export
from tests.support.procs import ROOT

# Token ids every tokenizer of the shapes holds (the tiny test tokenizer's), as the prompt.
PROMPT = [1, 5, 17, 42, 99, 3, 250, 7]


@dataclass(frozen=True)
class Plan:
    shard_layers: int  # layers per exported blocks shard
    shards_per_peer: int  # shards one peer's budget holds

    def spans(self, layers: int) -> str:
        cuts = [*range(0, layers, self.shard_layers), layers]
        return ",".join(f"{a}-{b}" for a, b in itertools.pairwise(cuts))


PLANS = {"1.5b": Plan(3, 3), "small": Plan(1, 2)}


def budget(manifest: Manifest, plan: Plan) -> int:
    """The budget that holds any run of ``plan.shards_per_peer`` shards: the largest such run's need (later
    layers' shards are a few bytes larger: their graphs' names are longer)."""
    blocks, k = manifest.blocks, min(plan.shards_per_peer, len(manifest.blocks))
    runs = [Span(blocks[i].start, blocks[i + k - 1].end) for i in range(len(blocks) - k + 1)]
    return max(manifest.memory.need(run).total for run in runs)


@dataclass
class Exported:
    out: Path
    seconds: float
    peak_rss: int  # the export process's own peak resident memory (wait4's ru_maxrss)


def export(model: Path, out: Path, spans: str, dtype: str, logs: Path) -> Exported:
    """``ai4all export MODEL --out OUT --spans SPANS --dtype DTYPE`` in a child under ``nice`` (an export
    already complete in OUT is verified and kept); the caller bounds the time (pytest-timeout)."""
    logs.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "python_peer.cli", "export", str(model), "--out", str(out)]
    args += ["--spans", spans, "--dtype", dtype, "--quiet"]
    started = time.monotonic()
    with (logs / f"export-{dtype}.out").open("w") as stdout, (logs / f"export-{dtype}.err").open("w") as err:
        proc = subprocess.Popen(
            ["nice", "-n", "10", *args],
            cwd=ROOT,
            stdout=stdout,
            stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (logs / f"export-{dtype}.err").read_text()[-3000:]
        raise RuntimeError(f"export of {model} as {dtype} failed:\n{tail}")
    return Exported(out, time.monotonic() - started, usage.ru_maxrss * 1024)


@dataclass
class MeasuredExport:
    """The fp32 export of a shape cut as its plan says, and the peak resident memory of each export step."""

    out: Path
    baseline_rss: int
    steps: list[dict[str, Any]]


def measured_fp32_export(model: Path, size: str, base: Path) -> MeasuredExport:
    """Export ``model`` (the shape ``size``) in fp32 into ``base/export-SIZE-fp32`` with the plan's spans,
    in the child of ``big_models.measure_export`` that records each step's peak, once: the peaks are kept
    beside the export (``export-SIZE-fp32.peaks.json``) and both are reused while they are there. The mesh
    test serves this export and the export test judges its peaks, so the 1.5b model is exported once."""
    out, record = base / f"export-{size}-fp32", base / f"export-{size}-fp32.peaks.json"
    if not (record.is_file() and (out / "manifest.json").is_file()):
        record.unlink(missing_ok=True)
        spans = PLANS[size].spans(SHAPES[size].layers)
        record.write_text(json.dumps(measure_export(model, out, spans, timeout=3600)))
    measured = json.loads(record.read_text())
    return MeasuredExport(out, int(measured["baseline_rss"]), list(measured["steps"]))


@dataclass
class Decoded:
    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)  # the logits each token was chosen from
    decode_seconds: float = 0.0  # the steps after the prompt's

    @property
    def decode_tok_s(self) -> float:
        steps = len(self.tokens) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def chain_greedy(model: Path, count: int, *, keep_logits: bool = False) -> Decoded:
    """Greedy ``count`` tokens after ``PROMPT`` through every shard loaded in this process."""
    chain = LocalChain(model)
    session = chain.open(1)
    ids = np.array([PROMPT], dtype=np.int64)
    logits = chain.step(session, ids, np.ones_like(ids))[0, -1]
    result = Decoded([])
    started = time.perf_counter()
    for step in range(count):
        if keep_logits:
            result.logits.append(logits.copy())
        token = int(np.argmax(logits))
        result.tokens.append(token)
        if step == 0:
            started = time.perf_counter()
        if step < count - 1:
            one = np.array([[token]], dtype=np.int64)
            logits = chain.step(session, one, np.ones_like(one))[0, -1]
    result.decode_seconds = time.perf_counter() - started
    chain.close(session)
    return result


async def _mesh_greedy(signal_url: str, model: Path, data_dir: Path, count: int) -> Decoded:
    from python_peer.node import NodeConfig, open_client

    node, client = await open_client(NodeConfig(signal_urls=(signal_url,), data_dir=data_dir), model)
    try:
        session = await client.open(1, len(PROMPT) + count)
        try:
            ids = np.array([PROMPT], dtype=np.int64)
            logits = (await session.step(ids, np.ones_like(ids)))[0, -1]
            result = Decoded([])
            started = time.perf_counter()
            for step in range(count):
                token = int(np.argmax(logits))
                result.tokens.append(token)
                if step == 0:
                    started = time.perf_counter()
                if step < count - 1:
                    one = np.array([[token]], dtype=np.int64)
                    logits = (await session.step(one, np.ones_like(one)))[0, -1]
            result.decode_seconds = time.perf_counter() - started
            return result
        finally:
            await session.close()
    finally:
        await client.aclose()
        await node.aclose()


def mesh_greedy(signal_url: str, model: Path, data_dir: Path, count: int) -> Decoded:
    """Greedy ``count`` tokens after ``PROMPT`` through the mesh (embed and head here, blocks on peers)."""
    return event_loop.run(_mesh_greedy(signal_url, model, data_dir, count))

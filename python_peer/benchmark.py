"""This machine's measured speed for a span of a model, and the figure a peer announces.

``ai4all benchmark`` (``benchmark_cli.py``) runs decode steps over the real shards of a span, built as a
peer builds them (a ``SpanServer``, its ``BlocksRunner``s and their onnxruntime thread count), and saves the
block-tokens per second in ``<data dir>/benchmarks.json``. A peer that starts on (or moves to) a span
announces the saved figure when one was measured for exactly this model, span, dtype, export (the sha256 of
the span's files) and thread count, on this machine and onnxruntime version, within ``MAX_AGE_S``;
otherwise it says why in its log and measures a few steps itself, as before. Routing ranks peers by this
figure (``routing.py``), so it is worth an honest minute of measuring.

The file is the operator's: a peer only reads it. One that cannot be read is ignored by the peer (a log
line), and kept aside as ``benchmarks.json.corrupt`` by the next ``ai4all benchmark``, which writes a
fresh one (format in ``docs/operating.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.canonical import MAX_COUNTER
from python_peer.core.errors import SpanError
from python_peer.core.manifest import Manifest
from python_peer.core.spans import Span

from .errors import PeerError

if TYPE_CHECKING:
    from .server import SpanServer

log = logging.getLogger(__name__)

BENCHMARK_FILE = "benchmarks.json"
FORMAT = "ai4all/benchmarks/v1"
MAX_RECORDS = 64  # one per (model, span, dtype, threads); the oldest go first
MAX_FILE_BYTES = 1 << 20
MAX_AGE_S = 30 * 24 * 3600.0  # a figure older than this is stale: software and load change
MAX_FIGURE = MAX_COUNTER / 1000  # the most block-tokens/s an announcement can state


@dataclass(frozen=True)
class Machine:
    """What a figure depends on besides the model: the CPU and the onnxruntime that ran it."""

    arch: str
    cpus: int
    cpu_model: str
    onnxruntime: str

    @classmethod
    def here(cls) -> Machine:
        import onnxruntime

        return cls(platform.machine(), os.cpu_count() or 1, _cpu_model(), onnxruntime.__version__)

    def differs_from(self, other: Machine) -> str | None:
        """What differs between two machines, in words, or None."""
        for name in ("arch", "cpus", "cpu_model", "onnxruntime"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} was {theirs!r}, is {mine!r} here"
        return None


def _cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (``model name``, or a Raspberry Pi's ``Model``), else the platform's."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model") and value.strip():
                return value.strip()[:200]
    return (platform.processor() or platform.machine())[:200]


def span_digest(manifest: Manifest, span: Span) -> str:
    """Which export a figure belongs to: the sha256 over the names and sha256s of the span's files."""
    digest = hashlib.sha256()
    for shard in manifest.blocks:
        if span.start <= shard.start and shard.end <= span.end:
            for listed in shard.files:
                digest.update(f"{listed.file}:{listed.sha256}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class BenchmarkRecord:
    """One measured figure and everything it is tied to."""

    model: str
    span: Span
    dtype: str
    threads: int
    files: str  # span_digest of the export measured
    block_tokens_per_s: float
    context: int  # tokens of KV cache before the timed steps
    warmup: int
    steps: int
    step_ms_median: float
    measured_at: float  # seconds since the Unix epoch
    machine: Machine

    @property
    def key(self) -> tuple[str, Span, str, int]:
        return (self.model, self.span, self.dtype, self.threads)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "span": str(self.span), "machine": asdict(self.machine)}

    @classmethod
    def from_dict(cls, data: Any) -> BenchmarkRecord:
        """A record, or ``PeerError`` naming the first field that is missing or of the wrong kind."""
        if not isinstance(data, dict):
            raise PeerError("a benchmark record must be a JSON object")
        machine = data.get("machine")
        if not isinstance(machine, dict) or set(machine) != {"arch", "cpus", "cpu_model", "onnxruntime"}:
            raise PeerError("a benchmark record's 'machine' must hold arch, cpus, cpu_model and onnxruntime")
        try:
            span = Span.parse(_field(data, "span", str))
        except SpanError as exc:
            raise PeerError(f"a benchmark record's span: {exc}") from None
        record = cls(
            model=_field(data, "model", str),
            span=span,
            dtype=_field(data, "dtype", str),
            threads=_field(data, "threads", int),
            files=_field(data, "files", str),
            block_tokens_per_s=float(_field(data, "block_tokens_per_s", float)),
            context=_field(data, "context", int),
            warmup=_field(data, "warmup", int),
            steps=_field(data, "steps", int),
            step_ms_median=float(_field(data, "step_ms_median", float)),
            measured_at=float(_field(data, "measured_at", float)),
            machine=Machine(
                arch=_field(machine, "arch", str),
                cpus=_field(machine, "cpus", int),
                cpu_model=_field(machine, "cpu_model", str),
                onnxruntime=_field(machine, "onnxruntime", str),
            ),
        )
        extra = set(data) - set(record.to_dict())
        if extra:
            raise PeerError(f"a benchmark record has unknown fields: {', '.join(sorted(extra))}")
        if not 0 < record.block_tokens_per_s <= MAX_FIGURE:
            raise PeerError(
                f"a benchmark record states {record.block_tokens_per_s!r} block-tokens/s, outside (0, {MAX_FIGURE:g}]"
            )
        if record.threads < 1 or record.steps < 1:
            raise PeerError("a benchmark record needs threads and steps of at least 1")
        return record


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    ok = (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if kind is float
        else isinstance(value, kind) and not isinstance(value, bool)
    )
    if not ok:
        raise PeerError(f"a benchmark record's {name!r} must be a {kind.__name__}, not {value!r:.60}")
    return value


def read_records(data_dir: Path) -> list[BenchmarkRecord]:
    """The saved records (none without a file); ``PeerError`` for a file that is not a benchmark file."""
    path = data_dir / BENCHMARK_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PeerError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PeerError(f"{path} is over {MAX_FILE_BYTES} bytes: not a benchmark file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PeerError(f"{path} is not JSON ({exc})") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("records"), list)
    ):
        raise PeerError(f"{path} is not a benchmark file (format {FORMAT!r} with a list of records)")
    if len(data["records"]) > MAX_RECORDS:
        raise PeerError(f"{path} holds {len(data['records'])} records, more than {MAX_RECORDS}")
    try:
        return [BenchmarkRecord.from_dict(item) for item in data["records"]]
    except PeerError as exc:
        raise PeerError(f"{path}: {exc}") from None


def save_record(data_dir: Path, record: BenchmarkRecord) -> Path | None:
    """Add ``record`` to the file (replacing the one with its key), atomically. A file that cannot be
    read is kept as ``benchmarks.json.corrupt`` first; its path is returned then, else None."""
    path = data_dir / BENCHMARK_FILE
    kept: Path | None = None
    try:
        records = read_records(data_dir)
    except PeerError as exc:
        kept = path.with_name(BENCHMARK_FILE + ".corrupt")
        log.info("%s; keeping it as %s and starting a new file", exc, kept.name)
        os.replace(path, kept)
        records = []
    records = [r for r in records if r.key != record.key] + [record]
    records.sort(key=lambda r: r.measured_at)
    body = {"format": FORMAT, "records": [r.to_dict() for r in records[-MAX_RECORDS:]]}
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".benchmarks-", suffix=".tmp", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return kept


def find_record(
    records: list[BenchmarkRecord],
    manifest: Manifest,
    span: Span,
    threads: int,
    machine: Machine,
    now: float,
) -> tuple[BenchmarkRecord | None, str]:
    """The record a peer on ``span`` may announce, or None and why not (a sentence for the log)."""
    what = f"{manifest.name} blocks {span}"
    same_span = [r for r in records if r.model == manifest.name and r.span == span]
    if not same_span:
        return None, f"no saved benchmark for {what}"
    files = span_digest(manifest, span)
    for record in same_span:
        if record.dtype == manifest.dtype and record.threads == threads and record.files == files:
            age = now - record.measured_at
            if age < -300:
                return None, f"the saved benchmark of {what} is stale: it is dated in the future"
            if age > MAX_AGE_S:
                return None, (
                    f"the saved benchmark of {what} is stale: measured {age / 86400:.0f} days ago "
                    f"(at most {MAX_AGE_S / 86400:.0f})"
                )
            differs = machine.differs_from(record.machine)
            if differs is not None:
                return None, f"the saved benchmark of {what} is stale: {differs}"
            return (
                record,
                f"using the saved benchmark of {what}: {record.block_tokens_per_s:.1f} block-tokens/s",
            )
    record = same_span[-1]
    if record.dtype != manifest.dtype:
        why = f"it was measured on {record.dtype}, this export is {manifest.dtype}"
    elif record.threads != threads:
        why = f"it was measured with {record.threads} threads, this peer runs {threads}"
    else:
        why = "it was measured on other files (the model was exported again since)"
    return None, f"the saved benchmark of {what} does not match: {why}"


def runner_threads(server: SpanServer) -> int:
    """The intra-op threads onnxruntime runs this server's shards with (as the peer configured them)."""
    return int(server.runners[0].runner.session.get_session_options().intra_op_num_threads)


def announced_throughput(data_dir: Path | None, manifest: Manifest, server: SpanServer) -> tuple[float, str]:
    """Block-tokens/s to announce for ``server``'s span and where it comes from: a saved benchmark that
    matches, else a quick measure now (the reason is logged)."""
    if data_dir is not None:
        try:
            records = read_records(data_dir)
        except PeerError as exc:
            log.warning("ignoring the saved benchmarks: %s (rerun ai4all benchmark)", exc)
            records = []
        record, why = find_record(
            records, manifest, server.span, runner_threads(server), Machine.here(), time.time()
        )
        if record is not None:
            log.info("%s", why)
            return record.block_tokens_per_s, "benchmark"
        # A record of this very span that does not fit is worth a warning; none at all is the usual case.
        mismatch = any(r.model == manifest.name and r.span == server.span for r in records)
        log.log(
            logging.WARNING if mismatch else logging.INFO,
            "%s; measuring a few steps now (ai4all benchmark measures it better)",
            why,
        )
    return server.measure_throughput(), "measured at start"


@dataclass(frozen=True)
class Measurement:
    """What ``measure`` timed."""

    threads: int
    step_s: tuple[float, ...]  # each timed decode step, all runners of the span

    def block_tokens_per_s(self, blocks: int) -> float:
        return blocks * len(self.step_s) / max(sum(self.step_s), 1e-9)


def measure(server: SpanServer, *, context: int, warmup: int, steps: int, seed: int = 0) -> Measurement:
    """Decode steps of one sequence through the server's runners, as a session runs them: a prefill of
    ``context`` tokens, ``warmup`` untimed steps, then ``steps`` timed ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    key = "__benchmark__"
    hidden_size = server.hidden_size
    for runner in server.runners:
        runner.open(key, 1)
    try:
        hidden = rng.standard_normal((1, context, hidden_size), dtype=np.float32)
        positions = np.arange(context, dtype=np.int64)[None]
        mask = np.ones((1, context), dtype=np.int64)
        for runner in server.runners:
            hidden = runner.forward(key, hidden, mask, positions)
        one = np.ones((1, 1), dtype=np.int64)
        times: list[float] = []
        for i in range(warmup + steps):
            h = rng.standard_normal((1, 1, hidden_size), dtype=np.float32)
            position = np.array([[context + i]], dtype=np.int64)
            start = time.perf_counter()
            for runner in server.runners:
                h = runner.forward(key, h, one, position)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        for runner in server.runners:
            runner.close(key)
    return Measurement(runner_threads(server), tuple(times))


def record_of(
    manifest: Manifest, span: Span, measurement: Measurement, *, context: int, warmup: int
) -> BenchmarkRecord:
    """The record to save for a measurement of ``span``."""
    figure = measurement.block_tokens_per_s(len(span))
    return BenchmarkRecord(
        model=manifest.name,
        span=span,
        dtype=manifest.dtype,
        threads=measurement.threads,
        files=span_digest(manifest, span),
        block_tokens_per_s=round(min(figure, MAX_FIGURE), 3),
        context=context,
        warmup=warmup,
        steps=len(measurement.step_s),
        step_ms_median=round(statistics.median(measurement.step_s) * 1000, 3),
        measured_at=round(time.time(), 3),
        machine=Machine.here(),
    )


@dataclass(frozen=True)
class BenchmarkOptions:
    """One benchmark run: the span of an export, how it is timed, and where the figure is saved."""

    model_dir: Path
    span: Span  # a run of the model's block shards
    threads: int | None = None  # None: the peer's default
    context: int = 128
    warmup: int = 4
    steps: int = 32
    data_dir: Path | None = None  # None: measure and save nothing


def run_benchmark(options: BenchmarkOptions) -> tuple[BenchmarkRecord, Path | None]:
    """Measure ``options.span`` as a peer loads it and save the record; return it, and where an
    unreadable file was kept aside (``save_record``), if one was."""
    from python_peer.core.manifest import load_manifest

    from .server import ServerConfig, SpanServer

    manifest = load_manifest(options.model_dir)
    server = SpanServer(options.model_dir, manifest, options.span, ServerConfig(threads=options.threads))
    measurement = measure(server, context=options.context, warmup=options.warmup, steps=options.steps)
    record = record_of(manifest, options.span, measurement, context=options.context, warmup=options.warmup)
    kept = save_record(options.data_dir, record) if options.data_dir is not None else None
    return record, kept


__all__ = [
    "BENCHMARK_FILE",
    "FORMAT",
    "MAX_AGE_S",
    "BenchmarkOptions",
    "BenchmarkRecord",
    "Machine",
    "Measurement",
    "announced_throughput",
    "find_record",
    "measure",
    "read_records",
    "record_of",
    "run_benchmark",
    "runner_threads",
    "save_record",
    "span_digest",
]

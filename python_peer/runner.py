"""One shard in one onnxruntime session, and the per-session KV caches of a blocks shard.

A ``ShardRunner`` checks every file of the shard (its ``.onnx`` and its external-data file, if any)
against the sizes and sha256 of the manifest before onnxruntime sees a byte of them, and that the
``.onnx`` reads external data from no file the manifest does not list; an altered, truncated or
unlisted file is refused with a message that names it.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from python_peer.core import manifest as names
from python_peer.core.admission import check_shard_model
from python_peer.core.errors import ManifestError
from python_peer.core.manifest import Manifest, ShardEntry, ShardFile
from python_peer.core.onnx_external import check_external_data

from .errors import SessionError, ShardError, ShardInputError

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(model_dir: Path, shard: str, listed: ShardFile) -> Path:
    """Return the path of one listed file of ``shard`` after checking its size and its sha256."""
    path = model_dir / listed.file
    what = f"shard {shard}" if listed.file == shard else f"shard {shard}: weights file {listed.file}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{what} is missing from {model_dir}") from None
    if size != listed.bytes:
        raise ShardError(f"{what} is {size} bytes, the manifest says {listed.bytes}: the file was altered")
    actual = sha256_file(path)
    if actual != listed.sha256:
        raise ShardError(
            f"{what} has sha256 {actual[:16]}..., the manifest says {listed.sha256[:16]}...: "
            "the file was altered or corrupted"
        )
    return path


def verify_shard_file(model_dir: Path, entry: ShardEntry) -> Path:
    """Check every file of the shard (size, sha256) and the ``.onnx``'s external-data references;
    return the ``.onnx``'s path."""
    paths = [verify_file(model_dir, entry.file, listed) for listed in entry.files]
    refused: str | None = None
    try:
        # Mapped, not read: an .onnx without external data may be up to 2 GB.
        with paths[0].open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            try:
                check_shard_model(memoryview(view), entry)  # admission: ONNX, allowed operators, I/O
                check_external_data(
                    memoryview(view), entry.file, {listed.file: listed.bytes for listed in entry.files}
                )
            except ManifestError as exc:
                refused = str(exc)  # kept as text: the traceback would pin the mapping open
    except (OSError, ValueError) as exc:
        raise ShardError(f"shard {entry.file}: cannot read it: {exc}") from exc
    if refused is not None:
        raise ShardError(refused)
    return paths[0]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for one of several sessions in a process: without disabled spinning, idle pools steal cores."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class ShardRunner:
    """Runs one verified shard; checks input names, dtypes and ranks before onnxruntime does.

    ``run`` takes and returns numpy arrays. ``run_bound`` takes numpy arrays or ``OrtValue``s and returns
    ``OrtValue``s, which stay in onnxruntime's memory: a KV cache fed back as the next step's past
    inputs is never converted to numpy. Measured (``bench_runner``, past 1024): a few percent at best,
    as the graph's own ``Concat`` of past and new keys, a copy of the cache per layer per step, remains.
    """

    def __init__(
        self,
        model_dir: str | Path,
        entry: ShardEntry,
        *,
        threads: int | None = None,
        options: ort.SessionOptions | None = None,
    ) -> None:
        """``options`` replaces ``session_options(threads)`` (the benchmarks compare settings with it)."""
        self.entry = entry
        path = verify_shard_file(Path(model_dir), entry)
        try:
            self.session = ort.InferenceSession(
                str(path), options or session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ShardError(f"onnxruntime cannot load shard {entry.file}: {exc}") from exc
        self._inputs = {spec.name: spec for spec in entry.inputs}
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _check(self, feeds: Mapping[str, np.ndarray | ort.OrtValue], trusted: frozenset[str]) -> None:
        """Names, dtypes, ranks and fixed dimensions of every input; NaN/Inf in untrusted float arrays.

        An ``OrtValue`` is never scanned for NaN/Inf: only this process makes them (a shard's own
        outputs, fed back), whereas everything from the network arrives as a numpy array.
        """
        missing = set(self._inputs) - set(feeds)
        extra = set(feeds) - set(self._inputs)
        if missing or extra:
            raise ShardInputError(
                f"shard {self.entry.file}: missing inputs {sorted(missing)}, unexpected inputs {sorted(extra)}"
            )
        for name, value in feeds.items():
            spec = self._inputs[name]
            if isinstance(value, ort.OrtValue):
                dtype_ok, dtype, shape = (
                    value.data_type() == _ORT_TYPES.get(spec.dtype),
                    value.data_type(),
                    tuple(value.shape()),
                )
            else:
                dtype_ok, dtype, shape = value.dtype == _NP_DTYPES.get(spec.dtype), value.dtype, value.shape
            if not dtype_ok:
                raise ShardInputError(
                    f"shard {self.entry.file}: input {name} is {dtype}, expected {spec.dtype}"
                )
            if len(shape) != len(spec.shape):
                raise ShardInputError(
                    f"shard {self.entry.file}: input {name} has rank {len(shape)}, expected shape {list(spec.shape)}"
                )
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int) and shape[axis] != dim:
                    raise ShardInputError(
                        f"shard {self.entry.file}: input {name} has shape {list(shape)}, expected {list(spec.shape)}"
                    )
            if (
                isinstance(value, np.ndarray)
                and value.dtype.kind == "f"
                and name not in trusted
                and not np.isfinite(value).all()
            ):
                raise ShardInputError(f"shard {self.entry.file}: input {name} holds NaN or Inf")

    def run(
        self, feeds: dict[str, np.ndarray], *, trusted: frozenset[str] = frozenset()
    ) -> dict[str, np.ndarray]:
        """Run the shard; inputs named in ``trusted`` (our own KV cache) skip the NaN/Inf scan."""
        self._check(feeds, trusted)
        try:
            outputs = self.session.run(self._output_names, feeds)
        except Exception as exc:
            raise ShardInputError(f"shard {self.entry.file} refused its inputs: {exc}") from exc
        return dict(zip(self._output_names, outputs, strict=True))

    def run_bound(
        self, feeds: Mapping[str, np.ndarray | ort.OrtValue], *, trusted: frozenset[str] = frozenset()
    ) -> dict[str, ort.OrtValue]:
        """Run the shard over numpy arrays and ``OrtValue``s; every output stays an ``OrtValue``.

        Feed a step's ``present.*`` outputs back as the next step's ``past_key_values.*`` inputs as
        they are; read a small output with ``.numpy()`` (one copy of that output only). numpy inputs
        are wrapped without a copy when C-contiguous, and checked as in ``run``.
        """
        self._check(feeds, trusted)
        values = {
            name: value
            if isinstance(value, ort.OrtValue)
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            for name, value in feeds.items()
        }
        try:
            outputs = self.session.run_with_ort_values(self._output_names, values)
        except Exception as exc:
            raise ShardInputError(f"shard {self.entry.file} refused its inputs: {exc}") from exc
        return dict(zip(self._output_names, outputs, strict=True))


@dataclass
class KVSession:
    """The KV cache and attention mask of one inference session on one blocks shard."""

    batch: int
    mask: np.ndarray  # [batch, length] int64: every token seen so far, 1 = real, 0 = padding
    cache: dict[str, np.ndarray] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.cache.values())


@dataclass(frozen=True)
class BatchStep:
    """One session's single-token decode step, as ``BlocksRunner.forward_batch`` takes it: hidden states
    ``[1, 1, hidden]``, the new token's mask and position ``[1, 1]``."""

    session_id: str
    hidden: np.ndarray
    mask: np.ndarray
    position_ids: np.ndarray


@dataclass
class BatchResult:
    """A batched step's outputs, not yet part of any session: ``commit`` makes them so. A caller that runs
    several shards commits only when every shard ran, so a failed batch leaves every cache as it was."""

    hidden: np.ndarray  # [batch, 1, hidden], rows in the order of the steps
    updates: list[tuple[KVSession, np.ndarray, dict[str, np.ndarray]]]

    def commit(self) -> None:
        now = time.monotonic()
        for state, mask, cache in self.updates:
            state.mask = mask
            state.cache = cache
            state.last_used = now


class BlocksRunner:
    """A blocks shard with per-session KV caches: each ``forward`` extends its session by the new tokens,
    ``forward_batch`` extends several batch-1 sessions by one token each in one onnxruntime call."""

    def __init__(
        self, model_dir: str | Path, entry: ShardEntry, manifest: Manifest, *, threads: int | None = None
    ) -> None:
        if entry.kind != "blocks":
            raise ShardError(f"shard {entry.file} is an {entry.kind} shard, not a blocks shard")
        self.runner = ShardRunner(model_dir, entry, threads=threads)
        self.span = entry.span
        self.hidden_size = int(manifest.config["hidden_size"])
        self.kv_heads = int(manifest.config["num_key_value_heads"])
        self.head_dim = int(manifest.config["head_dim"])
        self.sessions: dict[str, KVSession] = {}
        self._lock = threading.Lock()
        self._cache_names = frozenset(
            n for layer in self.span.layers() for n in (names.past_key(layer), names.past_value(layer))
        )

    def open(self, session_id: str, batch: int) -> None:
        with self._lock:
            if session_id in self.sessions:
                raise SessionError(f"session {session_id} is already open on span {self.span}")
            self.sessions[session_id] = KVSession(batch, np.zeros((batch, 0), dtype=np.int64))

    def close(self, session_id: str) -> None:
        with self._lock:
            self.sessions.pop(session_id, None)

    def session(self, session_id: str) -> KVSession:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise SessionError(f"session {session_id} is not open on span {self.span}") from None

    def _check(
        self, session_id: str, hidden: np.ndarray, mask: np.ndarray, position_ids: np.ndarray
    ) -> KVSession:
        """The session, if the new tokens' tensors fit it; else ``SessionError`` or ``ShardInputError``."""
        state = self.session(session_id)
        if hidden.ndim != 3 or hidden.shape[0] != state.batch or hidden.shape[2] != self.hidden_size:
            raise ShardInputError(
                f"hidden states of shape {list(hidden.shape)} do not fit session {session_id} "
                f"(batch {state.batch}, hidden {self.hidden_size})"
            )
        seq = hidden.shape[1]
        if mask.shape != (state.batch, seq) or position_ids.shape != (state.batch, seq):
            raise ShardInputError(
                f"attention mask {list(mask.shape)} and position ids {list(position_ids.shape)} "
                f"must both be [{state.batch}, {seq}]"
            )
        if not ((mask == 0) | (mask == 1)).all():  # as web/src/runtime/blocks.js
            raise ShardInputError("attention mask values must be 0 or 1")
        return state

    def check_decode_step(
        self, session_id: str, hidden: np.ndarray, mask: np.ndarray, position_ids: np.ndarray
    ) -> KVSession:
        """The session, if this step may join a batch: one finite new token of an open batch-1 session."""
        state = self._check(session_id, hidden, mask, position_ids)
        if state.batch != 1 or hidden.shape[1] != 1:
            raise ShardInputError(
                f"session {session_id}: a batched step is one token of a batch-1 session, "
                f"not {hidden.shape[1]} tokens of batch {state.batch}"
            )
        if hidden.dtype != np.float32 or not np.isfinite(hidden).all():
            raise ShardInputError(f"shard {self.runner.entry.file}: input {names.HIDDEN_IN} holds NaN or Inf")
        return state

    def forward(
        self, session_id: str, hidden: np.ndarray, mask: np.ndarray, position_ids: np.ndarray
    ) -> np.ndarray:
        """Run the new tokens of a session; ``mask`` and ``position_ids`` cover only the new tokens."""
        state = self._check(session_id, hidden, mask, position_ids)
        full_mask = np.concatenate([state.mask, mask.astype(np.int64)], axis=1)
        feeds: dict[str, np.ndarray] = {
            names.HIDDEN_IN: np.ascontiguousarray(hidden, dtype=np.float32),
            names.ATTENTION_MASK: full_mask,
            names.POSITION_IDS: np.ascontiguousarray(position_ids, dtype=np.int64),
        }
        empty = np.zeros((state.batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        for layer in self.span.layers():
            feeds[names.past_key(layer)] = state.cache.get(names.past_key(layer), empty)
            feeds[names.past_value(layer)] = state.cache.get(names.past_value(layer), empty)
        outputs = self.runner.run(feeds, trusted=self._cache_names)
        state.mask = full_mask
        for layer in self.span.layers():
            state.cache[names.past_key(layer)] = outputs[names.present_key(layer)]
            state.cache[names.past_value(layer)] = outputs[names.present_value(layer)]
        state.last_used = time.monotonic()
        return outputs[names.HIDDEN_OUT]

    def forward_batch(self, steps: Sequence[BatchStep]) -> BatchResult:
        """One token of each of several batch-1 sessions in one call, committed by ``BatchResult.commit``.

        Caches of different lengths are padded on the left to the longest, with mask 0 over the padding
        (the shard's attention gives padded positions no weight; each session keeps its own positions),
        and the present caches are split back per session without the padding, as contiguous copies.
        """
        states = [self.check_decode_step(s.session_id, s.hidden, s.mask, s.position_ids) for s in steps]
        if len({s.session_id for s in steps}) != len(steps):
            raise SessionError("a batch holds one step per session")
        batch = len(steps)
        longest = max(state.length for state in states)
        mask = np.zeros((batch, longest + 1), dtype=np.int64)
        for row, (state, step) in enumerate(zip(states, steps, strict=True)):
            mask[row, longest - state.length : longest] = state.mask[0]
            mask[row, longest] = step.mask[0, 0]
        feeds: dict[str, np.ndarray] = {
            names.HIDDEN_IN: np.concatenate([s.hidden for s in steps], axis=0).astype(np.float32, copy=False),
            names.ATTENTION_MASK: mask,
            names.POSITION_IDS: np.concatenate([s.position_ids for s in steps], axis=0).astype(np.int64),
        }
        for name in sorted(self._cache_names):
            past = np.zeros((batch, self.kv_heads, longest, self.head_dim), dtype=np.float32)
            for row, state in enumerate(states):
                if state.length:
                    past[row, :, longest - state.length :] = state.cache[name][0]
            feeds[name] = past
        outputs = self.runner.run(feeds, trusted=self._cache_names)
        presents = {
            past: outputs[present]
            for layer in self.span.layers()
            for past, present in (
                (names.past_key(layer), names.present_key(layer)),
                (names.past_value(layer), names.present_value(layer)),
            )
        }
        updates = []
        for row, state in enumerate(states):
            start = longest - state.length
            cache = {name: np.ascontiguousarray(p[row : row + 1, :, start:]) for name, p in presents.items()}
            updates.append((state, mask[row : row + 1, start:].copy(), cache))
        return BatchResult(outputs[names.HIDDEN_OUT], updates)

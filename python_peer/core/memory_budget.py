"""Memory figures of a model's blocks, and the span a peer's memory budget can hold.

The manifest's top-level ``memory`` object states, for each block (layer) ``i`` of the model,
``block_weight_bytes[i]`` (the bytes of its weights as they load) and ``kv_bytes_per_token[i]`` (the KV
cache one token of one sequence takes in that block: key and value, ``kv_heads x head_dim`` float32 each).
A peer's budget must hold the weights of its span plus KV room for ``PLAN_SESSIONS`` sessions of
``plan_context`` tokens; a span that does not fit is refused with a line saying what it needs.

Without ``--span`` a peer takes the least-served run of the manifest's block shards (a peer loads whole
shard files, so a span is a run of consecutive shards) that fits its budget: the run whose least-served
shard has the fewest servers, then the one covering most shards at that count, then the one with fewest
shards (no better-served shard taken on besides), then the earliest. Routes chain spans end to start
(``routing.py``), so a peer that takes exactly the unserved shards lines up with those that serve the rest. The browser's twin is ``web/src/node/span_choice.js``; both
follow ``tests/vectors/span_choice.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ManifestError, SpanError
from .spans import Span

MEMORY_FIELD = "memory"  # the manifest's top-level object of memory figures
KV_DTYPE_BYTES = 4  # KV caches are float32 in every dtype variant (see manifest.blocks_io)
# Sessions a span must have KV room for. MAX_SESSIONS (64) is what a server may hold at once; 8 is a
# useful floor: a few concurrent chats plus spot-check replays and fail-over replays from other clients.
PLAN_SESSIONS = 8
PLAN_CONTEXT = 2048  # tokens per planned session, or the model's own context when it is shorter
RAM_FRACTION = 0.5  # a native peer without --memory-budget takes this share of MemAvailable
# A WASM instance addresses at most 4 GiB; onnxruntime-web's code, heap fragmentation and the input and
# output tensors of a step need room besides the weights and KV caches.
WASM_MEMORY_BYTES = 4 * 2**30
WASM_RUNTIME_BYTES = 768 * 2**20
MIB = 2**20
GIB = 2**30

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"1.5G"``, ``"512MiB"``, ``"800MB"`` or a number of bytes -> bytes (positive)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise SpanError(f"memory size {text!r} is not a number with a unit such as 2GiB, 512MiB or 800MB")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if value < 1:
        raise SpanError(f"memory size {text!r} must be above zero")
    return int(value)


def gib(n: int, unit: int | None = None) -> str:
    """Bytes as GiB with one decimal (MiB below 1 GiB, or in ``unit``'s), for messages."""
    unit = unit if unit is not None else (GIB if n >= GIB else MIB)
    return f"{n / unit:.1f} {'GiB' if unit == GIB else 'MiB'}"


def kv_bytes_per_token(config: Mapping[str, Any]) -> int:
    """KV bytes one token of one sequence takes in one block, from the manifest's model config."""
    heads, dim = config.get("num_key_value_heads"), config.get("head_dim")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (heads, dim)):
        raise ManifestError("model.config needs positive integers num_key_value_heads and head_dim")
    return 2 * int(heads) * int(dim) * KV_DTYPE_BYTES  # type: ignore[arg-type]


def block_weight_bytes(shards: Sequence[tuple[int, int, int]], num_layers: int) -> list[int]:
    """Per-block weight bytes from ``(start, end, bytes)`` of each blocks shard: a shard's bytes are split
    evenly over its layers (the first layers take the remainder), so each shard's blocks sum to its bytes."""
    out = [0] * num_layers
    for start, end, size in shards:
        base, extra = divmod(size, end - start)
        for i, layer in enumerate(range(start, end)):
            out[layer] = base + (1 if i < extra else 0)
    return out


def memory_field(
    config: Mapping[str, Any], shards: Sequence[tuple[int, int, int]], num_layers: int
) -> dict[str, list[int]]:
    """The manifest's ``memory`` object, as the exporter writes it."""
    kv = kv_bytes_per_token(config)
    return {
        "block_weight_bytes": block_weight_bytes(shards, num_layers),
        "kv_bytes_per_token": [kv] * num_layers,
    }


def model_context(config: Mapping[str, Any]) -> int | None:
    """The most positions the model takes, or None when its config does not say."""
    for name in ("max_position_embeddings", "n_positions"):
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def plan_context(config: Mapping[str, Any]) -> int:
    """Tokens per planned session: ``PLAN_CONTEXT``, or the model's context when shorter."""
    context = model_context(config)
    return PLAN_CONTEXT if context is None else min(PLAN_CONTEXT, context)


@dataclass(frozen=True)
class BlockFigures:
    """Checked per-block memory figures of one model."""

    weight_bytes: tuple[int, ...]
    kv_bytes_per_token: tuple[int, ...]
    context: int  # tokens per planned session

    @classmethod
    def from_manifest(
        cls,
        raw: Mapping[str, Any],
        config: Mapping[str, Any],
        shards: Sequence[tuple[int, int, int]],
        num_layers: int,
    ) -> BlockFigures:
        """The manifest's ``memory`` object, checked against its config and shard files; a manifest
        without one (written before it existed) gets the figures its shard sizes and config imply."""
        stated = raw.get(MEMORY_FIELD)
        derived = memory_field(config, shards, num_layers)
        if stated is None:
            stated = derived
        if not isinstance(stated, dict):
            raise ManifestError(f"manifest '{MEMORY_FIELD}' must be an object")
        lists: list[tuple[int, ...]] = []
        for name in ("block_weight_bytes", "kv_bytes_per_token"):
            values = stated.get(name)
            if (
                not isinstance(values, list)
                or len(values) != num_layers
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
            ):
                raise ManifestError(
                    f"manifest {MEMORY_FIELD}.{name} must list {num_layers} non-negative integers, one per block"
                )
            lists.append(tuple(values))
        weights, kv = lists
        if list(kv) != derived["kv_bytes_per_token"]:
            raise ManifestError(
                f"manifest {MEMORY_FIELD}.kv_bytes_per_token {kv[0] if kv else 0} does not match its config "
                f"({derived['kv_bytes_per_token'][0]} = 2 x num_key_value_heads x head_dim x {KV_DTYPE_BYTES})"
            )
        for start, end, size in shards:
            stated_bytes = sum(weights[start:end])
            if stated_bytes < size:
                raise ManifestError(
                    f"manifest {MEMORY_FIELD}.block_weight_bytes states {stated_bytes} bytes for blocks "
                    f"{start}-{end}, less than their shard file's {size}"
                )
        return cls(weights, kv, plan_context(config))

    def need(self, span: Span, sessions: int = PLAN_SESSIONS) -> SpanNeed:
        """What serving ``span`` takes: its weights and KV room for ``sessions`` full sessions."""
        kv_token = sum(self.kv_bytes_per_token[span.start : span.end])
        return SpanNeed(
            span,
            sum(self.weight_bytes[span.start : span.end]),
            kv_token * sessions * self.context,
            sessions,
            self.context,
        )


@dataclass(frozen=True)
class SpanNeed:
    """The memory ``span`` needs: weights plus KV room for ``sessions`` sessions of ``context`` tokens."""

    span: Span
    weights: int
    kv: int
    sessions: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv

    def describe(self) -> str:
        """``span A-B needs T (W weights + K KV for N sessions of C tokens)``, in the total's unit."""
        unit = GIB if self.total >= GIB else MIB
        return (
            f"span {self.span} needs {gib(self.total, unit)} ({gib(self.weights, unit)} weights + "
            f"{gib(self.kv, unit)} KV for {self.sessions} sessions of {self.context} tokens)"
        )

    def check(self, budget: int) -> None:
        """Refuse, in one line, a span over ``budget``."""
        if self.total > budget:
            raise SpanError(f"{self.describe()}; budget is {gib(budget)}")


def shard_runs(shards: Sequence[Span]) -> list[tuple[int, int]]:
    """Every run of consecutive shards, as ``(first, last + 1)`` indexes into ``shards`` (sorted)."""
    return [(i, j) for i in range(len(shards)) for j in range(i + 1, len(shards) + 1)]


def choose_span(
    shards: Sequence[Span], counts: Sequence[int], figures: BlockFigures, budget: int, model: str
) -> SpanNeed:
    """The least-served run of ``shards`` (sorted, each with its count of live servers) that fits ``budget``.

    The smallest shard not fitting is refused in one line naming that shard and the budget."""
    fitting: list[tuple[tuple[int, int, int, int], SpanNeed]] = []  # (sort key, need)
    for i, j in shard_runs(shards):
        need = figures.need(Span(shards[i].start, shards[j - 1].end))
        if need.total > budget:
            continue
        least = min(counts[i:j])
        at_least = sum(1 for c in counts[i:j] if c == least)
        fitting.append(((least, -at_least, j - i, need.span.start), need))
    if not fitting:
        smallest = min((figures.need(s) for s in shards), key=lambda n: n.total)
        raise SpanError(
            f"no span of {model} fits a memory budget of {gib(budget)}, not even its smallest shard: "
            f"{smallest.describe()}; raise the budget or export smaller spans"
        )
    return min(fitting, key=lambda pair: pair[0])[1]


def available_ram(meminfo: str) -> int:
    """``MemAvailable`` of ``/proc/meminfo``'s text, in bytes."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    raise SpanError("/proc/meminfo states no MemAvailable: give --memory-budget")

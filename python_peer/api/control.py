"""Contribution settings of a serving peer, changed while it runs: pause, KV budget, span.

``NodeControl`` is the settings page's view of a ``Peer``: it checks what the page asks, then calls the
peer, whose ``SpanGate`` makes sure a change never cuts a session short: pausing stops announcing the
span and refuses OPEN frames while the open sessions run to their end; a new span loads a second
``SpanServer`` in a thread and swaps it in, and the sessions (and pending receipts) of the old one are
still answered by it until they are done. The KV budget is the server's frozen ``ServerConfig``,
replaced whole.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest
from python_peer.core.spans import Span
from python_peer.core.wire import Frame
from python_peer.span_gate import ServingState

from .errors import ApiError, InvalidRequestError

if TYPE_CHECKING:
    from python_peer.node import Peer

log = logging.getLogger(__name__)

MIB = 2**20
MIN_BUDGET_MB = 1.0
MAX_BUDGET_MB = 1024.0 * 1024  # 1 TiB: beyond any machine this runs on


class NotServingError(ApiError):
    """The node runs the API but serves no span: there is nothing to pause, resize or move."""

    status = 409
    code = "not_serving"


class SpanLoadError(ApiError):
    """A valid span that this machine failed to load (a missing or damaged shard file, no memory)."""

    status = 500
    type = "server_error"
    code = "span_load_failed"


class SettingsBusyError(ApiError):
    """Another settings change (a span being loaded) is still under way."""

    status = 409
    code = "settings_busy"


@dataclass(frozen=True)
class Settings:
    """What the settings page shows and edits."""

    state: ServingState
    model: str
    span: Span
    memory_budget_bytes: int
    kv_free_tokens: int
    spans: tuple[Span, ...]  # every span this peer may serve: a run of the model's block shards

    @property
    def serving(self) -> bool:
        return self.state is ServingState.SERVING


def shard_runs(manifest: Manifest) -> tuple[Span, ...]:
    """Every run of consecutive block shards, fewest shards first: the spans a ``SpanServer`` can load."""
    blocks = manifest.blocks
    runs = [
        (j - i, Span(blocks[i].start, blocks[j].end))
        for i in range(len(blocks))
        for j in range(i, len(blocks))
    ]
    return tuple(span for _, span in sorted(runs, key=lambda run: (run[0], run[1].start)))


def parse_span(manifest: Manifest, text: str) -> Span:
    """``text`` as a span this peer can serve, or an ``InvalidRequestError`` naming the ones it can."""
    runs = shard_runs(manifest)
    choices = ", ".join(str(s) for s in runs)
    try:
        span = Span.parse(text)
    except AI4AllError as exc:
        raise InvalidRequestError(f"{exc}; this model's spans are: {choices}", param="span") from None
    if span not in runs:
        raise InvalidRequestError(
            f"span {span} is not a run of {manifest.name}'s block shards "
            f"({', '.join(str(s.span) for s in manifest.blocks)}); choose one of: {choices}",
            param="span",
        )
    return span


def budget_mb(memory_budget_bytes: int) -> float:
    """The budget as the settings page shows and sends it back: MiB to three decimals."""
    return round(memory_budget_bytes / MIB, 3)


def budget_bytes(memory_budget_mb: float) -> int:
    if not math.isfinite(memory_budget_mb) or not MIN_BUDGET_MB <= memory_budget_mb <= MAX_BUDGET_MB:
        raise InvalidRequestError(
            f"memory_budget_mb must be a number of MiB in [{MIN_BUDGET_MB:g}, {MAX_BUDGET_MB:g}], "
            f"not {memory_budget_mb!r}",
            param="memory_budget_mb",
        )
    return int(memory_budget_mb * MIB)


class NodeControl:
    """The serving side of one peer, as the settings page changes it."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    @property
    def state(self) -> ServingState:
        return self.peer.gate.state

    @property
    def open_sessions(self) -> int:
        """Sessions open on this peer, on the current span and on any span it is moving away from."""
        return self.peer.gate.open_sessions

    @property
    def tokens_served(self) -> int:
        """Token positions served since the peer started, across span changes."""
        return self.peer.gate.tokens_served

    async def handle(self, client: str, frame: Frame) -> Frame:
        """Answer a frame as the peer's links do (through its ``SpanGate``)."""
        return await self.peer.gate.handle(client, frame)

    def settings(self) -> Settings:
        server = self.peer.server
        return Settings(
            state=self.state,
            model=self.peer.manifest.name,
            span=server.span,
            memory_budget_bytes=server.config.memory_budget_bytes,
            kv_free_tokens=server.kv_free_tokens,
            spans=shard_runs(self.peer.manifest),
        )

    async def apply(
        self, *, serving: bool | None = None, memory_budget_mb: float | None = None, span: str | None = None
    ) -> list[str]:
        """Check every given setting, then apply them (budget, span, serving); return the changed ones."""
        peer = self.peer
        if peer.changing.locked():
            raise SettingsBusyError("another settings change is under way (a span is loading); try again")
        async with peer.changing:
            budget = budget_bytes(memory_budget_mb) if memory_budget_mb is not None else None
            new_span = parse_span(peer.manifest, span) if span is not None else None
            changed: list[str] = []
            current = peer.server.config.memory_budget_bytes
            # The page shows the budget rounded (budget_mb) and sends it back with every save: unchanged then.
            if budget is not None and memory_budget_mb != budget_mb(current) and budget != current:
                peer.set_memory_budget(budget)
                log.info(
                    "KV budget is now %.1f MiB (%d tokens free)", budget / MIB, peer.server.kv_free_tokens
                )
                changed.append("memory_budget_mb")
            if new_span is not None and new_span != peer.server.span:
                await self._move(new_span)
                changed.append("span")
            if serving is not None and peer.set_serving(serving):
                changed.append("serving")
            if changed:
                await peer.announce()
            return changed

    async def _move(self, span: Span) -> None:
        """Load ``span`` and serve new sessions from it; the old server finishes its own."""
        old = self.peer.server
        log.info("loading span %s to replace %s", span, old.span)
        try:
            new, throughput = await self.peer.load_span(span)
        except Exception as exc:  # onnxruntime, the file system, memory: this machine's failure
            log.warning("loading span %s failed: %s: %s", span, type(exc).__name__, exc)
            raise SpanLoadError(
                f"span {span} cannot be loaded here ({type(exc).__name__}: {exc}); still serving {old.span}",
                param="span",
            ) from exc
        await self.peer.move_to(new, throughput)
        log.info(
            "serving span %s at %.0f block-tokens/s; %d sessions finish on %s",
            span,
            throughput,
            len(old.sessions),
            old.span,
        )


__all__ = [
    "NodeControl",
    "NotServingError",
    "ServingState",
    "Settings",
    "SettingsBusyError",
    "SpanLoadError",
    "budget_bytes",
    "parse_span",
    "shard_runs",
]

"""Contribution settings of a serving peer, changed while it runs: pause, KV budget, span.

``NodeControl`` sits between the peer's links and its span server, so that a change never cuts a
session short: pausing stops announcing the span and refuses OPEN frames while the open sessions run
to their end; a new span loads a second ``SpanServer`` in a thread and swaps it in, and the sessions
(and pending receipts) of the old one are still answered by it until they are done. The KV budget is
the server's frozen ``ServerConfig``, replaced whole.

It is installed once per peer (``NodeControl.install``): links that arrive afterwards are served
through it, and so are the API's in-process hops through this peer's own span.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from python_peer.core.canonical import ServedSpan
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame
from python_peer.rpc import serve_link
from python_peer.server import SpanServer

from .errors import ApiError, InvalidRequestError
from .service import MeshNodeService, _NodeMeshClient

if TYPE_CHECKING:
    from python_peer.node import Peer
    from python_peer.transport import Link

log = logging.getLogger(__name__)

MIB = 2**20
MIN_BUDGET_MB = 1.0
MAX_BUDGET_MB = 1024.0 * 1024  # 1 TiB: beyond any machine this runs on
MAX_ROUTES = 4096  # sessions remembered (client, session) -> the server that opened them
RETIRED_GRACE_S = 60.0  # an old server stays for receipts this long after its last session closed


class ServingState(enum.Enum):
    SERVING = "serving"  # announced, taking new sessions
    PAUSED = "paused"  # not announced; open sessions finish, new ones are refused


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
        self._state = ServingState.SERVING
        self._busy = asyncio.Lock()
        self._routes: OrderedDict[tuple[str, bytes], SpanServer] = OrderedDict()
        self._retired: list[tuple[SpanServer, float]] = []  # (server, when it last held a session)
        self._unloaded_tokens = 0  # tokens served by servers swapped out and unloaded since

    @classmethod
    def install(cls, peer: Peer, service: MeshNodeService | None = None) -> NodeControl:
        """The control of ``peer`` (made once): new links, and ``service``'s in-process hops, go through it."""
        installed = getattr(peer.node.link_handler, "__self__", None)  # the bound ``_on_link`` of one
        if isinstance(installed, NodeControl) and installed.peer is peer:
            control = installed
        else:
            control = cls(peer)
            peer.node.link_handler = control._on_link
        if service is not None:
            for model in service.models_by_name.values():
                if isinstance(model.client, _NodeMeshClient) and model.client.local is not None:
                    # The loopback hop only calls ``handle`` and ``close_client``, which this gate has.
                    model.client.local = cast(SpanServer, control)
        return control

    # --- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> ServingState:
        return self._state

    def _set_state(self, state: ServingState) -> None:
        if state is not self._state:
            log.info("serving of %s: %s -> %s", self.peer.node.peer_id[:8], self._state.value, state.value)
            self._state = state

    @property
    def open_sessions(self) -> int:
        """Sessions open on this peer, on the current span and on any span it is moving away from."""
        return sum(len(server.sessions) for server in self._servers())

    @property
    def tokens_served(self) -> int:
        """Token positions served since the peer started, across span changes."""
        return self._unloaded_tokens + sum(server.tokens_served for server in self._servers())

    def settings(self) -> Settings:
        server = self.peer.server
        return Settings(
            state=self._state,
            model=self.peer.manifest.name,
            span=server.span,
            memory_budget_bytes=server.config.memory_budget_bytes,
            kv_free_tokens=server.kv_free_tokens,
            spans=shard_runs(self.peer.manifest),
        )

    # --- the gate between links and span servers --------------------------------------------------------

    def _on_link(self, link: Link) -> None:
        self.peer.node.spawn(serve_link(link, self.handle, self.close_client), f"serve-{link.remote_id[:8]}")

    async def handle(self, client: str, frame: Frame) -> Frame:
        """Answer a frame: OPEN goes to the current server (or is refused while paused), the rest of a
        session to the server that opened it."""
        key = (client, frame.session)
        if frame.type is FrameType.OPEN:
            if self._state is ServingState.PAUSED:
                return error_frame(
                    frame.session,
                    frame.step,
                    ErrorCode.SESSION_REFUSED,
                    "this peer has paused serving: it finishes its open sessions and takes no new ones; "
                    "open the session on another peer",
                )
            server = self.peer.server
            answer = await server.handle(client, frame)
            if answer.type is FrameType.RESULT:
                self._routes[key] = server
                self._routes.move_to_end(key)
                while len(self._routes) > MAX_ROUTES:
                    self._routes.popitem(last=False)
            return answer
        server = self._routes.get(key, self.peer.server)
        answer = await server.handle(client, frame)
        if frame.type is FrameType.GOSSIP and frame.meta.get("kind") == "receipt":
            self._routes.pop(key, None)  # the session's last frame
        self._prune()
        return answer

    def close_client(self, client: str) -> None:
        """A link is gone: drop its sessions on every server still loaded."""
        for server in self._servers():
            server.close_client(client)
        for key in [k for k in self._routes if k[0] == client]:
            del self._routes[key]
        self._prune()

    def _servers(self) -> list[SpanServer]:
        return [self.peer.server, *(server for server, _ in self._retired)]

    def _prune(self, now: float | None = None) -> None:
        """Forget old servers whose sessions are over and whose receipts had time to be countersigned."""
        now = time.monotonic() if now is None else now
        kept: list[tuple[SpanServer, float]] = []
        for server, last in self._retired:
            server.evict_idle()
            if server.sessions:
                kept.append((server, now))
            elif now - last < RETIRED_GRACE_S:
                kept.append((server, last))
            else:
                log.info("unloaded the retired span %s", server.span)
                self._unloaded_tokens += server.tokens_served
                for key in [k for k, s in self._routes.items() if s is server]:
                    del self._routes[key]
        self._retired = kept

    # --- changes ----------------------------------------------------------------------------------------

    async def apply(
        self, *, serving: bool | None = None, memory_budget_mb: float | None = None, span: str | None = None
    ) -> list[str]:
        """Check every given setting, then apply them (budget, span, serving); return the changed ones."""
        if self._busy.locked():
            raise SettingsBusyError("another settings change is under way (a span is loading); try again")
        async with self._busy:
            budget = budget_bytes(memory_budget_mb) if memory_budget_mb is not None else None
            new_span = parse_span(self.peer.manifest, span) if span is not None else None
            changed: list[str] = []
            if budget is not None and budget != self.peer.server.config.memory_budget_bytes:
                self._set_budget(budget)
                changed.append("memory_budget_mb")
            if new_span is not None and new_span != self.peer.server.span:
                await self._swap(new_span)
                changed.append("span")
            if serving is not None and serving != (self._state is ServingState.SERVING):
                self._set_state(ServingState.SERVING if serving else ServingState.PAUSED)
                changed.append("serving")
            if changed:
                await self._announce()
            return changed

    def _set_budget(self, budget: int) -> None:
        server = self.peer.server
        server.config = replace(server.config, memory_budget_bytes=budget)
        self.peer.config = replace(self.peer.config, server=server.config)
        log.info("KV budget is now %.1f MiB (%d tokens free)", budget / MIB, server.kv_free_tokens)

    async def _swap(self, span: Span) -> None:
        """Load ``span`` in a thread, then serve new sessions from it; the old server finishes its own."""
        peer, old = self.peer, self.peer.server
        log.info("loading span %s to replace %s", span, old.span)
        try:
            new = await asyncio.to_thread(SpanServer, peer.config.model_dir, peer.manifest, span, old.config)
            throughput = await asyncio.to_thread(new.measure_throughput)
        except Exception as exc:  # onnxruntime, the file system, memory: this machine's failure
            log.warning("loading span %s failed: %s: %s", span, type(exc).__name__, exc)
            raise SpanLoadError(
                f"span {span} cannot be loaded here ({type(exc).__name__}: {exc}); still serving {old.span}",
                param="span",
            ) from exc
        new.ledger = old.ledger
        peer.server = new
        peer.config = replace(peer.config, span=span)
        self._retired.append((old, time.monotonic()))
        await peer.node.signal.update(throughput_milli=int(throughput * 1000))
        log.info(
            "serving span %s at %.0f block-tokens/s; %d sessions finish on %s",
            span,
            throughput,
            len(old.sessions),
            old.span,
        )
        self._prune()

    async def _announce(self) -> None:
        """Tell signaling what this peer serves now: its span while serving, nothing while paused."""
        server = self.peer.server
        serves = (
            (ServedSpan(self.peer.manifest.name, server.span.start, server.span.end),)
            if self._state is ServingState.SERVING
            else ()
        )
        await self.peer.node.signal.update(serves=serves, kv_free_tokens=server.kv_free_tokens)


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

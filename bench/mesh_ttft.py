"""Where a mesh session's time to first token goes: the client's own calls, timed while one session opens
and runs its prompt.

``TtftProbe`` wraps (in this process only, while installed) the calls the client makes on that path:
the route (its reputations and its lookup on signaling), per hop the link, the hold written to the
ledger, the log pushed to the peer (and an anti-entropy exchange when one runs first), the OPEN round
trip; then the first step: the embed, each hop's answer as it arrives, the head (from the last answer on). Each call is an
interval from the start of ``MeshDecoder.begin``; calls of different hops may overlap, so the hops'
figures need not add up to the open's wall time. ``ttft_table`` turns the traces of the timed repeats
into medians.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from python_peer import link_ledger
from python_peer.core.wire import Frame, FrameType
from python_peer.ledger_service import LedgerService
from python_peer.link_ledger import ClientExchange
from python_peer.mesh_client import MeshClient
from python_peer.mesh_session import MeshSession
from python_peer.route_hop import RouteHop, StepInputs
from python_peer.rpc import RpcClient

OPEN = "open"  # from begin to the first step: route and every hop's session
STEP = "first step"  # the prompt through the route and the head
TOTAL = "time to first token"


@dataclass(frozen=True)
class Interval:
    label: str
    peer: str | None  # the hop's peer, for per-hop calls
    start: float  # seconds from the start of the trace
    end: float


@dataclass
class Trace:
    """One session's open and first step."""

    intervals: list[Interval] = field(default_factory=list)
    route: list[str] = field(default_factory=list)  # the hops' peers, in route order

    def total(self, label: str, peer: str | None = None) -> float | None:
        """Seconds spent in ``label`` calls (of ``peer``'s hop), summed; None if none ran."""
        spans = [
            i.end - i.start for i in self.intervals if i.label == label and (peer is None or i.peer == peer)
        ]
        return sum(spans) if spans else None

    def at(self, label: str, peer: str | None = None) -> float | None:
        """When the last ``label`` call (of ``peer``'s hop) ended, from the start of the trace."""
        ends = [i.end for i in self.intervals if i.label == label and (peer is None or i.peer == peer)]
        return max(ends) if ends else None


class TtftProbe:
    """Times the client's calls while a trace is on; ``install`` patches the classes, ``uninstall`` undoes."""

    def __init__(self) -> None:
        self.traces: dict[str, list[Trace]] = {}  # contender -> its sessions' traces, in order
        self._current: Trace | None = None
        self._name = ""
        self._t0 = 0.0
        self._undo: list[Callable[[], None]] = []

    # --- traces ------------------------------------------------------------------------------------------

    def begin(self, name: str) -> None:
        self._current = Trace()
        self._name = name
        self._t0 = time.perf_counter()

    def end(self, session: MeshSession | None) -> None:
        if self._current is None:
            return
        if session is not None:
            self._current.route = [h.peer_id for h in session.hops]
        self.traces.setdefault(self._name, []).append(self._current)
        self._current = None

    def note(self, label: str, peer: str | None, start: float, end: float) -> None:
        trace = self._current
        if trace is not None:
            trace.intervals.append(Interval(label, peer, start - self._t0, end - self._t0))

    # --- patches -----------------------------------------------------------------------------------------

    def install(self) -> TtftProbe:
        self._wrap_async(MeshClient, "route", "route", None)
        self._wrap_async(MeshClient, "_read_reputations", "reputations", None)
        self._wrap_async(MeshClient, "_lookup", "lookup", None)
        self._wrap_async(MeshClient, "rpc", "link", lambda a, k: a[1])
        self._wrap_async(ClientExchange, "push", "push", lambda a, k: a[1])
        self._wrap_sync(LedgerService, "hold", "hold write", lambda a, k: a[1] if len(a) > 1 else k["server"])
        self._wrap_sync(LedgerService, "own_entries", "log read", None)
        self._wrap_async(link_ledger, "gossip_exchange", "gossip", lambda a, k: a[1])
        self._wrap_async(MeshSession, "step", STEP, None)
        self._wrap_sync(MeshClient, "embed", "embed", None)
        self._wrap_open_calls()
        self._wrap_accept()
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        old = owner.__dict__[name]
        setattr(owner, name, new)
        self._undo.append(lambda: setattr(owner, name, old))

    def _wrap_async(
        self, owner: Any, name: str, label: str, peer: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None
    ) -> None:
        old = getattr(owner, name)
        probe = self

        @functools.wraps(old)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await old(*args, **kwargs)
            finally:
                probe.note(label, peer(args, kwargs) if peer else None, start, time.perf_counter())

        self._patch(owner, name, timed)

    def _wrap_sync(
        self, owner: Any, name: str, label: str, peer: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None
    ) -> None:
        old = getattr(owner, name)
        probe = self

        @functools.wraps(old)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return old(*args, **kwargs)
            finally:
                probe.note(label, peer(args, kwargs) if peer else None, start, time.perf_counter())

        self._patch(owner, name, timed)

    def _wrap_open_calls(self) -> None:
        old = RpcClient.call
        probe = self

        @functools.wraps(old)
        async def call(rpc: RpcClient, frame: Frame, timeout: float, **kwargs: Any) -> Frame:
            start = time.perf_counter()
            try:
                return await old(rpc, frame, timeout, **kwargs)
            finally:
                if frame.type is FrameType.OPEN:
                    probe.note("OPEN", rpc.link.remote_id, start, time.perf_counter())

        self._patch(RpcClient, "call", call)

    def _wrap_accept(self) -> None:
        old = RouteHop.accept
        probe = self

        @functools.wraps(old)
        def accept(hop: RouteHop, inputs: StepInputs, answer: Frame) -> Any:
            now = time.perf_counter()
            probe.note("answer", hop.peer_id, now, now)
            return old(hop, inputs, answer)

        self._patch(RouteHop, "accept", accept)


def _ms(values: Sequence[float | None]) -> str:
    found = [v for v in values if v is not None]
    if not found:
        return "-"
    return f"{statistics.median(found) * 1e3:.1f} ({min(found) * 1e3:.1f}-{max(found) * 1e3:.1f})"


def breakdown(traces: Sequence[Trace]) -> list[tuple[str, list[float | None]]]:
    """Rows (what, seconds per trace) of the traces' time to first token, in the order they happen."""
    rows: list[tuple[str, list[float | None]]] = []

    def row(what: str, values: list[float | None]) -> None:
        rows.append((what, values))

    hops = max((len(t.route) for t in traces), default=0)
    row(f"{OPEN} (wall: begin to first step)", [_first_start(t, STEP) for t in traces])
    row("  route: total", [t.total("route") for t in traces])
    row("    reputations from the ledger", [t.total("reputations") for t in traces])
    row("    lookup on signaling (cached 2 s)", [t.total("lookup") for t in traces])
    for index in range(hops):
        peers = [t.route[index] if index < len(t.route) else None for t in traces]
        name = f"  hop {index + 1}"
        row(
            f"{name}: link (cached after warm-up)",
            [_of(t, "link", p) for t, p in zip(traces, peers, strict=True)],
        )
        row(
            f"{name}: hold written (SQLite + sign)",
            [_of(t, "hold write", p) for t, p in zip(traces, peers, strict=True)],
        )
        row(
            f"{name}: ledger gossip (before the push, or in the background)",
            [_of(t, "gossip", p) for t, p in zip(traces, peers, strict=True)],
        )
        row(
            f"{name}: log pushed (read + round trip; '-': carried by OPEN)",
            [_of(t, "push", p) for t, p in zip(traces, peers, strict=True)],
        )
        row(
            f"{name}: OPEN round trip (with the log, where OPEN carries it)",
            [_of(t, "OPEN", p) for t, p in zip(traces, peers, strict=True)],
        )
    row("  log reads (all hops)", [t.total("log read") for t in traces])
    row(f"{STEP} (wall)", [t.total(STEP) for t in traces])
    row("  embed", [t.total("embed") for t in traces])
    for index in range(hops):
        peers = [t.route[index] if index < len(t.route) else None for t in traces]
        row(
            f"  hop {index + 1} answered, after the step began",
            [_since_step(t, p) for t, p in zip(traces, peers, strict=True)],
        )
    row("  head (last answer to the logits)", [_head(t) for t in traces])
    row(TOTAL + " (to the logits)", [t.at(STEP) for t in traces])
    return rows


def _of(trace: Trace, label: str, peer: str | None) -> float | None:
    return None if peer is None else trace.total(label, peer)


def _first_start(trace: Trace, label: str) -> float | None:
    starts = [i.start for i in trace.intervals if i.label == label]
    return min(starts) if starts else None


def _head(trace: Trace) -> float | None:
    answered, done = trace.at("answer"), trace.at(STEP)
    return None if answered is None or done is None else done - answered


def _since_step(trace: Trace, peer: str | None) -> float | None:
    began = _first_start(trace, STEP)
    answered = trace.at("answer", peer) if peer is not None else None
    return None if began is None or answered is None else answered - began


def ttft_table(traces: Mapping[str, Sequence[Trace]]) -> Table:
    """One column per contender: median (min-max) ms of each part over its traces."""
    table = Table(title="Mesh time to first token, where it goes (ms; the client's calls, timed)")
    table.add_column("part")
    rows: dict[str, list[str]] = {}
    for name, runs in traces.items():
        table.add_column(name, justify="right")
        for what, values in breakdown(runs):
            rows.setdefault(what, []).append(_ms(values))
    for what, cells in rows.items():
        table.add_row(what, *(cells + ["-"] * (len(traces) - len(cells))))
    table.caption = "median (min-max) over repeats; hops' calls may overlap; '-': did not run (a cached link, no gossip due)"
    return table


def ttft_json(traces: Mapping[str, Sequence[Trace]]) -> dict[str, dict[str, float | None]]:
    result: dict[str, dict[str, float | None]] = {}
    for name, runs in traces.items():
        parts: dict[str, float | None] = {}
        for what, values in breakdown(runs):
            found = [v for v in values if v is not None]
            parts[what.strip()] = round(statistics.median(found) * 1e3, 2) if found else None
        result[name] = parts
    return result

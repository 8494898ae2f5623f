"""The chaos run's figures and goals: requests, failures by reason, wrong replies, recovery after kills,
receipts, balances and memory, as tables on stdout and one JSON object (the last line)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.chaos_ledgers import Convergence, Receipts
from bench.chaos_load import Outcome, reason
from bench.chaos_mesh import Proc

MIB = 1024 * 1024


@dataclass
class KillRecord:
    """A kill as it happened (seconds into the run); ``skipped`` says why it did not."""

    target: str
    planned_at: float
    at: float | None = None
    ready_at: float | None = None  # the restarted process serves again
    skipped: str = ""


@dataclass(frozen=True)
class Goals:
    """What the run must show (issue 12)."""

    min_served: float = 0.99
    max_memory_growth: float = 0.10


@dataclass
class Figures:
    seconds: float = 0.0
    requests: int = 0
    served: int = 0
    failed: int = 0
    wrong: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    wrong_examples: list[str] = field(default_factory=list)
    kills: int = 0
    api_redirects: int = 0
    kills_skipped: int = 0
    recovery_s: list[float | None] = field(default_factory=list)  # per kill: to the next successful chat
    restart_s: list[float] = field(default_factory=list)  # per kill: restart to ready again
    receipts: dict[str, Any] = field(default_factory=dict)
    ledgers: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    goals: dict[str, bool] = field(default_factory=dict)

    @property
    def served_share(self) -> float:
        return self.served / self.requests if self.requests else 0.0


def recovery(kills: list[KillRecord], outcomes: list[Outcome]) -> list[float | None]:
    """Per kill, the time until the first chat started after it was answered right (None: never)."""
    done = sorted((o.start, o.end) for o in outcomes if o.served and o.correct)
    result: list[float | None] = []
    for kill in kills:
        if kill.at is None:
            continue
        after = [end for start, end in done if start >= kill.at]
        result.append(round(min(after) - kill.at, 2) if after else None)
    return result


WARM_S = 30.0  # a life's memory is taken as its start this long into serving the load (``memory_rows``)


def memory_rows(
    procs: list[Proc],
    own: tuple[int | None, int | None],
    t0: float,
    seconds: float,
    *,
    warm_s: float = WARM_S,
    every_s: float = 60.0,
    own_series: list[tuple[float, int]] | None = None,
) -> list[dict[str, Any]]:
    """RSS per process at the start and at the end of the load, for the last life of each process: the
    harness's own (``own``: the schedule, the API worker, the figures), then ``procs`` (nodes, peers and
    the native users' processes).

    Every life starts at its first sample ``warm_s`` into serving the load: ``warm_s`` after the load
    started (``t0``, after the warm-up chats) for a life that was there then, after it became ready for a
    restarted one. The first seconds of load are a one-time cost, not growth: the links between peers
    that the routes use open, code first run is paged in (cryptography's compiled library alone grew a
    spared peer's resident set 3.6 MiB during the warm-up and the load's first 13 s, bench/README.md), and
    a restarted peer loads its ledger. ``load_start_mib`` and ``growth_from_load_start`` keep the figures
    of a life that was there from ``t0`` on. Growth is judged for lives that span at least half of the
    load's ``seconds``. ``series_mib``: RSS about every ``every_s`` seconds of the load, to tell a plateau
    from a leak."""
    rows = [_row("chaos (harness)", 1, own[0], own[1], True, own_series or [], t0, every_s)]
    for proc in procs:
        life = proc.lives[-1]
        began = t0 + warm_s if life.rss_start is not None else None
        if began is None and life.ready is not None:
            began = max(t0, life.ready) + warm_s
        start = next((value for at, value in life.series if at >= began), None) if began else None
        judged = start is not None and began is not None and (t0 + seconds - began) >= seconds / 2
        row = _row(proc.name, len(proc.lives), start, life.rss_last, judged, life.series, t0, every_s)
        if life.rss_start is not None:
            row["load_start_mib"] = _mib(life.rss_start)
            row["growth_from_load_start"] = _growth(life.rss_start, life.rss_last)
        rows.append(row)
    return rows


def _growth(start: int | None, end: int | None) -> float | None:
    return round((end - start) / start, 4) if start and end else None


def _row(
    name: str,
    lives: int,
    start: int | None,
    end: int | None,
    judged: bool,
    series: list[tuple[float, int]],
    t0: float,
    every_s: float,
) -> dict[str, Any]:
    return {
        "process": name,
        "lives": lives,
        "start_mib": _mib(start),
        "end_mib": _mib(end),
        "growth": _growth(start, end),
        "judged": judged,
        "series_mib": _every(series, t0, every_s),
    }


def _percent(growth: float | None) -> str:
    return f"{100 * growth:+.1f} %" if growth is not None else "-"


def _every(series: list[tuple[float, int]], t0: float, every_s: float) -> list[float | None]:
    """The first sample of each ``every_s`` slot after ``t0``."""
    slots: dict[int, int] = {}
    for at, value in series:
        if at >= t0:
            slots.setdefault(int((at - t0) // every_s), value)
    return [_mib(slots[k]) for k in sorted(slots)]


def _mib(value: int | None) -> float | None:
    return round(value / MIB, 1) if value is not None else None


def figures(
    seconds: float,
    outcomes: list[Outcome],
    kills: list[KillRecord],
    receipt_count: Receipts,
    ledgers: Convergence,
    memory: list[dict[str, Any]],
    goals: Goals,
) -> Figures:
    fig = Figures(seconds=round(seconds, 1), requests=len(outcomes))
    fig.served = sum(1 for o in outcomes if o.served)
    fig.failed = fig.requests - fig.served
    fig.wrong = sum(1 for o in outcomes if o.served and not o.correct)
    for kind in sorted({o.kind for o in outcomes}):
        mine = [o for o in outcomes if o.kind == kind]
        fig.by_kind[kind] = {
            "requests": len(mine),
            "served": sum(1 for o in mine if o.served),
            "wrong": sum(1 for o in mine if o.served and not o.correct),
        }
    fig.failures = dict(
        Counter(f"{o.kind}: {reason(o.error)}" for o in outcomes if not o.served).most_common()
    )
    fig.wrong_examples = [
        f"{o.who} prompt {o.prompt}: {o.error}" for o in outcomes if o.served and not o.correct
    ][:5]
    fig.kills = sum(1 for k in kills if k.at is not None)
    fig.kills_skipped = sum(1 for k in kills if k.at is None)
    fig.recovery_s = recovery(kills, outcomes)
    fig.restart_s = [
        round(k.ready_at - k.at, 2) for k in kills if k.at is not None and k.ready_at is not None
    ]
    fig.receipts = {
        "total": receipt_count.total,
        "both_sides": receipt_count.both_sides,
        "lost": receipt_count.lost_count,
        "unchecked": receipt_count.unchecked,
        "client_log_only": receipt_count.client_log_only,
        "server_log_only": receipt_count.server_log_only,
        "lost_examples": receipt_count.lost[:10],
    }
    fig.ledgers = asdict(ledgers)
    fig.memory = memory
    judged = [r["growth"] for r in memory if r.get("judged") and r["growth"] is not None]
    fig.goals = {
        "no_wrong_replies": fig.wrong == 0,
        "served": fig.served_share >= goals.min_served,
        "no_receipts_lost": receipt_count.lost_count == 0
        and receipt_count.unchecked == 0
        and receipt_count.total > 0,
        "identical_balances": ledgers.identical_balances,
        "memory_growth": bool(judged) and max(judged) < goals.max_memory_growth,
    }
    return fig


def _s(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"


def show(fig: Figures, console: Console) -> None:
    table = Table(title=f"chaos run: {fig.seconds:.0f} s of load, {fig.kills} kills", title_justify="left")
    for column in ("figure", "value"):
        table.add_column(column)
    table.add_row("requests", str(fig.requests))
    for kind, counts in fig.by_kind.items():
        table.add_row(
            f"  {kind}", f"{counts['served']} served of {counts['requests']}, {counts['wrong']} wrong"
        )
    table.add_row("served", f"{fig.served} ({100 * fig.served_share:.2f} %)")
    table.add_row("failed", str(fig.failed))
    table.add_row("API requests redirected (their API peer was dead)", str(fig.api_redirects))
    table.add_row("wrong replies (vs local greedy)", str(fig.wrong))
    table.add_row("kills done / skipped", f"{fig.kills} / {fig.kills_skipped}")
    recovered = [r for r in fig.recovery_s if r is not None]
    never = sum(1 for r in fig.recovery_s if r is None)
    table.add_row("kill -> next right chat", _s(recovered) + (f", {never} never" if never else ""))
    table.add_row("kill -> process serving again", _s(fig.restart_s))
    rc = fig.receipts
    table.add_row(
        "receipts in both sides' ledgers / total",
        f"{rc['both_sides']} / {rc['total']} (lost {rc['lost']}, unchecked {rc['unchecked']}; carried by "
        f"the client's log only {rc['client_log_only']}, the server's only {rc['server_log_only']})",
    )
    lg = fig.ledgers
    table.add_row(
        "ledgers after quiescence",
        f"{lg['nodes']} nodes, {lg['accounts']} accounts, {lg['entries']} entries "
        f"({lg['entries_at_start']} at the start of the load): balances "
        f"{'identical' if lg['identical_balances'] else 'DIFFER'}, entries "
        f"{'identical' if lg['identical_entries'] else 'differ'} after {lg['seconds']} s",
    )
    console.print(table)
    if fig.failures:
        fails = Table(title="failed requests by reason", title_justify="left")
        fails.add_column("count", justify="right")
        fails.add_column("reason")
        for text, count in fig.failures.items():
            fails.add_row(str(count), text)
        console.print(fails)
    for line in fig.wrong_examples + fig.receipts["lost_examples"]:
        console.print(f"  {line}", markup=False)
    mem = Table(title=f"memory (RSS, MiB; start: {WARM_S:.0f} s into serving the load)", title_justify="left")
    for column in ("process", "lives", "start", "end", "growth", "at the load's start", "growth from it"):
        mem.add_column(column)
    for row in fig.memory:
        growth = _percent(row["growth"])
        mem.add_row(
            row["process"],
            str(row["lives"]),
            str(row["start_mib"]),
            str(row["end_mib"]),
            growth if row.get("judged") else f"({growth}, short life)",
            str(row.get("load_start_mib", "-")),
            _percent(row.get("growth_from_load_start")),
        )
    console.print(mem)
    console.print("goals: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in fig.goals.items()))

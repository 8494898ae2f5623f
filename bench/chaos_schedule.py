"""The chaos run's kill schedule: seeded, bounded, and never taking down every server of a span at once.

``plan`` is a pure function of its arguments: the same seed gives the same kills at the same offsets,
so a failing run can be replayed. Every kill has its restart in the plan; the rules hold at every
instant of the plan (``check_plan`` proves it and the tests call it): at most ``max_down`` processes
down at once, at least one signaling node up, and for each span at least one of its peers up
(``protected`` processes are never killed and count as up).

The plan is followed by ``chaos_mesh.ChaosMesh``: a process that is restarting counts as down until it
is ready again, so a kill that would break a rule in the real mesh waits for that (``Schedule.blocked``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from python_peer.core.errors import AI4AllError


class ScheduleError(AI4AllError):
    """A kill schedule that cannot be made, or that breaks one of its own rules."""


NODE = "node"
PEER = "peer"


@dataclass(frozen=True)
class Target:
    """A process the schedule may kill: a signaling node, or a peer serving ``span``."""

    name: str
    kind: str  # NODE or PEER
    span: str = ""
    protected: bool = False  # never killed


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``target`` at ``at`` seconds into the run; start it again ``down_s`` later."""

    at: float
    target: str
    down_s: float

    @property
    def restart_at(self) -> float:
        return self.at + self.down_s


@dataclass(frozen=True)
class Limits:
    """How hard the schedule shakes the mesh."""

    mean_gap_s: float = 20.0  # between kills: uniform in [gap/2, 3*gap/2]
    down_min_s: float = 3.0
    down_max_s: float = 12.0
    max_down: int = 2  # processes down at once (restarting ones included)
    quiet_end_s: float = 15.0  # no process is down during the last seconds of the load

    def __post_init__(self) -> None:
        if self.mean_gap_s <= 0 or not 0 < self.down_min_s <= self.down_max_s or self.max_down < 1:
            raise ScheduleError(
                f"limits need mean_gap_s > 0, 0 < down_min_s <= down_max_s and max_down >= 1: {self}"
            )


def allowed(down: Iterable[str], victim: str, targets: Mapping[str, Target], max_down: int) -> str | None:
    """None if ``victim`` may be killed while ``down`` are down; else the rule it would break."""
    down = set(down)
    target = targets[victim]
    if target.protected:
        return f"{victim} is protected"
    if victim in down:
        return f"{victim} is already down"
    after = down | {victim}
    if len(after) > max_down:
        return f"{len(after)} processes would be down, at most {max_down}"
    nodes = [t.name for t in targets.values() if t.kind == NODE]
    if nodes and set(nodes) <= after:
        return "every signaling node would be down"
    if target.kind == PEER:
        same_span = [t.name for t in targets.values() if t.kind == PEER and t.span == target.span]
        if set(same_span) <= after:
            return f"every peer of span {target.span} would be down"
    return None


def plan(targets: Iterable[Target], duration_s: float, seed: int, limits: Limits | None = None) -> list[Kill]:
    """Kills over ``duration_s`` seconds, each restarted before ``duration_s - quiet_end_s``."""
    limits = limits or Limits()
    by_name = {t.name: t for t in targets}
    if len(by_name) < 2:
        raise ScheduleError("a chaos schedule needs at least two processes")
    rng = random.Random(seed)
    kills: list[Kill] = []
    last_restart = duration_s - limits.quiet_end_s
    at = rng.uniform(limits.mean_gap_s / 2, limits.mean_gap_s * 1.5)
    while at < last_restart - limits.down_min_s:
        down = {k.target for k in kills if k.at <= at < k.restart_at}
        eligible = [n for n in sorted(by_name) if allowed(down, n, by_name, limits.max_down) is None]
        if eligible:
            victim = rng.choice(eligible)
            down_s = min(rng.uniform(limits.down_min_s, limits.down_max_s), last_restart - at)
            kills.append(Kill(round(at, 3), victim, round(down_s, 3)))
        at += rng.uniform(limits.mean_gap_s / 2, limits.mean_gap_s * 1.5)
    check_plan(kills, by_name, limits.max_down)
    return kills


def check_plan(kills: list[Kill], targets: Mapping[str, Target], max_down: int) -> None:
    """Raise ``ScheduleError`` naming the first instant at which ``kills`` break a rule."""
    for i, kill in enumerate(kills):
        if kill.target not in targets:
            raise ScheduleError(f"kill {i} names {kill.target!r}, not a process of the mesh")
        if kill.down_s <= 0:
            raise ScheduleError(f"kill {i} of {kill.target} restarts it before it dies")
        down = {k.target for k in kills[:i] if k.at <= kill.at < k.restart_at}
        why = allowed(down, kill.target, targets, max_down)
        if why is not None:
            raise ScheduleError(f"kill {i} at {kill.at} s: {why}")


class Schedule:
    """The rules applied to the live mesh: ``down`` is what is dead or not yet ready again."""

    def __init__(self, targets: Iterable[Target], max_down: int) -> None:
        self.targets = {t.name: t for t in targets}
        self.max_down = max_down

    def blocked(self, victim: str, down: Iterable[str]) -> str | None:
        """Why ``victim`` may not die now (None: it may)."""
        return allowed(down, victim, self.targets, self.max_down)

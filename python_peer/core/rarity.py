"""The rarity bonus of one model's UTC day, kept up to date receipt by receipt (``DayRarity``).

Standard library only. ``balances.Sweep`` credits each server at the end of a day with the rarity bonus
of its paying receipts that day: a rate per block for how few servers covered it (``span_rates``) times
each receipt's tokens, in proportion to what the receipt paid (docs/ledger.md). A running report
applies the current day's bonus for every report (``running.py``); ``DayRarity`` keeps what its last
application computed, so a report costs the receipts swept since, not the day's.
"""

from __future__ import annotations

import bisect
from array import array
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .economics import Rules
from .receipts import Receipt

if TYPE_CHECKING:
    from .balances import Payment

__all__ = ["DAYS_REMEMBERED", "DayRarity", "span_rates"]


def span_rates(coverage: Iterable[tuple[str, int, int]], rules: Rules) -> dict[tuple[int, int], int]:
    """(start, end) -> rarity bonus units per token for a receipt of that block span, given ``coverage``
    (the (server, start, end) of one model's paying receipts of one UTC day): per block, the rate for the
    number of distinct servers that covered it, summed over the span's blocks."""
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    wanted: set[tuple[int, int]] = set()
    for server, start, end in coverage:
        spans[server].append((start, end))
        wanted.add((start, end))
    deltas: dict[int, int] = defaultdict(int)
    for intervals in spans.values():
        intervals.sort()
        lo, hi = intervals[0]
        for a, b in intervals[1:]:
            if a > hi:
                deltas[lo] += 1
                deltas[hi] -= 1
                lo, hi = a, b
            else:
                hi = max(hi, b)
        deltas[lo] += 1
        deltas[hi] -= 1
    points = sorted(deltas)
    counts, running = [], 0
    for p in points:
        running += deltas[p]
        counts.append(running)  # servers covering [points[i], points[i + 1])
    rates: dict[tuple[int, int], int] = {}
    for start, end in wanted:
        total = 0
        i = max(bisect.bisect_right(points, start) - 1, 0)
        while i < len(points) - 1 and points[i] < end:
            overlap = min(points[i + 1], end) - max(points[i], start)
            if overlap > 0:
                total += rules.rarity_rate(counts[i]) * overlap
            i += 1
        rates[(start, end)] = total
    return rates


class DayRarity:
    """One model's day of rarity bonuses as last applied, kept up to date receipt by receipt: a running
    report applies the current day's bonus for every report (``running.py``), while the day's receipts
    grow one at a time and their servers' coverage rarely changes.

    For each of the day's receipts swept, in order: ``receipts``, what it paid (``paid``: its
    ``Payment``, None if it did not pay enough to count) and its bonus (``bonuses``). ``counts``:
    (server, start, end) -> paying receipts with it; ``rates``: ``span_rates`` of ``coverage``, the set
    of those when they were computed; ``due``: server -> the sum of its receipts' bonuses; ``bonus_of``:
    receipt id -> its bonus, for each paying receipt (the sweep keeps it beside what the receipt paid:
    ``balances.Settled``). Receipts taken back (``truncate``) are taken out of each."""

    __slots__ = ("bonus_of", "bonuses", "counts", "coverage", "due", "paid", "rates", "receipts")

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.paid: list[Payment | None] = []
        self.bonuses = array("q")  # 8 bytes a receipt, not an int object each
        self.counts: dict[tuple[str, int, int], int] = {}
        self.coverage: frozenset[tuple[str, int, int]] = frozenset()
        self.rates: dict[tuple[int, int], int] = {}
        self.due: dict[str, int] = {}
        self.bonus_of: dict[str, int] = {}

    def truncate(self, length: int) -> None:
        """Forget the receipts from position ``length`` on (the sweep took them back)."""
        for r, s, bonus in zip(
            self.receipts[length:], self.paid[length:], self.bonuses[length:], strict=True
        ):
            if s is None:
                continue
            key = (r.server, r.start, r.end)
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]
            self.due[r.server] -= bonus
            del self.bonus_of[r.id]
        del self.receipts[length:], self.paid[length:], self.bonuses[length:]

    def extend(self, receipts: Sequence[Receipt], settled: dict[str, Payment]) -> None:
        """Add the receipts swept after those applied, paid as ``settled`` says (bonuses still 0)."""
        for r in receipts:
            s = settled[r.id]
            if s.counts:
                key = (r.server, r.start, r.end)
                self.counts[key] = self.counts.get(key, 0) + 1
            self.receipts.append(r)
            self.paid.append(s if s.counts else None)
            self.bonuses.append(0)

    def settle(self, first: int, rules: Rules) -> None:
        """The bonuses of the receipts from position ``first`` on, or of all of them if the coverage
        changed (every rate may have)."""
        if self.counts.keys() != self.coverage:
            self.coverage = frozenset(self.counts)
            self.rates = span_rates(self.coverage, rules)
            self.due, self.bonus_of, first = {}, {}, 0
        rates, due, bonus_of = self.rates, self.due, self.bonus_of
        for i in range(first, len(self.receipts)):
            r, s = self.receipts[i], self.paid[i]
            if s is None:
                continue
            bonus = s.share(rates[(r.start, r.end)] * r.tokens)
            self.bonuses[i] = bonus
            due[r.server] = due.get(r.server, 0) + bonus
            bonus_of[r.id] = bonus


DAYS_REMEMBERED = 4  # days whose rarity a sweep remembers (a late day's receipts are rare)

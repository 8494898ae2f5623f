"""The last steps of a balance sweep, kept with what each changed, so they can be taken back.

Standard library only. ``compute`` sweeps grants, receipts and bonuses in one canonical order, and a
client's payment depends on its balance at its receipt's place in that order. Gossip brings receipts
out of that order all the time (a receipt dated a few seconds before the latest one swept: about one
write in five on a busy mesh), and ``RunningReport`` used to answer each with a full ``compute`` over the
whole ledger. With a ``SweepJournal`` it instead takes back the steps swept after the late item
(``rewind``), newest first, and sweeps them again with the late item in its place: the state is then
exactly what the sweep in order would have left.

Each journaled step keeps what it may change, read before it ran: the swept fields of the accounts it
touches (not ``entries`` or ``granted``, which the running report sets outside the sweep: an account a
step created is taken away again only if neither was set since, else its swept fields go back to 0), the
settlement a receipt writes and the rarity bonuses a day's end writes, the hour's block-tokens, and the
lengths of the lists it appends to (a server's served times and totals, a day's receipts). Only the
last ``JOURNAL_STEPS`` steps are kept; an item older than all of them (``reaches``) still needs a full
``compute``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .balances import Account, Payment, Sweep, SweepItem
from .economics import DAY_MS, HOUR_MS
from .receipts import Receipt

__all__ = ["JOURNAL_STEPS", "SweepJournal"]

JOURNAL_STEPS = 256  # steps kept: ~25 s of the chaos run's receipts and bonuses (1.6 KB a step)

# the fields of an account a sweep step may change
_SWEPT = (
    "balance",
    "clipped",
    "earned",
    "rarity_bonus",
    "uptime_bonus",
    "spent",
    "served_block_tokens",
    "receipts_served",
    "receipts_paid",
)


@dataclass(slots=True)
class _Step:
    """One step swept, and what it may have changed, as it was before."""

    item: SweepItem
    accounts: list[tuple[str, tuple[int, ...] | None, dict[int, int]]]  # peer, fields (None: absent)
    # what each receipt paid (its settlement, without its rarity bonus; None: not swept yet)
    settled: list[tuple[str, Payment | None]]
    bonuses: list[tuple[str, int | None]]  # the rarity bonus of each receipt of a day whose end it swept
    hourly: tuple[tuple[str, int], int | None] | None
    served: tuple[str, int, int] | None  # server, lengths of its served times and totals
    day: tuple[tuple[str, int], int] | None  # the day's key, the length of its receipts


class SweepJournal:
    """``sweep``'s last steps, each undoable (module docstring)."""

    def __init__(self, sweep: Sweep, limit: int | None = None) -> None:
        self.sweep = sweep
        self.limit = JOURNAL_STEPS if limit is None else limit
        self._steps: deque[_Step] = deque(maxlen=self.limit)  # the oldest step forgotten first

    def step(self, item: SweepItem) -> None:
        """Sweep ``item``, after every item swept so far, keeping what it changes."""
        self._steps.append(self._record(item))
        self.sweep.step(item)

    def reaches(self, key: tuple[int, int, str]) -> bool:
        """Whether an item of sweep key ``key`` can be put in its place: every step after it is kept."""
        return bool(self._steps) and key > self._steps[0].item[:3]

    def rewind(self, key: tuple[int, int, str]) -> list[SweepItem]:
        """Take back every step after ``key`` (``reaches(key)`` must hold); their items, in order."""
        taken: list[SweepItem] = []
        while self._steps and self._steps[-1].item[:3] > key:
            step = self._steps.pop()
            self._undo(step)
            taken.append(step.item)
        taken.reverse()
        return taken

    def _record(self, item: SweepItem) -> _Step:
        sweep = self.sweep
        _, kind, _, what = item
        peers: list[str] = []
        receipts: list[str] = []
        bonused: list[str] = []
        hourly = served = day = None
        if kind == 0 and isinstance(what, str):
            peers = [what]
        elif kind == 1 and isinstance(what, Receipt):
            r = what
            peers = [r.client, r.server]
            receipts = [r.id]
            hour = (r.server, r.time // HOUR_MS)
            hourly = (hour, sweep.hourly.get(hour))
            served = (
                r.server,
                len(sweep.served_times.get(r.server, ())),
                len(sweep.served_totals.get(r.server, (0,))),
            )
            day_key = (r.model, r.time // DAY_MS)
            day = (day_key, len(sweep.days.get(day_key, ())))
        elif kind == 2 and isinstance(what, tuple):
            peers = [what[0]]
        elif kind == 3 and isinstance(what, tuple):
            swept = sweep.days.get(what, ())
            peers = [r.server for r in swept]
            bonused = [r.id for r in swept]
        return _Step(
            item,
            [_fields(p, sweep.accounts.get(p)) for p in dict.fromkeys(peers)],
            [(rid, sweep.settlements.get(rid)) for rid in receipts],
            [(rid, sweep.rarity_bonuses.get(rid)) for rid in bonused],
            hourly,
            served,
            day,
        )

    def _undo(self, step: _Step) -> None:
        sweep = self.sweep
        for peer, fields, deferred in step.accounts:
            if fields is None:  # the step created it: gone again, unless set outside the sweep since
                created = sweep.accounts.get(peer)
                if created is None or not (
                    created.entries or created.granted or created.forked_at is not None
                ):
                    sweep.accounts.pop(peer, None)
                    continue
                fields = _UNSWEPT
            account = sweep.accounts[peer]
            for name, value in zip(_SWEPT, fields, strict=True):
                setattr(account, name, value)
            account.deferred = deferred
        for rid, settlement in step.settled:
            if settlement is None:
                sweep.settlements.pop(rid, None)
            else:
                sweep.settlements[rid] = settlement
        for rid, bonus in step.bonuses:
            if bonus is None:
                sweep.rarity_bonuses.pop(rid, None)
            else:
                sweep.rarity_bonuses[rid] = bonus
        if step.hourly is not None:
            hour, blocks = step.hourly
            if blocks is None:
                sweep.hourly.pop(hour, None)
            else:
                sweep.hourly[hour] = blocks
        if step.served is not None:
            server, times, totals = step.served
            del sweep.served_times[server][times:]
            del sweep.served_totals[server][totals:]
        if step.day is not None:
            sweep.take_back_day(*step.day)


_UNSWEPT = (0,) * len(_SWEPT)  # an account's swept fields before any step touched it


def _fields(peer: str, account: Account | None) -> tuple[str, tuple[int, ...] | None, dict[int, int]]:
    if account is None:
        return (peer, None, {})
    return (peer, tuple(getattr(account, name) for name in _SWEPT), dict(account.deferred))

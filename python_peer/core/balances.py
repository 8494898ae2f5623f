"""Balances as a pure function of the set of valid ledger entries (``compute``).

Standard library only. Duplicates and arrival order cannot change the result, and ``compute`` never
reads a clock (the "not too far in the future" check is made once, when an entry is accepted). The
prices and constants it applies are in ``economics.py``.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .counting import Accusation, Counted, count
from .economics import DAY_MS, DEFAULT_RULES, HOUR_MS, Rules, earnings, price
from .entries import Entry
from .holds import HeldCredits, Hold, collect_holds
from .ledger_fields import EntryFacts, Rejection, Verify
from .rarity import DAYS_REMEMBERED, DayRarity
from .receipts import Receipt, ReceiptBody


class Fact:
    """What ``compute`` reads of one entry (``EntryFacts``): its hash, place in its chain, time and body,
    without the signature and the encoded bytes. A store makes one for each entry it writes (it extends
    the running report) and one per row when it rebuilds the report (``LedgerStore.report``); the
    running report keeps only its authors' heads.

    A receipt's body is kept as its bare ``Receipt`` (the two signatures were checked when the entry was
    stored and count for nothing here), and the names that recur in every entry (peer ids, models) are
    interned: one string per identity, not one per entry (and a session's id: one string for its hold
    and its receipt); a store passes ``receipts`` so that the two
    entries carrying one receipt share it (about 600 bytes per entry instead of 1,400)."""

    __slots__ = ("author", "body", "hash", "prev", "seq", "time")

    def __init__(
        self, entry: Entry, entry_hash: str | None = None, receipts: dict[str, Receipt] | None = None
    ) -> None:
        self.hash: str = entry.hash if entry_hash is None else entry_hash
        self.author: str = sys.intern(entry.author)
        self.seq: int = entry.seq
        self.prev: str = entry.prev
        self.time: int = entry.time
        self.body: object = _slim(entry.body, receipts)


def _slim(body: object, receipts: dict[str, Receipt] | None) -> object:
    """The part of an entry's body ``compute`` reads, its recurring names interned. ``receipts`` (receipt
    id -> Receipt) lets the facts of a receipt's two carriers (its client's and its server's entry)
    share one ``Receipt``."""
    if isinstance(body, ReceiptBody):
        r = body.receipt
        if receipts is not None and (shared := receipts.get(r.id)) is not None:
            return shared
        slim = Receipt(
            sys.intern(r.session), sys.intern(r.model), r.start, r.end, r.tokens, sys.intern(r.client),
            sys.intern(r.server), r.time,
        )  # fmt: skip
        if r._id is not None:  # the cached id: the same bytes, so the same hash
            object.__setattr__(slim, "_id", r._id)
        if receipts is not None:
            receipts[r.id] = slim
        return slim
    if isinstance(body, Hold):
        h = body
        return Hold(
            sys.intern(h.session), sys.intern(h.server), sys.intern(h.model), h.start, h.end, h.amount,
            h.expires,
        )  # fmt: skip
    return body


@dataclass
class Account:
    """Where an identity's balance comes from, in units; ``balance`` is the one figure that matters."""

    peer_id: str
    balance: int = 0
    granted: int = 0
    earned: int = 0
    rarity_bonus: int = 0
    uptime_bonus: int = 0
    spent: int = 0
    clipped: int = 0
    served_block_tokens: int = 0
    receipts_served: int = 0
    receipts_paid: int = 0
    entries: int = 0
    forked_at: int | None = None
    # bonus units credited at the end of an hour (uptime) or a UTC day (rarity), by the millisecond they
    # are credited at: a receipt dated before then cannot spend them yet (``LedgerReport.spendable``)
    deferred: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one counted receipt moved: its price, what its client could pay of it, what its server got.

    A client pays ``min(price, its balance just before)``, never into debt. The first ``base_fee`` units of
    a payment are the burnt fee; the rest pays for the work, and the server earns that fraction of the
    receipt's earnings, rarity bonus and block-tokens (``share``). A receipt paid no more than the base fee
    (and not in full) credits nobody and counts for no bonus.
    """

    receipt: str
    client: str
    server: str
    price: int
    paid: int
    base_fee: int
    earned: int = 0  # base earnings due to the server (before the cap)
    block_tokens: int = 0  # block-tokens that count: for standing, uptime and the rarity of the day
    rarity_bonus: int = 0  # due to the server at the end of the receipt's UTC day (before the cap)

    @property
    def counts(self) -> bool:
        return _counts(self.price, self.paid, self.base_fee)

    @property
    def status(self) -> str:
        """``full``, ``partial`` or ``none``."""
        if self.paid >= self.price:
            return "full"
        return "partial" if self.counts else "none"

    def share(self, amount: int) -> int:
        """The part of ``amount`` (due for the whole receipt) that its payment covers, rounded down."""
        return _share(self.price, self.paid, self.base_fee, amount)


def _counts(price: int, paid: int, base_fee: int) -> bool:
    return paid >= price or paid > base_fee


def _share(price: int, paid: int, base_fee: int, amount: int) -> int:
    if paid >= price:
        return amount
    if paid <= base_fee:
        return 0
    return amount * (paid - base_fee) // (price - base_fee)


class Payment(NamedTuple):
    """What a counted receipt's client paid, as a sweep keeps it (``Sweep.settlements``): one small tuple
    a receipt, from which its ``Settlement`` (the earnings and block-tokens its payment covers) is made
    when asked (``settlement``, ``Settled``); ``counts`` and ``share`` are the settlement's."""

    receipt: Receipt
    price: int
    paid: int
    base_fee: int

    @property
    def counts(self) -> bool:
        return _counts(self.price, self.paid, self.base_fee)

    def share(self, amount: int) -> int:
        return _share(self.price, self.paid, self.base_fee, amount)

    def __reduce__(self) -> tuple[Any, tuple[Receipt, int, int, int]]:
        # pickle writes every int in full, sharing none: a thawed sweep (``RunningReport.thaw``) held
        # three int objects per receipt where the sweep that froze it held about one (``payment``)
        return payment, (self.receipt, self.price, self.paid, self.base_fee)

    def settlement(self, rules: Rules, rarity_bonus: int = 0) -> Settlement:
        r = self.receipt
        return Settlement(
            r.id, r.client, r.server, self.price, self.paid, self.base_fee,
            self.share(earnings(r.blocks, r.tokens, rules)), self.share(r.block_tokens), rarity_bonus,
        )  # fmt: skip


# One int object per value for the values that recur in payment after payment (prices, the base fee):
# a sweep keeps a ``Payment`` per receipt, and a price computed anew for each, or an int read back from
# a pickle, is an object of its own (28-32 bytes). Bounded: values past the first few thousand distinct
# ones (a liar's odd token counts) are kept as they come.
_SHARED_INTS: dict[int, int] = {}
_MAX_SHARED_INTS = 4096


def _shared(value: int) -> int:
    found = _SHARED_INTS.get(value)
    if found is not None:
        return found
    if len(_SHARED_INTS) < _MAX_SHARED_INTS:
        _SHARED_INTS[value] = value
    return value


def payment(receipt: Receipt, cost: int, paid: int, base_fee: int) -> Payment:
    """A ``Payment`` whose ints are shared with every other payment of the same figures: a sweep of N
    receipts holds a handful of price and fee objects, not up to 3N (measured on a thawed 31,376-entry
    ledger: 34,222 int objects more than distinct values, ~0.9 MiB)."""
    shared = _shared(cost)
    return Payment(receipt, shared, shared if paid == cost else paid, _shared(base_fee))


def settle(receipt: Receipt, cost: int, paid: int, rules: Rules) -> Settlement:
    """The settlement of ``receipt`` priced ``cost`` of which its client could pay ``paid``."""
    return payment(receipt, cost, paid, min(rules.base_fee, cost)).settlement(rules)


@dataclass(frozen=True)
class LedgerReport:
    """The outcome of ``compute``: balances, their breakdown, and why each non-counting entry does not count."""

    accounts: dict[str, Account]
    ignored: Mapping[str, Rejection]  # entry hash -> why it has no effect (running: ``IgnoredEntries``)
    forks: dict[str, int]  # author -> lowest seq with two entries
    counted: Set[str]  # hashes of entries in counting positions (a running report's: ``CountedHashes``)
    # receipt id -> what it moved (``Settled``: the rarity bonus kept apart)
    settled: Mapping[str, Settlement] = field(default_factory=dict)
    # holds in counting positions that no counted receipt consumed (author -> in seq order), and the
    # (client, server, session) of every counted receipt, which consumes the hold of that session
    # (``holds.py``); holds move no credits
    holds: dict[str, list[HeldCredits]] = field(default_factory=dict)
    consumed: Set[tuple[str, str, str]] = frozenset()  # a running report's: ``ConsumedSessions``
    accusations: dict[str, tuple[Accusation, ...]] = field(default_factory=dict)  # accused -> evidence

    @property
    def balances(self) -> dict[str, int]:
        return {peer: account.balance for peer, account in self.accounts.items()}

    def balance(self, peer_id: str) -> int:
        account = self.accounts.get(peer_id)
        return account.balance if account else 0

    def spendable(self, peer_id: str, now: int) -> int:
        """What ``peer_id`` can pay for a receipt dated ``now``: its balance less the bonuses of the current
        hour and day, which are credited only at their end (so a request now would settle before them)."""
        account = self.accounts.get(peer_id)
        if account is None:
            return 0
        later = sum(units for at, units in account.deferred.items() if at >= now)
        return max(0, account.balance - later)

    def standing(self, peer_id: str) -> int:
        """Lifetime block-tokens ``peer_id`` served in paid receipts: what earns a price discount."""
        account = self.accounts.get(peer_id)
        return account.served_block_tokens if account else 0


SweepItem = tuple[int, int, str, object]  # (time, kind, key, what): kind 0 grant, 1 receipt, 2 hour, 3 day


def grant_item(author: str, grant: EntryFacts) -> SweepItem:
    return (grant.time, 0, grant.hash, author)


def receipt_item(r: Receipt) -> SweepItem:
    return (r.time, 1, r.id, r)


def bonus_items(receipts: Iterable[Receipt]) -> list[SweepItem]:
    """The end-of-hour (uptime) and end-of-day (rarity) items of the hours and days of ``receipts``."""
    hours = {(r.server, r.time // HOUR_MS) for r in receipts}
    days = {(r.model, r.time // DAY_MS) for r in receipts}
    items: list[SweepItem] = [
        (hour * HOUR_MS + HOUR_MS - 1, 2, f"{hour}:{server}", (server, hour)) for server, hour in hours
    ]
    items += [(day * DAY_MS + DAY_MS - 1, 3, f"{day}:{model}", (model, day)) for model, day in days]
    return items


def sweep_items(grants: dict[str, EntryFacts], receipts: list[Receipt]) -> list[SweepItem]:
    """Every item of ``compute``'s sweep, in its canonical order."""
    items = [grant_item(author, grant) for author, grant in grants.items()]
    items += [receipt_item(r) for r in receipts]
    items += bonus_items(receipts)
    items.sort(key=lambda item: item[:3])
    return items


class Settled(Mapping[str, Settlement]):
    """Receipt id -> its ``Settlement``, rarity bonus included, made when asked from a sweep's
    ``settlements`` (a ``Payment`` a receipt) and its ``rarity_bonuses`` (a number per receipt of a day
    whose end was swept): a node keeps neither a settlement per receipt nor a second one with the bonus
    for each day a report applies (``rarity.DayRarity``)."""

    __slots__ = ("_bonuses", "_rules", "_settlements")

    def __init__(self, settlements: dict[str, Payment], bonuses: dict[str, int], rules: Rules) -> None:
        self._settlements = settlements
        self._bonuses = bonuses
        self._rules = rules

    def __getitem__(self, receipt_id: str) -> Settlement:
        return self._settlements[receipt_id].settlement(self._rules, self._bonuses.get(receipt_id, 0))

    def __len__(self) -> int:
        return len(self._settlements)

    def __iter__(self) -> Iterator[str]:
        return iter(self._settlements)


def _no_times() -> array[int]:
    return array("q")


def _served_from_zero() -> array[int]:
    return array("q", [0])  # a named function, not a lambda: a running report's state is pickled (running.py)


class Sweep:
    """``compute``'s sweep state: items applied in canonical order move credits between ``accounts``.

    ``step`` applies one item. ``copy`` is an independent copy (a running report applies the bonus items
    still ahead of its last receipt on a copy, ``running.py``)."""

    def __init__(self, rules: Rules, accounts: dict[str, Account]) -> None:
        self.rules = rules
        self.accounts = accounts
        # receipt id -> what it paid (without its rarity bonus), and its rarity bonus once its day ended
        self.settlements: dict[str, Payment] = {}
        self.rarity_bonuses: dict[str, int] = {}
        # a server's times of paid receipts, in sweep order: 8 bytes each, not an int object
        self.served_times: dict[str, array[int]] = defaultdict(_no_times)
        # a server's block-tokens served up to each of its served times: 8 bytes each, not an int object
        self.served_totals: dict[str, array[int]] = defaultdict(_served_from_zero)
        self.hourly: dict[tuple[str, int], int] = defaultdict(int)
        self.days: dict[tuple[str, int], list[Receipt]] = defaultdict(list)  # receipts swept, per day
        self.rarity: dict[tuple[str, int], DayRarity] = {}  # a cache, shared by copies

    def copy(self) -> Sweep:
        """A copy whose steps leave this one as it is (the served lists are only read by bonus items)."""
        other = Sweep(
            self.rules, {p: replace(a, deferred=dict(a.deferred)) for p, a in self.accounts.items()}
        )
        other.settlements, other.rarity_bonuses = dict(self.settlements), dict(self.rarity_bonuses)
        other.served_times, other.served_totals = self.served_times, self.served_totals
        other.hourly, other.days, other.rarity = self.hourly, self.days, self.rarity
        return other

    @property
    def settled(self) -> Settled:
        """Receipt id -> its settlement, rarity bonus included (a view of this sweep's, not a copy)."""
        return Settled(self.settlements, self.rarity_bonuses, self.rules)

    def account(self, peer: str) -> Account:
        found = self.accounts.get(peer)
        if found is None:
            found = self.accounts[peer] = Account(peer)
        return found

    def credit(self, peer: str, amount: int) -> int:
        acc = self.account(peer)
        credited = max(0, min(amount, self.rules.balance_cap - acc.balance))
        acc.balance += credited
        acc.clipped += amount - credited
        return credited

    def defer(self, peer: str, at: int, amount: int) -> None:
        credited = self.credit(peer, amount)
        if credited:
            deferred = self.account(peer).deferred
            deferred[at] = deferred.get(at, 0) + credited

    def step(self, item: SweepItem) -> None:
        at, kind, _, what = item
        rules = self.rules
        if kind == 0 and isinstance(what, str):
            self.credit(what, rules.starter_grant)
        elif kind == 1 and isinstance(what, Receipt):
            r = what
            self.days[(r.model, r.time // DAY_MS)].append(r)
            times = self.served_times.get(r.client)
            standing = self.served_totals[r.client][bisect.bisect_left(times, r.time)] if times else 0
            cost = price(r.blocks, r.tokens, standing, rules)
            payer, payee = self.account(r.client), self.account(r.server)
            paid = min(cost, max(0, payer.balance))
            paid_for = self.settlements[r.id] = payment(r, cost, paid, min(rules.base_fee, cost))
            s = paid_for.settlement(rules)
            payer.balance -= paid
            payer.spent += paid
            payer.receipts_paid += 1
            payee.receipts_served += 1
            if s.counts:
                payee.earned += s.earned
                self.credit(r.server, s.earned)
                payee.served_block_tokens += s.block_tokens
                self.hourly[(r.server, r.time // HOUR_MS)] += s.block_tokens
                self.served_times[r.server].append(r.time)
                totals = self.served_totals[r.server]
                totals.append(totals[-1] + s.block_tokens)
        elif kind == 2 and isinstance(what, tuple):
            server, hour = what
            if rules.uptime_bonus and self.hourly.get((server, hour), 0) >= rules.uptime_min_block_tokens:
                self.account(server).uptime_bonus += rules.uptime_bonus
                self.defer(server, at, rules.uptime_bonus)
        elif kind == 3 and isinstance(what, tuple):
            self._rarity_day(at, what)

    def take_back_day(self, day: tuple[str, int], length: int) -> None:
        """Forget the receipts of ``day`` swept from position ``length`` on (``SweepJournal`` taking steps
        back), here and in the day's rarity."""
        del self.days[day][length:]
        memo = self.rarity.get(day)
        if memo is not None:
            memo.truncate(length)

    def _rarity_day(self, at: int, day: tuple[str, int]) -> None:
        """The rarity bonus of ``day`` (model, UTC day) at its end ``at``: each paying receipt's server is
        due its share of the span's rate times the receipt's tokens; each server is credited the sum (the
        cap clips a sum of credits as it clips them one by one, since none is negative). The day's
        ``rarity.DayRarity`` carries what the last application computed: only the receipts swept since get
        their bonus, unless the coverage changed."""
        swept = self.days.get(day, [])
        memo = self.rarity.get(day)
        if memo is None:
            memo = self.rarity[day] = DayRarity()
            while len(self.rarity) > DAYS_REMEMBERED:
                del self.rarity[min(self.rarity, key=lambda d: d[1])]
        known = len(memo.receipts)
        if known > len(swept) or (known and memo.receipts[known - 1] is not swept[known - 1]):
            memo.truncate(0)  # not the receipts it was built from (a sweep that bypassed take_back_day)
            known = 0
        memo.extend(swept[known:], self.settlements)
        memo.settle(known, self.rules)
        self.rarity_bonuses.update(memo.bonus_of)
        for server, bonus in memo.due.items():
            if bonus:
                self.account(server).rarity_bonus += bonus
                self.defer(server, at, bonus)


def opening_accounts(counted: Counted, rules: Rules) -> dict[str, Account]:
    """The accounts before the sweep: each author's counted entries, fork and starter grant."""
    accounts = {author: Account(author, entries=n) for author, n in counted.entries.items()}
    for author, forked_at in counted.forks.items():
        accounts.setdefault(author, Account(author)).forked_at = forked_at
    for author in counted.grants:
        accounts[author].granted = rules.starter_grant
    return accounts


def compute(
    entries: Iterable[EntryFacts], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> LedgerReport:
    """Balances as a pure function of the set of entries; duplicates and order make no difference.

    Entries are assumed to have passed ``check_body`` (a store only holds such, and may pass its ``Fact``
    of each instead of the entry); pass ``verify`` to check whole entries here instead, and those that
    fail are reported in ``ignored``. Rules, in order:

    - forks: an author with two different entries at one seq (seen directly or in a fork proof) counts
      only its entries below that seq; each author counts its linked prefix from seq 1;
    - grants: the author's first counted grant credits the starter grant at its entry time;
    - receipts: counted once per receipt id; of receipts for one session span, the one with the most
      tokens; a receipt whose client holds counted evidence against its server for that session counts
      for nothing (the liar earns nothing for it; ``evidence.py``);
    - one sweep in order of (time, kind, id), grants before receipts before the hour's uptime bonus before
      the day's rarity bonus at one instant: a receipt's client pays ``price`` (discounted by its standing
      just before) but never more than its balance at that point, so no one spends into debt; the server
      earns its per-block-token earnings in proportion to what was paid beyond the base fee
      (``Settlement``); at the end of each UTC hour, a server whose paid block-tokens that hour reach the
      threshold gets the uptime bonus; at the end of each UTC day, the rarity bonus of that day's paid
      receipts (a receipt that paid no more than the base fee counts for no one), in the same proportion;
    - every credit is capped at ``balance_cap``;
    - holds move no credits: the report lists each author's holds in counting positions that no
      counted receipt consumed (``holds``) and the (client, server, session) of every counted receipt
      (``consumed``), for ``holds.py``.

    Only grants and bonuses create credits; a receipt moves at most what its client had (docs/trust.md).
    """
    counted = count(entries, rules, verify)
    accounts = opening_accounts(counted, rules)

    # One sweep in canonical order: (time, kind, key). At one instant grants come first, then receipts,
    # then the hour's uptime bonuses, then the day's rarity bonuses, so a bonus sees every receipt of its
    # hour or day. A receipt debits its client at most what the client holds at that point, and credits
    # its server in proportion to what was paid (see ``settle``).
    sweep = Sweep(rules, accounts)
    for item in sweep_items(counted.grants, counted.receipts):
        sweep.step(item)
    consumed = frozenset((r.client, r.server, r.session) for r in counted.receipts)
    return LedgerReport(
        accounts,
        counted.ignored,
        counted.forks,
        frozenset(e.hash for e in counted.counted),
        sweep.settled,
        collect_holds(counted.counted, consumed),
        consumed,
        counted.accusations,
    )


def balances(
    entries: Iterable[Entry], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> dict[str, int]:
    """Peer id -> balance in units; see ``compute``."""
    return compute(entries, rules=rules, verify=verify).balances

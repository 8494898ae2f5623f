"""Balances as a pure function of the set of valid ledger entries (``compute``).

Standard library only. Duplicates and arrival order cannot change the result, and ``compute`` never
reads a clock (the "not too far in the future" check is made once, when an entry is accepted). The
prices and constants it applies are in ``economics.py``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .canonical import MAX_SAFE_INT
from .economics import DAY_MS, DEFAULT_RULES, HOUR_MS, Rules, earnings, price
from .entries import Entry, ForkProof, Grant
from .ledger_fields import Rejection, Verify
from .receipts import Receipt, ReceiptBody
from .rules import check_body, check_link


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


@dataclass(frozen=True)
class LedgerReport:
    """The outcome of ``compute``: balances, their breakdown, and why each non-counting entry does not count."""

    accounts: dict[str, Account]
    ignored: dict[str, Rejection]  # entry hash -> why it has no effect
    forks: dict[str, int]  # author -> lowest seq with two entries
    counted: frozenset[str]  # hashes of entries in counting positions

    @property
    def balances(self) -> dict[str, int]:
        return {peer: account.balance for peer, account in self.accounts.items()}

    def balance(self, peer_id: str) -> int:
        account = self.accounts.get(peer_id)
        return account.balance if account else 0

    def standing(self, peer_id: str) -> int:
        """Lifetime block-tokens ``peer_id`` served in counted receipts: what earns a price discount."""
        account = self.accounts.get(peer_id)
        return account.served_block_tokens if account else 0


def fork_points(entries: Iterable[Entry]) -> dict[str, int]:
    """Author -> lowest seq at which two different entries are known (directly or inside fork proofs)."""
    seen: dict[tuple[str, int], str] = {}
    forks: dict[str, int] = {}

    def note(e: Entry) -> None:
        other = seen.setdefault((e.author, e.seq), e.hash)
        if other != e.hash and e.seq < forks.get(e.author, MAX_SAFE_INT + 1):
            forks[e.author] = e.seq

    for entry in entries:
        note(entry)
        if isinstance(entry.body, ForkProof):
            note(entry.body.a)
            note(entry.body.b)
    return forks


def _dedupe(
    entries: Iterable[Entry], verify: Verify | None, rules: Rules, ignored: dict[str, Rejection]
) -> dict[str, Entry]:
    pool: dict[str, Entry] = {}
    for entry in entries:
        if entry.hash in pool:
            continue
        if verify is not None:
            rejection = check_body(entry, verify, rules)
            if rejection is not None:
                ignored.setdefault(entry.hash, rejection)
                continue
        ignored.pop(entry.hash, None)  # another copy of the same content was bad; this one is good
        pool[entry.hash] = entry
    return pool


def _counting_chains(
    pool: dict[str, Entry], forks: dict[str, int], ignored: dict[str, Rejection]
) -> tuple[list[Entry], dict[str, int]]:
    """Each author's linked prefix from seq 1, stopping at a gap, a bad link or the fork."""
    by_author: dict[str, dict[int, Entry]] = defaultdict(dict)
    for entry in sorted(pool.values(), key=lambda e: e.hash):
        by_author[entry.author].setdefault(entry.seq, entry)
    counted: list[Entry] = []
    lengths: dict[str, int] = {}
    for author, seqs in by_author.items():
        fork = forks.get(author, MAX_SAFE_INT + 1)
        prev: Entry | None = None
        seq = 1
        while seq < fork and seq in seqs and check_link(prev, seqs[seq]) is None:
            prev = seqs[seq]
            counted.append(prev)
            seq += 1
        lengths[author] = seq - 1
    for entry in pool.values():
        length = lengths[entry.author]
        if entry.seq <= length and entry.seq < forks.get(entry.author, MAX_SAFE_INT + 1):
            continue
        if entry.author in forks and entry.seq >= forks[entry.author]:
            ignored[entry.hash] = Rejection("forked", f"author forked at seq {forks[entry.author]}")
        else:
            ignored[entry.hash] = Rejection(
                "gap", f"entry does not extend the author's chain at seq {length}"
            )
    return counted, lengths


def _rarity_bonus(receipts: list[Receipt], rules: Rules) -> dict[str, int]:
    """Receipt id -> rarity bonus units: per model per UTC day, distinct servers covering each block."""
    groups: dict[tuple[str, int], list[Receipt]] = defaultdict(list)
    for r in receipts:
        groups[(r.model, r.time // DAY_MS)].append(r)
    bonus: dict[str, int] = {}
    for group in groups.values():
        spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for r in group:
            spans[r.server].append((r.start, r.end))
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
        for r in group:
            total = 0
            i = max(bisect.bisect_right(points, r.start) - 1, 0)
            while i < len(points) - 1 and points[i] < r.end:
                overlap = min(points[i + 1], r.end) - max(points[i], r.start)
                if overlap > 0:
                    total += rules.rarity_rate(counts[i]) * overlap
                i += 1
            bonus[r.id] = total * r.tokens
    return bonus


def compute(
    entries: Iterable[Entry], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> LedgerReport:
    """Balances as a pure function of the set of entries; duplicates and order make no difference.

    Entries are assumed to have passed ``check_body`` (a store only holds such); pass ``verify`` to check
    them here instead, and those that fail are reported in ``ignored``. Rules, in order:

    - forks: an author with two different entries at one seq (seen directly or in a fork proof) counts
      only its entries below that seq; each author counts its linked prefix from seq 1;
    - grants: the author's first counted grant credits the starter grant at its entry time;
    - receipts: counted once per receipt id; of receipts for one session span, the one with the most
      tokens; the client pays ``price`` (discounted by its standing just before), the server earns
      per block-token plus the rarity bonus, and an uptime bonus per busy UTC hour;
    - the credits and debits are applied in order of (time, id) with each balance capped.
    """
    ignored: dict[str, Rejection] = {}
    pool = _dedupe(entries, verify, rules, ignored)
    forks = fork_points(pool.values())
    counted, _ = _counting_chains(pool, forks, ignored)
    accounts: dict[str, Account] = {}

    def account(peer: str) -> Account:
        found = accounts.get(peer)
        if found is None:
            found = accounts[peer] = Account(peer)
        return found

    events: list[tuple[int, str, str, int]] = []  # (time, tie-break, peer, +credit / -debit)
    grants: dict[str, Entry] = {}
    carriers: dict[str, list[Entry]] = defaultdict(list)
    for entry in counted:
        first = grants.get(entry.author)
        if isinstance(entry.body, Grant) and (first is None or entry.seq < first.seq):
            grants[entry.author] = entry
    for entry in counted:
        account(entry.author).entries += 1
        if isinstance(entry.body, Grant) and grants[entry.author] is not entry:
            claimed = grants[entry.author].seq
            ignored[entry.hash] = Rejection("grant_claimed", f"grant already claimed at seq {claimed}")
        elif isinstance(entry.body, ReceiptBody):
            carriers[entry.body.receipt.id].append(entry)
    for author, forked_at in forks.items():
        account(author).forked_at = forked_at
    for author, grant in grants.items():
        events.append((grant.time, "g" + grant.hash, author, rules.starter_grant))
        account(author).granted = rules.starter_grant

    best: dict[tuple[str, str, str, str, int, int], Receipt] = {}
    for copies in carriers.values():
        copies.sort(key=lambda e: e.hash)
        for extra in copies[1:]:
            ignored[extra.hash] = Rejection(
                "duplicate_receipt", f"receipt already counted in entry {copies[0].hash[:12]}…"
            )
        body = copies[0].body
        if not isinstance(body, ReceiptBody):
            continue
        r = body.receipt
        held = best.get(r.span_key)
        if held is None or (r.tokens, r.time, held.id) > (held.tokens, held.time, r.id):
            best[r.span_key] = r
    receipts = sorted(best.values(), key=lambda r: (r.time, r.id))
    winners = {r.id for r in receipts}
    for rid, copies in carriers.items():
        if rid not in winners:
            ignored[copies[0].hash] = Rejection(
                "superseded", "a receipt with more tokens for the same session span counts"
            )

    served_times: dict[str, list[int]] = defaultdict(list)
    served_totals: dict[str, list[int]] = defaultdict(lambda: [0])
    for r in receipts:  # sorted by time: prefix sums of block-tokens served, per server
        served_times[r.server].append(r.time)
        served_totals[r.server].append(served_totals[r.server][-1] + r.block_tokens)
    rarity = _rarity_bonus(receipts, rules)
    hourly: dict[tuple[str, int], int] = defaultdict(int)
    for r in receipts:
        standing = (
            served_totals[r.client][bisect.bisect_left(served_times[r.client], r.time)]
            if r.client in served_times
            else 0
        )
        cost = price(r.blocks, r.tokens, standing, rules)
        earned = earnings(r.blocks, r.tokens, rules)
        events.append((r.time, r.id + "c", r.client, -cost))
        events.append((r.time, r.id + "s", r.server, earned + rarity[r.id]))
        payer, payee = account(r.client), account(r.server)
        payer.spent += cost
        payer.receipts_paid += 1
        payee.earned += earned
        payee.rarity_bonus += rarity[r.id]
        payee.served_block_tokens += r.block_tokens
        payee.receipts_served += 1
        hourly[(r.server, r.time // HOUR_MS)] += r.block_tokens
    for (server, hour), block_tokens in hourly.items():
        if block_tokens >= rules.uptime_min_block_tokens and rules.uptime_bonus:
            events.append((hour * HOUR_MS + HOUR_MS - 1, f"u{hour}", server, rules.uptime_bonus))
            account(server).uptime_bonus += rules.uptime_bonus

    events.sort()
    for _, _, peer, amount in events:
        acc = accounts[peer]
        if amount < 0:
            acc.balance += amount
            continue
        credited = max(0, min(amount, rules.balance_cap - acc.balance))
        acc.balance += credited
        acc.clipped += amount - credited
    return LedgerReport(accounts, ignored, forks, frozenset(e.hash for e in counted))


def balances(
    entries: Iterable[Entry], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> dict[str, int]:
    """Peer id -> balance in units; see ``compute``."""
    return compute(entries, rules=rules, verify=verify).balances

"""Which ledger entries count, and which receipts, before any credit moves (``count``).

Standard library only. ``balances.compute`` is this and then one sweep of the counted grants and receipts
that moves the credits; a running report (``running.py``) runs this once when it rebuilds its state and
its own sweep, which it keeps and extends. The rules, in order (``compute``'s docstring has them all):

- duplicates of one entry are one entry; with ``verify``, entries whose body or signature fails are
  ignored;
- forks: an author with two different entries at one seq (seen directly or in a fork proof) counts only
  its entries below that seq; each author counts its linked prefix from seq 1;
- grants: the author's first counted grant counts, any later one is ``grant_claimed``;
- receipts: counted once per receipt id (the copy with the lowest hash; the others are duplicates); of
  receipts for one session span, the one with the most tokens; a receipt whose client holds counted
  evidence against its server for that session counts for nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .canonical import MAX_SAFE_INT
from .economics import Rules
from .entries import Entry, ForkProof, Grant
from .evidence import Evidence
from .ledger_fields import DUPLICATE_RECEIPT, EntryFacts, Rejection, Verify
from .receipts import Receipt, ReceiptBody
from .rules import check_body, check_link

__all__ = ["Accusation", "Counted", "count", "fork_points", "receipt_of"]


@dataclass(frozen=True)
class Accusation:
    """One counted ``evidence`` entry: ``author`` (a client) proved ``accused`` lied in ``session``."""

    accused: str
    author: str
    session: str
    entry: str  # the evidence entry's hash
    time: int


@dataclass
class Counted:
    """What counts among a set of entries (``count``)."""

    counted: list[EntryFacts]  # the entries in counting positions
    lengths: dict[str, int]  # author -> how many of its chain's entries count (from seq 1)
    forks: dict[str, int]  # author -> lowest seq with two entries
    blocked: set[str]  # authors with an entry past a gap or a fork (it does not count)
    ignored: dict[str, Rejection]  # entry hash -> why it has no effect
    grants: dict[str, EntryFacts]  # author -> its grant that counts
    entries: dict[str, int]  # author -> how many of its entries count
    receipts: list[Receipt]  # the receipts that count, in (time, id) order
    accusations: dict[str, tuple[Accusation, ...]]  # accused -> the counted evidence against it


def receipt_of(body: object) -> Receipt | None:
    """The receipt an entry carries: its body's (an ``Entry``) or the body itself (a ``Fact``)."""
    if isinstance(body, ReceiptBody):
        return body.receipt
    return body if isinstance(body, Receipt) else None


def fork_points(entries: Iterable[EntryFacts]) -> dict[str, int]:
    """Author -> lowest seq at which two different entries are known (directly or inside fork proofs)."""
    seen: dict[tuple[str, int], str] = {}
    forks: dict[str, int] = {}

    def note(e: EntryFacts) -> None:
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
    entries: Iterable[EntryFacts], verify: Verify | None, rules: Rules, ignored: dict[str, Rejection]
) -> dict[str, EntryFacts]:
    pool: dict[str, EntryFacts] = {}
    for entry in entries:
        if entry.hash in pool:
            continue
        if verify is not None:
            if not isinstance(entry, Entry):
                raise TypeError("compute(verify=...) checks signatures: it needs whole entries, not facts")
            rejection = check_body(entry, verify, rules)
            if rejection is not None:
                ignored.setdefault(entry.hash, rejection)
                continue
        ignored.pop(entry.hash, None)  # another copy of the same content was bad; this one is good
        pool[entry.hash] = entry
    return pool


def _counting_chains(
    pool: dict[str, EntryFacts], forks: dict[str, int], ignored: dict[str, Rejection]
) -> tuple[list[EntryFacts], dict[str, int]]:
    """Each author's linked prefix from seq 1, stopping at a gap, a bad link or the fork."""
    by_author: dict[str, dict[int, EntryFacts]] = defaultdict(dict)
    for entry in sorted(pool.values(), key=lambda e: e.hash):
        by_author[entry.author].setdefault(entry.seq, entry)
    counted: list[EntryFacts] = []
    lengths: dict[str, int] = {}
    for author, seqs in by_author.items():
        fork = forks.get(author, MAX_SAFE_INT + 1)
        prev: EntryFacts | None = None
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


def count(entries: Iterable[EntryFacts], rules: Rules, verify: Verify | None = None) -> Counted:
    """What counts among ``entries`` (module docstring); duplicates and order make no difference.
    ``entries`` is read once."""
    ignored: dict[str, Rejection] = {}
    pool = _dedupe(entries, verify, rules, ignored)
    forks = fork_points(pool.values())
    counted, lengths = _counting_chains(pool, forks, ignored)
    blocked = {pool[h].author for h in ignored if h in pool} | set(forks)
    del pool

    grants: dict[str, EntryFacts] = {}
    entry_counts: dict[str, int] = {}
    carriers: dict[str, list[EntryFacts]] = defaultdict(list)
    for entry in counted:
        first = grants.get(entry.author)
        if isinstance(entry.body, Grant) and (first is None or entry.seq < first.seq):
            grants[entry.author] = entry
    for entry in counted:
        entry_counts[entry.author] = entry_counts.get(entry.author, 0) + 1
        if isinstance(entry.body, Grant) and grants[entry.author] is not entry:
            claimed = grants[entry.author].seq
            ignored[entry.hash] = Rejection("grant_claimed", f"grant already claimed at seq {claimed}")
        elif (carried := receipt_of(entry.body)) is not None:
            carriers[carried.id].append(entry)
    accused: dict[str, list[Accusation]] = defaultdict(list)
    for entry in counted:
        if isinstance(entry.body, Evidence):
            ev = entry.body
            accused[ev.accused].append(
                Accusation(ev.accused, entry.author, ev.session, entry.hash, entry.time)
            )
    voided = {(a.accused, a.author, a.session) for found in accused.values() for a in found}

    best: dict[tuple[str, str, str, str, int, int], Receipt] = {}
    for copies in carriers.values():
        copies.sort(key=lambda e: e.hash)
        for extra in copies[1:]:
            ignored[extra.hash] = DUPLICATE_RECEIPT
        r = receipt_of(copies[0].body)
        if r is None:
            continue
        if (r.server, r.client, r.session) in voided:
            ignored[copies[0].hash] = Rejection(
                "evidence", "its client holds evidence that the server lied in this session"
            )
            continue
        held = best.get(r.span_key)
        if held is None or (r.tokens, r.time, held.id) > (held.tokens, held.time, r.id):
            best[r.span_key] = r
    receipts = sorted(best.values(), key=lambda r: (r.time, r.id))
    winners = {r.id for r in receipts}
    for rid, copies in carriers.items():
        if rid not in winners and copies[0].hash not in ignored:
            ignored[copies[0].hash] = Rejection(
                "superseded", "a receipt with more tokens for the same session span counts"
            )
    accusations = {
        peer: tuple(sorted(found, key=lambda a: (a.time, a.entry))) for peer, found in accused.items()
    }
    return Counted(counted, lengths, forks, blocked, ignored, grants, entry_counts, receipts, accusations)

"""A running ledger report: ``balances.compute`` kept up to date as a store appends entries.

Standard library only. A store used to recompute ``compute`` over every fact after each write (94 ms at
3,249 entries, and as many short-lived objects per write as the ledger has entries, which fragment a
long-lived node's heap). ``RunningReport`` keeps what ``compute`` derives (counted chain lengths, the
receipt that counts for each session, open holds, the sweep's state after its last receipt) and applies
each new entry to it, when the entry can only *extend* that derivation:

- it extends its author's counted chain at the head (the author has no fork, and already has entries);
- it is a hold, or a receipt for a session no other counted receipt covers and not voided by evidence
  (its client or server may have no account yet: gossip often brings a server's copy before the
  client's log), or another copy of a receipt already counted;
- it is the first grant of an identity with no entries yet (a newcomer's first entry), even one that
  receipts named already (its account, made by the sweep, keeps its swept fields).

A receipt or a grant whose sweep key ``(time, kind, id)`` comes before the last receipt swept (gossip
brings them so all the time) is swept in its place: the steps after it are taken back and swept again
(``sweep_journal.py``), as long as the journal still keeps them all.

Anything else (a second grant, a fork proof, evidence, an item older than the journal's steps, a
superseding receipt, a dropped chain, a rollback) makes ``extend`` return None and the store rebuilds
the running state from every entry (``full``: ``compute``'s first half, ``counting.count``, then the
state's own sweep; the old state is dropped first, so that a long-lived node's heap holds one copy of it
at the peak, not two; a native store with a big ledger then has the new one copied into fresh memory:
``_compact``). The result is the same
``LedgerReport`` as ``compute`` over the same entries, field for field (``tests/test_ledger_running.py``
checks it after every write of real and adversarial ledgers). What is per entry is not kept here but
read from the store when asked (``StoredChains``): the hashes in counting positions and the duplicate
copies of receipts.

The bonus items after the last receipt (its hour's uptime bonus, its day's rarity bonus, and any
later grant) are applied to a copy of the sweep for each report; they become part of the kept state
only once a later receipt passes them, after which no entry the fast path accepts can precede them. The
day's rarity bonus, shared by the copies, carries what its last application computed
(``rarity.DayRarity``), so a report costs the receipts written since, not the day's.
"""

from __future__ import annotations

import gc
import io
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from typing import Any, Protocol

from .balances import (
    Account,
    LedgerReport,
    Sweep,
    SweepItem,
    bonus_items,
    grant_item,
    opening_accounts,
    receipt_item,
    sweep_items,
)
from .counting import Counted, count, receipt_of
from .economics import DEFAULT_RULES, Rules
from .entries import Grant
from .errors import LedgerError
from .holds import HeldCredits, Hold, collect_holds
from .ledger_fields import DUPLICATE_RECEIPT, EntryFacts, Rejection
from .receipts import Receipt
from .rules import check_link
from .sweep_journal import SweepJournal

__all__ = [
    "ConsumedSessions",
    "CountedHashes",
    "CountedSessions",
    "IgnoredEntries",
    "RunningReport",
    "StoredChains",
]


class StoredChains(Protocol):
    """What a running report reads from its store's chains instead of keeping it (both stores)."""

    def locate(self, entry_hash: str) -> tuple[str, int] | None:
        """A stored chain entry's (author, seq), by its hash."""

    def chain_hashes(self, author: str, length: int) -> list[str]:
        """The hashes of ``author``'s stored chain from seq 1 to ``length``, in order."""

    def receipt_carriers(self, receipt_id: str) -> list[tuple[str, str, int]]:
        """(hash, author, seq) of each stored chain entry carrying the receipt ``receipt_id``."""

    def carried(self, entry_hash: str) -> tuple[str, int, str] | None:
        """(author, seq, receipt id) of a stored chain entry that carries a receipt, by its hash."""


# what ``_rebuild`` derives; dropped before the next full compute
_STATE = (
    "forks",
    "lengths",
    "heads",
    "blocked",
    "ignored",
    "duplicates",
    "holds",
    "sessions",
    "accusations",
    "voided",
    "sweep",
    "journal",
    "tail",
    "last_key",
)


# what a frozen state may name besides this package's core types: the containers it is made of
_STATE_GLOBALS = frozenset(
    [("array", "array"), ("array", "_array_reconstructor"), ("collections", "defaultdict")]
    + [("collections", "deque"), ("collections", "OrderedDict")]
    + [("builtins", name) for name in ("int", "list", "tuple", "dict", "set", "frozenset", "bytes", "str")]
)
_CORE = __name__.rpartition(".")[0] + "."


class _StateUnpickler(pickle.Unpickler):
    """Reads back ``RunningReport.freeze``'s bytes, refusing every global but the core's types and the
    containers above: bytes that are not a running state (damaged, or not made by ``freeze``) fail
    instead of calling whatever they name."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_CORE) or (module, name) in _STATE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a running state")


class CountedHashes(Set[str]):
    """``LedgerReport.counted`` of a running report: the hashes of each author's stored chain up to its
    counted length as of the report, looked up in the store (``StoredChains``) rather than
    kept in a set, which held every entry's hash and was copied for every report. A chain only grows
    between reports (an entry written later has a higher seq), so the answer stays the report's; after
    the store drops a chain, an older report's view reads the chain written in its place."""

    __slots__ = ("_chains", "_lengths")

    def __init__(self, lengths: dict[str, int], chains: StoredChains) -> None:
        self._lengths = lengths
        self._chains = chains

    def __contains__(self, entry_hash: object) -> bool:
        found = self._chains.locate(entry_hash) if isinstance(entry_hash, str) else None
        return found is not None and found[1] <= self._lengths.get(found[0], 0)

    def __len__(self) -> int:
        return sum(self._lengths.values())

    def __iter__(self) -> Iterator[str]:
        for author, length in self._lengths.items():
            if length:
                yield from self._chains.chain_hashes(author, length)


class IgnoredEntries(Mapping[str, Rejection]):
    """``LedgerReport.ignored`` of a running report: the entries that do not count and why. Every copy
    of a receipt in counting positions but the one with the lowest hash is a duplicate: those (a third
    of a busy ledger's entries) are found in the store (``StoredChains``) as of the report's counted
    lengths, not kept; the other reasons (gaps, forks, claimed grants, superseded or voided receipts:
    rare, each runs ``compute``) are kept. ``duplicates`` is how many there are, for ``len``."""

    __slots__ = ("_chains", "_duplicates", "_explicit", "_lengths")

    def __init__(
        self, explicit: dict[str, Rejection], duplicates: int, lengths: dict[str, int], chains: StoredChains
    ) -> None:
        self._explicit = explicit
        self._duplicates = duplicates
        self._lengths = lengths
        self._chains = chains

    def __getitem__(self, entry_hash: str) -> Rejection:
        found = self._explicit.get(entry_hash)
        if found is not None:
            return found
        if isinstance(entry_hash, str) and self._duplicate(entry_hash):
            return DUPLICATE_RECEIPT
        raise KeyError(entry_hash)

    def _duplicate(self, entry_hash: str) -> bool:
        carried = self._chains.carried(entry_hash)
        if carried is None or carried[1] > self._lengths.get(carried[0], 0):
            return False
        lengths = self._lengths
        copies = [
            h for h, author, seq in self._chains.receipt_carriers(carried[2]) if seq <= lengths.get(author, 0)
        ]
        return entry_hash != min(copies)

    def __len__(self) -> int:
        return len(self._explicit) + self._duplicates

    def __iter__(self) -> Iterator[str]:
        yield from self._explicit
        for entry_hash in CountedHashes(self._lengths, self._chains):
            if entry_hash not in self._explicit and self._duplicate(entry_hash):
                yield entry_hash


class CountedSessions(Set[tuple[str, str, str]]):
    """(client, server, session) -> the receipt that counts for it, of a running state: the receipts
    kept by their session id alone, not under a tuple each (64 bytes a receipt); a session id that
    another (client, server) already holds (only a liar reuses one: ids are 16 random bytes) is kept
    under its whole key apart. Only ``add``ed to: a full compute builds a new one."""

    __slots__ = ("_apart", "_by_session")

    def __init__(self) -> None:
        self._by_session: dict[str, Receipt] = {}
        self._apart: dict[tuple[str, str, str], Receipt] = {}

    def get(self, key: tuple[str, str, str]) -> Receipt | None:
        client, server, session = key
        found = self._by_session.get(session)
        if found is not None and found.client == client and found.server == server:
            return found
        return self._apart.get(key) if self._apart else None

    def add(self, receipt: Receipt) -> None:
        """``receipt`` counts for its session (one already there for the same key is replaced)."""
        held = self._by_session.get(receipt.session)
        if held is None or (held.client == receipt.client and held.server == receipt.server):
            self._by_session[receipt.session] = receipt
        else:
            self._apart[(receipt.client, receipt.server, receipt.session)] = receipt

    def receipts(self) -> list[Receipt]:
        """Every receipt kept, as a list: a store's writer may add while another thread reads a report."""
        return [*self._by_session.values(), *self._apart.values()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 3 and self.get(key) is not None

    def __len__(self) -> int:
        return len(self._by_session) + len(self._apart)

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        for r in self.receipts():
            yield (r.client, r.server, r.session)


class ConsumedSessions(Set[tuple[str, str, str]]):
    """``LedgerReport.consumed`` of a running report: the sessions of its counted receipts, read from the
    state's ``CountedSessions`` instead of a frozenset copied for every report (0.9 ms and ~300 KB at
    10,000 receipts). Every counted receipt is swept, so a session counts as of the report when its
    receipt is among the report's settlements (its own copy): one added after the report is not."""

    __slots__ = ("_sessions", "_settled")

    def __init__(self, sessions: CountedSessions, settled: Mapping[str, object]) -> None:
        self._sessions = sessions
        self._settled = settled

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 3):
            return False
        found = self._sessions.get(key)
        return found is not None and found.id in self._settled

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        for r in self._sessions.receipts():
            if r.id in self._settled:
                yield (r.client, r.server, r.session)


class RunningReport:
    """``compute`` over a store's entries, extended entry by entry where it can be (module docstring).

    ``chains`` is the store's (``StoredChains``): a report's ``counted`` (``CountedHashes``) and its
    duplicate receipts (``IgnoredEntries``) are read there."""

    def __init__(
        self, chains: StoredChains, rules: Rules = DEFAULT_RULES, *, compact_from: int | None = None
    ) -> None:
        self.rules = rules
        self.chains = chains
        # ``_compact`` the state after a full compute over at least this many entries (None: never); below
        # it the state is small and the collection ``_compact`` runs (proportional to all of the process's
        # objects) would cost more than the arenas it could give back
        self.compact_from = compact_from
        self.report: LedgerReport | None = None
        self.full_runs = 0  # how many times ``full`` rebuilt the state (tests and the benchmark read it)
        self.extensions = 0

    def full(self, entries: Iterable[EntryFacts]) -> LedgerReport:
        """``compute`` over ``entries``, keeping the state later entries extend (in fresh memory when
        there are ``compact_from`` entries or more: ``_compact``). It runs ``compute``'s first half
        (``counting.count``) and its own sweep, which it keeps, instead of ``compute`` whole: the report is
        built from that state, like every extended one."""
        self.forget()
        counted = count(entries, self.rules)
        self.full_runs += 1
        big = self.compact_from is not None and len(counted.counted) >= self.compact_from
        self._rebuild(counted)
        del counted
        if big:
            self._compact()
        self.report = self._build()
        return self.report

    def _counted(self, lengths: dict[str, int]) -> CountedHashes:
        return CountedHashes(lengths, self.chains)

    def _ignored(self, lengths: dict[str, int]) -> IgnoredEntries:
        return IgnoredEntries(dict(self.ignored), self.duplicates, lengths, self.chains)

    def extend(self, added: Sequence[EntryFacts]) -> LedgerReport | None:
        """The report after ``added`` (entries the store wrote since the last report, in write order), or
        None when one of them needs a full ``compute``; the state is then unusable until ``full``."""
        if self.report is None:
            return None
        for fact in added:
            if not self._apply(fact):
                self.forget()
                return None
        self.extensions += 1
        self.report = self._build()
        return self.report

    def forget(self) -> None:
        """Drop the running state (a full compute follows), so that the next one is built while the old
        one is gone: a long-lived node's heap then holds one copy at its peak, not two."""
        self.report = None
        for name in _STATE:
            self.__dict__.pop(name, None)

    def freeze(self) -> bytes:
        """The state ``full`` built, pickled, for ``thaw`` in this process (``_compact``) or another
        (``python_peer/ledger_rebuild.py``: a child builds it, the node thaws it). Only bytes this
        package's own code made may be thawed, never a ledger's or a peer's: unpickling runs code."""
        if self.report is None:
            raise LedgerError("no running state to freeze: run full first")
        state = {name: self.__dict__[name] for name in _STATE}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def thaw(self, frozen: bytes) -> LedgerReport:
        """The report of the state ``freeze`` made over this store's entries (in another process:
        ``ledger_rebuild``), which this report keeps and extends from now on, as if ``full`` had run."""
        self.forget()
        self._load(frozen)
        self.full_runs += 1
        self.report = self._build()
        return self.report

    def _load(self, frozen: bytes) -> None:
        try:
            state = _StateUnpickler(io.BytesIO(frozen)).load()
        except Exception as exc:  # whatever a truncated or foreign pickle raises (it runs no code here)
            raise LedgerError(f"a frozen running state that does not read back: {exc}", code="store") from exc
        if not isinstance(state, dict) or set(state) != set(_STATE):
            raise LedgerError("a frozen running state without the fields of one", code="store")
        self.__dict__.update(state)

    def _compact(self) -> None:
        """Copy the state into fresh memory and free the original: what a long-lived process should keep
        after a full compute it ran itself (a native store runs big ones in a child: ``thaw``).

        CPython's allocator returns a 1 MiB arena to the system only once no object in it is alive. The
        objects a full compute keeps (receipts, their ids, the sweep's payments) are made among many
        times as many it drops (each row's fact, ``count``'s indexes), so they end up spread
        over every arena the compute filled, and the process keeps its peak: measured on a 33,677-entry
        ledger, 30 MiB of resident memory after the store opened against 12 MiB of live objects
        (bench/README.md). Pickled to one buffer, the originals freed, then unpickled, the same state
        fills few arenas and the others go back (16 MiB resident; 0.2 s of the compute's 1.7 s). Shared
        objects stay shared (the sweep's day lists and its rarity refer to the same receipts;
        ``DayRarity`` compares them by identity). The bytes are this process's own, made a line before:
        nothing from outside is unpickled."""
        frozen = pickle.dumps({name: self.__dict__.pop(name) for name in _STATE}, pickle.HIGHEST_PROTOCOL)
        gc.collect()  # also empties the interpreter's free lists, whose spare tuples and dicts pin arenas
        self._load(frozen)

    # --- the state --------------------------------------------------------------------------------------

    def _rebuild(self, counted: Counted) -> None:
        self.forks = counted.forks
        self.lengths = counted.lengths
        self.heads: dict[str, EntryFacts] = {}
        for entry in counted.counted:
            head = self.heads.get(entry.author)
            if head is None or entry.seq > head.seq:
                self.heads[entry.author] = entry
        # authors with an entry that does not count (a gap or a fork): a new entry may unblock it
        self.blocked = counted.blocked
        # why entries do not count, but the duplicate copies of receipts (``IgnoredEntries``): counted
        self.ignored = {h: r for h, r in counted.ignored.items() if r.code != DUPLICATE_RECEIPT.code}
        self.duplicates = len(counted.ignored) - len(self.ignored)
        self.accusations = counted.accusations
        self.voided = {
            (a.accused, a.author, a.session) for found in counted.accusations.values() for a in found
        }
        # (client, server, session) -> the receipt that counts for it (``consumed``); a session with
        # receipts for two spans counting (only liars sign such) leaves one here, so that a copy of the
        # other, or a receipt for any span of that session, runs ``compute`` again
        self.sessions = CountedSessions()
        for r in counted.receipts:
            self.sessions.add(r)
        self.holds = collect_holds(counted.counted, self.sessions)
        # the sweep up to its last receipt; what follows it is applied on a copy for each report
        items = sweep_items(counted.grants, counted.receipts)
        last = max((i for i, item in enumerate(items) if item[1] == 1), default=-1)
        self.sweep = Sweep(self.rules, opening_accounts(counted, self.rules))
        self.journal = SweepJournal(self.sweep)
        kept = max(0, last + 1 - self.journal.limit)
        for item in items[:kept]:
            self.sweep.step(item)
        for item in items[kept : last + 1]:
            self.journal.step(item)
        self.tail: list[SweepItem] = items[last + 1 :]
        self.last_key: tuple[int, int, str] = items[last][:3] if last >= 0 else (-1, 1, "")

    # --- one new entry ----------------------------------------------------------------------------------

    def _apply(self, fact: EntryFacts) -> bool:
        author = fact.author
        head = self.heads.get(author)
        if head is None:
            return self._newcomer(fact)
        if author in self.blocked or fact.seq != head.seq + 1 or check_link(head, fact) is not None:
            return False
        body = fact.body
        receipt = receipt_of(body)
        if isinstance(body, Hold):
            if (author, *body.key) not in self.sessions:  # else its receipt came first: consumed
                self.holds.setdefault(author, []).append(HeldCredits(fact.hash, author, fact.seq, body))
        elif receipt is not None:
            if not self._receipt(fact.hash, receipt):
                return False
        else:  # a grant, a fork proof or evidence: a full compute
            return False
        self.heads[author] = fact
        self.lengths[author] = fact.seq
        self.sweep.accounts[author].entries += 1
        return True

    def _newcomer(self, fact: EntryFacts) -> bool:
        """The first entry of an identity the ledger never named: its grant. Only its own account moves
        (the starter grant, at the grant's time), so it extends the sweep wherever its time falls: ahead
        of the last receipt swept it waits in ``tail``; before it, nothing swept since touched the
        account, which did not exist, so crediting it now is what the sweep in order would do."""
        author = fact.author
        item = grant_item(author, fact)
        named = self.sweep.accounts.get(author)  # an account receipts created before its grant came
        if (
            fact.seq != 1
            or not isinstance(fact.body, Grant)
            or author in self.blocked
            or (named is not None and (named.entries or named.granted or named.forked_at is not None))
            or check_link(None, fact) is not None
            or (item[:3] < self.last_key and not self.journal.reaches(item[:3]))
        ):
            return False
        self.heads[author] = fact
        self.lengths[author] = 1
        if named is None:
            self.sweep.accounts[author] = Account(author, granted=self.rules.starter_grant, entries=1)
        else:  # set outside the sweep, like a new account's; a rewind keeps them (``SweepJournal``)
            named.granted, named.entries = self.rules.starter_grant, 1
        if item[:3] > self.last_key:
            self.tail = sorted([*self.tail, item], key=lambda i: i[:3])
        else:
            self._sweep_back(item, [])
        return True

    def _receipt(self, entry_hash: str, r: Receipt) -> bool:
        counted = self.sessions.get((r.client, r.server, r.session))
        if counted is not None and counted.id == r.id:
            self.duplicates += 1  # another copy of a counted receipt: which one counts is read when asked
            return True
        key = (r.time, 1, r.id)
        if (r.server, r.client, r.session) in self.voided or counted is not None:
            return False  # voided, superseding another receipt, or another span of a counted session
        if key < self.last_key and not self.journal.reaches(key):
            return False  # before every step the journal keeps: a full compute
        self.sessions.add(r)
        held = self.holds.get(r.client)
        if held is not None:  # the holds it consumes bind nothing now: a report lists open holds only
            held[:] = [h for h in held if h.hold.key != (r.server, r.session)]
            if not held:
                del self.holds[r.client]
        item = receipt_item(r)
        if key < self.last_key:  # late: swept in its place, the steps after it taken back and swept again
            self._sweep_back(item, bonus_items([r]))
            return True
        for passed in [i for i in self.tail if i[:3] < key]:  # no entry extended here comes before them now
            self.journal.step(passed)
        self.journal.step(item)
        later = {i[:3]: i for i in self.tail if i[:3] > key}
        for bonus in bonus_items([r]):
            later.setdefault(bonus[:3], bonus)
        self.tail = sorted(later.values(), key=lambda i: i[:3])
        self.last_key = key
        return True

    def _sweep_back(self, item: SweepItem, bonuses: list[SweepItem]) -> None:
        """Sweep ``item``, dated before the last receipt swept, in its place (``SweepJournal.rewind``), with
        those of ``bonuses`` (its hour's and day's) not already swept or waiting: before the last receipt
        they are swept in their places too, after it they wait in ``tail``."""
        again = self.journal.rewind(item[:3])
        present = {i[:3] for i in again} | {i[:3] for i in self.tail}
        new = [b for b in bonuses if b[:3] not in present]
        self.tail = sorted([*self.tail, *(b for b in new if b[:3] > self.last_key)], key=lambda i: i[:3])
        swept = [item, *again, *(b for b in new if b[:3] < self.last_key)]
        for step in sorted(swept, key=lambda i: i[:3]):
            self.journal.step(step)

    def _build(self) -> LedgerReport:
        sweep = self.sweep.copy()
        for item in self.tail:
            sweep.step(item)
        lengths = dict(self.lengths)
        return LedgerReport(
            sweep.accounts,
            self._ignored(lengths),
            dict(self.forks),
            self._counted(lengths),
            sweep.settled,
            {author: list(found) for author, found in self.holds.items()},
            ConsumedSessions(self.sessions, sweep.settlements),
            dict(self.accusations),
        )

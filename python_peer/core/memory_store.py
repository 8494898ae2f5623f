"""The ledger in memory: ``ChainStore``'s decisions over dicts, for the browser (under Pyodide) and tests.

Standard library only. It holds exactly what ``python_peer.ledger_store.LedgerStore`` (SQLite) holds
when offered the same entries, with the same outcomes: both inherit every decision from
``core.chain_store.ChainStore`` and differ only in where rows live.

Persistence is the caller's: every committed write is described in ``journal`` as a list of changes
(``Put``, ``DropChain``, ``SetEvidence``) that a browser writes to IndexedDB. ``hold()`` keeps a
transaction open across such a write: the caller stores ``journal`` durably, then ``commit()``s, or
``rollback()``s when the write failed, so memory never holds what the disk does not. Without ``hold``,
each write commits on its own (tests, native use).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .balances import LedgerReport
from .chain_store import ChainStore
from .economics import DEFAULT_RULES, Rules
from .entries import Entry, ForkProof, Grant
from .errors import LedgerError
from .ledger_fields import Verify
from .receipts import ReceiptBody
from .rules import check_entry, check_link
from .running import RunningReport

__all__ = ["Change", "DropChain", "MemoryStore", "Put", "SetEvidence"]


@dataclass(frozen=True)
class Put:
    """``entry`` joined its author's chain."""

    entry: Entry


@dataclass(frozen=True)
class DropChain:
    """``author``'s chain entries from ``from_seq`` on were deleted (a fork was learned there)."""

    author: str
    from_seq: int


@dataclass(frozen=True)
class SetEvidence:
    """The evidence against ``author`` is now ``entries`` (two entries at ``seq``)."""

    author: str
    seq: int
    entries: tuple[Entry, ...]


Change = Put | DropChain | SetEvidence


class MemoryStore(ChainStore):
    """One node's copy of the ledger, in dicts. Same reads and writes as ``LedgerStore``."""

    def __init__(self, *, rules: Rules = DEFAULT_RULES, verify: Verify) -> None:
        self.rules = rules
        self.verify = verify
        self._lock = threading.RLock()
        self._chains: dict[str, dict[int, Entry]] = {}  # author -> seq -> entry, each a linked prefix
        self._hashes: dict[str, Entry] = {}  # chain entries by hash
        self._evidence: dict[str, tuple[int, tuple[Entry, ...]]] = {}  # author -> (fork seq, two entries)
        self._evidence_hashes: set[str] = set()
        self._grants: dict[str, int] = {}  # author -> how many grants its chain carries
        self._receipts: dict[str, dict[str, int]] = {}  # author -> receipt id -> copies in its chain
        self._carriers: dict[str, set[str]] = {}  # receipt id -> hashes of the chain entries carrying it
        self._proofs: dict[str, dict[str, int]] = {}  # author -> forked author -> proofs in its chain
        self._undo: list[Callable[[], None]] = []
        self._depth = 0
        self._held = False
        self.journal: list[Change] = []  # changes of the open (or last committed) transaction
        self._version = 0
        self._cache: tuple[int, LedgerReport] | None = None
        self._running = RunningReport(self, rules)
        self._added: list[Entry] | None = None  # entries written since the last report; None: recompute
        self._heads_cache: tuple[int, dict[str, tuple[int, str]]] | None = None

    # --- transactions ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0 and not self._held:
                self._undo, self.journal = [], []
            undo_mark, journal_mark = len(self._undo), len(self.journal)
            self._depth += 1
            try:
                yield
            except BaseException:
                self._undo_to(undo_mark)
                del self.journal[journal_mark:]
                raise
            finally:
                self._depth -= 1
            if self._depth == 0 and not self._held:
                self._undo = []

    def hold(self) -> None:
        """Open a transaction that lasts until ``commit`` or ``rollback``; ``journal`` collects its changes."""
        with self._lock:
            if self._held or self._depth:
                raise LedgerError("a held transaction is already open", code="store")
            self._held = True
            self._undo, self.journal = [], []

    def commit(self) -> list[Change]:
        """Keep everything written since ``hold``; returns the changes (what the caller persisted)."""
        with self._lock:
            if not self._held:
                raise LedgerError("no held transaction to commit", code="store")
            self._held = False
            self._undo = []
            return list(self.journal)

    def rollback(self) -> None:
        """Undo everything written since ``hold`` (its persistence failed)."""
        with self._lock:
            if not self._held:
                raise LedgerError("no held transaction to roll back", code="store")
            self._held = False
            self._undo_to(0)
            self.journal = []

    def _undo_to(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()
        self._version += 1
        self._added = None

    def _changed(self, change: Change, undo: Callable[[], None]) -> None:
        if self._depth == 0 and not self._held:
            raise LedgerError("a ledger write outside a transaction", code="store")
        self.journal.append(change)
        self._undo.append(undo)
        self._version += 1

    # --- what the running report reads here (``running.StoredChains``) -----------------------------------

    def locate(self, entry_hash: str) -> tuple[str, int] | None:
        """A chain entry's (author, seq), by its hash."""
        with self._lock:
            entry = self._hashes.get(entry_hash)
            return None if entry is None else (entry.author, entry.seq)

    def chain_hashes(self, author: str, length: int) -> list[str]:
        """The hashes of ``author``'s chain from seq 1 to ``length``, in order."""
        with self._lock:
            chain = self._chains.get(author, {})
            return [chain[seq].hash for seq in range(1, length + 1) if seq in chain]

    def receipt_carriers(self, receipt_id: str) -> list[tuple[str, str, int]]:
        """(hash, author, seq) of each chain entry carrying the receipt ``receipt_id``."""
        with self._lock:
            found = [self._hashes[h] for h in self._carriers.get(receipt_id, ())]
            return [(e.hash, e.author, e.seq) for e in found]

    def carried(self, entry_hash: str) -> tuple[str, int, str] | None:
        """(author, seq, receipt id) of a chain entry that carries a receipt, by its hash."""
        with self._lock:
            entry = self._hashes.get(entry_hash)
            if entry is None or not isinstance(entry.body, ReceiptBody):
                return None
            return (entry.author, entry.seq, entry.body.receipt.id)

    # --- rows -----------------------------------------------------------------------------------------

    def _holds(self, entry_hash: str) -> bool:
        return entry_hash in self._hashes or entry_hash in self._evidence_hashes

    def _fork_seq(self, author: str) -> int | None:
        held = self._evidence.get(author)
        return held[0] if held else None

    def _link(self, author: str, seq: int) -> Entry | None:
        return self._chains.get(author, {}).get(seq)

    def _row(self, author: str, seq: int) -> Entry | None:
        return self._chains.get(author, {}).get(seq)

    def _evidence_of(self, author: str) -> list[Entry]:
        held = self._evidence.get(author)
        return list(held[1]) if held else []

    def _index(self, entry: Entry, step: int) -> None:
        """Add (step 1) or remove (step -1) ``entry`` from the per-author counters and the carriers."""
        body = entry.body
        if isinstance(body, Grant):
            table: dict[str, int] = self._grants
            key = entry.author
        elif isinstance(body, ReceiptBody):
            table, key = self._receipts.setdefault(entry.author, {}), body.receipt.id
            carriers = self._carriers.setdefault(key, set())
            if step > 0:
                carriers.add(entry.hash)
            else:
                carriers.discard(entry.hash)
                if not carriers:
                    del self._carriers[key]
        elif isinstance(body, ForkProof):
            table, key = self._proofs.setdefault(entry.author, {}), body.author
        else:  # a hold or evidence: nothing to count
            return
        count = table.get(key, 0) + step
        if count:
            table[key] = count
        else:
            table.pop(key, None)

    def _put(self, entry: Entry) -> None:
        self._chains.setdefault(entry.author, {})[entry.seq] = entry
        self._hashes[entry.hash] = entry
        self._index(entry, 1)

    def _remove(self, entry: Entry) -> None:
        chain = self._chains[entry.author]
        del chain[entry.seq]
        if not chain:
            del self._chains[entry.author]
        del self._hashes[entry.hash]
        self._index(entry, -1)

    def _write_entry(self, entry: Entry) -> None:
        self._put(entry)
        if self._added is not None:
            self._added.append(entry)
        self._changed(Put(entry), lambda: self._remove(entry))

    def _set_evidence(self, author: str, seq: int, entries: Sequence[Entry]) -> None:
        before = self._evidence.get(author)
        after = (seq, tuple(entries))

        def assign(value: tuple[int, tuple[Entry, ...]] | None) -> None:
            old = self._evidence.pop(author, None)
            if old is not None:
                self._evidence_hashes.difference_update(e.hash for e in old[1])
            if value is not None:
                self._evidence[author] = value
                self._evidence_hashes.update(e.hash for e in value[1])

        assign(after)
        self._added = None
        self._changed(SetEvidence(author, seq, after[1]), lambda: assign(before))

    def _drop_chain(self, author: str, from_seq: int) -> None:
        chain = self._chains.get(author, {})
        dropped = [chain[s] for s in sorted(chain) if s >= from_seq]
        for entry in dropped:
            self._remove(entry)
        self._added = None

        def restore() -> None:
            for entry in dropped:
                self._put(entry)

        self._changed(DropChain(author, from_seq), restore)

    def _has_grant(self, author: str) -> bool:
        return author in self._grants

    def _has_receipt(self, author: str, receipt_id: str) -> bool:
        return receipt_id in self._receipts.get(author, {})

    def _published(self, author: str) -> set[str]:
        return set(self._proofs.get(author, {}))

    # --- reads ----------------------------------------------------------------------------------------

    def head(self, author: str) -> Entry | None:
        with self._lock:
            chain = self._chains.get(author)
            return chain[max(chain)] if chain else None

    def heads(self) -> dict[str, tuple[int, str]]:
        """Author -> (seq, hash) of the last entry held in each chain: what gossip compares."""
        with self._lock:
            if self._heads_cache is None or self._heads_cache[0] != self._version:
                heads = {}
                for author, chain in self._chains.items():
                    last = chain[max(chain)]
                    heads[author] = (last.seq, last.hash)
                self._heads_cache = (self._version, heads)
            return dict(self._heads_cache[1])

    def forks(self) -> dict[str, int]:
        with self._lock:
            return {author: seq for author, (seq, _) in self._evidence.items()}

    def fork_proof(self, author: str) -> ForkProof | None:
        with self._lock:
            held = self._evidence.get(author)
        if held is None or len(held[1]) < 2:
            return None
        a, b = sorted(held[1], key=lambda e: e.hash)[:2]
        return ForkProof.of(a, b)

    def hash_at(self, author: str, seq: int) -> str | None:
        with self._lock:
            entry = self._chains.get(author, {}).get(seq)
            return entry.hash if entry else None

    def entries_from(self, author: str, from_seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``author`` from ``from_seq`` on, in order."""
        with self._lock:
            chain = self._chains.get(author, {})
            seqs = sorted(s for s in chain if s >= from_seq)[: max(0, limit)]
            return [chain[s] for s in seqs]

    def entries(self) -> Iterator[Entry]:
        """Every chain entry, by author then seq (a snapshot taken under the lock)."""
        with self._lock:
            snapshot = [self._chains[a][s] for a in sorted(self._chains) for s in sorted(self._chains[a])]
        yield from snapshot

    def evidence(self) -> list[Entry]:
        """The entries kept as fork evidence, by author then hash."""
        with self._lock:
            return [
                e
                for author in sorted(self._evidence)
                for e in sorted(self._evidence[author][1], key=lambda e: e.hash)
            ]

    def hashes(self) -> tuple[frozenset[str], frozenset[str]]:
        """(chain entry hashes, evidence hashes): two stores holding the same sets hold the same ledger."""
        with self._lock:
            return frozenset(self._hashes), frozenset(self._evidence_hashes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._hashes)

    def report(self) -> LedgerReport:
        """``compute`` over everything held; after a write, extended by the entries written
        (``running.RunningReport``) where they only extend it, else computed again."""
        with self._lock:
            if self._cache is not None and self._cache[0] == self._version:
                return self._cache[1]
            result = self._running.extend(self._added) if self._added is not None else None
            if result is None:
                self._cache = None  # gone before the new report is built (``RunningReport.full``)
                result = self._running.full([*self._hashes.values(), *self.evidence()])
            self._added = []
            self._cache = (self._version, result)
            return result

    def merge(self, other: ChainStore, now: int | None = None) -> None:
        """Offer everything ``other`` holds: its chains in seq order, then its fork evidence."""
        self.insert_many(list(other.entries()), now)
        proofs = [p for author in other.forks() if (p := other.fork_proof(author)) is not None]
        if proofs:
            self.add_fork_proofs(proofs, now)

    def check(self) -> None:
        """Raise ``LedgerError`` (code ``corrupt``) unless every chain is linked and checks again."""
        with self._lock:
            for author, chain in self._chains.items():
                previous: Entry | None = None
                for seq in range(1, len(chain) + 1):
                    entry = chain.get(seq)
                    problem = (
                        None
                        if entry is None
                        else check_link(previous, entry)
                        or check_entry(entry, self.verify, entry.time, self.rules)
                    )
                    if entry is None or problem is not None:
                        raise LedgerError(
                            f"chain of {author[:12]}… is broken at seq {seq}: {problem or 'missing'}",
                            code="corrupt",
                        )
                    previous = entry

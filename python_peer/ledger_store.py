"""The ledger on a native peer: a SQLite database (WAL) of validated entries, crash-safe.

Rules live in ``python_peer.core``, and so does what to keep (``chain_store.ChainStore``, shared with the
browser's ``core.memory_store.MemoryStore``); this file keeps the rows. Two tables:

- ``entries``: each author's linked chain from seq 1 (one row per seq), every row checked by
  ``check_entry`` and ``check_link`` before it was written;
- ``evidence``: for each forked author, the two entries with the smallest hashes among those seen at
  the lowest forked seq. Learning a fork at seq ``f`` deletes that author's chain rows from ``f`` on
  (they no longer count) and refuses later ones, so per-author storage stays bounded.

What the store holds is then a function of the entries it was offered, whatever their order, and
``report()`` is ``core.balances.compute`` over both tables (cached until the next write): the entries
a write adds extend the running report (``core/running.py``); a write by another connection, a rolled
back transaction or a dropped chain makes it rebuild from the rows, a big ledger's in a child process
(``ledger_rebuild``). No copy of the ledger is kept in memory, only what the running report derives.

Every write is one transaction: a batch (``insert_many``, ``append_many``, ``merge`` chunks) is stored
whole or not at all, so a process killed mid-batch leaves the database as it was before the batch. An
invalid entry inside a batch is refused alone and does not abort the others. ``durable=True`` (the
default) sets ``synchronous=FULL``: an own entry is on disk before ``append`` returns, so a crash can
never make this node sign a second, different entry for a seq it already gossiped (a self-fork). Other
nodes' entries may be written in ``lazily()``: unsynced until the next durable commit (the WAL is in order).

Blocking: async callers use ``asyncio.to_thread``; a lock serialises callers from several threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from python_peer.core.balances import Fact, LedgerReport
from python_peer.core.chain_store import ChainStore, Quote, Signer, wall_clock_ms
from python_peer.core.economics import DEFAULT_RULES, Rules
from python_peer.core.entries import GENESIS, Entry, ForkProof
from python_peer.core.errors import LedgerError, SignatureError
from python_peer.core.ledger_fields import Verify
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.rules import check_entry, check_link
from python_peer.core.running import RunningReport
from python_peer.identity import verify as _nacl_verify

__all__ = ["LEDGER_FILE", "LedgerStore", "MergeResult", "Quote", "Signer", "native_verify", "now_ms"]

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = "1"
MERGE_CHUNK = 500  # entries per transaction when merging another store
# a full compute run in this process (a smaller ledger, or when a child could not build it:
# ``ledger_rebuild``) over this many entries or more leaves its running state copied into fresh memory
# (``RunningReport._compact``); a smaller state fragments little and is not worth the collection
COMPACT_FROM = 2_000
# a full compute over this many entries or more runs in a child process (``ledger_rebuild``): below, it
# costs less than starting one; a 30k-entry ledger takes ~1 s there, a Raspberry Pi some ten times that
REBUILD_APART_FROM = 2_000
REBUILD_TIMEOUT_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    hash TEXT PRIMARY KEY,
    author TEXT NOT NULL,
    seq INTEGER NOT NULL,
    prev TEXT NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    receipt_id TEXT,
    subject TEXT,
    raw BLOB NOT NULL,
    UNIQUE (author, seq)
);
CREATE INDEX IF NOT EXISTS entries_receipt ON entries (receipt_id) WHERE receipt_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS evidence (
    hash TEXT PRIMARY KEY,
    author TEXT NOT NULL,
    seq INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_author ON evidence (author, seq);
"""


now_ms = wall_clock_ms  # wall-clock milliseconds since the Unix epoch: the ledger's time


def native_verify(peer_id: str, message: bytes, signature: str) -> bool:
    """``core.ledger_fields.Verify`` backed by pynacl (``python_peer.identity.verify``)."""
    try:
        _nacl_verify(peer_id, message, signature)
    except SignatureError:
        return False
    return True


@dataclass(frozen=True)
class MergeResult:
    """How many of another store's entries and fork proofs were new, duplicates, forks or refused."""

    stored: int = 0
    duplicate: int = 0
    fork: int = 0
    rejected: int = 0


# SQLite's page cache per connection, in KiB (its default is 2,000). Reads are point lookups by index and
# balances come from the running report (a full read of the rows is rare), so a small cache costs little
# time; the default filled up to its 2 MB in every node under load (a client process holding three
# ledgers grew by 6 MB for it).
PAGE_CACHE_KIB = 256


@dataclass(frozen=True)
class _Link:
    seq: int
    hash: str
    time: int


def rebuild_command(path: str) -> list[str]:
    """The command line of ``ledger_rebuild``'s child for the ledger at ``path``: this interpreter."""
    return [sys.executable, "-m", "python_peer.ledger_rebuild", path]


def rebuild_apart(path: str, rules: Rules) -> bytes:
    """The running state of the ledger at ``path`` under ``rules``, built by a child process and frozen
    (``RunningReport.freeze``; ``python_peer/ledger_rebuild.py``); ``LedgerError`` (code ``store``) when
    the child fails or takes over ``REBUILD_TIMEOUT_S``."""
    rules_bytes = pickle.dumps(rules, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        done = subprocess.run(
            rebuild_command(path),
            input=rules_bytes,
            capture_output=True,
            timeout=REBUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LedgerError(f"the rebuild of {path} in a child process failed: {exc}", code="store") from exc
    if done.returncode != 0 or not done.stdout:
        tail = done.stderr.decode(errors="replace")[-600:].strip() or "(no output)"
        raise LedgerError(
            f"the rebuild of {path} in a child process ended with status {done.returncode}: {tail}",
            code="store",
        )
    return done.stdout


def _linked(fact: Fact, facts: dict[str, Fact]) -> Fact:
    """``fact`` sharing one string with its predecessor's hash for its ``prev`` (the same 64 hex digits:
    about a ninth of what a fact holds)."""
    before = facts.get(fact.prev)
    if before is not None:
        fact.prev = before.hash
    return fact


class LedgerStore(ChainStore):
    """One node's copy of the ledger in SQLite; every decision is ``ChainStore``'s. Open with ``open``; close, or use ``with``."""

    def __init__(
        self, conn: sqlite3.Connection, path: str, rules: Rules, verify: Verify, durable: bool
    ) -> None:
        self._conn = conn
        self.path = path
        self.rules = rules
        self.verify = verify
        self._lock = threading.RLock()
        self.durable = durable  # ``synchronous=FULL`` outside ``lazily()``, else NORMAL (see ``open``)
        self._writes = 0
        self._cache: tuple[tuple[int, int], LedgerReport] | None = None
        self._heads_cache: tuple[tuple[int, int], dict[str, tuple[int, str]]] | None = None
        self._running = RunningReport(self, rules, compact_from=COMPACT_FROM)
        # facts written since the last report, to extend it; None: rebuilt from the rows (rollback, evidence…)
        self._added: list[Fact] | None = None
        self._seen_version = -1  # ``PRAGMA data_version`` at the last report: another connection's writes

    @classmethod
    def open(
        cls,
        path: str | Path | None,
        *,
        rules: Rules = DEFAULT_RULES,
        verify: Verify = native_verify,
        durable: bool = True,
        create: bool = True,
    ) -> LedgerStore:
        """Open (or create) the database at ``path`` (``None``: in memory, for tests) and check its chains.

        ``durable=False`` keeps atomicity but lets the OS delay the fsync (tests, benchmarks).
        """
        target = ":memory:" if path is None else str(path)
        if path is not None and not create and not Path(path).exists():
            raise LedgerError(f"no ledger at {path}", code="missing")
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger at {target}: {exc}", code="store") from exc
        if version != SCHEMA_VERSION:
            conn.close()
            raise LedgerError(f"ledger {target} has schema {version}, this version reads {SCHEMA_VERSION}")
        store = cls(conn, target, rules, verify, durable=durable)
        try:
            store.check()
        except LedgerError:
            conn.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection and drop the running state with it, rather than when the last report
        made goes: a process that opens another store next (a new identity on a copy of the ledger) then
        builds that store's state where this one's was, not beside it. Reports already made keep their
        figures; their counted entries can no longer be read."""
        with self._lock:
            self._conn.close()
            self._running.forget()
            self._cache = self._heads_cache = None
            self._added = None

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- transactions and rows --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction under the lock: everything in it is stored, or none of it."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path} is not writable: {exc}", code="store") from exc
            try:
                yield
            except sqlite3.Error as exc:
                self._added = None
                self._conn.execute("ROLLBACK")
                raise LedgerError(f"cannot write the ledger at {self.path}: {exc}", code="store") from exc
            except BaseException:
                self._added = None
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._added = None
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise LedgerError(f"cannot write the ledger at {self.path}: {exc}", code="store") from exc
            self._writes += 1

    @contextlib.contextmanager
    def lazily(self) -> Iterator[None]:
        """Writes in this block commit atomically but unsynced (a machine crash may lose them): for other
        nodes' entries only, which gossip brings back. Other threads' writes wait for the block's end."""
        with self._lock:
            self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                yield
            finally:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")

    def _version(self) -> tuple[int, int]:
        """Changes whenever any connection commits a write: the key of every cache."""
        (data_version,) = self._conn.execute("PRAGMA data_version").fetchone()
        return (int(data_version), self._writes)

    def _decode(self, raw: bytes) -> Entry:
        """A row's entry; rows were validated when written, so only the parse is repeated."""
        return Entry.from_dict(json.loads(raw))

    def _row(self, author: str, seq: int) -> Entry | None:
        row = self._conn.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq = ?", (author, seq)
        ).fetchone()
        return self._decode(row[0]) if row else None

    def _link(self, author: str, seq: int) -> _Link | None:
        """The (seq, hash, time) of a chain row, without parsing the entry: all linking needs."""
        row = self._conn.execute(
            "SELECT seq, hash, time FROM entries WHERE author = ? AND seq = ?", (author, seq)
        ).fetchone()
        return _Link(int(row[0]), row[1], int(row[2])) if row else None

    def _fork_seq(self, author: str) -> int | None:
        row = self._conn.execute("SELECT MIN(seq) FROM evidence WHERE author = ?", (author,)).fetchone()
        return None if row[0] is None else int(row[0])

    def _holds(self, entry_hash: str) -> bool:
        sql = "SELECT 1 FROM entries WHERE hash = ? UNION ALL SELECT 1 FROM evidence WHERE hash = ?"
        return self._conn.execute(sql, (entry_hash, entry_hash)).fetchone() is not None

    def _write_entry(self, entry: Entry) -> None:
        body = entry.body
        receipt_id = body.receipt.id if isinstance(body, ReceiptBody) else None
        subject = body.author if isinstance(body, ForkProof) else None
        self._conn.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.hash,
                entry.author,
                entry.seq,
                entry.prev,
                entry.time,
                entry.kind,
                receipt_id,
                subject,
                entry.encoded,
            ),
        )
        if self._added is not None:
            self._added.append(Fact(entry))

    def _evidence_of(self, author: str) -> list[Entry]:
        rows = self._conn.execute("SELECT raw FROM evidence WHERE author = ?", (author,)).fetchall()
        return [self._decode(raw) for (raw,) in rows]

    def _set_evidence(self, author: str, seq: int, entries: Sequence[Entry]) -> None:
        self._conn.execute("DELETE FROM evidence WHERE author = ?", (author,))
        for entry in entries:
            self._conn.execute(
                "INSERT INTO evidence VALUES (?, ?, ?, ?)", (entry.hash, author, seq, entry.encoded)
            )
        self._added = None

    def _drop_chain(self, author: str, from_seq: int) -> None:
        self._conn.execute("DELETE FROM entries WHERE author = ? AND seq >= ?", (author, from_seq))
        self._added = None

    def _has_grant(self, author: str) -> bool:
        sql = "SELECT 1 FROM entries WHERE author = ? AND kind = 'grant' LIMIT 1"
        return self._conn.execute(sql, (author,)).fetchone() is not None

    def _has_receipt(self, author: str, receipt_id: str) -> bool:
        sql = "SELECT 1 FROM entries WHERE author = ? AND receipt_id = ? LIMIT 1"
        return self._conn.execute(sql, (author, receipt_id)).fetchone() is not None

    def _published(self, author: str) -> set[str]:
        sql = "SELECT subject FROM entries WHERE author = ? AND kind = 'fork_proof'"
        return {row[0] for row in self._conn.execute(sql, (author,))}

    # --- merging ----------------------------------------------------------------------------------------

    def merge(self, other: ChainStore, now: int | None = None) -> MergeResult:
        """Offer everything ``other`` holds (chains in seq order, then its fork evidence)."""
        counts = {"stored": 0, "duplicate": 0, "fork": 0, "rejected": 0}
        chunk: list[Entry] = []
        for entry in other.entries():
            chunk.append(entry)
            if len(chunk) >= MERGE_CHUNK:
                for outcome in self.insert_many(chunk, now):
                    counts[outcome.status] += 1
                chunk = []
        for outcome in self.insert_many(chunk, now) if chunk else []:
            counts[outcome.status] += 1
        proofs = [p for author in other.forks() if (p := other.fork_proof(author)) is not None]
        for outcome in self.add_fork_proofs(proofs, now) if proofs else []:
            counts[outcome.status] += 1
        return MergeResult(**counts)

    # --- reads ------------------------------------------------------------------------------------------

    def head(self, author: str) -> Entry | None:
        """The last entry of ``author``'s chain held here."""
        with self._lock:
            row = self._conn.execute(
                "SELECT raw FROM entries WHERE author = ? ORDER BY seq DESC LIMIT 1", (author,)
            ).fetchone()
            return self._decode(row[0]) if row else None

    def heads(self) -> dict[str, tuple[int, str]]:
        """Author -> (seq, hash) of the last entry held in each chain: what gossip compares."""
        with self._lock:
            version = self._version()
            if self._heads_cache is not None and self._heads_cache[0] == version:
                return dict(self._heads_cache[1])
            rows = self._conn.execute("SELECT author, MAX(seq), hash FROM entries GROUP BY author")
            heads = {author: (int(seq), h) for author, seq, h in rows}
            self._heads_cache = (version, heads)
            return dict(heads)

    def forks(self) -> dict[str, int]:
        """Author -> the lowest seq at which two entries of that author are known."""
        with self._lock:
            rows = self._conn.execute("SELECT author, MIN(seq) FROM evidence GROUP BY author")
            return {author: int(seq) for author, seq in rows}

    def fork_proof(self, author: str) -> ForkProof | None:
        """The evidence against ``author``, as a fork proof, if it forked."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT raw FROM evidence WHERE author = ? ORDER BY hash LIMIT 2", (author,)
            ).fetchall()
        if len(rows) < 2:
            return None
        return ForkProof.of(self._decode(rows[0][0]), self._decode(rows[1][0]))

    def hash_at(self, author: str, seq: int) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM entries WHERE author = ? AND seq = ?", (author, seq)
            ).fetchone()
            return row[0] if row else None

    def entries_from(self, author: str, from_seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``author`` from ``from_seq`` on, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (author, from_seq, max(0, limit)),
            ).fetchall()
        return [self._decode(raw) for (raw,) in rows]

    def entries(self) -> Iterator[Entry]:
        """Every chain entry, by author then seq (a snapshot taken under the lock)."""
        with self._lock:
            rows = self._conn.execute("SELECT raw FROM entries ORDER BY author, seq").fetchall()
        for (raw,) in rows:
            yield self._decode(raw)

    def evidence(self) -> list[Entry]:
        """The entries kept as fork evidence."""
        with self._lock:
            rows = self._conn.execute("SELECT raw FROM evidence ORDER BY author, hash").fetchall()
        return [self._decode(raw) for (raw,) in rows]

    def hashes(self) -> tuple[frozenset[str], frozenset[str]]:
        """(chain entry hashes, evidence hashes): two stores holding the same sets hold the same ledger."""
        with self._lock:
            chain = frozenset(r[0] for r in self._conn.execute("SELECT hash FROM entries"))
            evidence = frozenset(r[0] for r in self._conn.execute("SELECT hash FROM evidence"))
        return chain, evidence

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()
            return int(count)

    # --- balances ---------------------------------------------------------------------------------------

    def report(self) -> LedgerReport:
        """``core.balances.compute`` over everything held; recomputed only after a write (same input, same
        output). The entries written since the last report extend the running report
        (``core/running.py``); when they cannot, or another connection wrote, it is rebuilt from the rows
        (``_facts``), which are not kept in memory: a node's memory grows with what the running report
        derives, not with a copy of its ledger."""
        with self._lock:
            version = self._version()
            if self._cache is not None and self._cache[0] == version:
                return self._cache[1]
            result = None
            if self._added is not None and version[0] == self._seen_version:
                result = self._running.extend(self._added)
            self._added = None
            if result is None:
                self._cache = None  # gone before the new report is built (``RunningReport.full``)
                result = self._full()
            self._added = []
            self._seen_version = version[0]
            self._cache = (version, result)
            return result

    def _full(self) -> LedgerReport:
        """The running report rebuilt from the rows: by a child process for a big ledger on disk
        (``ledger_rebuild``: the node's heap keeps only the state, its event loop runs meanwhile), else
        here. Never apart inside a transaction: the child would not see its rows."""
        apart = self.path != ":memory:" and not self._conn.in_transaction and len(self) >= REBUILD_APART_FROM
        if apart:
            try:  # ``thaw`` drops the old state before it reads the child's in, not beside it
                return self._running.thaw(rebuild_apart(self.path, self.rules))
            except LedgerError as exc:
                log.warning("%s; rebuilding in this process", exc)
        return self._running.full(self._facts())

    @classmethod
    def reader(cls, conn: sqlite3.Connection, path: str, rules: Rules) -> LedgerStore:
        """A store over ``conn``, a connection opened read only by ``ledger_rebuild``'s child, which
        only reads its rows (no schema written, no check: the node that started it opened them)."""
        return cls(conn, path, rules, native_verify, durable=False)

    def rebuilt_state(self) -> bytes:
        """The running state built from every row here, frozen (``RunningReport.freeze``): the child's
        half of ``ledger_rebuild``. It is not copied in this process, which exits next."""
        with self._lock:
            self._running.compact_from = None
            self._running.full(self._facts())
            return self._running.freeze()

    # --- what the running report reads here (``core.running.StoredChains``) ----------------------------

    def locate(self, entry_hash: str) -> tuple[str, int] | None:
        """A chain entry's (author, seq), by its hash."""
        rows = self._read("SELECT author, seq FROM entries WHERE hash = ?", (entry_hash,))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def chain_hashes(self, author: str, length: int) -> list[str]:
        """The hashes of ``author``'s chain from seq 1 to ``length``, in order."""
        sql = "SELECT hash FROM entries WHERE author = ? AND seq <= ? ORDER BY seq"
        return [str(h) for (h,) in self._read(sql, (author, length))]

    def receipt_carriers(self, receipt_id: str) -> list[tuple[str, str, int]]:
        """(hash, author, seq) of each chain entry carrying the receipt ``receipt_id``."""
        sql = "SELECT hash, author, seq FROM entries WHERE receipt_id = ?"
        return [(str(h), str(a), int(q)) for h, a, q in self._read(sql, (receipt_id,))]

    def carried(self, entry_hash: str) -> tuple[str, int, str] | None:
        """(author, seq, receipt id) of a chain entry that carries a receipt, by its hash."""
        sql = "SELECT author, seq, receipt_id FROM entries WHERE hash = ? AND receipt_id IS NOT NULL"
        rows = self._read(sql, (entry_hash,))
        return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Rows the running report reads (a report's counted hashes may read them after it was made)."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.ProgrammingError as exc:  # closed: the report outlived its store
                raise LedgerError(
                    f"the ledger at {self.path} is closed: read a report's counted entries before "
                    "closing its store",
                    code="store",
                ) from exc

    def _facts(self) -> Iterator[Fact]:
        """The fact of every chain row and evidence row, read one row at a time; a receipt's two carriers
        share one ``Receipt``, and a fact's ``prev`` is its predecessor's hash string."""
        receipts: dict[str, Receipt] = {}
        for table in ("entries", "evidence"):
            facts: dict[str, Fact] = {}
            for entry_hash, raw in self._conn.execute(f"SELECT hash, raw FROM {table}"):
                facts[entry_hash] = Fact(self._decode(raw), entry_hash, receipts)
            for fact in facts.values():
                yield _linked(fact, facts)

    # --- integrity --------------------------------------------------------------------------------------

    def check(self, *, full: bool = False) -> None:
        """Raise ``LedgerError`` (code ``corrupt``) unless every chain is linked from seq 1 without gaps.

        The quick check (run by ``open``) is SQL over the columns; ``full`` also re-parses every row,
        recomputes its hash and link in Python and verifies every signature.
        """
        with self._lock:
            (quick,) = self._conn.execute("PRAGMA quick_check").fetchone()
            if quick != "ok":
                raise LedgerError(f"ledger {self.path} is damaged ({quick}): move it aside", code="corrupt")
            broken = self._conn.execute(
                """SELECT e.author, e.seq FROM entries e WHERE
                     (e.seq = 1 AND e.prev != ?) OR (e.seq > 1 AND NOT EXISTS (
                        SELECT 1 FROM entries p WHERE p.author = e.author AND p.seq = e.seq - 1
                        AND p.hash = e.prev AND p.time <= e.time))
                   LIMIT 1""",
                (GENESIS,),
            ).fetchone()
            if broken is not None:
                raise LedgerError(
                    f"ledger {self.path}: entry {broken[1]} of {broken[0][:12]}… does not extend entry "
                    f"{broken[1] - 1}: move the file aside",
                    code="corrupt",
                )
            if not full:
                return
            previous: Entry | None = None
            for h, raw in self._conn.execute("SELECT hash, raw FROM entries ORDER BY author, seq").fetchall():
                entry = Entry.decode(raw)
                if entry.hash != h:
                    raise LedgerError(
                        f"ledger {self.path}: row {h[:12]}… holds another entry", code="corrupt"
                    )
                same_author = previous is not None and previous.author == entry.author
                problem = check_link(previous if same_author else None, entry) or check_entry(
                    entry, self.verify, entry.time, self.rules
                )
                if problem is not None:
                    raise LedgerError(f"ledger {self.path}: entry {h[:12]}…: {problem}", code="corrupt")
                previous = entry

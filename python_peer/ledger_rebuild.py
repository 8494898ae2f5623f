"""A big ledger's running state rebuilt in a child process and handed back as bytes.

A full rebuild of the running report (``core.running.RunningReport.full``: every row read, counted and
swept) costs a node about a second of CPU with the GIL held on a 30k-entry ledger, and some 30 MiB of
objects it drops among the 15 MiB it keeps. Run in the node's own process it stalls the event loop
that long (links' timers, consent checks, other sessions' steps), and it leaves CPython's arenas
fragmented: each rebuild spreads what it keeps over the arenas its dropped objects filled, and copying
the state afterwards (``RunningReport._compact``) only delays it. Measured in ``bench/README.md``:
reopening a 29k-entry ledger 10 times in one process took its resident set from 41 to 49 MiB with the
same 14.8 MiB of live objects (19 -> 27 arenas), climbing; built in a child, it stayed at 41.6-41.8
MiB and the node spent 0.12 s of CPU per rebuild instead of 1.3 s.

So a native store (``LedgerStore.report``) rebuilds a ledger of ``REBUILD_APART_FROM`` entries or more
in this module's process, started by ``ledger_store.rebuild_apart`` (this module imports the store,
not the other way round): ``python -m python_peer.ledger_rebuild PATH``, the rules pickled on stdin,
opens the database read only (committed rows: WAL lets it read while the node's connection stays
open), runs ``full`` and writes ``RunningReport.freeze``'s bytes to stdout; the node ``thaw``s them.
Both ends are this package's own code in a process the node started itself, talking over a pipe
nobody else holds: the bytes unpickled are never a ledger's or a peer's (and ``thaw`` reads back only
the core's types). A child that fails (killed, out of memory, an error) or takes over
``REBUILD_TIMEOUT_S`` is a ``LedgerError``; the store then rebuilds in its own process, as smaller
ledgers always do. While it runs the child costs a second interpreter (about 25 MiB beside what it
builds); the node's own peak is then the state it reads back, not the rebuild's.
"""

from __future__ import annotations

import pickle
import sqlite3
import sys
from pathlib import Path

from python_peer.core.economics import Rules
from python_peer.core.errors import LedgerError
from python_peer.ledger_store import LedgerStore

__all__ = ["main"]


def _child(path: str) -> bytes:
    rules = pickle.loads(sys.stdin.buffer.read())  # the parent's own bytes (module docstring)
    if not isinstance(rules, Rules):
        raise LedgerError(f"expected the rules on stdin, got {type(rules).__name__}")
    try:
        uri = Path(path).resolve().as_uri() + "?mode=ro"  # percent-encoded: a path may hold ? or #
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger at {path} to read: {exc}", code="store") from exc
    store = LedgerStore.reader(conn, path, rules)
    try:
        return store.rebuilt_state()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m python_peer.ledger_rebuild PATH  (the rules pickled on stdin)", file=sys.stderr
        )
        return 2
    try:
        frozen = _child(args[0])
    except (LedgerError, sqlite3.Error) as exc:
        print(f"ledger_rebuild: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(frozen)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

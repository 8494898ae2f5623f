"""What the chaos run's ledgers say: receipts on both sides, and balances that agree after quiescence.

Every node's ledger is read from its SQLite file (``<data dir>/ledger.sqlite3``) with the store the node
itself uses and the rules ``ai4all ledger balance`` applies; the files are opened read-only in intent
(``create=False``) while the peers go on writing (WAL).

A receipt is **recorded on both sides** when its client's log and its server's log each carry an entry
with it, and each side's own copy of the ledger holds its own entry. A receipt found in one log only is
**lost on the other side**; one whose client countersigned it in a user's ledger but which no server
ledger holds at all is lost too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from python_peer.core.economics import network_rules
from python_peer.core.errors import AI4AllError
from python_peer.core.receipts import ReceiptBody
from python_peer.identity import IDENTITY_FILE, Identity
from python_peer.ledger_store import LEDGER_FILE, LedgerStore


@dataclass(frozen=True)
class Snapshot:
    """One node's copy of the ledger: its balances and its entries' hashes; receipts by id."""

    owner: str  # the node's peer id
    balances: dict[str, int]
    hashes: frozenset[str]
    receipts: dict[str, tuple[str, str, frozenset[str]]]  # id -> (client, server, authors carrying it)


def entry_count(data_dir: Path) -> int:
    """How many entries the ledger in ``data_dir`` holds."""
    with LedgerStore.open(data_dir / LEDGER_FILE, create=False, rules=network_rules()) as store:
        return len(store)


def snapshot(data_dir: Path) -> Snapshot:
    """Read the ledger of the node whose data directory is ``data_dir``."""
    owner = Identity.load(data_dir / IDENTITY_FILE).peer_id
    store = LedgerStore.open(data_dir / LEDGER_FILE, create=False, rules=network_rules())
    with store:
        report = store.report()
        receipts: dict[str, tuple[str, str, frozenset[str]]] = {}
        hashes = set()
        for entry in store.entries():
            hashes.add(entry.hash)
            if isinstance(entry.body, ReceiptBody):
                r = entry.body.receipt
                _, _, authors = receipts.get(r.id, (r.client, r.server, frozenset()))
                receipts[r.id] = (r.client, r.server, authors | {entry.author})
    return Snapshot(owner, report.balances, frozenset(hashes), receipts)


@dataclass
class Convergence:
    """How the live nodes' ledgers compare after the load stopped."""

    nodes: int = 0
    identical_balances: bool = False
    identical_entries: bool = False
    seconds: float = 0.0  # from the end of the load until they agreed (or the bound)
    accounts: int = 0
    entries: int = 0  # in the largest copy
    entries_at_start: int = 0  # in one peer's copy when the load started
    differing: list[str] = field(default_factory=list)  # accounts whose balance differs between nodes


def compare(snaps: Sequence[Snapshot]) -> Convergence:
    result = Convergence(nodes=len(snaps))
    if not snaps:
        return result
    accounts = set().union(*(s.balances for s in snaps))
    result.accounts = len(accounts)
    result.entries = max(len(s.hashes) for s in snaps)
    result.differing = sorted(a for a in accounts if len({s.balances.get(a, 0) for s in snaps}) > 1)
    result.identical_balances = not result.differing
    result.identical_entries = len({s.hashes for s in snaps}) == 1
    return result


async def converge(data_dirs: Sequence[Path], timeout_s: float, poll_s: float = 2.0) -> Convergence:
    """Poll the ledgers of ``data_dirs`` until they hold the same entries (bounded by ``timeout_s``)."""
    began = time.monotonic()
    while True:
        try:
            snaps = await asyncio.to_thread(lambda: [snapshot(d) for d in data_dirs])
            result = compare(snaps)
        except AI4AllError as exc:  # a ledger mid-write can fail its chain check: read it again
            result = Convergence(nodes=len(data_dirs), differing=[f"unreadable: {exc}"])
        result.seconds = round(time.monotonic() - began, 1)
        if (result.identical_balances and result.identical_entries) or result.seconds >= timeout_s:
            return result
        await asyncio.sleep(poll_s)


@dataclass
class Receipts:
    """Receipts of the run: in both sides' ledgers, or lost; and how many only one log carries."""

    total: int = 0
    both_sides: int = 0  # the client's ledger and the server's ledger each hold it
    lost: list[str] = field(default_factory=list)  # a line per receipt a side's ledger lacks
    unchecked: int = 0  # a side's ledger was not read (not a node of this run)
    client_log_only: int = 0  # held by both ledgers, but only the client's log carries it
    server_log_only: int = 0

    @property
    def lost_count(self) -> int:
        return len(self.lost)


def receipts(snaps: Sequence[Snapshot]) -> Receipts:
    """Where each receipt of any ledger read (live nodes and departed users alike) is held.

    *Recorded on both sides* is the issue's definition: the client's ledger and the server's ledger each
    hold the receipt (in any log: a receipt counts once per id whichever log carries it). A receipt that
    only one log carries (the server was SIGKILLed after the client countersigned, before it recorded
    its own entry) reached the other side by gossip; it is counted apart, not as lost."""
    by_owner = {s.owner: s for s in snaps}
    seen: dict[str, tuple[str, str, frozenset[str]]] = {}
    for snap in snaps:
        for rid, (client, server, authors) in snap.receipts.items():
            _, _, known = seen.get(rid, (client, server, frozenset()))
            seen[rid] = (client, server, known | authors)
    result = Receipts(total=len(seen))
    for rid, (client, server, authors) in sorted(seen.items()):
        sides = [by_owner.get(client), by_owner.get(server)]
        if any(side is None for side in sides):
            result.unchecked += 1
            continue
        missing = [
            name
            for name, side in zip(("client", "server"), sides, strict=True)
            if side and rid not in side.receipts
        ]
        if missing:
            result.lost.append(
                f"{rid[:12]}: not in the {' and '.join(missing)}'s ledger ({client[:12]} -> {server[:12]})"
            )
        else:
            result.both_sides += 1
        if authors == {client}:
            result.client_log_only += 1
        elif authors == {server}:
            result.server_log_only += 1
    return result

"""The hold protocol spoken raw (docs/ledger.md, docs/mesh.md): what a client writes and sends before OPEN.

``write_hold`` appends a ``hold`` entry to a ledger's own log through its store, without the honest
client's own balance check (an attacker writes whatever it likes); ``open_meta`` is OPEN's metadata
naming it; ``push_frame`` the GOSSIP push of a log's entries; ``hold_vector`` the golden hold entry;
``written_holds`` every hold a log carries, consumed or not.
"""

from __future__ import annotations

import os
from typing import Any

from python_peer.core.chain_store import ChainStore
from python_peer.core.economics import price
from python_peer.core.entries import ENTRY_CONTEXT, Entry, make_entry
from python_peer.core.holds import HOLD_TTL_MS, HeldCredits, Hold
from python_peer.core.ledger_fields import context_bytes
from python_peer.core.wire import Frame, FrameType
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import now_ms
from tests.support.ledger import GOLDEN, T0


def written_holds(store: ChainStore, peer_id: str) -> list[HeldCredits]:
    """Every hold ``peer_id``'s log holds in ``store``, in order, consumed or not (a report lists only
    the open ones)."""
    return [
        HeldCredits(e.hash, e.author, e.seq, e.body)
        for e in store.entries_from(peer_id, 1, 1_000_000)
        if isinstance(e.body, Hold)
    ]


def write_hold(
    ledger: LedgerService,
    server: str,
    session: bytes,
    model: str,
    start: int,
    end: int,
    tokens: int,
    *,
    amount: int | None = None,
    ttl_ms: int = HOLD_TTL_MS,
) -> Entry:
    """Append a hold of ``amount`` (default: the undiscounted price) to ``ledger``'s own log."""
    now = now_ms()
    units = price(end - start, tokens, 0, ledger.store.rules) if amount is None else amount
    body = Hold(session.hex(), server, model, start, end, units, now + ttl_ms)
    return ledger.store.append(ledger.identity, body, now)


def open_meta(
    model: str, start: int, end: int, batch: int, max_length: int, hold: str | None
) -> dict[str, Any]:
    """OPEN's metadata, naming ``hold`` (an entry hash) when given."""
    meta: dict[str, Any] = {
        "model": model,
        "start": start,
        "end": end,
        "batch": batch,
        "max_length": max_length,
    }
    if hold is not None:
        meta["hold"] = hold
    return meta


def push_frame(entries: list[dict[str, Any]]) -> Frame:
    """A GOSSIP push of ``entries`` on a fresh session id."""
    return Frame(FrameType.GOSSIP, os.urandom(16), 0, meta={"kind": "push", "entries": entries})


def hold_vector() -> dict[str, Any]:
    """The golden hold entry (``tests/vectors/ledger/hold_entry.json``): the golden identity's seq 2,
    after its golden grant, promising a fixed server 10.5 credits; fixed keys and times, so always the
    same bytes."""
    server = Identity.from_seed(bytes(range(1, 33))).peer_id
    body = Hold(bytes(range(16)).hex(), server, "SmolLM2-135M-Instruct", 0, 10, 10_500, T0 + 601_000)
    prev = "8ae95e7c38567a93d3f8f00c88a186c11e134dc06a17bc49ded354c53454756a"  # the golden grant
    entry = make_entry(GOLDEN.peer_id, 2, prev, T0 + 1000, body, GOLDEN.sign)
    return {
        "entry": entry.to_dict(),
        "signing_bytes": context_bytes(ENTRY_CONTEXT, entry.signed_dict()).decode("ascii"),
        "hash": entry.hash,
    }


def hold_for(ledger: LedgerService, server: str, session: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` (an OPEN's) naming a new hold of ``ledger`` that pays ``server`` for ``session``."""
    tokens = int(meta["batch"]) * int(meta["max_length"])
    entry = write_hold(
        ledger, server, session, str(meta["model"]), int(meta["start"]), int(meta["end"]), tokens
    )
    return {**meta, "hold": entry.hash}

"""The browser's copy of its ledger in IndexedDB, as Python sees it: what to write, and replaying it.

Standard library only. Every write of ``browser_ledger`` is held open (``MemoryStore.hold``) and its
changes go back to JavaScript as a journal (``journal_json``) to store before ``commit``; when a page
opens, ``replay`` loads the stored copy (canonical JSON strings) into a fresh store and says what did
not load, so the caller can remove it from disk.
"""

from __future__ import annotations

import json
from typing import Any

from .entries import Entry, ForkProof
from .errors import CanonicalError, LedgerError
from .memory_store import Change, DropChain, MemoryStore, Put, SetEvidence

MAX_REPLAY_FUTURE_MS = 2**53 - 1  # replaying the browser's own copy: entries were dated-checked on arrival


def journal_json(changes: list[Change]) -> list[list[Any]]:
    """A held write's changes as JSON rows for IndexedDB: ``put``, ``drop`` and ``evidence``."""
    out: list[list[Any]] = []
    for change in changes:
        if isinstance(change, Put):
            e = change.entry
            out.append(["put", e.author, e.seq, e.hash, e.encoded.decode("utf-8")])
        elif isinstance(change, DropChain):
            out.append(["drop", change.author, change.from_seq])
        elif isinstance(change, SetEvidence):
            pairs = [[e.hash, e.encoded.decode("utf-8")] for e in change.entries]
            out.append(["evidence", change.author, change.seq, pairs])
    return out


def raw_list(payload: object) -> list[str]:
    """``payload`` if it is a list of strings (stored rows: canonical JSON of entries)."""
    if not isinstance(payload, list) or not all(isinstance(r, str) for r in payload):
        raise LedgerError("raw entries must be a list of canonical JSON strings")
    return payload


def decode_raw(raw: str) -> Entry | LedgerError:
    """The entry a stored row holds, or why it does not parse as one."""
    try:
        return Entry.decode(raw.encode("utf-8"))
    except (LedgerError, CanonicalError, RecursionError, UnicodeError) as exc:
        return exc if isinstance(exc, LedgerError) else LedgerError(str(exc))


def replay(store: MemoryStore, raws: list[str], evidence_raws: list[str]) -> list[list[Any]]:
    """Load the stored copy into ``store``: chains in seq order, then evidence rebuilt into fork proofs.

    Returns what did not load, ``[hash or null, code, reason, raw]`` each. The store's ``verify`` must
    already accept the signatures of these rows (the caller's ``KnownSignatures``).
    """
    dropped: list[list[Any]] = []
    parsed: list[tuple[Entry, str]] = []
    for raw in raws:
        entry = decode_raw(raw)
        if isinstance(entry, Entry):
            parsed.append((entry, raw))
        else:
            dropped.append([None, entry.code, str(entry), raw])
    parsed.sort(key=lambda pair: (pair[0].author, pair[0].seq, pair[0].hash))
    proofs: list[ForkProof] = []
    by_author: dict[str, list[Entry]] = {}
    for raw in evidence_raws:
        entry = decode_raw(raw)
        if isinstance(entry, Entry):
            by_author.setdefault(entry.author, []).append(entry)
        else:
            dropped.append([None, entry.code, str(entry), raw])
    for variants in by_author.values():
        variants.sort(key=lambda e: (e.seq, e.hash))
        if len(variants) >= 2 and variants[0].seq == variants[1].seq and variants[0].hash != variants[1].hash:
            proofs.append(ForkProof.of(variants[0], variants[1]))
    outcomes = store.insert_many([e for e, _ in parsed], MAX_REPLAY_FUTURE_MS)
    proof_outcomes = store.add_fork_proofs(proofs) if proofs else []
    for (entry, raw), outcome in zip(parsed, outcomes, strict=True):
        if outcome.status == "rejected" and outcome.rejection is not None:
            dropped.append([entry.hash, outcome.rejection.code, outcome.rejection.reason, raw])
    for proof, outcome in zip(proofs, proof_outcomes, strict=True):
        if outcome.status == "rejected" and outcome.rejection is not None:
            for e in (proof.a, proof.b):
                dropped.append([e.hash, outcome.rejection.code, outcome.rejection.reason, e.encoded.decode()])
    chain, kept = store.hashes()
    held = chain | kept
    for variants in by_author.values():  # evidence no longer needed (a lower fork was found)
        for e in variants:
            if e.hash not in held and not any(d[0] == e.hash for d in dropped):
                dropped.append(
                    [e.hash, "superseded", "evidence of a fork at a higher seq", e.encoded.decode()]
                )
    for entry, raw in parsed:  # chain rows that a fork dropped after they were stored
        if entry.hash not in held and not any(d[0] == entry.hash for d in dropped):
            dropped.append([entry.hash, "forked", "its author forked at or below this seq", raw])
    return dropped


def refuse_damaged_own_log(store: MemoryStore, peer_id: str, dropped: list[list[Any]]) -> None:
    """An own entry that did not load is an error (``corrupt``): signing its seq again could fork the log."""
    fork = store.forks().get(peer_id)
    own = [d for d in dropped if _author_seq(d[3])[0] == peer_id]
    own = [d for d in own if fork is None or not _at_or_after(d[3], fork)]
    if own:
        code, reason = own[0][1], own[0][2]
        raise LedgerError(
            f"this browser's copy of its own log is damaged ({code}: {reason}); signing again could "
            "fork its log: clear this site's data to start over with a new identity",
            code="corrupt",
        )


def _at_or_after(raw: str, seq: int) -> bool:
    claimed = _author_seq(raw)[1]
    return isinstance(claimed, int) and claimed >= seq


def _author_seq(raw: str) -> tuple[object, object]:
    """The author and seq a stored row claims, even when it no longer parses as an entry."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None
    return (data.get("author"), data.get("seq")) if isinstance(data, dict) else (None, None)

"""Ledger entries: the signed, hash-chained envelope of each identity's log, and the bodies it carries.

Standard library only; ``docs/ledger.md`` gives the bytes for an implementer. Each identity writes an
append-only, hash-chained log. An entry is ``{author, seq, prev, time, body, signature}``: ``seq``
counts from 1, ``prev`` is the hash of the author's entry ``seq - 1`` (64 zeros for seq 1), ``time`` is
milliseconds since the Unix epoch and the signature covers ``signing_bytes(ENTRY_CONTEXT, entry without
signature)``. An entry's hash is the sha256 of those signed bytes: it names the signed content, not the
signature's encoding, so nobody but the author can make two entries that differ only in their signature
bytes pass as a fork.

Bodies: ``grant`` (the starter grant, with a proof of work: ``proof_of_work.py``), ``receipt`` (one
served span of one session, co-signed by client and server: ``receipts.py``; it counts once, keyed by
its id, whichever logs carry it), ``hold`` (credits a client promises one peer for one session before
it is served: ``holds.py``), ``fork_proof`` (two entries of one author with one ``seq``: proof of
cheating) and ``evidence`` (a settled disagreement between serving peers: ``evidence.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .canonical import MAX_SAFE_INT, signing_bytes
from .errors import CanonicalError, LedgerError
from .evidence import Evidence
from .holds import Hold
from .ledger_fields import (
    Rejection,
    Sign,
    canonical_json,
    context_bytes,
    int_field,
    object_fields,
    peer_field,
    sha256_hex,
    sig_field,
)
from .receipts import ReceiptBody

ENTRY_CONTEXT = "ai4all/ledger/entry/v1"
GENESIS = "0" * 64  # ``prev`` of every seq-1 entry
MAX_ENTRY_BYTES = 4096  # canonical JSON of a grant or receipt entry, signature included
MAX_FORK_PROOF_BYTES = 2 * MAX_ENTRY_BYTES + 1024  # a fork proof carries two entries

KINDS = ("grant", "receipt", "fork_proof", "hold", "evidence")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")

_GRANT_KEYS = frozenset({"kind", "nonce"})
_FORK_KEYS = frozenset({"kind", "a", "b"})
_ENTRY_KEYS = frozenset({"author", "seq", "prev", "time", "body", "signature"})


@dataclass(frozen=True)
class Grant:
    """The starter grant, claimable once per identity; ``nonce`` is its proof of work."""

    nonce: int
    kind: str = field(default="grant", init=False)

    def __post_init__(self) -> None:
        int_field("grant nonce", self.nonce, 0, MAX_SAFE_INT)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "grant", "nonce": self.nonce}

    @classmethod
    def from_dict(cls, data: object) -> Grant:
        body = object_fields("a grant body", data, _GRANT_KEYS)
        return cls(body["nonce"])


@dataclass(frozen=True)
class ForkProof:
    """Two signed entries of one author with the same ``seq`` and different content, ``a.hash < b.hash``."""

    a: Entry
    b: Entry
    kind: str = field(default="fork_proof", init=False)

    def __post_init__(self) -> None:
        if self.a.author != self.b.author or self.a.seq != self.b.seq:
            raise LedgerError("a fork proof holds two entries of the same author with the same seq")
        if not self.a.hash < self.b.hash:
            raise LedgerError("a fork proof holds two different entries, the smaller hash first")
        if isinstance(self.a.body, ForkProof) or isinstance(self.b.body, ForkProof):
            raise LedgerError("a fork proof cannot carry fork proofs")

    @property
    def author(self) -> str:
        return self.a.author

    @property
    def seq(self) -> int:
        return self.a.seq

    @classmethod
    def of(cls, one: Entry, other: Entry) -> ForkProof:
        """The proof of two conflicting entries, in canonical order."""
        return cls(one, other) if one.hash < other.hash else cls(other, one)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fork_proof", "a": self.a.to_dict(), "b": self.b.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> ForkProof:
        body = object_fields("a fork_proof body", data, _FORK_KEYS)
        return cls(Entry.from_dict(body["a"], nested=True), Entry.from_dict(body["b"], nested=True))


Body = Grant | ReceiptBody | ForkProof | Hold | Evidence


def parse_body(data: object, *, nested: bool = False) -> Body:
    """A body from JSON; ``nested`` (inside a fork proof) refuses another fork proof."""
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise LedgerError(f"entry body kind {kind!r:.40} is not one of {', '.join(KINDS)}")
    kind = data["kind"]
    if kind == "grant":
        return Grant.from_dict(data)
    if kind == "receipt":
        return ReceiptBody.from_dict(data)
    if kind == "hold":
        return Hold.from_dict(data)
    if kind == "evidence":
        return Evidence.from_dict(data)
    if nested:
        raise LedgerError("a fork proof cannot carry fork proofs")
    return ForkProof.from_dict(data)


@dataclass(frozen=True)
class Entry:
    """One signed entry of an author's log. Construct with ``make_entry`` or ``Entry.from_dict``."""

    author: str
    seq: int
    prev: str
    time: int
    body: Body
    signature: str

    def __post_init__(self) -> None:
        peer_field("entry author", self.author)
        int_field("entry seq", self.seq, 1, MAX_SAFE_INT)
        if not isinstance(self.prev, str) or HASH_RE.match(self.prev) is None:
            raise LedgerError("entry prev must be 64 lowercase hex digits")
        if (self.seq == 1) != (self.prev == GENESIS):
            raise LedgerError(f"entry seq {self.seq}: prev is 64 zeros exactly when seq is 1")
        int_field("entry time", self.time, 0, MAX_SAFE_INT)
        if not isinstance(self.body, Grant | ReceiptBody | ForkProof | Hold | Evidence):
            raise LedgerError("entry body must be a Grant, ReceiptBody, ForkProof, Hold or Evidence")
        sig_field("entry signature", self.signature)

    @property
    def kind(self) -> str:
        return self.body.kind

    def signed_dict(self) -> dict[str, Any]:
        """The entry without its signature: what the signature covers."""
        return {
            "author": self.author,
            "seq": self.seq,
            "prev": self.prev,
            "time": self.time,
            "body": self.body.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.signed_dict(), "signature": self.signature}

    @cached_property
    def signing_bytes(self) -> bytes:
        return context_bytes(ENTRY_CONTEXT, self.signed_dict())

    @cached_property
    def hash(self) -> str:
        """sha256 of the signed bytes, hex: the entry's name and the next entry's ``prev``."""
        return sha256_hex(self.signing_bytes)

    @cached_property
    def encoded(self) -> bytes:
        """Canonical JSON of the whole entry: how it is stored and measured against the size limits."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: object, *, nested: bool = False) -> Entry:
        """Validate an entry received as JSON; unknown or missing fields are refused, never guessed."""
        e = object_fields("a ledger entry", data, _ENTRY_KEYS)
        return cls(
            e["author"], e["seq"], e["prev"], e["time"], parse_body(e["body"], nested=nested), e["signature"]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        """An entry from its canonical JSON bytes; any other encoding of the same entry is refused."""
        if len(raw) > MAX_FORK_PROOF_BYTES:
            raise LedgerError(f"entry of {len(raw)} bytes is over {MAX_FORK_PROOF_BYTES}", code="too_large")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise LedgerError(f"entry is not UTF-8 JSON: {exc}") from exc
        entry = cls.from_dict(data)
        if entry.encoded != raw:
            raise LedgerError("entry bytes are not the canonical JSON of the entry")
        return entry


def parse_entry(data: object) -> Entry | Rejection:
    """``Entry.from_dict`` that returns a ``Rejection`` instead of raising, for validators' callers."""
    try:
        return Entry.from_dict(data)
    except (LedgerError, CanonicalError, RecursionError) as exc:
        return Rejection(getattr(exc, "code", "malformed"), f"malformed entry: {exc}")


def make_entry(author: str, seq: int, prev: str, time: int, body: Body, sign: Sign) -> Entry:
    """Sign a new entry; ``sign`` is the author's key (``Identity.sign``)."""
    unsigned = {"author": author, "seq": seq, "prev": prev, "time": time, "body": body.to_dict()}
    signature = sign(signing_bytes(ENTRY_CONTEXT, unsigned))
    return Entry(author, seq, prev, time, body, signature)


def next_entry(author: str, head: Entry | None, now_ms: int, body: Body, sign: Sign) -> Entry:
    """The entry after ``head`` in ``author``'s log; its time never goes below the head's."""
    if head is None:
        return make_entry(author, 1, GENESIS, now_ms, body, sign)
    return make_entry(author, head.seq + 1, head.hash, max(now_ms, head.time), body, sign)

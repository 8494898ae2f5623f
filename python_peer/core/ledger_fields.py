"""The parts every ledger record is built from: checked fields, canonical bytes, a rejection's shape.

Standard library only. Each record type (``receipts.py``, ``entries.py``) validates its fields on
construction with the checks below, which raise ``LedgerError`` naming the field; validated values are
encoded by ``canonical_json`` without a second walk. Signing and checking signatures are passed in
(``Sign``, ``Verify``): pynacl natively, WebCrypto in the browser.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .canonical import is_peer_id, is_signature
from .errors import LedgerError

MAX_FUTURE_MS = 300_000  # an entry or receipt dated further ahead of the receiver's clock is refused

Verify = Callable[[str, bytes, str], bool]
"""``verify(peer_id, message, signature_hex)``: whether the Ed25519 signature is good."""
Sign = Callable[[bytes], str]
"""``sign(message) -> signature_hex`` of the author's key (``Identity.sign`` natively)."""


class EntryFacts(Protocol):
    """What balances read of a ledger entry: an ``Entry``, or a store's ``balances.Fact`` (the same
    fields without the entry's signature and encoding, kept in memory to recompute balances cheaply)."""

    @property
    def hash(self) -> str: ...

    @property
    def author(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def prev(self) -> str: ...

    @property
    def time(self) -> int: ...

    @property
    def body(self) -> object: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an entry was refused or does not count: a stable ``code`` and a sentence for people."""

    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"

    def error(self) -> LedgerError:
        return LedgerError(self.reason, code=self.code)


# why every copy of a receipt but one does not count: one object for all of them (a copy each of the
# receipts a ledger holds, so a sentence naming the counted copy cost ~70 bytes per receipt in memory)
DUPLICATE_RECEIPT = Rejection(
    "duplicate_receipt",
    "another entry carries this receipt and counts it (of its copies, the one with the lowest hash)",
)


def int_field(what: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) within ``[low, high]``; ``what`` names it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise LedgerError(f"{what} = {value} is outside [{low}, {high}]")
    return value


def object_fields(what: str, data: object, keys: frozenset[str]) -> dict[str, Any]:
    """``data`` if it is a JSON object with exactly ``keys``: unknown or missing fields are refused."""
    if not isinstance(data, dict):
        raise LedgerError(f"{what} must be a JSON object, not {type(data).__name__}")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(str(k) for k in set(data) - keys)
        raise LedgerError(f"{what} has missing fields {missing} and unknown fields {extra[:8]}")
    return data


def peer_field(what: str, value: object) -> str:
    """``value`` if it is a peer id."""
    if not is_peer_id(value):
        raise LedgerError(f"{what} must be a peer id (64 lowercase hex digits)")
    return str(value)


def sig_field(what: str, value: object) -> str:
    """``value`` if it is a signature's hex."""
    if not is_signature(value):
        raise LedgerError(f"{what} must be a signature (128 lowercase hex digits)")
    return str(value)


def canonical_json(value: dict[str, Any]) -> bytes:
    """``canonical_bytes`` for dicts built from validated dataclasses, without re-walking every value.

    Every field of an entry, a receipt or a body has been checked on construction (integers within
    ±(2**53 - 1), strings matching ASCII patterns), which is all ``canonical_bytes`` checks; only the
    encoding is left, and it is the same ``json.dumps`` call. Entries are hashed on every insert and
    every balance computation, so the walk was the largest cost after the signature checks.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def context_bytes(context: str, value: dict[str, Any]) -> bytes:
    """What is signed: ``context``, a newline, the canonical JSON of a validated ``value``."""
    return context.encode() + b"\n" + canonical_json(value)


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data``, lowercase hex: the names of entries and receipts."""
    return hashlib.sha256(data).hexdigest()


def verified(verify: Verify, peer_id: str, message: bytes, signature: str) -> bool:
    """Call the injected check; a check that raises (a foreign crypto library) counts as a failure."""
    try:
        return verify(peer_id, message, signature) is True
    except Exception:
        return False

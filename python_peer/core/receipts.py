"""Receipts: one served span of one session, signed by its client and its server.

Standard library only. A ``Receipt`` is what both parties sign (``RECEIPT_CONTEXT``, a newline, its
canonical JSON); a ``ReceiptBody`` carries it with both signatures in a log entry. Before co-signing,
each party checks the receipt's terms against what it saw (``check_receipt_terms``); the client's whole
check of a receipt its server proposed is ``receipt_to_countersign``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .canonical import MAX_LAYER, MAX_SAFE_INT, MODEL_RE
from .errors import LedgerError
from .ledger_fields import (
    MAX_FUTURE_MS,
    Rejection,
    context_bytes,
    int_field,
    object_fields,
    peer_field,
    sha256_hex,
    sig_field,
)

RECEIPT_CONTEXT = "ai4all/ledger/receipt/v1"
MAX_RECEIPT_BLOCKS = 4096
MAX_RECEIPT_TOKENS = 1 << 24  # token positions per receipt (batch x length), ~16.7 M
SESSION_RE = re.compile(r"^[0-9a-f]{32}$")

_RECEIPT_KEYS = frozenset({"session", "model", "start", "end", "tokens", "client", "server", "time"})
_RECEIPT_BODY_KEYS = frozenset({"kind", "receipt", "client_sig", "server_sig"})


@dataclass(frozen=True, slots=True)
class Receipt:
    """One served span ``[start, end)`` of one session: what client and server both sign.

    ``tokens`` is the token positions the span processed (batch x length, summed over steps); ``time``
    is when the span closed. Two receipts for one (session, client, server, model, span) are cumulative:
    only the one with the most tokens counts, so a client may sign as the session goes.

    Slots, not a ``__dict__``: a node keeps one per receipt of its ledger (about 250 bytes each saved);
    ``_id`` caches ``id``.
    """

    session: str
    model: str
    start: int
    end: int
    tokens: int
    client: str
    server: str
    time: int
    _id: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.session, str) or SESSION_RE.match(self.session) is None:
            raise LedgerError("receipt session must be 32 lowercase hex digits (the 16-byte session id)")
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise LedgerError(f"receipt model {self.model!r:.80} is not a model name")
        int_field("receipt start", self.start, 0, MAX_LAYER - 1)
        int_field("receipt end", self.end, self.start + 1, min(MAX_LAYER, self.start + MAX_RECEIPT_BLOCKS))
        int_field("receipt tokens", self.tokens, 1, MAX_RECEIPT_TOKENS)
        peer_field("receipt client", self.client)
        peer_field("receipt server", self.server)
        if self.client == self.server:
            raise LedgerError("a receipt's client and server must be different identities")
        int_field("receipt time", self.time, 0, MAX_SAFE_INT)

    @property
    def blocks(self) -> int:
        return self.end - self.start

    @property
    def block_tokens(self) -> int:
        return self.blocks * self.tokens

    @property
    def span_key(self) -> tuple[str, str, str, str, int, int]:
        return (self.session, self.client, self.server, self.model, self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "tokens": self.tokens,
            "client": self.client,
            "server": self.server,
            "time": self.time,
        }

    def signing_bytes(self) -> bytes:
        """What client and server each sign: ``RECEIPT_CONTEXT``, a newline, the canonical receipt."""
        return context_bytes(RECEIPT_CONTEXT, self.to_dict())

    @property
    def id(self) -> str:
        """The receipt id: sha256 of its signing bytes, so it counts once however many logs carry it."""
        found = self._id
        if found is None:
            found = sha256_hex(self.signing_bytes())
            object.__setattr__(self, "_id", found)
        return found

    @classmethod
    def from_dict(cls, data: object) -> Receipt:
        r = object_fields("a receipt", data, _RECEIPT_KEYS)
        return cls(
            r["session"], r["model"], r["start"], r["end"], r["tokens"], r["client"], r["server"], r["time"]
        )


@dataclass(frozen=True)
class ReceiptBody:
    """A receipt with both signatures, as carried in a log entry of its client or its server."""

    receipt: Receipt
    client_sig: str
    server_sig: str
    kind: str = field(default="receipt", init=False)

    def __post_init__(self) -> None:
        sig_field("client_sig", self.client_sig)
        sig_field("server_sig", self.server_sig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "receipt",
            "receipt": self.receipt.to_dict(),
            "client_sig": self.client_sig,
            "server_sig": self.server_sig,
        }

    @classmethod
    def from_dict(cls, data: object) -> ReceiptBody:
        body = object_fields("a receipt body", data, _RECEIPT_BODY_KEYS)
        return cls(Receipt.from_dict(body["receipt"]), body["client_sig"], body["server_sig"])


def check_receipt_terms(
    receipt: Receipt,
    *,
    client: str,
    server: str,
    session: str,
    model: str,
    start: int,
    end: int,
    tokens: int,
    now_ms: int,
) -> Rejection | None:
    """What a party checks before co-signing: every field is what it saw, the time is near its clock."""
    expected = {
        "client": client,
        "server": server,
        "session": session,
        "model": model,
        "start": start,
        "end": end,
    }
    for name, value in expected.items():
        if getattr(receipt, name) != value:
            return Rejection(
                "bad_receipt", f"receipt {name} is {getattr(receipt, name)!r:.40}, expected {value!r:.40}"
            )
    if receipt.tokens > tokens:
        return Rejection("bad_receipt", f"receipt claims {receipt.tokens} tokens, this side counted {tokens}")
    if abs(receipt.time - now_ms) > MAX_FUTURE_MS:
        return Rejection("bad_receipt", f"receipt time is {receipt.time - now_ms} ms off this node's clock")
    return None


def receipt_to_countersign(
    data: object,
    server_sig: object,
    *,
    client: str,
    server: str,
    session: str,
    model: str,
    start: int,
    end: int,
    tokens: int,
    now_ms: int,
) -> Receipt:
    """The client's side before countersigning a receipt its server proposed: parsed, its terms checked
    against what the client sent (``check_receipt_terms``), the server's signature present. Raises
    ``LedgerError`` (with the refusal's code) otherwise."""
    receipt = Receipt.from_dict(data)
    refusal = check_receipt_terms(
        receipt,
        client=client,
        server=server,
        session=session,
        model=model,
        start=start,
        end=end,
        tokens=tokens,
        now_ms=now_ms,
    )
    if refusal is not None:
        raise LedgerError(f"not signing the receipt of {server[:12]}: {refusal.reason}", code=refusal.code)
    if not isinstance(server_sig, str):
        raise LedgerError("the receipt came without the server's signature")
    return receipt

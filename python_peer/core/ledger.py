"""Ledger entries and the rules that turn a set of them into balances.

Standard library only: the browser runs this file under Pyodide, passing WebCrypto's Ed25519 check as
``verify``; native peers pass pynacl's. ``docs/ledger.md`` gives the bytes for an implementer.

Each identity writes an append-only, hash-chained log. An entry is
``{author, seq, prev, time, body, signature}``: ``seq`` counts from 1, ``prev`` is the hash of the
author's entry ``seq - 1`` (64 zeros for seq 1), ``time`` is milliseconds since the Unix epoch and the
signature covers ``signing_bytes(ENTRY_CONTEXT, entry without signature)``. An entry's hash is the
sha256 of those signed bytes: it names the signed content, not the signature's encoding, so nobody but
the author can make two entries that differ only in their signature bytes pass as a fork.

Bodies: ``grant`` (the starter grant, with a proof of work), ``receipt`` (one served span of one
session, co-signed by client and server; it counts once, keyed by its id, whichever logs carry it) and
``fork_proof`` (two entries of one author with one ``seq``: proof of cheating).

``check_entry`` and ``check_link`` return a ``Rejection`` (a code and a reason) or None. ``compute``
is a pure function of the *set* of valid entries: duplicates and arrival order cannot change it, and it
never reads a clock (the "not too far in the future" check is made once, when an entry is accepted).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from .canonical import MAX_LAYER, MAX_SAFE_INT, MODEL_RE, is_peer_id, is_signature, signing_bytes
from .economics import DAY_MS, DEFAULT_RULES, HOUR_MS, Rules, can_pay, earnings, price
from .errors import CanonicalError, LedgerError, PaymentRequiredError

ENTRY_CONTEXT = "ai4all/ledger/entry/v1"
RECEIPT_CONTEXT = "ai4all/ledger/receipt/v1"
GRANT_POW_CONTEXT = "ai4all/ledger/grant-pow/v1"
GENESIS = "0" * 64  # ``prev`` of every seq-1 entry

MAX_FUTURE_MS = 300_000  # an entry or receipt dated further ahead of the receiver's clock is refused
MAX_ENTRY_BYTES = 4096  # canonical JSON of a grant or receipt entry, signature included
MAX_FORK_PROOF_BYTES = 2 * MAX_ENTRY_BYTES + 1024  # a fork proof carries two entries
MAX_RECEIPT_BLOCKS = 4096
MAX_RECEIPT_TOKENS = 1 << 24  # token positions per receipt (batch x length), ~16.7 M

KINDS = ("grant", "receipt", "fork_proof")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SESSION_RE = re.compile(r"^[0-9a-f]{32}$")

Verify = Callable[[str, bytes, str], bool]
"""``verify(peer_id, message, signature_hex)``: whether the Ed25519 signature is good."""
Sign = Callable[[bytes], str]
"""``sign(message) -> signature_hex`` of the author's key (``Identity.sign`` natively)."""


@dataclass(frozen=True)
class Rejection:
    """Why an entry was refused or does not count: a stable ``code`` and a sentence for people."""

    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"

    def error(self) -> LedgerError:
        return LedgerError(self.reason, code=self.code)


@dataclass(frozen=True)
class Outcome:
    """What a store did with one offered entry or fork proof.

    ``stored``: new and counted in the chain; ``duplicate``: already held; ``fork``: it conflicts with a
    held entry of the same author and seq, and the two are now kept as fork evidence; ``rejected``:
    refused, ``rejection`` says why, and nothing changed.
    """

    hash: str
    status: str
    rejection: Rejection | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


# --- parsing helpers ------------------------------------------------------------------------------------


def _int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise LedgerError(f"{what} = {value} is outside [{low}, {high}]")
    return value


def _fields(what: str, data: object, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LedgerError(f"{what} must be a JSON object, not {type(data).__name__}")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(str(k) for k in set(data) - keys)
        raise LedgerError(f"{what} has missing fields {missing} and unknown fields {extra[:8]}")
    return data


def _peer(what: str, value: object) -> str:
    if not is_peer_id(value):
        raise LedgerError(f"{what} must be a peer id (64 lowercase hex digits)")
    return str(value)


def _sig(what: str, value: object) -> str:
    if not is_signature(value):
        raise LedgerError(f"{what} must be a signature (128 lowercase hex digits)")
    return str(value)


def _canonical(value: dict[str, Any]) -> bytes:
    """``canonical_bytes`` for dicts built from validated dataclasses, without re-walking every value.

    Every field of an entry, a receipt or a body has been checked on construction (integers within
    ±(2**53 - 1), strings matching ASCII patterns), which is all ``canonical_bytes`` checks; only the
    encoding is left, and it is the same ``json.dumps`` call. Entries are hashed on every insert and
    every balance computation, so the walk was the largest cost after the signature checks.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _signing_bytes(context: str, value: dict[str, Any]) -> bytes:
    return context.encode() + b"\n" + _canonical(value)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified(verify: Verify, peer_id: str, message: bytes, signature: str) -> bool:
    """Call the injected check; a check that raises (a foreign crypto library) counts as a failure."""
    try:
        return verify(peer_id, message, signature) is True
    except Exception:
        return False


# --- bodies ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """The starter grant, claimable once per identity; ``nonce`` is its proof of work."""

    nonce: int
    kind: str = field(default="grant", init=False)

    def __post_init__(self) -> None:
        _int("grant nonce", self.nonce, 0, MAX_SAFE_INT)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "grant", "nonce": self.nonce}

    @classmethod
    def from_dict(cls, data: object) -> Grant:
        body = _fields("a grant body", data, _GRANT_KEYS)
        return cls(body["nonce"])


@dataclass(frozen=True)
class Receipt:
    """One served span ``[start, end)`` of one session: what client and server both sign.

    ``tokens`` is the token positions the span processed (batch x length, summed over steps); ``time``
    is when the span closed. Two receipts for one (session, client, server, model, span) are cumulative:
    only the one with the most tokens counts, so a client may sign as the session goes.
    """

    session: str
    model: str
    start: int
    end: int
    tokens: int
    client: str
    server: str
    time: int

    def __post_init__(self) -> None:
        if not isinstance(self.session, str) or SESSION_RE.match(self.session) is None:
            raise LedgerError("receipt session must be 32 lowercase hex digits (the 16-byte session id)")
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise LedgerError(f"receipt model {self.model!r:.80} is not a model name")
        _int("receipt start", self.start, 0, MAX_LAYER - 1)
        _int("receipt end", self.end, self.start + 1, min(MAX_LAYER, self.start + MAX_RECEIPT_BLOCKS))
        _int("receipt tokens", self.tokens, 1, MAX_RECEIPT_TOKENS)
        _peer("receipt client", self.client)
        _peer("receipt server", self.server)
        if self.client == self.server:
            raise LedgerError("a receipt's client and server must be different identities")
        _int("receipt time", self.time, 0, MAX_SAFE_INT)

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
        return _signing_bytes(RECEIPT_CONTEXT, self.to_dict())

    @cached_property
    def id(self) -> str:
        """The receipt id: sha256 of its signing bytes, so it counts once however many logs carry it."""
        return _sha256_hex(self.signing_bytes())

    @classmethod
    def from_dict(cls, data: object) -> Receipt:
        r = _fields("a receipt", data, _RECEIPT_KEYS)
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
        _sig("client_sig", self.client_sig)
        _sig("server_sig", self.server_sig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "receipt",
            "receipt": self.receipt.to_dict(),
            "client_sig": self.client_sig,
            "server_sig": self.server_sig,
        }

    @classmethod
    def from_dict(cls, data: object) -> ReceiptBody:
        body = _fields("a receipt body", data, _RECEIPT_BODY_KEYS)
        return cls(Receipt.from_dict(body["receipt"]), body["client_sig"], body["server_sig"])


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
        body = _fields("a fork_proof body", data, _FORK_KEYS)
        return cls(Entry.from_dict(body["a"], nested=True), Entry.from_dict(body["b"], nested=True))


Body = Grant | ReceiptBody | ForkProof

_GRANT_KEYS = frozenset({"kind", "nonce"})
_RECEIPT_KEYS = frozenset({"session", "model", "start", "end", "tokens", "client", "server", "time"})
_RECEIPT_BODY_KEYS = frozenset({"kind", "receipt", "client_sig", "server_sig"})
_FORK_KEYS = frozenset({"kind", "a", "b"})
_ENTRY_KEYS = frozenset({"author", "seq", "prev", "time", "body", "signature"})


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
    if nested:
        raise LedgerError("a fork proof cannot carry fork proofs")
    return ForkProof.from_dict(data)


# --- entries --------------------------------------------------------------------------------------------


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
        _peer("entry author", self.author)
        _int("entry seq", self.seq, 1, MAX_SAFE_INT)
        if not isinstance(self.prev, str) or HASH_RE.match(self.prev) is None:
            raise LedgerError("entry prev must be 64 lowercase hex digits")
        if (self.seq == 1) != (self.prev == GENESIS):
            raise LedgerError(f"entry seq {self.seq}: prev is 64 zeros exactly when seq is 1")
        _int("entry time", self.time, 0, MAX_SAFE_INT)
        if not isinstance(self.body, Grant | ReceiptBody | ForkProof):
            raise LedgerError("entry body must be a Grant, ReceiptBody or ForkProof")
        _sig("entry signature", self.signature)

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
        return _signing_bytes(ENTRY_CONTEXT, self.signed_dict())

    @cached_property
    def hash(self) -> str:
        """sha256 of the signed bytes, hex: the entry's name and the next entry's ``prev``."""
        return _sha256_hex(self.signing_bytes)

    @cached_property
    def encoded(self) -> bytes:
        """Canonical JSON of the whole entry: how it is stored and measured against the size limits."""
        return _canonical(self.to_dict())

    @classmethod
    def from_dict(cls, data: object, *, nested: bool = False) -> Entry:
        """Validate an entry received as JSON; unknown or missing fields are refused, never guessed."""
        e = _fields("a ledger entry", data, _ENTRY_KEYS)
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


# --- proof of work --------------------------------------------------------------------------------------


def pow_bits(author: str, nonce: int) -> int:
    """Leading zero bits of sha256(signing_bytes(GRANT_POW_CONTEXT, {"author", "nonce"}))."""
    digest = hashlib.sha256(signing_bytes(GRANT_POW_CONTEXT, {"author": author, "nonce": nonce})).digest()
    return 256 - int.from_bytes(digest, "big").bit_length()


def mine_grant(author: str, bits: int, start: int = 0, limit: int = 1 << 40) -> int | None:
    """The first nonce from ``start`` whose proof of work has ``bits`` leading zero bits (None past limit).

    Blocking and CPU-bound (about 2**bits hashes): run it in a thread or a worker.
    """
    prefix = hashlib.sha256(signing_bytes(GRANT_POW_CONTEXT, {"author": author, "nonce": 0})[: -len("0}")])
    threshold = 1 << (256 - bits)
    for nonce in range(start, start + limit):
        h = prefix.copy()
        h.update(f"{nonce}}}".encode())
        if int.from_bytes(h.digest(), "big") < threshold:
            if pow_bits(author, nonce) < bits:  # the fast path must agree with the rule
                raise LedgerError("grant proof of work: fast path disagrees with pow_bits")
            return nonce
    return None


# --- validators -----------------------------------------------------------------------------------------


def _size_limit(entry: Entry) -> int:
    return MAX_FORK_PROOF_BYTES if isinstance(entry.body, ForkProof) else MAX_ENTRY_BYTES


def check_body(entry: Entry, verify: Verify, rules: Rules = DEFAULT_RULES) -> Rejection | None:
    """Everything about one entry that needs no clock and no other entry: size, signatures, body rules."""
    size = len(entry.encoded)
    if size > _size_limit(entry):
        return Rejection("too_large", f"{entry.kind} entry is {size} bytes, over {_size_limit(entry)}")
    if not _verified(verify, entry.author, entry.signing_bytes, entry.signature):
        return Rejection(
            "bad_signature", f"entry {entry.seq} of {entry.author[:12]}… is not signed by its author"
        )
    body = entry.body
    if isinstance(body, Grant):
        bits = pow_bits(entry.author, body.nonce)
        if bits < rules.grant_pow_bits:
            return Rejection(
                "bad_pow",
                f"grant proof of work has {bits} leading zero bits, the rules need {rules.grant_pow_bits}",
            )
    elif isinstance(body, ReceiptBody):
        r = body.receipt
        if entry.author not in (r.client, r.server):
            return Rejection("bad_receipt", "a receipt is carried only in its client's or its server's log")
        if r.time > entry.time + MAX_FUTURE_MS:
            return Rejection(
                "bad_receipt", f"receipt is dated {r.time - entry.time} ms after the entry carrying it"
            )
        message = r.signing_bytes()
        if not _verified(verify, r.client, message, body.client_sig):
            return Rejection(
                "bad_signature",
                f"client {r.client[:12]}…'s signature does not match this receipt (altered tokens, session or span?)",
            )
        if not _verified(verify, r.server, message, body.server_sig):
            return Rejection(
                "bad_signature", f"server {r.server[:12]}…'s signature does not match this receipt"
            )
    else:
        return check_fork_proof(body, verify)
    return None


def check_fork_proof(proof: ForkProof, verify: Verify) -> Rejection | None:
    """Whether ``proof`` proves a fork: both entries within size and signed by their (common) author."""
    for inner in (proof.a, proof.b):
        if len(inner.encoded) > MAX_ENTRY_BYTES:
            return Rejection("too_large", f"an entry inside a fork proof is over {MAX_ENTRY_BYTES} bytes")
        if not _verified(verify, inner.author, inner.signing_bytes, inner.signature):
            return Rejection("bad_signature", "an entry inside the fork proof is not signed by its author")
    return None


def check_entry(entry: Entry, verify: Verify, now_ms: int, rules: Rules = DEFAULT_RULES) -> Rejection | None:
    """Whether to accept ``entry`` at local time ``now_ms``: ``check_body`` plus the clock check."""
    if entry.time > now_ms + MAX_FUTURE_MS:
        return Rejection("future", f"entry is dated {entry.time - now_ms} ms ahead of this node's clock")
    if isinstance(entry.body, ReceiptBody) and entry.body.receipt.time > now_ms + MAX_FUTURE_MS:
        return Rejection("future", "receipt is dated too far ahead of this node's clock")
    return check_body(entry, verify, rules)


class Link(Protocol):
    """What linking needs of the previous entry: an ``Entry``, or a store's row of (seq, hash, time)."""

    @property
    def seq(self) -> int: ...

    @property
    def hash(self) -> str: ...

    @property
    def time(self) -> int: ...


def check_link(prev: Link | None, entry: Entry) -> Rejection | None:
    """Whether ``entry`` extends ``prev``, the author's entry ``seq - 1`` (None if not held)."""
    if entry.seq == 1:
        return None
    if prev is None:
        return Rejection(
            "gap", f"entry {entry.seq} of {entry.author[:12]}… arrived before entry {entry.seq - 1}"
        )
    if entry.prev != prev.hash:
        return Rejection("bad_link", f"entry {entry.seq}'s prev is not the hash of entry {prev.seq}")
    if entry.time < prev.time:
        return Rejection(
            "bad_time", f"entry {entry.seq} is dated {prev.time - entry.time} ms before entry {prev.seq}"
        )
    return None


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


# --- balances -------------------------------------------------------------------------------------------


@dataclass
class Account:
    """Where an identity's balance comes from, in units; ``balance`` is the one figure that matters."""

    peer_id: str
    balance: int = 0
    granted: int = 0
    earned: int = 0
    rarity_bonus: int = 0
    uptime_bonus: int = 0
    spent: int = 0
    clipped: int = 0
    served_block_tokens: int = 0
    receipts_served: int = 0
    receipts_paid: int = 0
    entries: int = 0
    forked_at: int | None = None


@dataclass(frozen=True)
class LedgerReport:
    """The outcome of ``compute``: balances, their breakdown, and why each non-counting entry does not count."""

    accounts: dict[str, Account]
    ignored: dict[str, Rejection]  # entry hash -> why it has no effect
    forks: dict[str, int]  # author -> lowest seq with two entries
    counted: frozenset[str]  # hashes of entries in counting positions

    @property
    def balances(self) -> dict[str, int]:
        return {peer: account.balance for peer, account in self.accounts.items()}

    def balance(self, peer_id: str) -> int:
        account = self.accounts.get(peer_id)
        return account.balance if account else 0

    def standing(self, peer_id: str) -> int:
        """Lifetime block-tokens ``peer_id`` served in counted receipts: what earns a price discount."""
        account = self.accounts.get(peer_id)
        return account.served_block_tokens if account else 0


def fork_points(entries: Iterable[Entry]) -> dict[str, int]:
    """Author -> lowest seq at which two different entries are known (directly or inside fork proofs)."""
    seen: dict[tuple[str, int], str] = {}
    forks: dict[str, int] = {}

    def note(e: Entry) -> None:
        other = seen.setdefault((e.author, e.seq), e.hash)
        if other != e.hash and e.seq < forks.get(e.author, MAX_SAFE_INT + 1):
            forks[e.author] = e.seq

    for entry in entries:
        note(entry)
        if isinstance(entry.body, ForkProof):
            note(entry.body.a)
            note(entry.body.b)
    return forks


def _dedupe(
    entries: Iterable[Entry], verify: Verify | None, rules: Rules, ignored: dict[str, Rejection]
) -> dict[str, Entry]:
    pool: dict[str, Entry] = {}
    for entry in entries:
        if entry.hash in pool:
            continue
        if verify is not None:
            rejection = check_body(entry, verify, rules)
            if rejection is not None:
                ignored.setdefault(entry.hash, rejection)
                continue
        ignored.pop(entry.hash, None)  # another copy of the same content was bad; this one is good
        pool[entry.hash] = entry
    return pool


def _counting_chains(
    pool: dict[str, Entry], forks: dict[str, int], ignored: dict[str, Rejection]
) -> tuple[list[Entry], dict[str, int]]:
    """Each author's linked prefix from seq 1, stopping at a gap, a bad link or the fork."""
    by_author: dict[str, dict[int, Entry]] = defaultdict(dict)
    for entry in sorted(pool.values(), key=lambda e: e.hash):
        by_author[entry.author].setdefault(entry.seq, entry)
    counted: list[Entry] = []
    lengths: dict[str, int] = {}
    for author, seqs in by_author.items():
        fork = forks.get(author, MAX_SAFE_INT + 1)
        prev: Entry | None = None
        seq = 1
        while seq < fork and seq in seqs and check_link(prev, seqs[seq]) is None:
            prev = seqs[seq]
            counted.append(prev)
            seq += 1
        lengths[author] = seq - 1
    for entry in pool.values():
        length = lengths[entry.author]
        if entry.seq <= length and entry.seq < forks.get(entry.author, MAX_SAFE_INT + 1):
            continue
        if entry.author in forks and entry.seq >= forks[entry.author]:
            ignored[entry.hash] = Rejection("forked", f"author forked at seq {forks[entry.author]}")
        else:
            ignored[entry.hash] = Rejection(
                "gap", f"entry does not extend the author's chain at seq {length}"
            )
    return counted, lengths


def _rarity_bonus(receipts: list[Receipt], rules: Rules) -> dict[str, int]:
    """Receipt id -> rarity bonus units: per model per UTC day, distinct servers covering each block."""
    groups: dict[tuple[str, int], list[Receipt]] = defaultdict(list)
    for r in receipts:
        groups[(r.model, r.time // DAY_MS)].append(r)
    bonus: dict[str, int] = {}
    for group in groups.values():
        spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for r in group:
            spans[r.server].append((r.start, r.end))
        deltas: dict[int, int] = defaultdict(int)
        for intervals in spans.values():
            intervals.sort()
            lo, hi = intervals[0]
            for a, b in intervals[1:]:
                if a > hi:
                    deltas[lo] += 1
                    deltas[hi] -= 1
                    lo, hi = a, b
                else:
                    hi = max(hi, b)
            deltas[lo] += 1
            deltas[hi] -= 1
        points = sorted(deltas)
        counts, running = [], 0
        for p in points:
            running += deltas[p]
            counts.append(running)  # servers covering [points[i], points[i + 1])
        for r in group:
            total = 0
            i = max(bisect.bisect_right(points, r.start) - 1, 0)
            while i < len(points) - 1 and points[i] < r.end:
                overlap = min(points[i + 1], r.end) - max(points[i], r.start)
                if overlap > 0:
                    total += rules.rarity_rate(counts[i]) * overlap
                i += 1
            bonus[r.id] = total * r.tokens
    return bonus


def compute(
    entries: Iterable[Entry], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> LedgerReport:
    """Balances as a pure function of the set of entries; duplicates and order make no difference.

    Entries are assumed to have passed ``check_body`` (a store only holds such); pass ``verify`` to check
    them here instead, and those that fail are reported in ``ignored``. Rules, in order:

    - forks: an author with two different entries at one seq (seen directly or in a fork proof) counts
      only its entries below that seq; each author counts its linked prefix from seq 1;
    - grants: the author's first counted grant credits the starter grant at its entry time;
    - receipts: counted once per receipt id; of receipts for one session span, the one with the most
      tokens; the client pays ``price`` (discounted by its standing just before), the server earns
      per block-token plus the rarity bonus, and an uptime bonus per busy UTC hour;
    - the credits and debits are applied in order of (time, id) with each balance capped.
    """
    ignored: dict[str, Rejection] = {}
    pool = _dedupe(entries, verify, rules, ignored)
    forks = fork_points(pool.values())
    counted, _ = _counting_chains(pool, forks, ignored)
    accounts: dict[str, Account] = {}

    def account(peer: str) -> Account:
        found = accounts.get(peer)
        if found is None:
            found = accounts[peer] = Account(peer)
        return found

    events: list[tuple[int, str, str, int]] = []  # (time, tie-break, peer, +credit / -debit)
    grants: dict[str, Entry] = {}
    carriers: dict[str, list[Entry]] = defaultdict(list)
    for entry in counted:
        first = grants.get(entry.author)
        if isinstance(entry.body, Grant) and (first is None or entry.seq < first.seq):
            grants[entry.author] = entry
    for entry in counted:
        account(entry.author).entries += 1
        if isinstance(entry.body, Grant) and grants[entry.author] is not entry:
            claimed = grants[entry.author].seq
            ignored[entry.hash] = Rejection("grant_claimed", f"grant already claimed at seq {claimed}")
        elif isinstance(entry.body, ReceiptBody):
            carriers[entry.body.receipt.id].append(entry)
    for author, forked_at in forks.items():
        account(author).forked_at = forked_at
    for author, grant in grants.items():
        events.append((grant.time, "g" + grant.hash, author, rules.starter_grant))
        account(author).granted = rules.starter_grant

    best: dict[tuple[str, str, str, str, int, int], Receipt] = {}
    for copies in carriers.values():
        copies.sort(key=lambda e: e.hash)
        for extra in copies[1:]:
            ignored[extra.hash] = Rejection(
                "duplicate_receipt", f"receipt already counted in entry {copies[0].hash[:12]}…"
            )
        body = copies[0].body
        if not isinstance(body, ReceiptBody):
            continue
        r = body.receipt
        held = best.get(r.span_key)
        if held is None or (r.tokens, r.time, held.id) > (held.tokens, held.time, r.id):
            best[r.span_key] = r
    receipts = sorted(best.values(), key=lambda r: (r.time, r.id))
    winners = {r.id for r in receipts}
    for rid, copies in carriers.items():
        if rid not in winners:
            ignored[copies[0].hash] = Rejection(
                "superseded", "a receipt with more tokens for the same session span counts"
            )

    served_times: dict[str, list[int]] = defaultdict(list)
    served_totals: dict[str, list[int]] = defaultdict(lambda: [0])
    for r in receipts:  # sorted by time: prefix sums of block-tokens served, per server
        served_times[r.server].append(r.time)
        served_totals[r.server].append(served_totals[r.server][-1] + r.block_tokens)
    rarity = _rarity_bonus(receipts, rules)
    hourly: dict[tuple[str, int], int] = defaultdict(int)
    for r in receipts:
        standing = (
            served_totals[r.client][bisect.bisect_left(served_times[r.client], r.time)]
            if r.client in served_times
            else 0
        )
        cost = price(r.blocks, r.tokens, standing, rules)
        earned = earnings(r.blocks, r.tokens, rules)
        events.append((r.time, r.id + "c", r.client, -cost))
        events.append((r.time, r.id + "s", r.server, earned + rarity[r.id]))
        payer, payee = account(r.client), account(r.server)
        payer.spent += cost
        payer.receipts_paid += 1
        payee.earned += earned
        payee.rarity_bonus += rarity[r.id]
        payee.served_block_tokens += r.block_tokens
        payee.receipts_served += 1
        hourly[(r.server, r.time // HOUR_MS)] += r.block_tokens
    for (server, hour), block_tokens in hourly.items():
        if block_tokens >= rules.uptime_min_block_tokens and rules.uptime_bonus:
            events.append((hour * HOUR_MS + HOUR_MS - 1, f"u{hour}", server, rules.uptime_bonus))
            account(server).uptime_bonus += rules.uptime_bonus

    events.sort()
    for _, _, peer, amount in events:
        acc = accounts[peer]
        if amount < 0:
            acc.balance += amount
            continue
        credited = max(0, min(amount, rules.balance_cap - acc.balance))
        acc.balance += credited
        acc.clipped += amount - credited
    return LedgerReport(accounts, ignored, forks, frozenset(e.hash for e in counted))


def balances(
    entries: Iterable[Entry], *, rules: Rules = DEFAULT_RULES, verify: Verify | None = None
) -> dict[str, int]:
    """Peer id -> balance in units; see ``compute``."""
    return compute(entries, rules=rules, verify=verify).balances


# --- signatures checked ahead of time (the browser) -----------------------------------------------------

Claim = tuple[str, bytes, str]
"""``(peer_id, message, signature_hex)``: one Ed25519 check that accepting an entry may ask for."""


def signature_claims(item: Entry | ForkProof) -> list[Claim]:
    """Every signature ``check_body`` (or ``check_fork_proof``) may ask ``verify`` about, in order.

    The entry's own signature, a receipt's two co-signatures, and the two entries of a fork proof. A
    caller that cannot verify synchronously (Python under Pyodide, where WebCrypto answers with a
    promise) checks these first and passes ``KnownSignatures`` of the good ones as ``verify``.
    """
    if isinstance(item, ForkProof):
        return [(e.author, e.signing_bytes, e.signature) for e in (item.a, item.b)]
    claims: list[Claim] = [(item.author, item.signing_bytes, item.signature)]
    body = item.body
    if isinstance(body, ReceiptBody):
        message = body.receipt.signing_bytes()
        claims.append((body.receipt.client, message, body.client_sig))
        claims.append((body.receipt.server, message, body.server_sig))
    elif isinstance(body, ForkProof):
        claims.extend(signature_claims(body))
    return claims


class KnownSignatures:
    """A ``Verify`` that accepts exactly the claims it was given (checked elsewhere), nothing else.

    An unknown claim is a bad signature, so forgetting to check one can only refuse an entry, never
    accept a forged one.
    """

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        self._good: set[Claim] = set()
        self.add(claims)

    def add(self, claims: Iterable[Claim]) -> None:
        for peer_id, message, signature in claims:
            self._good.add((peer_id, bytes(message), signature))

    def clear(self) -> None:
        self._good.clear()

    def __len__(self) -> int:
        return len(self._good)

    def __call__(self, peer_id: str, message: bytes, signature: str) -> bool:
        return (peer_id, message, signature) in self._good


# --- stores: what a node keeps ----------------------------------------------------------------------------


class Signer(Protocol):
    """What appending needs from an identity: ``python_peer.identity.Identity`` is one."""

    @property
    def peer_id(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


@dataclass(frozen=True)
class Quote:
    """A client's balance as this node sees it, against the price of one request."""

    client: str
    balance: int
    price: int
    standing: int
    outstanding: int = 0

    @property
    def refusal(self) -> str | None:
        """Why the request must be refused (a sentence naming balance and price), or None."""
        return can_pay(self.balance, self.price, self.outstanding)


class ChainStore(ABC):
    """The decisions of a ledger store, over rows that a subclass keeps (SQLite natively, dicts in a browser).

    Holds each author's linked chain from seq 1 (every entry checked by ``check_entry`` and ``check_link``)
    and, per forked author, the two entries with the smallest hashes among those seen at the lowest
    forked seq. Learning a fork at seq ``f`` deletes that author's chain from ``f`` on and refuses later
    entries, so what a store holds is a function of the entries it was offered, whatever their order.

    Every public write runs in ``_transaction()``: stored whole or not at all. Subclasses provide the
    row primitives below, the transaction, ``_lock`` (a re-entrant lock) and the reads.
    """

    rules: Rules
    verify: Verify
    _lock: AbstractContextManager[Any]

    # --- primitives -----------------------------------------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Everything written inside is kept, or none of it when the block raises."""

    @abstractmethod
    def _holds(self, entry_hash: str) -> bool:
        """Whether a chain entry or an evidence entry has this hash."""

    @abstractmethod
    def _fork_seq(self, author: str) -> int | None: ...

    @abstractmethod
    def _link(self, author: str, seq: int) -> Link | None:
        """The (seq, hash, time) of the chain entry ``seq`` of ``author``, if held."""

    @abstractmethod
    def _row(self, author: str, seq: int) -> Entry | None: ...

    @abstractmethod
    def _evidence_of(self, author: str) -> list[Entry]: ...

    @abstractmethod
    def _write_entry(self, entry: Entry) -> None:
        """Add a checked entry to its author's chain."""

    @abstractmethod
    def _set_evidence(self, author: str, seq: int, entries: Sequence[Entry]) -> None:
        """Replace the evidence held against ``author`` by ``entries`` (all at ``seq``)."""

    @abstractmethod
    def _drop_chain(self, author: str, from_seq: int) -> None:
        """Delete ``author``'s chain entries from ``from_seq`` on."""

    @abstractmethod
    def _has_grant(self, author: str) -> bool: ...

    @abstractmethod
    def _has_receipt(self, author: str, receipt_id: str) -> bool:
        """Whether ``author``'s chain carries the receipt ``receipt_id``."""

    @abstractmethod
    def _published(self, author: str) -> set[str]:
        """The authors whose fork ``author``'s chain already carries a proof of."""

    # --- reads ----------------------------------------------------------------------------------------

    @abstractmethod
    def head(self, author: str) -> Entry | None:
        """The last entry of ``author``'s chain held here."""

    @abstractmethod
    def heads(self) -> dict[str, tuple[int, str]]:
        """Author -> (seq, hash) of the last entry held in each chain: what gossip compares."""

    @abstractmethod
    def hash_at(self, author: str, seq: int) -> str | None: ...

    @abstractmethod
    def entries_from(self, author: str, from_seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``author`` from ``from_seq`` on, in order."""

    @abstractmethod
    def forks(self) -> dict[str, int]:
        """Author -> the lowest seq at which two entries of that author are known."""

    @abstractmethod
    def fork_proof(self, author: str) -> ForkProof | None:
        """The evidence against ``author``, as a fork proof, if it forked."""

    @abstractmethod
    def entries(self) -> Iterator[Entry]:
        """Every chain entry, by author then seq."""

    @abstractmethod
    def report(self) -> LedgerReport:
        """``compute`` over every chain and evidence entry held."""

    # --- deciding -------------------------------------------------------------------------------------

    def _record_fork(self, author: str, seq: int, variants: Sequence[Entry]) -> bool:
        """Keep the two smallest-hash entries at the lowest forked seq; drop the chain from there on."""
        current = self._fork_seq(author)
        if current is not None and seq > current:
            return False
        known: dict[str, Entry] = {v.hash: v for v in variants if v.author == author and v.seq == seq}
        if current == seq:
            for entry in self._evidence_of(author):
                known[entry.hash] = entry
        held = self._row(author, seq)
        if held is not None:
            known[held.hash] = held
        if len(known) < 2:
            return False
        self._set_evidence(author, seq, [known[h] for h in sorted(known)[:2]])
        self._drop_chain(author, seq)
        return current != seq

    def _offer(self, entry: Entry, now: int) -> Outcome:
        """Decide one entry inside an open transaction; checks run before anything is written."""
        if self._holds(entry.hash):
            return Outcome(entry.hash, "duplicate")
        fork = self._fork_seq(entry.author)
        if fork is not None and entry.seq > fork:
            body = entry.body  # its author's entry does not count, but the evidence it carries is still proof
            if isinstance(body, ForkProof) and check_fork_proof(body, self.verify) is None:
                self._record_fork(body.author, body.seq, [body.a, body.b])
            return Outcome(entry.hash, "rejected", Rejection("forked", f"author forked at seq {fork}"))
        rejection = check_entry(entry, self.verify, now, self.rules)
        if rejection is not None:
            return Outcome(entry.hash, "rejected", rejection)
        if fork == entry.seq:  # one more variant at the fork, kept if among the two smallest hashes
            self._record_fork(entry.author, entry.seq, [entry])
            return Outcome(entry.hash, "fork", Rejection("forked", f"author forked at seq {fork}"))
        held = self._link(entry.author, entry.seq)
        if held is not None:
            self._record_fork(entry.author, entry.seq, [entry])
            return Outcome(
                entry.hash, "fork", Rejection("forked", f"a second entry {entry.seq} of its author")
            )
        rejection = check_link(self._link(entry.author, entry.seq - 1) if entry.seq > 1 else None, entry)
        if rejection is not None:
            return Outcome(entry.hash, "rejected", rejection)
        self._write_entry(entry)
        if isinstance(entry.body, ForkProof):
            self._record_fork(entry.body.author, entry.body.seq, [entry.body.a, entry.body.b])
        return Outcome(entry.hash, "stored")

    def _own_rejection(self, author: str, body: Body, pending: Sequence[Entry]) -> Rejection | None:
        """What an honest writer refuses to sign: a second grant, a receipt its log already carries."""
        if isinstance(body, Grant) and (
            self._has_grant(author) or any(isinstance(e.body, Grant) for e in pending)
        ):
            return Rejection("grant_claimed", "this identity has already claimed its starter grant")
        if isinstance(body, ReceiptBody):
            rid = body.receipt.id
            if self._has_receipt(author, rid) or any(
                isinstance(e.body, ReceiptBody) and e.body.receipt.id == rid for e in pending
            ):
                return Rejection("duplicate_receipt", f"receipt {rid[:12]}… is already in this log")
        return None

    # --- inserting others' entries --------------------------------------------------------------------

    def insert(self, entry: Entry, now: int | None = None) -> Outcome:
        """Offer one entry from another node; see ``Outcome`` for what can happen."""
        return self.insert_many([entry], now)[0]

    def insert_many(self, entries: Sequence[Entry], now: int | None = None) -> list[Outcome]:
        """Offer a batch (in seq order per author, as gossip sends them) in one transaction."""
        clock = wall_clock_ms() if now is None else now
        with self._transaction():
            return [self._offer(entry, clock) for entry in entries]

    def add_fork_proofs(self, proofs: Sequence[ForkProof], now: int | None = None) -> list[Outcome]:
        """Record fork evidence received outside any log (gossip's ``proofs``); one transaction."""
        del now  # evidence is timeless: a fork is proven whenever its entries were dated
        outcomes = []
        with self._transaction():
            for proof in proofs:
                tag = proof.a.hash
                rejection = check_fork_proof(proof, self.verify)
                if rejection is not None:
                    outcomes.append(Outcome(tag, "rejected", rejection))
                elif self._record_fork(proof.author, proof.seq, [proof.a, proof.b]):
                    outcomes.append(Outcome(tag, "fork"))
                else:
                    outcomes.append(Outcome(tag, "duplicate"))
        return outcomes

    # --- own entries ----------------------------------------------------------------------------------

    def append(self, identity: Signer, body: Body, now: int | None = None) -> Entry:
        """Sign ``body`` as the next entry of ``identity``'s log and store it durably."""
        return self.append_many(identity, [body], now)[0]

    def append_many(self, identity: Signer, bodies: Sequence[Body], now: int | None = None) -> list[Entry]:
        """Append several bodies in one transaction: all of them are stored, or none."""
        clock = wall_clock_ms() if now is None else now
        author = identity.peer_id
        written: list[Entry] = []
        with self._transaction():
            if (fork := self._fork_seq(author)) is not None:
                raise LedgerError(
                    f"this identity's log is forked at seq {fork} (the key was used by two writers): "
                    "use a new identity",
                    code="forked",
                )
            head = self.head(author)
            for body in bodies:
                rejection = self._own_rejection(author, body, written)
                if rejection is not None:
                    raise rejection.error()
                entry = next_entry(author, head, clock, body, identity.sign)
                outcome = self._offer(entry, clock)
                if outcome.status != "stored":
                    raise (outcome.rejection or Rejection("store", f"entry was {outcome.status}")).error()
                written.append(entry)
                head = entry
        return written

    def append_receipt(self, identity: Signer, body: ReceiptBody, now: int | None = None) -> Entry:
        """Record a co-signed receipt in ``identity``'s log (it must be the receipt's client or server)."""
        return self.append(identity, body, now)

    def claim_grant(self, identity: Signer, now: int | None = None, nonce: int | None = None) -> Entry:
        """Mine the proof of work (unless ``nonce`` is given) and append the starter grant.

        Mining takes about 2**grant_pow_bits hashes (seconds under the default rules): call it in a thread.
        """
        if nonce is None:
            nonce = mine_grant(identity.peer_id, self.rules.grant_pow_bits)
            if nonce is None:
                raise LedgerError("no proof of work found for the starter grant", code="bad_pow")
        return self.append(identity, Grant(nonce), now)

    def unpublished_fork_proofs(self, author: str, limit: int = 8) -> list[ForkProof]:
        """Proofs of the known forks (of others) that ``author``'s log does not carry yet."""
        with self._lock:
            published = self._published(author)
            return [
                proof
                for forked in sorted(self.forks())
                if forked not in published and forked != author
                if (proof := self.fork_proof(forked)) is not None
            ][:limit]

    def publish_fork_proofs(self, identity: Signer, now: int | None = None, limit: int = 8) -> list[Entry]:
        """Append a ``fork_proof`` entry for each known fork this identity has not yet published."""
        proofs = self.unpublished_fork_proofs(identity.peer_id, limit)
        return self.append_many(identity, proofs, now) if proofs else []

    # --- balances and spending ------------------------------------------------------------------------

    def balances(self) -> dict[str, int]:
        return self.report().balances

    def balance(self, peer_id: str) -> int:
        return self.report().balance(peer_id)

    def quote(self, client: str, blocks: int, tokens: int, outstanding: int = 0) -> Quote:
        """The price of ``tokens`` through ``blocks`` blocks for ``client``, and its balance here."""
        report = self.report()
        standing = report.standing(client)
        cost = price(blocks, tokens, standing, self.rules)
        return Quote(client, report.balance(client), cost, standing, outstanding)

    def require_payment(self, client: str, blocks: int, tokens: int, outstanding: int = 0) -> Quote:
        """``quote``, raising ``PaymentRequiredError`` (code ``payment_required``) if the balance falls short."""
        quote = self.quote(client, blocks, tokens, outstanding)
        if quote.refusal is not None:
            raise PaymentRequiredError(f"client {client[:12]}…: {quote.refusal}")
        return quote


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch: the ledger's time."""
    return time.time_ns() // 1_000_000

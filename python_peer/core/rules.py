"""The validators: whether one entry may be accepted, each returning a ``Rejection`` (a code and a reason) or None.

Standard library only. ``check_body`` needs no clock and no other entry (size, signatures, body rules);
``check_entry`` adds the clock check, made once when an entry is accepted; ``check_link`` checks an entry
against its author's previous one; ``check_fork_proof`` checks fork evidence; ``evidence.check_evidence``
checks the evidence of a disagreement between serving peers.
"""

from __future__ import annotations

from typing import Protocol

from .economics import DEFAULT_RULES, Rules
from .entries import MAX_ENTRY_BYTES, MAX_FORK_PROOF_BYTES, Entry, ForkProof, Grant
from .evidence import Evidence, check_evidence
from .holds import Hold, check_hold
from .ledger_fields import MAX_FUTURE_MS, EntryFacts, Rejection, Verify, verified
from .proof_of_work import pow_bits
from .receipts import ReceiptBody


def _size_limit(entry: Entry) -> int:
    return MAX_FORK_PROOF_BYTES if isinstance(entry.body, ForkProof) else MAX_ENTRY_BYTES


def check_body(entry: Entry, verify: Verify, rules: Rules = DEFAULT_RULES) -> Rejection | None:
    """Everything about one entry that needs no clock and no other entry: size, signatures, body rules."""
    size = len(entry.encoded)
    if size > _size_limit(entry):
        return Rejection("too_large", f"{entry.kind} entry is {size} bytes, over {_size_limit(entry)}")
    if not verified(verify, entry.author, entry.signing_bytes, entry.signature):
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
        if not verified(verify, r.client, message, body.client_sig):
            return Rejection(
                "bad_signature",
                f"client {r.client[:12]}…'s signature does not match this receipt (altered tokens, session or span?)",
            )
        if not verified(verify, r.server, message, body.server_sig):
            return Rejection(
                "bad_signature", f"server {r.server[:12]}…'s signature does not match this receipt"
            )
    elif isinstance(body, Hold):
        return check_hold(entry.author, entry.time, body)
    elif isinstance(body, Evidence):
        return check_evidence(entry.author, body, verify)
    else:
        return check_fork_proof(body, verify)
    return None


def check_fork_proof(proof: ForkProof, verify: Verify) -> Rejection | None:
    """Whether ``proof`` proves a fork: both entries within size and signed by their (common) author."""
    for inner in (proof.a, proof.b):
        if len(inner.encoded) > MAX_ENTRY_BYTES:
            return Rejection("too_large", f"an entry inside a fork proof is over {MAX_ENTRY_BYTES} bytes")
        if not verified(verify, inner.author, inner.signing_bytes, inner.signature):
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


def check_link(prev: Link | None, entry: EntryFacts) -> Rejection | None:
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

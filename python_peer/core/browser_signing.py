"""Signatures across the Pyodide boundary: WebCrypto answers with a promise, which Python cannot wait on.

Standard library only. Checking: ``claims_for`` lists the signatures that accepting a payload needs
(``signature_claims``) for JavaScript to check with WebCrypto; ``verified_claims`` reads back the good
ones, and the store's ``verify`` is a ``KnownSignatures`` of exactly those (anything else is a bad
signature). Signing, the same in reverse: an operation runs once with a ``CaptureSigner`` that records
what it would sign, then rolls back; JavaScript signs those messages with the node's key, and the
operation runs again with a ``PresignedSigner`` answering with those signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .browser_persistence import decode_raw, raw_list
from .entries import Body, Entry, ForkProof, Grant, parse_body, parse_entry
from .errors import CanonicalError, LedgerError
from .memory_store import MemoryStore
from .protocol import PUSH_ENTRIES
from .receipts import ReceiptBody
from .signature_claims import Claim, KnownSignatures, signature_claims


def claims_json(claims: list[Claim]) -> list[list[str]]:
    """Claims for JavaScript: messages are ASCII (every string of an entry is), sent as text."""
    out: dict[tuple[str, bytes, str], None] = {}
    for claim in claims:
        out.setdefault(claim, None)
    return [[peer, message.decode("utf-8"), sig] for peer, message, sig in out]


def verified_claims(data: object) -> list[Claim]:
    """The claims JavaScript found good, from its JSON: ``[peer_id, message, signature]`` each."""
    if not isinstance(data, list):
        raise LedgerError("verified must be a list of [peer_id, message, signature]")
    claims: list[Claim] = []
    for item in data:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise LedgerError("a verified claim is [peer_id, message, signature]")
        claims.append((item[0], item[1].encode("utf-8"), item[2]))
    return claims


def gossip_items(message: object) -> tuple[list[Entry], list[ForkProof]]:
    """The entries and proofs a gossip ``entries`` message carries (malformed ones left out)."""
    if not isinstance(message, dict) or message.get("type") != "entries":
        return [], []
    entries: list[Entry] = []
    proofs: list[ForkProof] = []
    raw_entries, raw_proofs = message.get("entries"), message.get("proofs")
    for data in raw_entries if isinstance(raw_entries, list) else []:
        parsed = parse_entry(data)
        if isinstance(parsed, Entry):
            entries.append(parsed)
    for data in raw_proofs if isinstance(raw_proofs, list) else []:
        try:
            if isinstance(data, dict) and set(data) == {"a", "b"}:
                a = Entry.from_dict(data["a"], nested=True)
                b = Entry.from_dict(data["b"], nested=True)
                proofs.append(ForkProof(a, b))
        except (LedgerError, CanonicalError, RecursionError):
            continue
    return entries, proofs


def check_push(entries: object) -> None:
    """A push (entries sent when a session link opens) is a list of at most ``PUSH_ENTRIES`` entries."""
    if not isinstance(entries, list) or len(entries) > PUSH_ENTRIES:
        raise LedgerError(f"a push carries a list of at most {PUSH_ENTRIES} entries")


def claims_for(kind: str, payload: object) -> list[list[str]]:
    """The signatures JavaScript must check before ``kind`` (push, gossip, raw, receipt) with ``payload``."""
    if kind == "push":
        check_push(payload)
        assert isinstance(payload, list)
        return claims_for("entries", payload)
    if kind == "entries":
        listed = payload if isinstance(payload, list) else []
        parsed = [p for p in (parse_entry(e) for e in listed) if isinstance(p, Entry)]
        return claims_json([c for e in parsed for c in signature_claims(e)])
    if kind == "gossip":
        entries, proofs = gossip_items(payload)
        items: list[Entry | ForkProof] = [*proofs, *entries]
        return claims_json([c for item in items for c in signature_claims(item)])
    if kind == "raw":
        parsed = [e for e in (decode_raw(r) for r in raw_list(payload)) if isinstance(e, Entry)]
        return claims_json([c for e in parsed for c in signature_claims(e)])
    if kind == "receipt":
        body = ReceiptBody.from_dict(payload)
        message = body.receipt.signing_bytes()
        r = body.receipt
        return claims_json([(r.client, message, body.client_sig), (r.server, message, body.server_sig)])
    raise LedgerError(f"no claims for {kind!r:.40}")


class CaptureSigner:
    """Records what an operation would sign, answering with a placeholder it also vouches for."""

    def __init__(self, peer_id: str, known: KnownSignatures) -> None:
        self.peer_id = peer_id
        self.known = known
        self.messages: list[bytes] = []

    def sign(self, message: bytes) -> str:
        placeholder = f"{len(self.messages):0128x}"
        self.messages.append(bytes(message))
        self.known.add([(self.peer_id, message, placeholder)])
        return placeholder


class PresignedSigner:
    """Answers with the signatures JavaScript made for exactly these messages, in order."""

    def __init__(self, peer_id: str, messages: list[bytes], signatures: list[str]) -> None:
        self.peer_id = peer_id
        self.pairs = list(zip(messages, signatures, strict=True))
        self.used = 0

    def sign(self, message: bytes) -> str:
        if self.used >= len(self.pairs) or self.pairs[self.used][0] != message:
            raise LedgerError("the ledger changed between preparing and signing an entry", code="store")
        signature = self.pairs[self.used][1]
        self.used += 1
        return signature


_HOLD_TERMS = frozenset({"server", "session", "model", "start", "end", "tokens"})


def signing_operation(store: MemoryStore, op: str, args: dict[str, Any]) -> Callable[[Any], list[Entry]]:
    """The store operation ``op`` (grant, receipt, fork_proofs, hold, append) with ``args``, given a signer."""
    if op == "grant":
        nonce = args.get("nonce")
        if isinstance(nonce, bool) or not isinstance(nonce, int):
            raise LedgerError("a grant needs its nonce")
        grant = Grant(nonce)
        return lambda signer: [store.append(signer, grant, args["now"])]
    if op == "receipt":
        body = ReceiptBody.from_dict(args.get("body"))
        return lambda signer: [store.append_receipt(signer, body, args["now"])]
    if op == "fork_proofs":
        return lambda signer: store.publish_fork_proofs(signer, args["now"])
    if op == "hold":
        terms = args.get("terms")
        if not isinstance(terms, dict) or set(terms) != _HOLD_TERMS:
            raise LedgerError(f"a hold needs exactly the terms {', '.join(sorted(_HOLD_TERMS))}")
        return lambda signer: [store.append_hold(signer, **terms, now=args["now"])]
    if op == "append":
        bodies: list[Body] = [parse_body(b) for b in args.get("bodies") or []]
        return lambda signer: store.append_many(signer, bodies, args["now"])
    raise LedgerError(f"unknown ledger operation {op!r:.40}")


def held_claims(store: MemoryStore, peer_id: str, op: str) -> list[Claim]:
    """Signatures of what ``op`` copies from the store itself (checked when it arrived)."""
    if op != "fork_proofs":
        return []
    return [c for p in store.unpublished_fork_proofs(peer_id) for c in signature_claims(p)]

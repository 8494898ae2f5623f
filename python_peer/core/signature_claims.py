"""Signatures checked ahead of time: for a caller that cannot verify synchronously (the browser).

Standard library only. Python under Pyodide cannot wait on WebCrypto's promise, so the browser lists the
signatures accepting an item may ask about (``signature_claims``), checks them in JavaScript, and passes
``KnownSignatures`` of the good ones as the rules' ``verify``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .entries import Entry, ForkProof
from .evidence import Evidence
from .receipts import ReceiptBody

Claim = tuple[str, bytes, str]
"""``(peer_id, message, signature_hex)``: one Ed25519 check that accepting an entry may ask for."""


def signature_claims(item: Entry | ForkProof) -> list[Claim]:
    """Every signature ``check_body`` (or ``check_fork_proof``) may ask ``verify`` about, in order.

    The entry's own signature, a receipt's two co-signatures, the two entries of a fork proof, and the
    three signed answers of evidence. A
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
    elif isinstance(body, Evidence):
        for signed in (body.liar, *body.honest):
            claims.append((signed.answer.server, signed.answer.signing_bytes(), signed.signature))
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

"""The starter grant's proof of work: a small cost per identity, so farming Sybils costs something.

Standard library only. A grant's nonce is good when sha256 of ``signing_bytes(GRANT_POW_CONTEXT,
{"author", "nonce"})`` has at least ``Rules.grant_pow_bits`` leading zero bits.
"""

from __future__ import annotations

import hashlib

from .canonical import signing_bytes
from .errors import LedgerError

GRANT_POW_CONTEXT = "ai4all/ledger/grant-pow/v1"


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

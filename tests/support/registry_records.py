"""Registry records as docs/manifest.md ("The registry") writes them: a body of eight fields signed by its
publisher under ``ai4all/record/v1``, for the registry's tests."""

from __future__ import annotations

from typing import Any

from python_peer.core.registry_record import RegistryRecord
from python_peer.identity import Identity, verify

NOW = 1_800_000_000_000
HASH = "ab" * 32


def record_body(
    publisher: Identity, model: str = "m/one", version: int = 1, **changes: Any
) -> dict[str, Any]:
    body = {
        "v": 1,
        "publisher": publisher.peer_id,
        "model": model,
        "version": version,
        "issued_ms": NOW,
        "signed_sha256": HASH,
        "total_bytes": 5_000_000,
        "files": 3,
    }
    return {**body, **changes}


def signed(body: dict[str, Any], signer: Identity) -> dict[str, Any]:
    """``{"body", "sig"}`` with ``signer``'s signature (the publisher's, or a forger's)."""
    return {"body": body, "sig": signer.sign_body("ai4all/record/v1", body)}


def record(publisher: Identity, signer: Identity | None = None, **kw: Any) -> RegistryRecord:
    """A parsed record (its signature checked) of ``publisher``."""
    parsed = RegistryRecord.from_dict(signed(record_body(publisher, **kw), signer or publisher))
    parsed.verify(verify)
    return parsed

"""Registry records: the small, publisher-signed summary of a signed manifest that signaling nodes gossip.

A signed manifest (``publication.py``) carries one sha256 per MiB of every file: ~400 KB for a 6 GB
model, more than a signaling message may hold (64 KiB). What signaling nodes keep and gossip is its
record, written by ``ai4all publish`` beside it as ``manifest.record.json``::

    {"body": {"v": 1, "publisher": ID, "model": NAME, "version": N, "issued_ms": T,
              "signed_sha256": H, "total_bytes": B, "files": F},
     "sig": HEX}

``sig`` is the publisher's Ed25519 signature over ``signing_bytes(RECORD_CONTEXT, body)``;
``signed_sha256`` is the sha256 of the canonical JSON of the signed manifest's ``body`` (so the
whitespace of ``manifest.sig.json`` does not matter), ``total_bytes`` the sum of the files' sizes plus
``manifest.json``'s, ``files`` how many files it lists. A record is checked alone (its schema and its
signature); the full signed manifest fetched later from anyone is checked against it with
``RegistryRecord.check_publication``: same publisher, model, version, and the very body hashed here.
The record body is a few hundred bytes at most (``MAX_RECORD_BYTES``), whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .canonical import (
    MAX_SAFE_INT,
    MODEL_RE,
    _exact_keys,
    _int,
    canonical_bytes,
    is_peer_id,
    is_signature,
    signing_bytes,
)
from .errors import PublicationError
from .manifest import _is_sha256
from .publication import MAX_FILE_BYTES, MAX_PUBLISHED_FILES, Publication

RECORD_FILE = "manifest.record.json"
RECORD_CONTEXT = "ai4all/record/v1"
RECORD_VERSION = 1
# A record's canonical JSON with its signature: 8 fields, a 128-character model name at most. Anything
# larger is not a record (an oversized one is refused before its signature is checked).
MAX_RECORD_BYTES = 1024

Verify = Callable[[str, bytes, str], None]  # (publisher id, message, signature hex); raises on a bad one
Sign = Callable[[bytes], str]

_BODY_KEYS = frozenset(
    {"v", "publisher", "model", "version", "issued_ms", "signed_sha256", "total_bytes", "files"}
)


def signed_sha256(publication: Publication) -> str:
    """The sha256 of the canonical JSON of a signed manifest's body: what its record pins."""
    return hashlib.sha256(canonical_bytes(publication.body())).hexdigest()


def total_bytes(publication: Publication) -> int:
    """Every byte a full copy of the model holds: its files and ``manifest.json``."""
    return publication.manifest_bytes + sum(f.bytes for f in publication.files)


@dataclass(frozen=True)
class RegistryRecord:
    """Which publication of a model a publisher signed, in a few hundred bytes; checked alone."""

    publisher: str
    model: str
    version: int
    issued_ms: int
    signed_sha256: str
    total_bytes: int
    files: int
    sig: str

    def __post_init__(self) -> None:
        if not is_peer_id(self.publisher):
            raise PublicationError("a record's publisher must be a peer id (64 lowercase hex digits)")
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise PublicationError(
                f"a record's model {str(self.model)[:40]!r} is not a model name: 1-128 of A-Z a-z 0-9 . _ : / @ + -"
            )
        _int("version", self.version, 0, MAX_SAFE_INT, PublicationError)
        _int("issued_ms", self.issued_ms, 0, MAX_SAFE_INT, PublicationError)
        if not _is_sha256(self.signed_sha256):
            raise PublicationError("a record's signed_sha256 is not 64 lowercase hex digits")
        _int("total_bytes", self.total_bytes, 1, MAX_FILE_BYTES * (MAX_PUBLISHED_FILES + 1), PublicationError)
        _int("files", self.files, 1, MAX_PUBLISHED_FILES, PublicationError)
        if not is_signature(self.sig):
            raise PublicationError("a record's sig must be 128 lowercase hex digits (an Ed25519 signature)")

    @property
    def key(self) -> tuple[str, str]:
        """What a later version replaces: one publisher's publication of one model."""
        return (self.publisher, self.model)

    def body(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "publisher": self.publisher,
            "model": self.model,
            "version": self.version,
            "issued_ms": self.issued_ms,
            "signed_sha256": self.signed_sha256,
            "total_bytes": self.total_bytes,
            "files": self.files,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"body": self.body(), "sig": self.sig}

    def verify(self, verify: Verify) -> None:
        """Refuse a record whose signature is not its publisher's over exactly this body."""
        try:
            verify(self.publisher, signing_bytes(RECORD_CONTEXT, self.body()), self.sig)
        except Exception as exc:
            raise PublicationError(
                f"the record of {self.model} version {self.version} does not carry a valid signature of "
                f"publisher {self.publisher[:12]}…: forged, altered or signed by another key ({exc})"
            ) from exc

    def check_publication(self, publication: Publication) -> None:
        """Refuse a signed manifest that is not the one this record pins (fetched from anyone)."""
        if (publication.publisher, publication.model, publication.version) != (
            self.publisher,
            self.model,
            self.version,
        ):
            raise PublicationError(
                f"the signed manifest is {publication.model} version {publication.version} by "
                f"{publication.publisher[:12]}…; the record names {self.model} version {self.version} by "
                f"{self.publisher[:12]}…"
            )
        if signed_sha256(publication) != self.signed_sha256:
            raise PublicationError(
                f"the signed manifest of {self.model} version {self.version} is not the one its record "
                "pins (its body hashes differently): refused"
            )
        if total_bytes(publication) != self.total_bytes or len(publication.files) != self.files:
            raise PublicationError(f"the record of {self.model} misstates the size of its publication")

    @classmethod
    def from_dict(cls, data: object) -> RegistryRecord:
        """Parse a ``{"body", "sig"}`` record; ``PublicationError`` names the first thing wrong."""
        outer = _exact_keys("a record", data, frozenset({"body", "sig"}), PublicationError)
        try:
            size = len(canonical_bytes(outer))
        except Exception as exc:
            raise PublicationError(f"a record has no canonical JSON form: {exc}") from exc
        if size > MAX_RECORD_BYTES:
            raise PublicationError(f"a record is {size} bytes of canonical JSON, over {MAX_RECORD_BYTES}")
        body = _exact_keys("a record body", outer["body"], _BODY_KEYS, PublicationError)
        _int("v (the record version)", body["v"], RECORD_VERSION, RECORD_VERSION, PublicationError)
        return cls(
            publisher=body["publisher"],
            model=body["model"],
            version=body["version"],
            issued_ms=body["issued_ms"],
            signed_sha256=body["signed_sha256"],
            total_bytes=body["total_bytes"],
            files=body["files"],
            sig=outer["sig"],
        )

    @classmethod
    def sign_publication(cls, publication: Publication, sign: Sign) -> RegistryRecord:
        """The record of ``publication``, signed by its publisher (``sign`` is the publisher's key)."""
        unsigned = cls(
            publication.publisher,
            publication.model,
            publication.version,
            publication.issued_ms,
            signed_sha256(publication),
            total_bytes(publication),
            len(publication.files),
            "0" * 128,
        )
        return cls(**{**unsigned.__dict__, "sig": sign(signing_bytes(RECORD_CONTEXT, unsigned.body()))})


def read_record(model_dir: Path) -> RegistryRecord | None:
    """The parsed ``manifest.record.json`` of a model directory, or None when there is none."""
    path = Path(model_dir) / RECORD_FILE
    try:
        with path.open("rb") as f:
            text = f.read(MAX_RECORD_BYTES * 4 + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PublicationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(text) > MAX_RECORD_BYTES * 4:
        raise PublicationError(f"{path} is over {MAX_RECORD_BYTES * 4} bytes: not a record")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PublicationError(f"{path} is not valid JSON: {exc}") from exc
    return RegistryRecord.from_dict(data)

"""Signed manifests: a publisher's signature over a model's ``manifest.json`` and every file it names.

``ai4all publish DIR`` writes ``DIR/manifest.sig.json``: ``{"body": {...}, "sig": HEX}``, where ``sig`` is
the publisher's Ed25519 signature over ``signing_bytes(MANIFEST_CONTEXT, body)`` (``canonical.py``). The
body holds integers and strings only, so a browser computes the same bytes::

    {"v": 1, "publisher": ID, "model": NAME, "version": N, "issued_ms": T,
     "manifest": {"file": "manifest.json", "bytes": B, "sha256": H},
     "chunk_bytes": CHUNK_BYTES,
     "files": [{"file": F, "bytes": B, "sha256": H, "chunks": [H0, H1, ...]}, ...]}

``manifest`` pins the exact bytes of ``manifest.json`` (its floats never need a canonical form);
``files`` lists every file the manifest names (each shard's files, ``tokenizer.json``, the chat
template), sorted by name, each with the sha256 of every ``CHUNK_BYTES`` slice, so a chunk fetched from
anyone is checked alone (``PublishedFile.check_chunk``). ``version`` orders two publications of one
model by one publisher: the higher wins, so an older one replayed is recognised. Checks return nothing
and raise ``PublicationError`` naming what is wrong; the signature check is passed in as a function
(pynacl natively, WebCrypto in a browser), as for every signed body of the core.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .canonical import MAX_SAFE_INT, MODEL_RE, _exact_keys, _int, is_peer_id, is_signature, signing_bytes
from .errors import PublicationError
from .manifest import MANIFEST_FILE, Manifest, _is_sha256, _plain_file_name

SIGNED_MANIFEST_FILE = "manifest.sig.json"
MANIFEST_CONTEXT = "ai4all/manifest/v1"
PUBLICATION_VERSION = 1
CHUNK_BYTES = 1 << 20  # every file is hashed in slices of this size; the last may be shorter
MAX_PUBLISHED_FILES = 1024
MAX_FILE_BYTES = 1 << 40  # 1 TiB: a larger declared file is refused before anything is fetched
MAX_SIGNED_MANIFEST_BYTES = 64 * 2**20  # the signed manifest of a 1 TiB model fits with room to spare

Verify = Callable[[str, bytes, str], None]  # (publisher id, message, signature hex); raises on a bad one
Sign = Callable[[bytes], str]
Buffer = bytes | bytearray | memoryview


def chunk_count(size: int) -> int:
    """How many chunks a file of ``size`` bytes has (the last one may be shorter)."""
    return max(1, -(-size // CHUNK_BYTES))


def chunk_hashes(path: Path) -> tuple[str, int, tuple[str, ...]]:
    """The whole-file sha256, the size and the per-chunk sha256 of a file, read once."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(CHUNK_BYTES):
                whole.update(block)
                chunks.append(hashlib.sha256(block).hexdigest())
                size += len(block)
    except OSError as exc:
        raise PublicationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not chunks:
        chunks.append(hashlib.sha256(b"").hexdigest())
    return whole.hexdigest(), size, tuple(chunks)


@dataclass(frozen=True)
class PublishedFile:
    """One file of a publication: its size, sha256 and the sha256 of each ``CHUNK_BYTES`` slice."""

    file: str
    bytes: int
    sha256: str
    chunks: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _plain_file_name(self.file):
            raise PublicationError(f"file name {self.file!r} is not a plain file name in the model directory")
        _int(f"file {self.file}: bytes", self.bytes, 1, MAX_FILE_BYTES, PublicationError)
        if not _is_sha256(self.sha256):
            raise PublicationError(f"file {self.file}: sha256 is not 64 lowercase hex digits")
        if len(self.chunks) != chunk_count(self.bytes):
            raise PublicationError(
                f"file {self.file}: {len(self.chunks)} chunk hashes for {self.bytes} bytes, not "
                f"{chunk_count(self.bytes)} (one per {CHUNK_BYTES} bytes)"
            )
        if not all(_is_sha256(c) for c in self.chunks):
            raise PublicationError(f"file {self.file}: a chunk hash is not 64 lowercase hex digits")

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` in the file."""
        if not 0 <= index < len(self.chunks):
            raise PublicationError(f"file {self.file} has chunks 0-{len(self.chunks) - 1}, not {index}")
        offset = index * CHUNK_BYTES
        return offset, min(CHUNK_BYTES, self.bytes - offset)

    def check_chunk(self, index: int, data: Buffer) -> None:
        """Refuse a chunk that is not exactly chunk ``index`` of this file (truncated, altered, another's)."""
        _offset, length = self.chunk_range(index)
        if len(data) != length:
            raise PublicationError(
                f"file {self.file} chunk {index}: {len(data)} bytes, the publisher says {length}"
            )
        if hashlib.sha256(data).hexdigest() != self.chunks[index]:
            raise PublicationError(
                f"file {self.file} chunk {index}: its sha256 is not the one the publisher signed"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "bytes": self.bytes, "sha256": self.sha256, "chunks": list(self.chunks)}

    @classmethod
    def from_dict(cls, data: object) -> PublishedFile:
        body = _exact_keys("a published file", data, _FILE_KEYS, PublicationError)
        chunks = body["chunks"]
        if not isinstance(chunks, list):
            raise PublicationError("a published file's chunks must be a list of sha256 hex digests")
        return cls(body["file"], body["bytes"], body["sha256"], tuple(chunks))


_FILE_KEYS = frozenset({"file", "bytes", "sha256", "chunks"})
_BODY_KEYS = frozenset(
    {"v", "publisher", "model", "version", "issued_ms", "manifest", "chunk_bytes", "files"}
)
_MANIFEST_KEYS = frozenset({"file", "bytes", "sha256"})


@dataclass(frozen=True)
class Publication:
    """A signed manifest: who published which manifest bytes and files, and the signature."""

    publisher: str
    model: str
    version: int
    issued_ms: int
    manifest_bytes: int
    manifest_sha256: str
    files: tuple[PublishedFile, ...]
    sig: str

    def __post_init__(self) -> None:
        if not is_peer_id(self.publisher):
            raise PublicationError("publisher must be a peer id (64 lowercase hex digits)")
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise PublicationError(
                f"model {self.model!r} is not a model name: 1-128 of A-Z a-z 0-9 . _ : / @ + -"
            )
        _int("version", self.version, 0, MAX_SAFE_INT, PublicationError)
        _int("issued_ms", self.issued_ms, 0, MAX_SAFE_INT, PublicationError)
        _int("manifest bytes", self.manifest_bytes, 1, MAX_SIGNED_MANIFEST_BYTES, PublicationError)
        if not _is_sha256(self.manifest_sha256):
            raise PublicationError("the manifest's sha256 is not 64 lowercase hex digits")
        if not 1 <= len(self.files) <= MAX_PUBLISHED_FILES:
            raise PublicationError(
                f"a publication lists 1 to {MAX_PUBLISHED_FILES} files, not {len(self.files)}"
            )
        names = [f.file for f in self.files]
        if names != sorted(set(names)):
            raise PublicationError("a publication lists its files once each, sorted by name")
        if MANIFEST_FILE in names:
            raise PublicationError(f"{MANIFEST_FILE} is pinned by 'manifest', not listed among the files")
        if not is_signature(self.sig):
            raise PublicationError("sig must be 128 lowercase hex digits (an Ed25519 signature)")

    def body(self) -> dict[str, Any]:
        return {
            "v": PUBLICATION_VERSION,
            "publisher": self.publisher,
            "model": self.model,
            "version": self.version,
            "issued_ms": self.issued_ms,
            "manifest": {"file": MANIFEST_FILE, "bytes": self.manifest_bytes, "sha256": self.manifest_sha256},
            "chunk_bytes": CHUNK_BYTES,
            "files": [f.to_dict() for f in self.files],
        }

    def to_dict(self) -> dict[str, Any]:
        return {"body": self.body(), "sig": self.sig}

    def file(self, name: str) -> PublishedFile:
        for item in self.files:
            if item.file == name:
                return item
        raise PublicationError(f"the publication of {self.model} lists no file {name!r}")

    def verify(self, verify: Verify) -> None:
        """Refuse a publication whose signature is not its publisher's over exactly this body."""
        try:
            verify(self.publisher, signing_bytes(MANIFEST_CONTEXT, self.body()), self.sig)
        except Exception as exc:
            raise PublicationError(
                f"the signed manifest of {self.model} does not carry a valid signature of publisher "
                f"{self.publisher[:12]}…: it was altered after signing or signed by another key ({exc})"
            ) from exc

    def check_manifest(self, manifest_text: bytes, manifest: Manifest) -> None:
        """Refuse a publication that does not pin these manifest bytes, or lists other files than it names."""
        if (
            len(manifest_text) != self.manifest_bytes
            or hashlib.sha256(manifest_text).hexdigest() != self.manifest_sha256
        ):
            raise PublicationError(
                f"{MANIFEST_FILE} is not the manifest publisher {self.publisher[:12]}… signed: it was altered"
            )
        if manifest.name != self.model:
            raise PublicationError(
                f"the publication is of model {self.model!r}, the manifest of {manifest.name!r}"
            )
        named = named_files(manifest)
        listed = {f.file: f for f in self.files}
        if set(named) != set(listed):
            raise PublicationError(
                f"the publication lists {sorted(set(listed) - set(named))[:4]} that the manifest does not name "
                f"and misses {sorted(set(named) - set(listed))[:4]}"
            )
        for name, known in named.items():
            if known is not None and known != (listed[name].sha256, listed[name].bytes):
                raise PublicationError(
                    f"file {name}: the publication and the manifest disagree on its sha256 or size"
                )

    @classmethod
    def from_dict(cls, data: object) -> Publication:
        outer = _exact_keys("a signed manifest", data, frozenset({"body", "sig"}), PublicationError)
        body = _exact_keys("a signed manifest body", outer["body"], _BODY_KEYS, PublicationError)
        _int(
            "v (the signed manifest version)",
            body["v"],
            PUBLICATION_VERSION,
            PUBLICATION_VERSION,
            PublicationError,
        )
        _int("chunk_bytes", body["chunk_bytes"], CHUNK_BYTES, CHUNK_BYTES, PublicationError)
        pinned = _exact_keys(
            "the signed manifest's 'manifest'", body["manifest"], _MANIFEST_KEYS, PublicationError
        )
        if pinned["file"] != MANIFEST_FILE:
            raise PublicationError(f"a signed manifest pins {MANIFEST_FILE}, not {pinned['file']!r}")
        files = body["files"]
        if not isinstance(files, list) or len(files) > MAX_PUBLISHED_FILES:
            raise PublicationError(f"files must be a list of at most {MAX_PUBLISHED_FILES} files")
        return cls(
            publisher=body["publisher"],
            model=body["model"],
            version=body["version"],
            issued_ms=body["issued_ms"],
            manifest_bytes=pinned["bytes"],
            manifest_sha256=pinned["sha256"],
            files=tuple(PublishedFile.from_dict(f) for f in files),
            sig=outer["sig"],
        )


def named_files(manifest: Manifest) -> dict[str, tuple[str, int] | None]:
    """Every file a manifest names -> its (sha256, bytes) where the manifest states them, else None."""
    named: dict[str, tuple[str, int] | None] = {}
    for shard in manifest.shards:
        for item in shard.files:
            named[item.file] = (item.sha256, item.bytes)
    for key in ("file", "chat_template_file"):
        name = manifest.tokenizer.get(key)
        if name is not None:
            if not _plain_file_name(name) or name in named:
                raise PublicationError(f"tokenizer {key} {name!r} is not a plain file name of its own")
            named[name] = None
    return named


def publish(
    model_dir: Path, manifest: Manifest, publisher: str, sign: Sign, *, version: int, issued_ms: int
) -> Publication:
    """Hash every file ``manifest`` names in chunks and sign the result as ``publisher``."""
    manifest_text = _read(Path(model_dir) / MANIFEST_FILE)
    files = []
    for name in sorted(named_files(manifest)):
        sha, size, chunks = chunk_hashes(Path(model_dir) / name)
        files.append(PublishedFile(name, size, sha, chunks))
    unsigned = Publication(
        publisher, manifest.name, version, issued_ms, len(manifest_text),
        hashlib.sha256(manifest_text).hexdigest(), tuple(files), "0" * 128,
    )  # fmt: skip
    publication = replace(unsigned, sig=sign(signing_bytes(MANIFEST_CONTEXT, unsigned.body())))
    publication.check_manifest(manifest_text, manifest)  # what the publisher's disk holds is what it signed
    return publication


def _read(path: Path, limit: int = MAX_SIGNED_MANIFEST_BYTES) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PublicationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise PublicationError(f"{path} is over {limit} bytes: refused")
    return data


def read_publication(model_dir: Path) -> Publication | None:
    """The parsed ``manifest.sig.json`` of a model directory, or None when there is none (unsigned)."""
    path = Path(model_dir) / SIGNED_MANIFEST_FILE
    try:
        text = _read(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PublicationError(f"{path} is not valid JSON: {exc}") from exc
    return Publication.from_dict(data)


def verified_publication(
    signed: bytes, manifest_bytes: bytes, verify: Verify, what: str
) -> tuple[Publication, Manifest]:
    """A signed manifest and the ``manifest.json`` bytes it goes with, parsed; refused (``PublicationError``)
    unless the signature is its publisher's and it pins exactly those bytes. ``what`` names the two in
    the error when they do not parse."""
    try:
        publication = Publication.from_dict(json.loads(signed))
        manifest = Manifest.from_dict(json.loads(manifest_bytes))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." too deep
        raise PublicationError(f"{what} is not JSON: {exc or type(exc).__name__}") from exc
    publication.verify(verify)
    publication.check_manifest(manifest_bytes, manifest)
    return publication, manifest

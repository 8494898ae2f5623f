"""The chunk protocol: model files fetched from peers, chunk by chunk, over the links they already open.

Every request and answer is one ``CHUNK`` frame (``wire.py``); the request's ``session`` is a fresh
random id and its ``step`` 0, and the answer carries the same two, so many requests share a link. The
metadata's ``kind`` says what is asked (docs/chunks.md)::

    manifest  {"kind": "manifest", "model": NAME}
              -> {"kind": "manifest", "model": NAME} + uint8 tensors "signed" (manifest.sig.json)
                 and "manifest" (the manifest.json bytes it pins)
    have      {"kind": "have", "model": NAME}
              -> {"kind": "have", "model": NAME, "publisher": ID, "version": N, "files": [F, ...]}
    chunk     {"kind": "chunk", "model": NAME, "publisher": ID, "version": N, "file": F, "index": I}
              -> {"kind": "chunk", "file": F, "index": I} + uint8 tensor "data" (chunk I of F)

A seeder answers only for a signed manifest it holds and has verified, and only with files it holds
whole and has checked against that manifest; anything else is an ERROR frame ``not_seeded``. A
requester with too many requests in flight gets ``busy``, one over its request rate ``rate_limited``.
The requester checks every chunk on its own against the publisher's signed chunk hashes
(``publication.PublishedFile.check_chunk``): nothing a seeder says is believed, only what it sends and
the publisher signed. Everything here is plain canonical JSON and raw bytes, so a browser speaks it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum

from .canonical import MAX_SAFE_INT, MODEL_RE, is_peer_id
from .errors import MetadataError
from .manifest import _plain_file_name
from .publication import MAX_PUBLISHED_FILES
from .wire import MAX_FRAME_BYTES, MAX_METADATA_BYTES, NO_FLAGS, Frame, FrameType, WireTensor

CHUNK_SESSION_BYTES = 16
SIGNED_TENSOR = "signed"  # the manifest answer's manifest.sig.json bytes
MANIFEST_TENSOR = "manifest"  # the manifest answer's manifest.json bytes
DATA_TENSOR = "data"  # the chunk answer's bytes
MAX_CHUNK_REQUESTS_IN_FLIGHT = 4  # per requester at one seeder; one more is answered ``busy``
MAX_SEEDER_REQUESTS_IN_FLIGHT = 32  # across every requester of one seeder; one more is ``busy``
CHUNK_REQUESTS_PER_S = 32  # per requester, sustained (a bucket of as many); faster is ``rate_limited``
DEFAULT_UPLOAD_BYTES_PER_S = 32 * 2**20  # what a seeder sends, all requesters together
MAX_SEEDER_REQUESTERS = 1024  # requesters a seeder remembers the rate of (the oldest is forgotten)
CHUNK_REQUEST_TIMEOUT_MS = 60_000  # a requester gives up on one answer after this
SOURCE_BAN_MS = 600_000  # a source that sent a bad chunk is not asked again for this long
HAVE_FILES_BYTES = MAX_METADATA_BYTES - 4096  # a have answer's file names; the rest is its other keys
MAX_MANIFEST_ANSWER_BYTES = MAX_FRAME_BYTES - 4096  # the two files of a manifest answer, with its framing


class ChunkKind(StrEnum):
    """What a ``CHUNK`` frame asks for or answers."""

    MANIFEST = "manifest"
    HAVE = "have"
    CHUNK = "chunk"


class ChunkErrorCode(StrEnum):
    """The ``code`` of an ERROR frame a seeder answers a chunk request with (beyond ``bad_frame``)."""

    NOT_SEEDED = "not_seeded"  # no verified signed manifest of that model, or not that file/version
    BUSY = "busy"  # too many requests in flight: retry later or elsewhere
    RATE_LIMITED = "rate_limited"  # over the requester's request rate: slow down


@dataclass(frozen=True)
class ChunkRequest:
    """A parsed request; ``publisher``, ``version``, ``file`` and ``index`` are set for ``chunk`` only."""

    kind: ChunkKind
    model: str
    publisher: str = ""
    version: int = 0
    file: str = ""
    index: int = 0


def _session() -> bytes:
    return os.urandom(CHUNK_SESSION_BYTES)


def manifest_request(model: str) -> Frame:
    return Frame(FrameType.CHUNK, _session(), 0, NO_FLAGS, {"kind": ChunkKind.MANIFEST.value, "model": model})


def have_request(model: str) -> Frame:
    return Frame(FrameType.CHUNK, _session(), 0, NO_FLAGS, {"kind": ChunkKind.HAVE.value, "model": model})


def chunk_request(model: str, publisher: str, version: int, file: str, index: int) -> Frame:
    meta = {
        "kind": ChunkKind.CHUNK.value,
        "model": model,
        "publisher": publisher,
        "version": version,
        "file": file,
        "index": index,
    }
    return Frame(FrameType.CHUNK, _session(), 0, NO_FLAGS, meta)


_REQUEST_KEYS = {
    ChunkKind.MANIFEST: frozenset({"kind", "model"}),
    ChunkKind.HAVE: frozenset({"kind", "model"}),
    ChunkKind.CHUNK: frozenset({"kind", "model", "publisher", "version", "file", "index"}),
}


def _model(value: object) -> str:
    if not isinstance(value, str) or MODEL_RE.match(value) is None:
        raise MetadataError(f"chunk protocol: model {value!r:.80} is not a model name")
    return value


def _file(value: object) -> str:
    if not isinstance(value, str) or not _plain_file_name(value):
        raise MetadataError(f"chunk protocol: file {value!r:.80} is not a plain file name")
    return value


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INT:
        raise MetadataError(f"chunk protocol: {name} {value!r:.40} is not an integer 0..2^53-1")
    return value


def parse_request(frame: Frame) -> ChunkRequest:
    """The request a ``CHUNK`` frame makes; ``MetadataError`` (``bad_frame``) when it is malformed."""
    if frame.type is not FrameType.CHUNK or frame.tensors:
        raise MetadataError("chunk protocol: a request is a CHUNK frame without tensors")
    meta = frame.meta
    try:
        kind = ChunkKind(str(meta.get("kind")))
    except ValueError:
        raise MetadataError(
            f"chunk protocol: kind {meta.get('kind')!r:.40} is not one of {', '.join(ChunkKind)}"
        ) from None
    if set(meta) != _REQUEST_KEYS[kind]:
        raise MetadataError(
            f"chunk protocol: a {kind.value} request has exactly {sorted(_REQUEST_KEYS[kind])}"
        )
    model = _model(meta["model"])
    if kind is not ChunkKind.CHUNK:
        return ChunkRequest(kind, model)
    if not is_peer_id(meta["publisher"]):
        raise MetadataError("chunk protocol: publisher is not a peer id (64 lowercase hex digits)")
    return ChunkRequest(
        kind,
        model,
        meta["publisher"],
        _count("version", meta["version"]),
        _file(meta["file"]),
        _count("index", meta["index"]),
    )


def _bytes_tensor(name: str, data: bytes) -> WireTensor:
    return WireTensor(name, "uint8", (len(data),), bytes(data))


def manifest_answer(request: Frame, model: str, signed: bytes, manifest: bytes) -> Frame:
    return Frame(
        FrameType.CHUNK,
        request.session,
        request.step,
        NO_FLAGS,
        {"kind": ChunkKind.MANIFEST.value, "model": model},
        (_bytes_tensor(SIGNED_TENSOR, signed), _bytes_tensor(MANIFEST_TENSOR, manifest)),
    )


def have_answer(request: Frame, model: str, publisher: str, version: int, files: list[str]) -> Frame:
    """The files held, as many as fit the metadata limit (the rest are simply not offered)."""
    kept, size = [], 0
    for name in sorted(files):
        size += len(json.dumps(name, ensure_ascii=False).encode()) + 1
        if size > HAVE_FILES_BYTES:
            break
        kept.append(name)
    meta = {
        "kind": ChunkKind.HAVE.value,
        "model": model,
        "publisher": publisher,
        "version": version,
        "files": kept,
    }
    return Frame(FrameType.CHUNK, request.session, request.step, NO_FLAGS, meta)


def chunk_answer(request: Frame, file: str, index: int, data: bytes) -> Frame:
    meta = {"kind": ChunkKind.CHUNK.value, "file": file, "index": index}
    return Frame(
        FrameType.CHUNK, request.session, request.step, NO_FLAGS, meta, (_bytes_tensor(DATA_TENSOR, data),)
    )


def _answer(frame: Frame, kind: ChunkKind, keys: frozenset[str], tensors: tuple[str, ...]) -> None:
    if frame.type is not FrameType.CHUNK or frame.meta.get("kind") != kind.value or set(frame.meta) != keys:
        raise MetadataError(f"chunk protocol: not a {kind.value} answer (keys {sorted(frame.meta)[:8]})")
    if tuple(t.name for t in frame.tensors) != tensors or any(t.dtype != "uint8" for t in frame.tensors):
        raise MetadataError(f"chunk protocol: a {kind.value} answer carries uint8 tensors {list(tensors)}")


def parse_manifest_answer(frame: Frame, model: str) -> tuple[bytes, bytes]:
    """(manifest.sig.json bytes, manifest.json bytes) of a manifest answer for ``model``; not yet checked."""
    _answer(frame, ChunkKind.MANIFEST, frozenset({"kind", "model"}), (SIGNED_TENSOR, MANIFEST_TENSOR))
    if frame.meta["model"] != model:
        raise MetadataError(
            f"chunk protocol: asked for the manifest of {model}, got {frame.meta['model']!r:.80}"
        )
    return frame.tensors[0].data, frame.tensors[1].data


@dataclass(frozen=True)
class Holding:
    """What a seeder says it holds of a model: which publication, which whole files."""

    publisher: str
    version: int
    files: frozenset[str]


def parse_have_answer(frame: Frame, model: str) -> Holding:
    _answer(frame, ChunkKind.HAVE, frozenset({"kind", "model", "publisher", "version", "files"}), ())
    meta = frame.meta
    if meta["model"] != model or not is_peer_id(meta["publisher"]):
        raise MetadataError("chunk protocol: a have answer for another model, or without a publisher id")
    files = meta["files"]
    if not isinstance(files, list) or len(files) > MAX_PUBLISHED_FILES:
        raise MetadataError(f"chunk protocol: files is a list of at most {MAX_PUBLISHED_FILES} names")
    return Holding(meta["publisher"], _count("version", meta["version"]), frozenset(_file(f) for f in files))


def parse_chunk_answer(frame: Frame, file: str, index: int) -> bytes:
    """The bytes of a chunk answer to the request for chunk ``index`` of ``file`` (not yet checked)."""
    _answer(frame, ChunkKind.CHUNK, frozenset({"kind", "file", "index"}), (DATA_TENSOR,))
    if frame.meta["file"] != file or frame.meta["index"] != index:
        raise MetadataError(
            f"chunk protocol: asked for chunk {index} of {file}, the answer is chunk "
            f"{frame.meta['index']!r:.20} of {frame.meta['file']!r:.80}"
        )
    return frame.tensors[0].data


__all__ = [
    "CHUNK_REQUESTS_PER_S",
    "CHUNK_REQUEST_TIMEOUT_MS",
    "DATA_TENSOR",
    "DEFAULT_UPLOAD_BYTES_PER_S",
    "MANIFEST_TENSOR",
    "MAX_CHUNK_REQUESTS_IN_FLIGHT",
    "MAX_SEEDER_REQUESTERS",
    "MAX_SEEDER_REQUESTS_IN_FLIGHT",
    "SIGNED_TENSOR",
    "SOURCE_BAN_MS",
    "ChunkErrorCode",
    "ChunkKind",
    "ChunkRequest",
    "Holding",
    "chunk_answer",
    "chunk_request",
    "have_answer",
    "have_request",
    "manifest_answer",
    "manifest_request",
    "parse_chunk_answer",
    "parse_have_answer",
    "parse_manifest_answer",
    "parse_request",
]

"""Seeding: a node answers the chunk protocol (``core/chunks.py``, docs/chunks.md) for the models it holds.

A ``Seeder`` holds, per model name, one signed manifest it has verified (signature, pinned
``manifest.json``) and the files of it that it holds whole and has hashed against that manifest; it
answers only for those (``not_seeded`` otherwise). Each chunk is read from disk and checked against its
signed hash again before it leaves, so a disk that rotted never makes this node look like a liar. A
requester has at most ``MAX_CHUNK_REQUESTS_IN_FLIGHT`` requests in flight (``busy``) and
``CHUNK_REQUESTS_PER_S`` a second (``rate_limited``); all requesters share ``upload_bytes_per_s``, a
pace kept by delaying answers, so a flood never costs more than a bounded number of chunks in memory.
``SeedingHandler`` puts a seeder in front of a node's ``FrameHandler``: CHUNK frames go to the seeder.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from python_peer.core.chunks import (
    CHUNK_REQUESTS_PER_S,
    DEFAULT_UPLOAD_BYTES_PER_S,
    MAX_CHUNK_REQUESTS_IN_FLIGHT,
    MAX_MANIFEST_ANSWER_BYTES,
    MAX_SEEDER_REQUESTERS,
    MAX_SEEDER_REQUESTS_IN_FLIGHT,
    ChunkErrorCode,
    ChunkKind,
    ChunkRequest,
    chunk_answer,
    have_answer,
    manifest_answer,
    parse_request,
)
from python_peer.core.errors import PublicationError, WireError
from python_peer.core.manifest import MANIFEST_FILE
from python_peer.core.publication import (
    SIGNED_MANIFEST_FILE,
    Publication,
    Verify,
    _read,
    verified_publication,
)
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame

from .relay import SpanHandler

log = logging.getLogger(__name__)

# An answer is delayed at most this long for the upload rate; beyond it the request is answered ``busy``
# (well within the requester's CHUNK_REQUEST_TIMEOUT_MS, so a slow seeder is retried, not given up on).
MAX_PACING_WAIT_S = 20.0


@dataclass(frozen=True)
class SeedConfig:
    """How much a seeder gives: bytes a second to all, requests in flight and a second per requester."""

    upload_bytes_per_s: int = DEFAULT_UPLOAD_BYTES_PER_S
    requests_per_s: int = CHUNK_REQUESTS_PER_S
    in_flight_per_requester: int = MAX_CHUNK_REQUESTS_IN_FLIGHT
    in_flight_total: int = MAX_SEEDER_REQUESTS_IN_FLIGHT

    def __post_init__(self) -> None:
        for name in ("upload_bytes_per_s", "requests_per_s", "in_flight_per_requester", "in_flight_total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"seeding {name} must be a positive integer, not {value!r}")


@dataclass
class SeededModel:
    """One verified publication a seeder answers for, and the files of it verified on its disk."""

    root: Path
    publication: Publication
    signed: bytes  # manifest.sig.json as read
    manifest: bytes  # the manifest.json bytes it pins
    files: set[str] = field(default_factory=set)


def verified_model(root: Path, verify: Verify) -> SeededModel | None:
    """The signed manifest of ``root`` if it verifies and pins the ``manifest.json`` beside it, with the
    files present whose size and sha256 are the signed ones; None for an unsigned directory."""
    try:
        signed = _read(root / SIGNED_MANIFEST_FILE)
        manifest_bytes = _read(root / MANIFEST_FILE)
    except FileNotFoundError:
        return None
    publication, _ = verified_publication(
        signed, manifest_bytes, verify, f"{root}: the signed manifest or manifest.json"
    )
    seeded = SeededModel(root, publication, signed, manifest_bytes)
    for item in publication.files:
        path = root / item.file
        try:
            if path.stat().st_size != item.bytes:
                continue
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except OSError:
            continue
        if digest.hexdigest() == item.sha256:
            seeded.files.add(item.file)
    return seeded


class _Bucket:
    """A token bucket: ``rate`` a second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = burst
        self.at = time.monotonic()

    def take(self, amount: float) -> float:
        """Take ``amount`` (the level may go below zero); the seconds until the level is back at zero."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        self.level -= amount
        return max(0.0, -self.level / self.rate)


class Seeder:
    """Answers CHUNK requests for the verified models it was given, within its rate and flight bounds."""

    def __init__(self, config: SeedConfig | None = None) -> None:
        self.config = config or SeedConfig()
        self.models: dict[str, SeededModel] = {}
        self._upload = _Bucket(self.config.upload_bytes_per_s, self.config.upload_bytes_per_s)
        self._requesters: OrderedDict[str, _Bucket] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._total = 0
        self.chunks_sent = 0
        self.bytes_sent = 0

    def add(self, model: SeededModel) -> None:
        """Seed ``model`` (replacing an older publication of the same name)."""
        self.models[model.publication.model] = model
        log.info(
            "seeding %s (publisher %s, version %d): %d of %d files",
            model.publication.model,
            model.publication.publisher[:12],
            model.publication.version,
            len(model.files),
            len(model.publication.files),
        )

    async def add_dir(self, root: Path, verify: Verify) -> SeededModel | None:
        """Verify ``root`` (in a thread: it hashes every file) and seed it; None if it is unsigned."""
        model = await asyncio.to_thread(verified_model, Path(root), verify)
        if model is not None:
            self.add(model)
        return model

    async def handle(self, client: str, frame: Frame) -> Frame:
        """The answer to one CHUNK request from ``client``: the data, or an ERROR frame that says why not."""
        try:
            request = parse_request(frame)
        except WireError as exc:
            return error_frame(frame.session, frame.step, exc.code, str(exc))
        if self._in_flight.get(client, 0) >= self.config.in_flight_per_requester:
            return error_frame(
                frame.session, frame.step, ChunkErrorCode.BUSY,
                f"{self.config.in_flight_per_requester} chunk requests of yours are in flight: wait for them",
            )  # fmt: skip
        if self._total >= self.config.in_flight_total:
            return error_frame(
                frame.session, frame.step, ChunkErrorCode.BUSY, "this seeder is busy: ask another or later"
            )
        if self._requester(client).take(1) > 0:
            return error_frame(
                frame.session, frame.step, ChunkErrorCode.RATE_LIMITED,
                f"over {self.config.requests_per_s} chunk requests a second: slow down",
            )  # fmt: skip
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        self._total += 1
        try:
            return await self._answer(frame, request)
        finally:
            self._total -= 1
            left = self._in_flight[client] - 1
            if left:
                self._in_flight[client] = left
            else:
                del self._in_flight[client]

    def _requester(self, client: str) -> _Bucket:
        bucket = self._requesters.get(client)
        if bucket is None:
            rate = self.config.requests_per_s
            bucket = self._requesters[client] = _Bucket(rate, rate)
            while len(self._requesters) > MAX_SEEDER_REQUESTERS:
                self._requesters.popitem(last=False)
        self._requesters.move_to_end(client)
        return bucket

    async def _answer(self, frame: Frame, request: ChunkRequest) -> Frame:
        model = self.models.get(request.model)
        if model is None:
            return self._not_seeded(frame, f"this node seeds no verified signed manifest of {request.model}")
        publication = model.publication
        if request.kind is ChunkKind.MANIFEST:
            if len(model.signed) + len(model.manifest) > MAX_MANIFEST_ANSWER_BYTES:
                return self._not_seeded(frame, f"the signed manifest of {request.model} is over one frame")
            return manifest_answer(frame, publication.model, model.signed, model.manifest)
        if request.kind is ChunkKind.HAVE:
            return have_answer(
                frame, publication.model, publication.publisher, publication.version, sorted(model.files)
            )
        if (request.publisher, request.version) != (publication.publisher, publication.version):
            return self._not_seeded(
                frame,
                f"this node seeds version {publication.version} of {request.model} by publisher "
                f"{publication.publisher[:12]}…, not version {request.version} by {request.publisher[:12]}…",
            )
        if request.file not in model.files:
            return self._not_seeded(frame, f"this node does not seed file {request.file} of {request.model}")
        item = publication.file(request.file)
        if request.index >= len(item.chunks):
            return self._not_seeded(
                frame, f"file {request.file} has chunks 0-{len(item.chunks) - 1}, not {request.index}"
            )
        offset, length = item.chunk_range(request.index)
        wait = self._upload.take(length)  # the upload pace; in flight is bounded above
        if wait > MAX_PACING_WAIT_S:
            self._upload.level += length  # not sent: given back
            return error_frame(
                frame.session, frame.step, ChunkErrorCode.BUSY,
                f"this seeder's upload rate is taken for the next {wait:.0f} s: retry later or elsewhere",
            )  # fmt: skip
        await asyncio.sleep(wait)
        try:
            data = await asyncio.to_thread(_read_range, model.root / request.file, offset, length)
            item.check_chunk(request.index, data)
        except (OSError, PublicationError) as exc:
            model.files.discard(request.file)
            log.warning("stopped seeding %s: %s", request.file, exc)
            return self._not_seeded(frame, f"file {request.file} is no longer seeded here")
        self.chunks_sent += 1
        self.bytes_sent += length
        return chunk_answer(frame, request.file, request.index, data)

    @staticmethod
    def _not_seeded(frame: Frame, message: str) -> Frame:
        return error_frame(frame.session, frame.step, ChunkErrorCode.NOT_SEEDED, message)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


class SeedingHandler:
    """A node's ``FrameHandler``: CHUNK frames to its seeder, every other frame to ``inner``."""

    def __init__(self, seeder: Seeder, inner: SpanHandler | None = None) -> None:
        self.seeder = seeder
        self.inner = inner

    async def handle(self, client: str, frame: Frame) -> Frame:
        if frame.type is FrameType.CHUNK:
            return await self.seeder.handle(client, frame)
        if self.inner is None:
            return error_frame(
                frame.session, frame.step, ErrorCode.SESSION_REFUSED, "this node only seeds model files"
            )
        return await self.inner.handle(client, frame)

    def close_client(self, client: str) -> None:
        if self.inner is not None:
            self.inner.close_client(client)

    # What a push relay asks of the handler it wraps (relay.SpanHandler): the inner one's answers.

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        return self.inner.session_span(client, session) if self.inner is not None else None


__all__ = ["SeedConfig", "SeededModel", "Seeder", "SeedingHandler", "verified_model"]

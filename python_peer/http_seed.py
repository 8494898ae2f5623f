"""A signaling node's ``--model-dir`` as one more source of chunks, for the downloader (docs/chunks.md).

A signaling node serves the files of each model directory it was given at ``/models/<name>/<file>``
(``signaling/web.py``), its signed manifest included. ``HttpSeed`` answers the chunk protocol's three
requests from there, so ``download.Downloader`` treats the node like any seeder: ``manifest`` is the two
files, ``have`` the files its signed manifest lists, ``chunk`` one HTTP range request of ``CHUNK_BYTES``.
Nothing it returns is believed: the manifest is checked by its signature and the node's chunks against
the publisher's hashes, so a node that serves altered bytes is banned at its first chunk, as a peer is.
A node that does not serve the model answers 404: ``not_seeded``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import httpx

from python_peer.core.chunks import (
    ChunkErrorCode,
    ChunkKind,
    chunk_answer,
    have_answer,
    manifest_answer,
    parse_request,
)
from python_peer.core.errors import PublicationError, WireError
from python_peer.core.manifest import MANIFEST_FILE
from python_peer.core.publication import (
    CHUNK_BYTES,
    MAX_SIGNED_MANIFEST_BYTES,
    SIGNED_MANIFEST_FILE,
    Publication,
)
from python_peer.core.wire import ErrorCode, Frame, error_frame, raise_for_error

from .errors import TransportError


def http_base(signal_url: str) -> str:
    """The HTTP origin of a signaling node's websocket URL (``ws://h:p`` -> ``http://h:p``)."""
    parts = urllib.parse.urlsplit(signal_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"{signal_url} is not a ws:// or wss:// URL")
    return f"{scheme}://{parts.netloc}"


class HttpSeed:
    """The ``HopClient`` of one signaling node's model files over HTTP (see the module)."""

    def __init__(self, origin: str, client: httpx.AsyncClient | None = None) -> None:
        self.origin = origin.rstrip("/")
        self._client = client or httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._closed = False
        self._signed: dict[str, bytes] = {}  # model -> its manifest.sig.json as this node served it

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def call(self, frame: Frame, timeout: float) -> Frame:
        """The answer a seeder would send to ``frame``; an ERROR answer raises its ``RemoteError``."""
        try:  # the whole answer, as over a link: bytes that trickle in keep no read timeout from firing
            async with asyncio.timeout(timeout):
                answer = await self._answer(frame, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.origin} did not answer {frame.meta.get('kind')!r:.20} within {timeout:.1f} s"
            ) from None
        raise_for_error(answer)
        return answer

    async def _answer(self, frame: Frame, timeout: float) -> Frame:
        try:
            request = parse_request(frame)
        except WireError as exc:
            return error_frame(frame.session, frame.step, ErrorCode.BAD_FRAME, str(exc))
        model = request.model
        signed = self._signed.get(model)
        if signed is None:
            signed = await self._get(model, SIGNED_MANIFEST_FILE, timeout, limit=MAX_SIGNED_MANIFEST_BYTES)
            if signed is None:
                return self._not_seeded(frame, f"{self.origin} serves no signed manifest of {model}")
            self._signed[model] = signed
        if request.kind is ChunkKind.MANIFEST:
            manifest = await self._get(model, MANIFEST_FILE, timeout, limit=MAX_SIGNED_MANIFEST_BYTES)
            if manifest is None:
                return self._not_seeded(frame, f"{self.origin} serves no {MANIFEST_FILE} of {model}")
            return manifest_answer(frame, model, signed, manifest)
        try:
            publication = Publication.from_dict(json.loads(signed))
        except (ValueError, UnicodeDecodeError, RecursionError, PublicationError) as exc:
            return self._not_seeded(frame, f"{self.origin} serves an unreadable signed manifest: {exc}")
        if request.kind is ChunkKind.HAVE:
            files = [f.file for f in publication.files]
            return have_answer(frame, model, publication.publisher, publication.version, files)
        if (request.publisher, request.version) != (publication.publisher, publication.version):
            return self._not_seeded(frame, f"{self.origin} serves another version of {model}")
        try:
            item = publication.file(request.file)
        except PublicationError as exc:
            return self._not_seeded(frame, str(exc))
        start = request.index * CHUNK_BYTES
        if start >= item.bytes:
            return self._not_seeded(frame, f"{request.file} has no chunk {request.index}")
        end = min(start + CHUNK_BYTES, item.bytes)
        data = await self._get(model, request.file, timeout, limit=end - start, byte_range=(start, end))
        if data is None:
            return self._not_seeded(frame, f"{self.origin} does not serve {request.file} of {model}")
        return chunk_answer(frame, request.file, request.index, data)

    async def _get(
        self,
        model: str,
        file: str,
        timeout: float,
        *,
        limit: int,
        byte_range: tuple[int, int] | None = None,
    ) -> bytes | None:
        """The bytes of ``/models/<model>/<file>`` (or of ``byte_range``), at most ``limit`` of them;
        None for a 404. A body over ``limit`` is cut there: the checks that follow refuse it."""
        url = f"{self.origin}/models/{urllib.parse.quote(model, safe='')}/{urllib.parse.quote(file)}"
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
        try:
            async with self._client.stream("GET", url, headers=headers, timeout=timeout) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != (206 if byte_range else 200):
                    raise TransportError(f"GET {url}: HTTP {response.status_code}")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) >= limit:
                        break
                return bytes(body[: limit + 1])
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {url}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _not_seeded(frame: Frame, message: str) -> Frame:
        return error_frame(frame.session, frame.step, ChunkErrorCode.NOT_SEEDED, message)


__all__ = ["HttpSeed", "http_base"]

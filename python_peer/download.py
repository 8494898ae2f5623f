"""Downloading the files of a signed manifest from seeders, in chunks each checked before it is written.

A ``Downloader`` fetches the chunks of the files it is given from every source that holds them
(``core/chunks.py``), a few requests in flight per source, and checks each chunk alone against the
publisher's signed chunk hashes (length, then sha256) before it writes it into ``.FILE.part``. A source
that sends a bad chunk (corrupted, truncated, another file's, a malformed answer) is banned for
``SOURCE_BAN_MS`` and the chunk is asked of another; a source that is busy is asked again later; one
that does not seed the file or whose link fails is not asked for it again. A file whose chunks are all
verified is hashed whole and renamed into place.

``ResumeRecord`` is the record of which chunks are verified on disk (``.download.json``, rewritten
atomically after each chunk), so a download stopped by a crash or Ctrl-C fetches only what is missing.
Nothing on disk is believed because the record says so: every chunk it names is hashed again on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_peer.core.chunks import (
    CHUNK_REQUEST_TIMEOUT_MS,
    MAX_CHUNK_REQUESTS_IN_FLIGHT,
    SOURCE_BAN_MS,
    ChunkErrorCode,
    Holding,
    chunk_request,
    have_request,
    parse_chunk_answer,
    parse_have_answer,
)
from python_peer.core.errors import PublicationError, RemoteError, WireError
from python_peer.core.publication import Publication, PublishedFile

from .errors import PeerError, TransportError
from .hop import HopClient

log = logging.getLogger(__name__)

STATE_FILE = ".download.json"
PART_SUFFIX = ".part"  # FILE is fetched into .FILE.part: a published name never starts with a dot
STATE_VERSION = 1
RETRY_BACKOFF_S = 0.2  # first wait after ``busy`` or ``rate_limited``; doubles up to 5 s


class DownloadError(PeerError):
    """A download that cannot finish: no source holds a chunk, or every source that did was banned."""


def part_path(root: Path, name: str) -> Path:
    """Where ``name`` is written while its chunks come in (no published file name starts with a dot)."""
    return root / f".{name}{PART_SUFFIX}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _file_matches(path: Path, item: PublishedFile) -> bool:
    try:
        if path.stat().st_size != item.bytes:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == item.sha256


class ResumeRecord:
    """Which chunks of which files are verified in ``root``, for one publication."""

    def __init__(self, root: Path, publication: Publication) -> None:
        self.root = root
        self.publication = publication
        self.done: dict[str, set[int]] = {}
        self.whole: set[str] = set()  # files found in place whole, their size and sha256 the signed ones
        self._lock = threading.Lock()  # chunks are written from worker threads

    @property
    def path(self) -> Path:
        return self.root / STATE_FILE

    def _key(self) -> dict[str, Any]:
        p = self.publication
        return {
            "publisher": p.publisher,
            "model": p.model,
            "version": p.version,
            "manifest": p.manifest_sha256,
        }

    def load(self, files: Iterable[str]) -> dict[str, set[int]]:
        """The verified chunks of ``files``: whole files already in place, and the chunks of ``.FILE.part``
        the record names that hash right now (the others are dropped and fetched again)."""
        claimed: dict[str, Any] = {}
        try:
            data = json.loads(self.path.read_bytes())
            if isinstance(data, dict) and data.get("v") == STATE_VERSION and data.get("of") == self._key():
                done = data.get("done")
                claimed = done if isinstance(done, dict) else {}
            else:
                log.warning("%s is of another publication or format: starting over", self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            log.warning("%s is unreadable (%s): starting over", self.path, exc)
        for name in files:
            item = self.publication.file(name)
            if _file_matches(self.root / name, item):
                self.done[name] = set(range(len(item.chunks)))
                self.whole.add(name)
                continue
            indices = claimed.get(name)
            if not isinstance(indices, list):
                continue
            good = set()
            part = part_path(self.root, name)
            try:
                with part.open("rb") as f:
                    for index in indices:
                        if (
                            isinstance(index, int)
                            and not isinstance(index, bool)
                            and 0 <= index < len(item.chunks)
                        ):
                            offset, length = item.chunk_range(index)
                            f.seek(offset)
                            try:
                                item.check_chunk(index, f.read(length))
                            except PublicationError:
                                log.warning(
                                    "%s chunk %d on disk does not verify: fetching it again", name, index
                                )
                                continue
                            good.add(index)
            except OSError:
                continue
            if good:
                self.done[name] = good
        return self.done

    def mark(self, name: str, index: int) -> None:
        """Record chunk ``index`` of ``name`` as verified on disk (after it was written and synced)."""
        with self._lock:
            self.done.setdefault(name, set()).add(index)
            body = {
                "v": STATE_VERSION,
                "of": self._key(),
                "done": {k: sorted(v) for k, v in self.done.items()},
            }
            write_atomic(self.path, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class Source:
    """A peer chunks are asked of, through a hop (a link's ``RpcClient``, or in-process)."""

    peer_id: str
    hop: HopClient
    files: set[str] = field(default_factory=set)
    banned_until: float = 0.0  # time.monotonic()
    gone: str = ""  # why it is not asked again, if it is not
    chunks: int = 0  # chunks it sent that verified

    @property
    def usable(self) -> bool:
        return not self.gone and self.banned_until <= time.monotonic()


@dataclass(frozen=True)
class DownloadReport:
    """What a download did: chunks fetched now, chunks found verified on disk, and the sources' part."""

    fetched: int
    resumed: int
    bytes_fetched: int
    by_source: dict[str, int]
    banned: tuple[str, ...]


class Progress:
    """A rich progress bar on a terminal; a log line every 10% otherwise."""

    def __init__(
        self, total: int, done: int, label: str, *, bar: bool | None = None, console: Any = None
    ) -> None:
        self.total, self.done, self.label = total, done, label
        self._last_tenth = -1
        self._bar: Any = None
        if bar if bar is not None else sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._bar = Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), console=console or Console(stderr=True), transient=False,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        tenth = self.done * 10 // max(1, self.total)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            log.info("%s: %d of %d bytes", self.label, self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class Downloader:
    """Fetches ``files`` of ``publication`` into ``root`` from ``sources``, in parallel, verified."""

    def __init__(
        self,
        root: Path,
        publication: Publication,
        files: Iterable[str],
        sources: list[Source],
        *,
        per_source: int = MAX_CHUNK_REQUESTS_IN_FLIGHT,
        timeout_s: float = CHUNK_REQUEST_TIMEOUT_MS / 1000,
        ban_s: float = SOURCE_BAN_MS / 1000,
        progress: bool | None = None,
        on_chunk: Callable[[str, int], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.publication = publication
        self.files = sorted(set(files))
        for name in self.files:
            publication.file(name)  # a name the publication does not list is refused now
        self.sources = sources
        self.per_source = per_source
        self.timeout_s = timeout_s
        self.ban_s = ban_s
        self.progress_bar = progress
        self.on_chunk = on_chunk
        self.record = ResumeRecord(self.root, publication)
        self._pending: deque[tuple[str, int]] = deque()
        self._in_flight: set[tuple[str, int]] = set()
        self._changed = asyncio.Condition()
        self._fetched = 0
        self._bytes = 0
        self._progress: Progress | None = None
        self._finished: set[str] = set()

    async def run(self) -> DownloadReport:
        """Fetch every missing chunk; ``DownloadError`` when some chunk no usable source holds."""
        self.root.mkdir(parents=True, exist_ok=True)
        done = await asyncio.to_thread(self.record.load, self.files)
        resumed = sum(len(v) for v in done.values())
        total = done_bytes = 0
        for name in self.files:
            item = self.publication.file(name)
            total += item.bytes
            have = done.get(name, set())
            done_bytes += sum(item.chunk_range(i)[1] for i in have)
            missing = [i for i in range(len(item.chunks)) if i not in have]
            if missing:
                await asyncio.to_thread(self._prepare_part, item)
                self._pending.extend((name, i) for i in missing)
            elif name not in self.record.whole:  # all in .FILE.part: it replaces what is in place, if any
                await asyncio.to_thread(self._finish_file, item)
        if resumed:
            log.info("resuming: %d chunks already verified on disk, %d to fetch", resumed, len(self._pending))
        if self._pending:
            await self._ask_holdings()
            self._progress = Progress(total, done_bytes, f"{self.publication.model}", bar=self.progress_bar)
            try:
                async with asyncio.TaskGroup() as group:
                    for source in self.sources:
                        for _ in range(self.per_source):
                            group.create_task(self._worker(source))
            finally:
                self._progress.close()
        if self._pending:
            left = sorted(self._pending)
            why = "; ".join(f"{s.peer_id[:12]}: {s.gone or 'banned'}" for s in self.sources if not s.usable)
            raise DownloadError(
                f"{len(left)} chunks of {self.publication.model} could not be fetched (first: {left[0][0]} "
                f"chunk {left[0][1]}): no usable source holds them ({why or 'no source holds those files'}); "
                "the verified chunks are kept, run the command again to resume"
            )
        self.record.remove()
        return DownloadReport(
            self._fetched,
            resumed,
            self._bytes,
            {s.peer_id: s.chunks for s in self.sources},
            tuple(s.peer_id for s in self.sources if s.banned_until > 0),
        )

    def _prepare_part(self, item: PublishedFile) -> None:
        part = part_path(self.root, item.file)
        with part.open("ab") as f:
            f.truncate(item.bytes)

    def _finish_file(self, item: PublishedFile) -> None:
        part = part_path(self.root, item.file)
        if not _file_matches(part, item):
            raise DownloadError(f"{part}: every chunk verified but the file's sha256 is not the signed one")
        os.replace(part, self.root / item.file)

    async def _ask_holdings(self) -> None:
        async def ask(source: Source) -> None:
            try:
                answer = await source.hop.call(have_request(self.publication.model), self.timeout_s)
                holding = parse_have_answer(answer, self.publication.model)
            except (RemoteError, WireError, TransportError, TimeoutError) as exc:
                source.gone = f"no holdings: {exc}"
                return
            self._take_holding(source, holding)

        await asyncio.gather(*(ask(s) for s in self.sources))

    def _take_holding(self, source: Source, holding: Holding) -> None:
        p = self.publication
        if (holding.publisher, holding.version) != (p.publisher, p.version):
            source.gone = f"seeds version {holding.version} by {holding.publisher[:12]}…, not ours"
            return
        source.files = set(holding.files) & set(self.files)

    def _take(self, source: Source) -> tuple[str, int] | None:
        for task in self._pending:
            if task[0] in source.files:
                self._pending.remove(task)
                self._in_flight.add(task)
                return task
        return None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _requeue(self, task: tuple[str, int]) -> None:
        self._in_flight.discard(task)
        self._pending.appendleft(task)
        await self._notify()

    async def _worker(self, source: Source) -> None:
        backoff = RETRY_BACKOFF_S
        while source.usable:
            task = self._take(source)
            if task is None:
                async with self._changed:
                    if not self._pending and not self._in_flight:
                        return
                    if not any(name in source.files for name, _ in (*self._pending, *self._in_flight)):
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._changed.wait()
                continue
            outcome = await self._fetch(source, *task)
            if outcome == "retry":
                await self._requeue(task)
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            elif outcome != "ok":
                await self._requeue(task)
            else:
                backoff = RETRY_BACKOFF_S
        await self._notify()

    async def _fetch(self, source: Source, name: str, index: int) -> str:
        p = self.publication
        item = p.file(name)
        request = chunk_request(p.model, p.publisher, p.version, name, index)
        try:
            answer = await source.hop.call(request, self.timeout_s)
            data = parse_chunk_answer(answer, name, index)
            item.check_chunk(index, data)
        except RemoteError as exc:
            if exc.code in (ChunkErrorCode.BUSY, ChunkErrorCode.RATE_LIMITED):
                return "retry"
            if exc.code == ChunkErrorCode.NOT_SEEDED:
                source.files.discard(name)
                return "elsewhere"
            source.gone = f"answered {exc.code}: {exc}"
            return "gone"
        except (WireError, PublicationError) as exc:
            source.banned_until = time.monotonic() + self.ban_s
            log.warning("banned source %s for %.0f s: %s", source.peer_id[:12], self.ban_s, exc)
            return "banned"
        except (TransportError, TimeoutError, OSError) as exc:
            source.gone = f"link failed: {exc}"
            return "gone"
        await asyncio.to_thread(self._write, item, index, data)
        self._in_flight.discard((name, index))
        source.chunks += 1
        self._fetched += 1
        self._bytes += len(data)
        if self._progress is not None:
            self._progress.advance(len(data))
        if self.on_chunk is not None:
            self.on_chunk(name, index)
        if len(self.record.done.get(name, ())) == len(item.chunks) and name not in self._finished:
            self._finished.add(name)
            await asyncio.to_thread(self._finish_file, item)
        await self._notify()
        return "ok"

    def _write(self, item: PublishedFile, index: int, data: bytes) -> None:
        offset, _length = item.chunk_range(index)
        with (part_path(self.root, item.file)).open("r+b") as f:
            f.seek(offset)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.record.mark(item.file, index)


__all__ = ["DownloadError", "DownloadReport", "Downloader", "ResumeRecord", "Source", "write_atomic"]

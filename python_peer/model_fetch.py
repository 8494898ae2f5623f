"""A model's name turned into a directory on this machine: its signed manifest and the files a span needs,
fetched from the peers that seed them (docs/chunks.md).

``fetch_model`` looks up the peers serving NAME through signaling, asks them for the signed manifest,
keeps the newest one that verifies (signature, pinned ``manifest.json``) and whose publisher this node
trusts, picks the span (the least-served run that fits the memory budget, unless one is given), and
downloads, from every seeder at once, the files of that span plus what a client needs (embedding, head,
tokenizer, chat template) into ``<data dir>/models/<name>/``. Then the directory is checked exactly
like an exported one (``model_trust.check_trusted_model``) before anyone loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from python_peer.core.canonical import MAX_LAYER, MODEL_RE, Announcement
from python_peer.core.chunks import CHUNK_REQUEST_TIMEOUT_MS, manifest_request, parse_manifest_answer
from python_peer.core.errors import (
    ManifestError,
    PublicationError,
    RemoteError,
    UntrustedPublisherError,
    WireError,
)
from python_peer.core.manifest import MANIFEST_FILE, Manifest
from python_peer.core.publication import (
    SIGNED_MANIFEST_FILE,
    Publication,
    Verify,
    named_files,
    verified_publication,
)
from python_peer.core.publisher_trust import TrustPolicy
from python_peer.core.spans import Span

from .block_selection import checked_span, least_served_span
from .download import Downloader, DownloadError, DownloadReport, Source, write_atomic
from .errors import TransportError
from .hop import FrameLink
from .http_seed import HttpSeed, http_base
from .identity import default_data_dir, verify
from .model_trust import check_trusted_model
from .node import MeshNode, NodeConfig
from .rpc import RpcClient

if TYPE_CHECKING:
    from .serving import PeerOptions

log = logging.getLogger(__name__)

MODELS_DIR = "models"
MAX_SOURCES = 16  # seeders one download asks at once

Lookup = Callable[..., Awaitable[list[Announcement]]]  # SignalClient.lookup(model, start, end, limit=)
Connect = Callable[[str], Awaitable[FrameLink]]  # LinkManager.connect(peer_id)


def is_model_name(value: str | Path) -> bool:
    """Whether ``--model VALUE`` names a model to fetch rather than a directory: not an existing directory,
    not an absolute path nor one starting with ``.`` or ``~``, and a valid model name."""
    text = str(value)
    return (
        not Path(text).is_dir()
        and not Path(text).is_absolute()
        and not text.startswith((".", "~"))
        and MODEL_RE.match(text) is not None
    )


def model_dir_for(data_dir: Path, name: str) -> Path:
    """``<data_dir>/models/<name>``, with the characters a model name may hold that a path must not
    (``/``, ``:``, a leading dot) replaced, so a name never leaves the models directory."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return Path(data_dir) / MODELS_DIR / safe


@dataclass(frozen=True)
class FetchedManifest:
    """A signed manifest that verified, by a trusted publisher, with the exact bytes to write to disk."""

    publication: Publication
    manifest: Manifest
    signed: bytes
    manifest_bytes: bytes


def check_fetched(
    model: str, signed: bytes, manifest_bytes: bytes, policy: TrustPolicy, verify: Verify
) -> FetchedManifest:
    """Refuse a signed manifest of ``model`` that is unsigned, altered, re-signed, or not trusted."""
    publication, manifest = verified_publication(
        signed, manifest_bytes, verify, f"the signed manifest of {model}"
    )
    if publication.model != model:
        raise PublicationError(f"asked for {model}, got the signed manifest of {publication.model}")
    if not policy.trusts(publication.publisher):
        raise UntrustedPublisherError(
            f"{model} is signed by publisher {publication.publisher}, which this node does not trust: "
            f"pass --trust-publisher {publication.publisher} to use it",
            publication.publisher,
        )
    return FetchedManifest(publication, manifest, signed, manifest_bytes)


async def fetch_manifest(
    sources: list[Source], model: str, policy: TrustPolicy, verify: Verify, timeout_s: float
) -> FetchedManifest:
    """The newest trusted signed manifest of ``model`` among the sources' answers; each is checked alone."""
    refusals: list[str] = []
    found: list[FetchedManifest] = []

    async def ask(source: Source) -> None:
        try:
            answer = await source.hop.call(manifest_request(model), timeout_s)
            signed, manifest_bytes = parse_manifest_answer(answer, model)
            found.append(check_fetched(model, signed, manifest_bytes, policy, verify))
        except UntrustedPublisherError as exc:
            refusals.append(str(exc))
        except (PublicationError, ManifestError, RemoteError, WireError, TransportError, TimeoutError) as exc:
            refusals.append(f"peer {source.peer_id[:12]}: {exc}")
            log.warning("refused the manifest of %s from %s: %s", model, source.peer_id[:12], exc)

    await asyncio.gather(*(ask(s) for s in sources))
    if not found:
        if any("does not trust" in r for r in refusals):
            raise UntrustedPublisherError(next(r for r in refusals if "does not trust" in r), "")
        raise PublicationError(
            f"no peer gave a signed manifest of {model} that verifies ({len(sources)} asked): "
            + "; ".join(refusals[:3])
        )
    return max(found, key=lambda f: f.publication.version)


def files_for(manifest: Manifest, span: Span | None) -> list[str]:
    """The files a client needs (embedding, head, tokenizer, chat template), plus those of the block
    shards inside ``span`` (each shard's .onnx and external data)."""
    files: set[str] = set()
    for shard in manifest.shards:
        inside = (
            shard.kind == "blocks"
            and span is not None
            and span.start <= shard.start
            and shard.end <= span.end
        )
        if shard.kind in ("embed", "head") or inside:
            files.update(item.file for item in shard.files)
    files.update(name for name, known in named_files(manifest).items() if known is None)
    return sorted(files)


@dataclass(frozen=True)
class FetchResult:
    """Where the model landed, the span fetched for (None: a client's files only), and the download."""

    model_dir: Path
    span: Span | None
    report: DownloadReport


async def fetch_model(
    name: str,
    data_dir: Path,
    *,
    self_id: str,
    lookup: Lookup,
    connect: Connect,
    policy: TrustPolicy,
    verify: Verify,
    span: Span | None = None,
    memory_budget_bytes: int | None = None,
    progress: bool | None = None,
    timeout_s: float = CHUNK_REQUEST_TIMEOUT_MS / 1000,
    http_origins: Sequence[str] = (),
) -> FetchResult:
    """Fetch model ``name`` from its seeders into ``model_dir_for(data_dir, name)``; with
    ``memory_budget_bytes`` the files of a span too (``span``, else the least-served one that fits).
    ``http_origins``: signaling nodes whose ``--model-dir`` files are one more source each (``http_seed.py``)."""
    announcements = [a for a in await lookup(name, 0, MAX_LAYER, limit=64) if a.peer_id != self_id]
    if not announcements:
        raise DownloadError(
            f"{name} is not a model directory, and no peer serves a model of that name now (signaling knows "
            "none): nothing to fetch it from"
        )
    sources = await _connect_all(announcements[:MAX_SOURCES], connect)
    try:
        if not sources:
            raise DownloadError(
                f"no link could be made to any of the {len(announcements)} peers serving {name}"
            )
        sources += [Source(origin, HttpSeed(origin)) for origin in http_origins]
        fetched = await fetch_manifest(sources, name, policy, verify, timeout_s)
        manifest = fetched.manifest
        if memory_budget_bytes is not None:
            if span is None:
                span = least_served_span(manifest, announcements, memory_budget_bytes)
            else:
                checked_span(manifest, span, memory_budget_bytes)
        root = model_dir_for(data_dir, name)
        files = files_for(manifest, span)
        log.info(
            "fetching %d files of %s (%s) from %d peers", len(files), name, span or "client", len(sources)
        )
        report = await Downloader(
            root, fetched.publication, files, sources, timeout_s=timeout_s, progress=progress
        ).run()
        await asyncio.to_thread(write_atomic, root / MANIFEST_FILE, fetched.manifest_bytes)
        await asyncio.to_thread(write_atomic, root / SIGNED_MANIFEST_FILE, fetched.signed)
        await asyncio.to_thread(check_trusted_model, root, policy)
        log.info(
            "fetched %s: %d chunks (%d bytes) from %d peers, %d verified on disk already",
            name, report.fetched, report.bytes_fetched, sum(1 for n in report.by_source.values() if n), report.resumed,
        )  # fmt: skip
        return FetchResult(root, span, report)
    finally:
        for source in sources:
            with contextlib.suppress(Exception):
                await source.hop.aclose()


async def fetch_with_node(
    name: str,
    node_config: NodeConfig,
    policy: TrustPolicy,
    *,
    span: Span | None = None,
    memory_budget_bytes: int | None = None,
) -> FetchResult:
    """``fetch_model`` through a node of its own (this node's identity, serving nothing), closed after;
    ``<data dir>`` is the node's, else the default one. Progress lines go to stderr."""
    node = await MeshNode.create(node_config)
    try:
        result = await fetch_model(
            name,
            node_config.data_dir or default_data_dir(),
            self_id=node.peer_id,
            lookup=node.signal.lookup,
            connect=node.links.connect,
            policy=policy,
            verify=verify,
            span=span,
            memory_budget_bytes=memory_budget_bytes,
            http_origins=[http_base(url) for url in node_config.signal_urls],
        )
    finally:
        await node.aclose()
    report = result.report
    print(
        f"fetched {name} into {result.model_dir}: {report.fetched} chunks from "
        f"{sum(1 for n in report.by_source.values() if n)} peers, {report.resumed} already on disk"
        + (f", banned {len(report.banned)} that sent bad chunks" if report.banned else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


async def fetch_for_peer(options: PeerOptions, stop: asyncio.Event) -> PeerOptions | None:
    """``ai4all peer --model NAME``: the options with NAME fetched (its span's files) into a directory;
    None when ``stop`` was set first (Ctrl-C, SIGTERM): the download stops, its verified chunks kept."""
    assert options.model_name is not None  # the caller's own state, not input
    fetch = asyncio.ensure_future(
        fetch_with_node(
            options.model_name,
            options.peer_config().node,
            options.trust,
            span=options.span,
            memory_budget_bytes=options.memory_budget_bytes,
        )
    )
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # when our caller cancels us too: nothing is left running
        stopped.cancel()
        stopping = not fetch.done()
        if stopping:
            fetch.cancel()
            await asyncio.wait({fetch})  # its clean-up ends first; unlike `await fetch`, keeps our own cancel
    if stopping:
        print(
            "download stopped: the verified chunks are kept, run the same command to resume", file=sys.stderr
        )
        return None
    result = fetch.result()
    return replace(options, model_dir=result.model_dir, span=result.span, model_name=None)


async def _connect_all(announcements: list[Announcement], connect: Connect) -> list[Source]:
    async def one(peer_id: str) -> Source | None:
        try:
            return Source(peer_id, RpcClient(await connect(peer_id)))
        except (TransportError, TimeoutError, OSError) as exc:
            log.warning("no link to seeder %s: %s", peer_id[:12], exc)
            return None

    got = await asyncio.gather(*(one(a.peer_id) for a in announcements))
    return [s for s in got if s is not None]


__all__ = [
    "FetchResult",
    "FetchedManifest",
    "check_fetched",
    "fetch_for_peer",
    "fetch_manifest",
    "fetch_model",
    "fetch_with_node",
    "files_for",
    "model_dir_for",
]

"""Seeders that attack a download through the documented chunk protocol (docs/chunks.md), each beside an
honest one: the download must take the honest bytes and refuse the attacker's, never stop or hang on it.

- a seeder (a peer, or a signaling node over HTTP) whose signed manifest is JSON nested too deep to parse;
- a signaling node that trickles a chunk's bytes, each within the HTTP read timeout, never finishing;
- a `.download.json` that does not parse (nested too deep) is ignored, as the docs say, not a crash;
- a file whose chunks were all verified into `.FILE.part` replaces the stale copy in its place (a crash
  between the last chunk and the rename), rather than the download reporting the stale one done.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from python_peer.core.canonical import signing_bytes
from python_peer.core.manifest import load_manifest
from python_peer.core.publication import (
    CHUNK_BYTES,
    MANIFEST_CONTEXT,
    SIGNED_MANIFEST_FILE,
    Publication,
    PublishedFile,
    chunk_hashes,
    publish,
)
from python_peer.core.publisher_trust import TrustPolicy
from python_peer.core.wire import Frame, FrameType, WireTensor
from python_peer.download import STATE_FILE, Downloader, ResumeRecord, Source
from python_peer.http_seed import HttpSeed
from python_peer.identity import Identity, verify
from python_peer.model_fetch import fetch_model
from python_peer.rpc import RpcClient
from python_peer.seeding import SeededModel, Seeder, SeedingHandler, verified_model
from tests.fast import toy_model
from tests.support.fakes import MemoryNetwork, announcement

PUBLISHER = Identity.from_seed(b"p" * 32)
FAST = 2.0
DEEP = b"[" * 200_000  # parses as nothing: JSON nested past Python's recursion limit


@pytest.fixture(scope="module")
def signed_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = toy_model.build(tmp_path_factory.mktemp("signed-toy") / "model")
    publication = publish(
        root, load_manifest(root), PUBLISHER.peer_id, PUBLISHER.sign, version=3, issued_ms=1
    )
    (root / SIGNED_MANIFEST_FILE).write_text(json.dumps(publication.to_dict()))
    return root


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Publication]:
    """A synthetic publication of one 3-chunk file."""
    root = tmp_path_factory.mktemp("blob")
    (root / "a.bin").write_bytes(os.urandom(2 * CHUNK_BYTES + 7))
    sha, size, chunks = chunk_hashes(root / "a.bin")
    unsigned = Publication(
        PUBLISHER.peer_id, "blobs", 1, 1, 2, "0" * 64, (PublishedFile("a.bin", size, sha, chunks),), "0" * 128
    )
    signed = replace(unsigned, sig=PUBLISHER.sign(signing_bytes(MANIFEST_CONTEXT, unsigned.body())))
    (root / SIGNED_MANIFEST_FILE).write_text(json.dumps(signed.to_dict()))
    return root, signed


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    net = MemoryNetwork()
    yield net
    await net.aclose()


def _seed(network: MemoryNetwork, name: str, handler: object, model: str = "toy-model") -> str:
    peer_id = Identity.from_seed(name.encode().ljust(32, b"_")).peer_id
    network.serve(peer_id, SeedingHandler(handler), announcement(peer_id, model, 0, toy_model.LAYERS))  # type: ignore[arg-type]
    return peer_id


class DeepManifest:
    """A seeder whose manifest answer is a signed manifest nested too deep to parse, as raw frames."""

    async def handle(self, client: str, frame: Frame) -> Frame:
        tensors = (
            WireTensor("signed", "uint8", (len(DEEP),), DEEP),
            WireTensor("manifest", "uint8", (len(DEEP),), DEEP),
        )
        meta = {"kind": "manifest", "model": "toy-model"}
        return Frame(FrameType.CHUNK, frame.session, frame.step, meta=meta, tensors=tensors)


async def _http_server(files: dict[str, bytes], trickle: set[str]) -> asyncio.Server:
    """A signaling node's ``/models/<name>/<file>`` on 127.0.0.1: ``files`` by path; a range request of a
    path in ``trickle`` is answered one byte every 0.2 s (each well within the client's read timeout)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            ranges = [h.split("=", 1)[1] for h in head if h.lower().startswith("range:")]
            body = files.get(path)
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            status = "200 OK"
            if ranges:
                start, end = (int(x) for x in ranges[0].split("-"))
                body, status = body[start : end + 1], "206 Partial Content"
            writer.write(f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n\r\n".encode())
            if ranges and path in trickle:
                for byte in body:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.2)
            else:
                writer.write(body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _origin(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


# --- a manifest nested too deep -------------------------------------------------------------------------


async def test_a_seeder_whose_manifest_is_nested_too_deep_is_refused_and_the_honest_one_used(
    network: MemoryNetwork, signed_toy: Path, tmp_path: Path
) -> None:
    honest = Seeder()
    model = verified_model(signed_toy, verify)
    assert model is not None
    honest.add(model)
    _seed(network, "deep", DeepManifest())
    _seed(network, "honest", honest)
    result = await fetch_model(
        "toy-model", tmp_path, self_id="me", lookup=network.signal_client("me").lookup,
        connect=network.connector("me").connect, policy=TrustPolicy(frozenset({PUBLISHER.peer_id})),
        verify=verify, progress=False, timeout_s=FAST,
    )  # fmt: skip
    assert (result.model_dir / "head.onnx").read_bytes() == (signed_toy / "head.onnx").read_bytes()


async def test_a_signaling_node_whose_signed_manifest_is_nested_too_deep_is_not_used(
    network: MemoryNetwork, blob: tuple[Path, Publication], tmp_path: Path
) -> None:
    root, publication = blob
    honest = Seeder()
    honest.add(SeededModel(root, publication, b"{}", b"{}", {"a.bin"}))
    peer = _seed(network, "honest", honest)
    server = await _http_server({f"/models/blobs/{SIGNED_MANIFEST_FILE}": DEEP}, set())
    seed = HttpSeed(_origin(server))
    sources = [Source("http", seed), Source(peer, RpcClient(await network.connect("me", peer)))]
    try:
        report = await Downloader(tmp_path, publication, ["a.bin"], sources, timeout_s=FAST).run()
    finally:
        await seed.aclose()
        server.close()
    assert (tmp_path / "a.bin").read_bytes() == (root / "a.bin").read_bytes()
    assert report.by_source[peer] == 3 and sources[0].gone


# --- a signaling node that trickles ---------------------------------------------------------------------


async def test_a_signaling_node_that_trickles_a_chunk_is_given_up_on_within_the_request_timeout(
    network: MemoryNetwork, blob: tuple[Path, Publication], tmp_path: Path
) -> None:
    root, publication = blob
    honest = Seeder()
    honest.add(SeededModel(root, publication, b"{}", b"{}", {"a.bin"}))
    peer = _seed(network, "honest", honest)
    files = {
        f"/models/blobs/{SIGNED_MANIFEST_FILE}": (root / SIGNED_MANIFEST_FILE).read_bytes(),
        "/models/blobs/a.bin": (root / "a.bin").read_bytes(),
    }
    server = await _http_server(files, {"/models/blobs/a.bin"})
    seed = HttpSeed(_origin(server))
    sources = [Source("http", seed), Source(peer, RpcClient(await network.connect("me", peer)))]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(15.0):  # a 1 MiB chunk at 5 bytes a second would take 2.4 days
            report = await Downloader(tmp_path, publication, ["a.bin"], sources, timeout_s=FAST).run()
    finally:
        await seed.aclose()
        server.close()
    assert (tmp_path / "a.bin").read_bytes() == (root / "a.bin").read_bytes()
    assert sum(report.by_source.values()) == 3 and "did not answer" in sources[0].gone
    assert loop.time() - started < 3 * FAST


# --- a resume record that does not parse ----------------------------------------------------------------


async def test_a_resume_record_nested_too_deep_is_ignored_and_the_download_starts_over(
    network: MemoryNetwork, blob: tuple[Path, Publication], tmp_path: Path
) -> None:
    root, publication = blob
    honest = Seeder()
    honest.add(SeededModel(root, publication, b"{}", b"{}", {"a.bin"}))
    peer = _seed(network, "honest", honest)
    (tmp_path / STATE_FILE).write_bytes(DEEP)  # "a record that does not parse is ignored" (docs/chunks.md)
    sources = [Source(peer, RpcClient(await network.connect("me", peer)))]
    report = await Downloader(tmp_path, publication, ["a.bin"], sources, timeout_s=FAST).run()
    assert report.resumed == 0 and report.fetched == 3
    assert (tmp_path / "a.bin").read_bytes() == (root / "a.bin").read_bytes()


async def test_a_file_whose_chunks_are_all_verified_replaces_a_stale_copy_in_its_place(
    network: MemoryNetwork, blob: tuple[Path, Publication], tmp_path: Path
) -> None:
    # A crash after the last chunk was recorded, before the rename, over a stale copy (an older publication).
    root, publication = blob
    good = (root / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(b"stale" + good[5:])
    (tmp_path / ".a.bin.part").write_bytes(good)
    record = ResumeRecord(tmp_path, publication)
    for index in range(3):
        record.mark("a.bin", index)
    report = await Downloader(tmp_path, publication, ["a.bin"], [], timeout_s=FAST).run()
    assert report.resumed == 3 and report.fetched == 0
    assert (tmp_path / "a.bin").read_bytes() == good, "the verified chunks, not the stale copy, are the file"

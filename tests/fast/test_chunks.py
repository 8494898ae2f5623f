"""The chunk protocol's rules (docs/chunks.md), each with its attack, on in-memory links.

Seeders are the real ``Seeder`` behind ``serve_link``; attackers speak raw ``CHUNK`` frames (the
documented metadata and a uint8 tensor), never the helpers of ``core/chunks.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from python_peer.core.canonical import signing_bytes
from python_peer.core.errors import PublicationError, RemoteError, UntrustedPublisherError
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
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType, WireTensor
from python_peer.download import STATE_FILE, Downloader, DownloadError, Source
from python_peer.identity import Identity, verify
from python_peer.model_fetch import check_fetched, fetch_model, model_dir_for
from python_peer.rpc import RpcClient
from python_peer.seeding import SeedConfig, SeededModel, Seeder, SeedingHandler, verified_model
from tests.fast import toy_model
from tests.support.fakes import MemoryNetwork, announcement
from tests.support.liar_seeder import LIES, LiarSeeder


class Crash(Exception):
    """The process dying in the middle of a download."""


PUBLISHER = Identity.from_seed(b"p" * 32)
FAST = 5.0


def _sign(model_dir: Path, publisher: Identity = PUBLISHER) -> Publication:
    manifest = load_manifest(model_dir)
    publication = publish(model_dir, manifest, publisher.peer_id, publisher.sign, version=3, issued_ms=1)
    (model_dir / SIGNED_MANIFEST_FILE).write_text(json.dumps(publication.to_dict()))
    return publication


@pytest.fixture(scope="module")
def signed_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = toy_model.build(tmp_path_factory.mktemp("signed-toy") / "model")
    _sign(root)
    return root


@dataclass
class Blobs:
    """A synthetic publication of two multi-chunk files, and a seeder's model of it."""

    root: Path
    publication: Publication

    def seeded(self) -> SeededModel:
        files = {f.file for f in self.publication.files}
        return SeededModel(self.root, self.publication, b"{}", b"{}", files)

    def chunks(self) -> int:
        return sum(len(f.chunks) for f in self.publication.files)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Blobs:
    root = tmp_path_factory.mktemp("blobs")
    files = []
    for name, size in (("a.bin", 3 * CHUNK_BYTES + 5), ("b.bin", 2 * CHUNK_BYTES)):
        (root / name).write_bytes(os.urandom(size))
        sha, size, chunks = chunk_hashes(root / name)
        files.append(PublishedFile(name, size, sha, chunks))
    unsigned = Publication(PUBLISHER.peer_id, "blobs", 1, 1, 2, "0" * 64, tuple(files), "0" * 128)
    signed = replace(unsigned, sig=PUBLISHER.sign(signing_bytes(MANIFEST_CONTEXT, unsigned.body())))
    return Blobs(root, signed)


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    net = MemoryNetwork()
    yield net
    await net.aclose()


def _seed(network: MemoryNetwork, name: str, handler: object, model: str = "toy-model") -> str:
    peer_id = Identity.from_seed(name.encode().ljust(32, b"_")).peer_id
    network.serve(peer_id, SeedingHandler(handler), announcement(peer_id, model, 0, toy_model.LAYERS))  # type: ignore[arg-type]
    return peer_id


async def _source(network: MemoryNetwork, peer_id: str, me: str = "me") -> Source:
    return Source(peer_id, RpcClient(await network.connect(me, peer_id)))


def _raw_chunk_request(meta: Mapping[str, object], session: bytes | None = None) -> Frame:
    """A chunk request as the docs spell it: a CHUNK frame, a fresh session id, step 0, canonical meta."""
    return Frame(FrameType.CHUNK, session or os.urandom(16), 0, meta=dict(meta))


def _files_equal(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


# --- downloading, with liars ----------------------------------------------------------------------------


@pytest.mark.parametrize("lie", LIES)
async def test_a_lying_source_is_banned_at_its_first_bad_chunk_and_the_chunk_fetched_elsewhere(
    network: MemoryNetwork, blobs: Blobs, tmp_path: Path, lie: str
) -> None:
    honest, lying = Seeder(), Seeder()
    honest.add(blobs.seeded())
    lying.add(blobs.seeded())
    liar = LiarSeeder(lying, lie)
    good, bad = _seed(network, "honest", honest), _seed(network, "liar", liar)
    sources = [await _source(network, bad), await _source(network, good)]
    names = ["a.bin", "b.bin"]
    report = await Downloader(
        tmp_path, blobs.publication, names, sources, timeout_s=FAST, progress=False
    ).run()
    assert _files_equal(tmp_path, blobs.root, names)
    assert report.banned == (bad,)
    assert liar.lies_told >= 1 and report.by_source[bad] == 0
    assert liar.lies_told <= 4, (
        "banned at its first bad chunk: only the requests already in flight reached it"
    )
    assert report.fetched == blobs.chunks() == report.by_source[good]
    assert not list(tmp_path.glob(".*.part")) and not (tmp_path / STATE_FILE).exists()


async def test_when_every_source_lies_the_download_stops_and_keeps_nothing_unverified(
    network: MemoryNetwork, blobs: Blobs, tmp_path: Path
) -> None:
    lying = Seeder()
    lying.add(blobs.seeded())
    bad = _seed(network, "liar", LiarSeeder(lying, "corrupt"))
    downloader = Downloader(
        tmp_path, blobs.publication, ["a.bin"], [await _source(network, bad)], timeout_s=FAST
    )
    with pytest.raises(DownloadError, match=r"could not be fetched.*banned"):
        await downloader.run()
    assert not (tmp_path / "a.bin").exists()
    assert not (tmp_path / STATE_FILE).exists(), "no chunk verified, so none is recorded"


async def test_a_restart_after_a_crash_fetches_only_what_was_missing(
    network: MemoryNetwork, blobs: Blobs, tmp_path: Path
) -> None:
    seeder = Seeder()
    seeder.add(blobs.seeded())
    peer = _seed(network, "seeder", seeder)
    names = ["a.bin", "b.bin"]
    seen: list[tuple[str, int]] = []

    def crash_after_two(name: str, index: int) -> None:
        seen.append((name, index))
        if len(seen) == 2:
            raise Crash  # a crash in the middle of the download

    first = Downloader(
        tmp_path,
        blobs.publication,
        names,
        [await _source(network, peer)],
        per_source=1,
        on_chunk=crash_after_two,
    )
    with pytest.raises(ExceptionGroup):  # the crash, through the download's TaskGroup
        await first.run()
    assert len(json.loads((tmp_path / STATE_FILE).read_text())["done"]) >= 1
    sent_before = seeder.chunks_sent
    report = await Downloader(tmp_path, blobs.publication, names, [await _source(network, peer, "me2")]).run()
    assert report.resumed == 2 and report.fetched == blobs.chunks() - 2
    assert seeder.chunks_sent - sent_before == report.fetched, "nothing verified is fetched twice"
    assert _files_equal(tmp_path, blobs.root, names)


@pytest.mark.parametrize("tamper", ["flip_a_recorded_chunk", "claim_every_chunk", "garbage_record"])
async def test_a_tampered_resume_state_is_not_believed(
    network: MemoryNetwork, blobs: Blobs, tmp_path: Path, tamper: str
) -> None:
    seeder = Seeder()
    seeder.add(blobs.seeded())
    peer = _seed(network, "seeder", seeder)
    seen: list[int] = []

    def crash_after_two(name: str, index: int) -> None:
        seen.append(index)
        if len(seen) == 2:
            raise Crash

    first = Downloader(
        tmp_path,
        blobs.publication,
        ["a.bin"],
        [await _source(network, peer)],
        per_source=1,
        on_chunk=crash_after_two,
    )
    with pytest.raises(ExceptionGroup):
        await first.run()
    record = json.loads((tmp_path / STATE_FILE).read_text())
    part = tmp_path / ".a.bin.part"
    if tamper == "flip_a_recorded_chunk":
        index = record["done"]["a.bin"][0]
        with part.open("r+b") as f:
            f.seek(index * CHUNK_BYTES)
            byte = f.read(1)
            f.seek(index * CHUNK_BYTES)
            f.write(bytes([byte[0] ^ 1]))
        expect_resumed = 1
    elif tamper == "claim_every_chunk":
        record["done"]["a.bin"] = [0, 1, 2, 3]
        (tmp_path / STATE_FILE).write_text(json.dumps(record))
        expect_resumed = 2
    else:
        (tmp_path / STATE_FILE).write_text("{not json")
        expect_resumed = 0
    report = await Downloader(
        tmp_path, blobs.publication, ["a.bin"], [await _source(network, peer, "me2")]
    ).run()
    assert report.resumed == expect_resumed and report.fetched == 4 - expect_resumed
    assert _files_equal(tmp_path, blobs.root, ["a.bin"])


# --- the seeder's rules -----------------------------------------------------------------------------------


async def test_a_seeder_answers_only_for_what_it_seeds(network: MemoryNetwork, blobs: Blobs) -> None:
    seeder = Seeder()
    model = blobs.seeded()
    model.files.discard("b.bin")
    seeder.add(model)
    client = RpcClient(await network.connect("me", _seed(network, "seeder", seeder)))
    p = blobs.publication
    ok = {
        "kind": "chunk",
        "model": "blobs",
        "publisher": p.publisher,
        "version": 1,
        "file": "a.bin",
        "index": 3,
    }
    answer = await client.call(_raw_chunk_request(ok), FAST)
    assert (
        answer.meta == {"kind": "chunk", "file": "a.bin", "index": 3}
        and answer.tensors[0].data == ((blobs.root / "a.bin").read_bytes()[3 * CHUNK_BYTES :])
    )
    for wrong in (
        {**ok, "model": "other"},  # a model it holds no signed manifest of
        {**ok, "file": "b.bin"},  # a file of the manifest it does not hold
        {**ok, "file": "manifest.sig.json"},  # a file the manifest does not list
        {**ok, "index": 4},  # past the last chunk
        {**ok, "version": 2},  # another publication of the model
        {**ok, "publisher": "ab" * 32},
    ):
        with pytest.raises(RemoteError) as refused:
            await client.call(_raw_chunk_request(wrong), FAST)
        assert refused.value.code == "not_seeded", wrong
    for malformed in (
        {**ok, "file": "../secret"},
        {**ok, "index": -1},
        {**ok, "extra": 1},
        {"kind": "everything", "model": "blobs"},
        {"kind": "chunk", "model": "blobs"},
    ):
        with pytest.raises(RemoteError) as refused:
            await client.call(_raw_chunk_request(malformed), FAST)
        assert refused.value.code == "bad_frame", malformed
    have = await client.call(_raw_chunk_request({"kind": "have", "model": "blobs"}), FAST)
    assert have.meta["files"] == ["a.bin"] and have.meta["version"] == 1
    await client.aclose()


async def test_a_flood_of_chunk_requests_gets_busy_and_rate_limited_within_bounded_memory(
    network: MemoryNetwork, blobs: Blobs
) -> None:
    seeder = Seeder(SeedConfig(upload_bytes_per_s=4 * CHUNK_BYTES, requests_per_s=8))
    seeder.add(blobs.seeded())
    peer = _seed(network, "seeder", seeder)
    client = RpcClient(await network.connect("flooder", peer))
    p = blobs.publication
    peak = 0

    async def ask(i: int) -> str:
        nonlocal peak
        meta = {
            "kind": "chunk",
            "model": "blobs",
            "publisher": p.publisher,
            "version": 1,
            "file": "a.bin",
            "index": i % 4,
        }
        try:
            await client.call(_raw_chunk_request(meta), 30.0)
            return "ok"
        except RemoteError as exc:
            return exc.code
        finally:
            peak = max(peak, seeder._total)

    codes = await asyncio.gather(*(ask(i) for i in range(30)))
    assert codes.count("busy") >= 20, codes
    assert codes.count("ok") <= 8
    assert peak <= seeder.config.in_flight_per_requester
    assert seeder.bytes_sent <= codes.count("ok") * CHUNK_BYTES
    sequential = []
    for _ in range(30):  # one at a time, never busy, but faster than the requester's rate
        try:
            await client.call(_raw_chunk_request({"kind": "have", "model": "blobs"}), FAST)
            sequential.append("ok")
        except RemoteError as exc:
            sequential.append(exc.code)
    assert "rate_limited" in sequential and "busy" not in sequential
    other = RpcClient(await network.connect("someone-else", peer))
    meta = {"kind": "have", "model": "blobs"}
    assert (await other.call(_raw_chunk_request(meta), FAST)).meta["files"] == ["a.bin", "b.bin"]
    await client.aclose()
    await other.aclose()


def test_a_seeder_does_not_seed_a_file_altered_on_its_disk(signed_toy: Path, tmp_path: Path) -> None:
    root = tmp_path / "model"
    shutil.copytree(signed_toy, root)
    with (root / "head.onnx").open("r+b") as f:
        f.seek(10)
        f.write(b"\x00")
    model = verified_model(root, verify)
    assert model is not None and "head.onnx" not in model.files and "embed.onnx" in model.files
    unsigned = tmp_path / "unsigned"
    toy_model.build(unsigned)
    assert verified_model(unsigned, verify) is None


# --- the signed manifest from seeders ---------------------------------------------------------------------


class ManifestForger:
    """A seeder whose manifest answers are whatever the test gives, as raw frames."""

    def __init__(self, signed: bytes, manifest: bytes) -> None:
        self.signed, self.manifest = signed, manifest

    async def handle(self, client: str, frame: Frame) -> Frame:
        tensors = (
            WireTensor("signed", "uint8", (len(self.signed),), self.signed),
            WireTensor("manifest", "uint8", (len(self.manifest),), self.manifest),
        )
        return Frame(
            FrameType.CHUNK,
            frame.session,
            frame.step,
            meta={"kind": "manifest", "model": "toy-model"},
            tensors=tensors,
        )


def _forgeries(root: Path) -> dict[str, tuple[bytes, bytes]]:
    signed = (root / SIGNED_MANIFEST_FILE).read_bytes()
    manifest = (root / "manifest.json").read_bytes()
    body = json.loads(signed)
    stranger = Identity.from_seed(b"s" * 32)
    resigned: dict[str, Any] = {"body": {**body["body"], "publisher": stranger.peer_id}}
    resigned["sig"] = stranger.sign(signing_bytes(MANIFEST_CONTEXT, resigned["body"]))
    altered_hash = json.loads(signed)
    altered_hash["body"]["files"][0]["chunks"][0] = "0" * 64
    altered_manifest = manifest.replace(b'"toy-model"', b'"toy-model"', 1).replace(b"{", b"{ ", 1)
    return {
        "unsigned": (b"{}", manifest),
        "re-signed by a stranger": (json.dumps(resigned).encode(), manifest),
        "a chunk hash altered": (json.dumps(altered_hash).encode(), manifest),
        "manifest.json altered": (signed, altered_manifest),
    }


@pytest.mark.parametrize(
    "forgery", ["unsigned", "re-signed by a stranger", "a chunk hash altered", "manifest.json altered"]
)
async def test_a_forged_manifest_from_a_seeder_is_refused(
    network: MemoryNetwork, signed_toy: Path, tmp_path: Path, forgery: str
) -> None:
    signed, manifest = _forgeries(signed_toy)[forgery]
    forger = _seed(network, "forger", ManifestForger(signed, manifest))
    me = network.signal_client("me")
    policy = TrustPolicy(frozenset({PUBLISHER.peer_id}))
    error = UntrustedPublisherError if forgery == "re-signed by a stranger" else PublicationError
    with pytest.raises(error):
        await fetch_model(
            "toy-model", tmp_path, self_id="me", lookup=me.lookup, connect=network.connector("me").connect,
            policy=policy, verify=verify, timeout_s=FAST,
        )  # fmt: skip
    with pytest.raises(error):
        check_fetched("toy-model", signed, manifest, policy, verify)
    assert not (model_dir_for(tmp_path, "toy-model") / SIGNED_MANIFEST_FILE).exists()
    assert forger


# --- the whole join: a name, two seeders (one lying), only the span's files --------------------------------


async def test_a_model_is_fetched_by_name_with_only_its_span_s_files(
    network: MemoryNetwork, signed_toy: Path, tmp_path: Path
) -> None:
    honest, lying = Seeder(), Seeder()
    for seeder in (honest, lying):
        model = verified_model(signed_toy, verify)
        assert model is not None
        seeder.add(model)
    _seed(network, "honest", honest)
    liar = LiarSeeder(lying, "other_file")
    liar_id = _seed(network, "liar", liar)
    policy = TrustPolicy(frozenset({PUBLISHER.peer_id}))
    result = await fetch_model(
        "toy-model", tmp_path, self_id="me", lookup=network.signal_client("me").lookup,
        connect=network.connector("me").connect, policy=policy, verify=verify, span=Span(1, 3),
        memory_budget_bytes=2**30, progress=False, timeout_s=FAST,
    )  # fmt: skip
    root = result.model_dir
    assert root == tmp_path / "models" / "toy-model" and result.span == Span(1, 3)
    on_disk = sorted(p.name for p in root.iterdir())
    assert on_disk == sorted(
        ["manifest.json", SIGNED_MANIFEST_FILE, "embed.onnx", "head.onnx", "blocks_1_3.onnx"]
    )
    for name in on_disk:
        assert (root / name).read_bytes() == (signed_toy / name).read_bytes()
    if liar.lies_told:
        assert liar_id in result.report.banned
    # a seeder of its own now: it seeds exactly what it holds
    model = verified_model(root, verify)
    assert model is not None and model.files == {"embed.onnx", "head.onnx", "blocks_1_3.onnx"}
    assert (
        hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest() == model.publication.manifest_sha256
    )
    # without a trusted publisher, nothing is fetched
    with pytest.raises(UntrustedPublisherError, match="--trust-publisher"):
        await fetch_model(
            "toy-model", tmp_path / "b", self_id="me", lookup=network.signal_client("me").lookup,
            connect=network.connector("me").connect, policy=TrustPolicy(), verify=verify, timeout_s=FAST,
        )  # fmt: skip


async def test_the_upload_rate_paces_answers_and_a_wait_too_long_is_busy(
    network: MemoryNetwork, blobs: Blobs
) -> None:
    seeder = Seeder(SeedConfig(upload_bytes_per_s=2 * CHUNK_BYTES))
    seeder.add(blobs.seeded())
    client = RpcClient(await network.connect("me", _seed(network, "seeder", seeder)))
    p = blobs.publication
    base = {"kind": "chunk", "model": "blobs", "publisher": p.publisher, "version": 1}
    loop = asyncio.get_running_loop()
    started = loop.time()
    for file, index in (("a.bin", 0), ("a.bin", 1), ("a.bin", 2), ("b.bin", 0), ("b.bin", 1)):
        await client.call(_raw_chunk_request({**base, "file": file, "index": index}), 30.0)
    elapsed = loop.time() - started
    assert elapsed >= 1.4, "5 MiB at 2 MiB/s with a 2 MiB burst take at least 1.5 s"
    slow = Seeder(SeedConfig(upload_bytes_per_s=32 * 1024))  # a 1 MiB chunk would wait 31 s
    slow.add(blobs.seeded())
    other = RpcClient(await network.connect("me", _seed(network, "slow", slow)))
    started = loop.time()
    with pytest.raises(RemoteError) as refused:
        await other.call(_raw_chunk_request({**base, "file": "a.bin", "index": 0}), 30.0)
    assert refused.value.code == "busy" and loop.time() - started < 1.0
    await client.aclose()
    await other.aclose()


def test_the_progress_bar_shows_bytes_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from python_peer.download import Progress

    out = io.StringIO()
    bar = Progress(
        3 * CHUNK_BYTES,
        CHUNK_BYTES,
        "toy-model",
        bar=True,
        console=Console(file=out, force_terminal=True, width=100),
    )
    bar.advance(2 * CHUNK_BYTES)
    bar.close()
    assert "toy-model" in out.getvalue() and "3.1/3.1 MB" in out.getvalue()


def test_a_model_name_is_told_from_a_directory(signed_toy: Path) -> None:
    from python_peer.model_fetch import is_model_name

    assert is_model_name("SmolLM2-135M-Instruct") and is_model_name("HuggingFaceTB/SmolLM2")
    assert not is_model_name(signed_toy)  # an existing directory
    assert not is_model_name("/var/lib/ai4all/models/x") and not is_model_name("./x")  # paths, even missing
    assert not is_model_name("~/x") and not is_model_name("bad name")

"""Joining by a model's name (issue 14, point 3), with real processes on loopback.

A peer that starts with nothing on disk runs ``ai4all peer --model NAME``: it finds the peers serving NAME
through signaling, fetches the signed manifest from them, takes the least-served span, fetches only
that span's files plus the client's from two seeders (one lying about every chunk it sends: a real
serving peer whose seeder is ``tests/support/liar_seeder.py``), serves, and a chat by name through the
mesh answers what the local chain answers. A SIGKILL in the middle of a slow download, then a restart,
fetches only the chunks that were missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from python_peer.core.manifest import load_manifest
from python_peer.download import STATE_FILE
from python_peer.identity import Identity
from python_peer.model_fetch import model_dir_for
from tests.support.liar_seeder import LiarProc
from tests.support.procs import Node, PeerProc, publish_copy, run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

FETCHED = re.compile(r"fetched (\S+) into (\S+): (\d+) chunks from (\d+) peers, (\d+) already on disk")
CLIENT_FILES = {"embed.onnx", "head.onnx", "tokenizer.json", "chat_template.jinja"}


@pytest.fixture(scope="module")
def published(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A copy of the tiny export (spans 0-1, 1-3, 3-4) published with ``ai4all publish``: (dir, publisher, name)."""
    model, publisher = publish_copy(tiny_llama_export, tmp_path_factory.mktemp("published-chunks"))
    return model, publisher, load_manifest(model).name


def _span_files(model: Path, start: int, end: int) -> set[str]:
    manifest = load_manifest(model)
    return {f.file for s in manifest.blocks if start <= s.start and s.end <= end for f in s.files}


def _chat(model: str, *flags: str) -> Any:
    return run_cli(["chat", "hello", "--model", model, "--max-tokens", "4", *flags], timeout=300)


def test_a_peer_joins_by_name_from_two_seeders_one_lying_and_serves_a_chat(
    published: tuple[Path, str, str], tmp_path: Path
) -> None:
    model, publisher, name = published
    trust = ["--trust-publisher", publisher]
    node = Node("signal", tmp_path)
    seeder = PeerProc("seeder", tmp_path, model, [node.url], span="0-1", extra=trust)
    liar = LiarProc("liar", tmp_path, model, [node.url], span="3-4", lie="corrupt")
    joiner: PeerProc | None = None
    try:
        node.wait()
        seeder.wait()
        liar.wait()
        identity = Identity.generate()  # all the joiner has on disk: its identity
        identity.save(tmp_path / "joiner" / "identity.key")
        joiner = PeerProc(
            "joiner", tmp_path, Path(name), [node.url], extra=[*trust, "--memory-budget", "1GiB"]
        ).wait(timeout=180)
        assert joiner.peer_id == identity.peer_id
        assert joiner.span == "1-3", "the least-served span: nobody served 1-3"
        log = joiner.log.read_text()
        fetched = FETCHED.search(log)
        assert fetched is not None, joiner.tail()
        assert "banned 1 that sent bad chunks" in log, joiner.tail()
        root = model_dir_for(joiner.data_dir, name)
        assert Path(fetched.group(2)) == root
        on_disk = {p.name for p in root.iterdir()}
        wanted = CLIENT_FILES | _span_files(model, 1, 3)
        assert on_disk == wanted | {"manifest.json", "manifest.sig.json"}, (
            "only the span's files, and the client's"
        )
        assert int(fetched.group(3)) == len(wanted) and fetched.group(5) == "0"
        for file in on_disk:
            assert (root / file).read_bytes() == (model / file).read_bytes(), file
        # a chat by name: the client fetches embed, head and tokenizer the same way; the mesh is
        # seeder (0-1), joiner (1-3) and liar (3-4), which is honest at inference
        client = tmp_path / "client"
        mesh = _chat(name, "--signal", node.url, "--data-dir", str(client), *trust)
        local = _chat(str(model), *trust)
        assert mesh.returncode == 0 and local.returncode == 0, mesh.stderr[-3000:] + local.stderr[-2000:]
        assert mesh.stdout == local.stdout and mesh.stdout.strip()
        client_files = {p.name for p in model_dir_for(client, name).iterdir()}
        assert client_files == CLIENT_FILES | {"manifest.json", "manifest.sig.json"}
    finally:
        for proc in (joiner, liar, seeder):
            if proc is not None:
                proc.stop()
        node.stop()


def test_a_sigkill_mid_download_then_a_restart_fetches_only_what_was_missing(
    published: tuple[Path, str, str], tmp_path: Path
) -> None:
    model, publisher, name = published
    trust = ["--trust-publisher", publisher]
    slow = [*trust, "--upload-rate", "64KiB"]  # so the kill lands in the middle of the download
    node = Node("signal", tmp_path)
    seeders = [
        PeerProc("seed-a", tmp_path, model, [node.url], span="0-1", extra=slow),
        PeerProc("seed-b", tmp_path, model, [node.url], span="3-4", extra=slow),
    ]
    joiner: PeerProc | None = None
    try:
        node.wait()
        for seeder in seeders:
            seeder.wait()
        args = [*trust, "--memory-budget", "1GiB", "--span", "1-3"]
        joiner = PeerProc("joiner", tmp_path, Path(name), [node.url], extra=args)
        record = model_dir_for(joiner.data_dir, name) / STATE_FILE

        def some_chunks_verified() -> int:
            try:
                return len(json.loads(record.read_text())["done"])
            except (OSError, ValueError, KeyError):
                return 0

        wait_for(some_chunks_verified, 120, what="a first verified chunk", describe=joiner.tail)
        joiner.kill()
        done = sum(len(v) for v in json.loads(record.read_text())["done"].values())
        wanted = CLIENT_FILES | _span_files(model, 1, 3)
        assert 1 <= done < len(wanted), "killed in the middle of the download"
        joiner = PeerProc("joiner", tmp_path, Path(name), [node.url], extra=args).wait(timeout=180)
        fetched = FETCHED.search(joiner.log.read_text())
        assert fetched is not None, joiner.tail()
        again, resumed = int(fetched.group(3)), int(fetched.group(5))
        assert resumed >= done and again + resumed == len(wanted), joiner.tail()
        root = model_dir_for(joiner.data_dir, name)
        for file in wanted:
            assert (root / file).read_bytes() == (model / file).read_bytes(), file
        assert not record.exists() and not list(root.glob(".*.part"))
    finally:
        if joiner is not None:
            joiner.stop()
        for seeder in seeders:
            seeder.stop()
        node.stop()


def test_a_signaling_nodes_model_dir_is_one_more_source(
    published: tuple[Path, str, str], tmp_path: Path
) -> None:
    """The only peer serving the model lies about every chunk; the signaling node serves the published
    directory (``--model-dir``) over HTTP: the joiner bans the liar and takes every chunk from the node."""
    model, publisher, name = published
    trust = ["--trust-publisher", publisher]
    node = Node("signal", tmp_path, model_dirs=[model], extra_args=trust)
    liar = LiarProc("liar", tmp_path, model, [node.url], span="0-1", lie="corrupt")
    joiner: PeerProc | None = None
    try:
        node.wait()
        liar.wait()
        joiner = PeerProc(
            "joiner", tmp_path, Path(name), [node.url], extra=[*trust, "--memory-budget", "1GiB"]
        ).wait(timeout=180)
        log = joiner.log.read_text()
        fetched = FETCHED.search(log)
        assert fetched is not None and fetched.group(4) == "1", joiner.tail()  # one source gave chunks
        assert "banned 1 that sent bad chunks" in log, joiner.tail()
        root = model_dir_for(joiner.data_dir, name)
        start, end = (int(x) for x in joiner.span.split("-"))
        for file in CLIENT_FILES | _span_files(model, start, end):
            assert (root / file).read_bytes() == (model / file).read_bytes(), file
    finally:
        if joiner is not None:
            joiner.stop()
        liar.stop()
        node.stop()

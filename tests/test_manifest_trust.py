"""Signed manifests and publisher trust (issue 14, point 1): ``ai4all publish`` signs a model, and
``peer``, ``chat`` and ``signal`` use a model directory only if its signed manifest verifies, pins the
files beside it and comes from a publisher they trust (``--trust-publisher``), or, for a local export
with no signed manifest at all, with ``--allow-unsigned``.

The attacks edit the files of a model directory as docs/manifest.md describes them (``manifest.json``,
``manifest.sig.json``: ``{"body", "sig"}``, the signature over ``ai4all/manifest/v1`` + newline +
canonical JSON of the body) and run the commands as a user would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from onnx import helper

from python_peer.core.canonical import signing_bytes
from python_peer.core.errors import PublicationError
from python_peer.core.publication import Publication
from python_peer.identity import Identity, verify
from tests.support.procs import Node, PeerProc, run_cli

NO_ENV_DEFAULT = {"AI4ALL_ALLOW_UNSIGNED": ""}  # the test session's default for local exports, cleared
CONTEXT = "ai4all/manifest/v1"
CHUNK = 1 << 20


@pytest.fixture(scope="module")
def published(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the tiny export, published by a fresh identity through the command; (dir, publisher id)."""
    root = tmp_path_factory.mktemp("published")
    model = root / "model"
    shutil.copytree(tiny_llama_export, model)
    result = run_cli(["publish", str(model), "--data-dir", str(root / "publisher")], timeout=120)
    assert result.returncode == 0, result.stderr
    publisher = result.stdout
    assert publisher.endswith("\n") and len(publisher) == 65, "the publisher's id alone on stdout"
    return model, publisher.strip()


def _copy(published: tuple[Path, str], tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(published[0], out)
    return out


def _chat(model: Path, *flags: str) -> Any:
    args = ["chat", "hello", "--model", str(model), "--max-tokens", "2", *flags]
    return run_cli(args, timeout=300, env=NO_ENV_DEFAULT)


def _refused(result: Any, *words: str) -> None:
    assert result.returncode == 1 and result.stdout == "", result.stderr
    line = result.stderr.strip()
    assert line.startswith("ai4all chat: error: ") and len(line.splitlines()) == 1, line
    for word in words:
        assert word in line, line


def _signed(model: Path) -> dict[str, Any]:
    return dict(json.loads((model / "manifest.sig.json").read_text()))


def _write_signed(model: Path, data: dict[str, Any]) -> None:
    (model / "manifest.sig.json").write_text(json.dumps(data))


def test_the_signed_manifest_names_every_file_in_chunks(published: tuple[Path, str]) -> None:
    model, publisher = published
    signed = _signed(model)
    body = signed["body"]
    assert body["publisher"] == publisher and body["chunk_bytes"] == CHUNK and body["v"] == 1
    text = (model / "manifest.json").read_bytes()
    assert body["manifest"] == {
        "file": "manifest.json",
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    manifest = json.loads(text)
    named = {f["file"] for s in manifest["shards"] for f in s["files"]} | {
        "tokenizer.json",
        "chat_template.jinja",
    }
    assert [f["file"] for f in body["files"]] == sorted(named)
    for item in body["files"]:
        data = (model / item["file"]).read_bytes()
        assert item["bytes"] == len(data) and item["sha256"] == hashlib.sha256(data).hexdigest()
        chunks = [hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]
        assert item["chunks"] == chunks
    verify(
        publisher, signing_bytes(CONTEXT, body), signed["sig"]
    )  # the publisher's, over the documented bytes


def test_each_chunk_is_checked_alone(published: tuple[Path, str]) -> None:
    model, _ = published
    publication = Publication.from_dict(_signed(model))
    first, second = publication.files[0], publication.files[1]
    data = (model / first.file).read_bytes()[:CHUNK]
    first.check_chunk(0, data)
    for bad, words in (
        (data[:-1], "bytes, the publisher says"),
        (bytes([data[0] ^ 1]) + data[1:], "not the one the publisher signed"),
        ((model / second.file).read_bytes()[:CHUNK], ""),
    ):
        with pytest.raises(PublicationError, match=words):
            first.check_chunk(0, bad)
    with pytest.raises(PublicationError, match="not 7"):
        first.check_chunk(7, data)


def test_a_trusted_publisher_s_model_is_used(published: tuple[Path, str]) -> None:
    model, publisher = published
    result = _chat(model, "--trust-publisher", publisher)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_an_unsigned_export_is_refused_unless_allowed(published: tuple[Path, str], tmp_path: Path) -> None:
    model = _copy(published, tmp_path)
    (model / "manifest.sig.json").unlink()
    _refused(_chat(model), "no signed manifest", "ai4all publish", "--allow-unsigned")
    assert _chat(model, "--allow-unsigned").returncode == 0


def test_an_untrusted_publisher_is_named(published: tuple[Path, str]) -> None:
    model, publisher = published
    _refused(_chat(model), f"signed by publisher {publisher}", f"--trust-publisher {publisher}")
    other = Identity.generate().peer_id
    _refused(_chat(model, "--trust-publisher", other, "--allow-unsigned"), "does not trust")


def _resign_by_stranger(model: Path) -> str:
    stranger = Identity.generate()
    signed = _signed(model)
    signed["body"]["publisher"] = stranger.peer_id
    signed["sig"] = stranger.sign(signing_bytes(CONTEXT, signed["body"]))
    _write_signed(model, signed)
    return stranger.peer_id


def test_a_manifest_re_signed_by_a_stranger_is_refused(published: tuple[Path, str], tmp_path: Path) -> None:
    model, publisher = _copy(published, tmp_path), published[1]
    stranger = _resign_by_stranger(model)
    _refused(
        _chat(model, "--trust-publisher", publisher), f"signed by publisher {stranger}", "does not trust"
    )


def _claim_other_publisher(model: Path) -> None:
    signed = _signed(model)
    signed["body"]["publisher"] = Identity.generate().peer_id  # the original signature kept
    _write_signed(model, signed)


def _alter_chunk_hash(model: Path) -> None:
    signed = _signed(model)
    signed["body"]["files"][0]["chunks"][0] = "0" * 64
    _write_signed(model, signed)


def _older_version(model: Path) -> None:
    signed = _signed(model)
    signed["body"]["version"] -= 1
    _write_signed(model, signed)


def _alter_manifest(model: Path) -> None:
    """Swap a shard for a tampered one and list its new hash, as a lying mirror would."""
    file = model / "head.onnx"
    graph = onnx.load(str(file))
    graph.graph.node.append(helper.make_node("Identity", [graph.graph.input[0].name], ["extra"]))
    data = graph.SerializeToString()
    file.write_bytes(data)
    manifest = json.loads((model / "manifest.json").read_text())
    head = next(s for s in manifest["shards"] if s["file"] == "head.onnx")
    listed = {"file": "head.onnx", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    head.update(listed)
    head["files"][0] = listed
    (model / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _alter_tokenizer(model: Path) -> None:
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text.replace('"hello"', '"hellp"', 1) + " ")


def _strip_signature(model: Path) -> None:
    signed = _signed(model)
    signed["sig"] = "0" * 128
    _write_signed(model, signed)


def _extra_file(model: Path) -> None:
    """Add a file to the signed list: valid JSON, but the signature no longer covers the body."""
    signed = _signed(model)
    signed["body"]["files"].append({"file": "z.bin", "bytes": 1, "sha256": "0" * 64, "chunks": ["0" * 64]})
    _write_signed(model, signed)


ALTERED = {
    "publisher swapped, signature kept": (_claim_other_publisher, "does not carry a valid signature"),
    "chunk hash changed after signing": (_alter_chunk_hash, "does not carry a valid signature"),
    "version changed after signing": (_older_version, "does not carry a valid signature"),
    "signature zeroed": (_strip_signature, "does not carry a valid signature"),
    "file added after signing": (_extra_file, "does not carry a valid signature"),
    "manifest altered with its hashes": (_alter_manifest, "manifest.json is not the manifest publisher"),
    "tokenizer altered": (_alter_tokenizer, "tokenizer.json is not the file publisher"),
}


@pytest.mark.parametrize("attack", sorted(ALTERED))
def test_an_altered_signed_model_is_refused_whatever_the_flags(
    attack: str, published: tuple[Path, str], tmp_path: Path
) -> None:
    change, words = ALTERED[attack]
    model = _copy(published, tmp_path)
    change(model)
    _refused(_chat(model, "--trust-publisher", published[1], "--allow-unsigned"), words)


def test_peer_and_signal_apply_the_same_rule(published: tuple[Path, str], tmp_path: Path) -> None:
    model, publisher = published
    peer = run_cli(
        ["peer", "--signal", "ws://127.0.0.1:9", "--model", str(model)], env=NO_ENV_DEFAULT, timeout=120
    )
    assert peer.returncode == 1 and f"--trust-publisher {publisher}" in peer.stderr, peer.stderr
    signal = run_cli(["signal", "--port", "1", "--model-dir", str(model)], env=NO_ENV_DEFAULT, timeout=120)
    assert signal.returncode == 1 and f"--trust-publisher {publisher}" in signal.stderr, signal.stderr
    bad = run_cli(["signal", "--port", "1", "--trust-publisher", "ab"], env=NO_ENV_DEFAULT, timeout=120)
    assert bad.returncode == 1 and "is not a publisher id" in bad.stderr, bad.stderr


def test_publish_refuses_a_model_admission_refuses(published: tuple[Path, str], tmp_path: Path) -> None:
    model = _copy(published, tmp_path)
    (model / "manifest.sig.json").unlink()
    blocks = next(p for p in sorted(model.glob("blocks_*.onnx")))
    graph = onnx.load(str(blocks))
    graph.graph.node.append(helper.make_node("Exec", [graph.graph.input[0].name], ["x"], domain="evil"))
    data = graph.SerializeToString()
    blocks.write_bytes(data)
    manifest = json.loads((model / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if shard["file"] == blocks.name:
            listed = {"file": blocks.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            shard.update(listed)
            shard["files"][0] = listed
            manifest["memory"]["block_weight_bytes"][shard["start"]] += 4096
    (model / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(["publish", str(model), "--data-dir", str(tmp_path / "pub")], timeout=120)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert "admission rule no_custom_ops" in result.stderr
    assert not (model / "manifest.sig.json").exists()


def test_a_mesh_of_a_trusted_publisher_s_model_chats(published: tuple[Path, str], tmp_path: Path) -> None:
    """A signaling node serving the signed model, a peer serving all its blocks and a client, each told
    to trust the publisher and nothing else (no unsigned default), answer as the local chain does."""
    model, publisher = published
    trust = ["--trust-publisher", publisher]
    node = Node("signal", tmp_path, model_dirs=[model], env=NO_ENV_DEFAULT, extra_args=trust)
    peer = PeerProc("peer", tmp_path, model, [node.url], span="0-4", extra=trust, env=NO_ENV_DEFAULT)
    try:
        node.wait()
        peer.wait()
        mesh = _chat(model, "--signal", node.url, "--data-dir", str(tmp_path / "client"), *trust)
        local = _chat(model, *trust)
        assert mesh.returncode == 0 and local.returncode == 0, mesh.stderr + local.stderr
        assert mesh.stdout == local.stdout and mesh.stdout.strip()
        signed = httpx.get(
            f"{node.http}/models/{json.loads((model / 'manifest.json').read_text())['model']['name']}/manifest.sig.json",
            trust_env=False,
        )
        assert signed.status_code == 200 and signed.json()["body"]["publisher"] == publisher
    finally:
        peer.stop()
        node.stop()

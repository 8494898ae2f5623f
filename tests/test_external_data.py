"""Shards with external data: one ``<shard>.onnx.data`` per shard, listed and hashed in the manifest,
verified before loading; a tampered, missing, unlisted or escaping weights file is refused.

The tiny Llama is exported with the threshold forced to 0 so every shard takes the external-data path;
``test_external_data_large.py`` does the same with a blocks shard over 2 GB.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter import external_data, pipeline, source
from python_peer.chain import LocalChain
from python_peer.core.errors import ManifestError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.onnx_external import external_tensors
from python_peer.core.spans import parse_spans
from python_peer.errors import ShardError
from python_peer.runner import ShardRunner, sha256_file
from tests.support.procs import Node, run_cli

SPANS = tuple(parse_spans("0-1,1-3,3-4"))
PROMPT = np.array([[5, 17, 42, 99, 3, 250]], dtype=np.int64)


@pytest.fixture(scope="module")
def external_export(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("external") / "model"
    pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=SPANS, external_data_threshold=0)
    )
    return out


@pytest.fixture
def copy_of(external_export: Path, tmp_path: Path) -> Path:
    """A private copy of the export that a test may tamper with."""
    target = tmp_path / "model"
    shutil.copytree(external_export, target)
    return target


def _raw(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


def _write_raw(model_dir: Path, data: dict) -> None:
    (model_dir / "manifest.json").write_text(json.dumps(data))


def _logits(model_dir: Path) -> np.ndarray:
    chain = LocalChain(model_dir, threads=1)
    session = chain.open(1)
    return chain.step(session, PROMPT, np.ones_like(PROMPT))


def test_every_shard_has_one_listed_data_file_and_nothing_else(external_export: Path) -> None:
    manifest = load_manifest(external_export)
    assert manifest.raw["format_version"] == 2
    listed: set[str] = set()
    for shard in manifest.shards:
        assert [f.file for f in shard.files] == [shard.file, shard.file + ".data"]
        assert (shard.files[0].file, shard.files[0].sha256, shard.files[0].bytes) == (
            shard.file,
            shard.sha256,
            shard.bytes,
        )
        for item in shard.files:
            path = external_export / item.file
            assert path.stat().st_size == item.bytes and sha256_file(path) == item.sha256
            listed.add(item.file)
        # The .onnx holds the graph; the weights are in the .data file, all of them in that one file.
        assert shard.files[1].bytes > 4 * shard.bytes
        tensors = external_tensors((external_export / shard.file).read_bytes())
        assert tensors and {t.location for t in tensors} == {shard.file + ".data"}
    on_disk = {p.name for p in external_export.iterdir()}
    assert on_disk == listed | {"manifest.json", "tokenizer.json", "chat_template.jinja"}


def test_external_data_chains_to_the_same_logits(external_export: Path, tiny_llama_export: Path) -> None:
    np.testing.assert_allclose(_logits(external_export), _logits(tiny_llama_export), atol=1e-5, rtol=1e-5)


def test_the_walker_finds_what_onnx_finds(external_export: Path) -> None:
    path = external_export / "blocks_1-3.onnx"
    model = onnx.load(str(path), load_external_data=False)
    expected = [
        (t.name, {e.key: e.value for e in t.external_data}["location"])
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert [(t.name, t.location) for t in external_tensors(path.read_bytes())] == expected


@pytest.mark.parametrize("cut", [1, 7, 100])
def test_a_truncated_onnx_is_not_parsed_as_a_model(external_export: Path, cut: int) -> None:
    data = (external_export / "blocks_1-3.onnx").read_bytes()
    with pytest.raises(ManifestError, match=r"truncated|not an ONNX model"):
        external_tensors(data[:-cut] + b"\x0a\xff\xff\xff\x0f")


def test_appended_bytes_in_the_weights_file_are_refused(copy_of: Path) -> None:
    with (copy_of / "blocks_1-3.onnx.data").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(
        ShardError, match=r"blocks_1-3\.onnx: weights file blocks_1-3\.onnx\.data is \d+ bytes"
    ):
        LocalChain(copy_of)


def test_a_changed_weight_is_refused(copy_of: Path) -> None:
    path = copy_of / "blocks_1-3.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    manifest = load_manifest(copy_of)
    entry = next(s for s in manifest.blocks if s.start == 1)
    with pytest.raises(ShardError, match=r"weights file blocks_1-3\.onnx\.data has sha256 .* altered"):
        ShardRunner(copy_of, entry)


def test_a_missing_weights_file_is_refused(copy_of: Path) -> None:
    (copy_of / "head.onnx.data").unlink()
    with pytest.raises(ShardError, match=r"head\.onnx: weights file head\.onnx\.data is missing"):
        LocalChain(copy_of)


def test_a_manifest_that_omits_the_weights_file_is_refused(copy_of: Path) -> None:
    """The manifest is valid on its own, but the .onnx reads a file the manifest neither lists nor hashes."""
    data = _raw(copy_of)
    for shard in data["shards"]:
        if shard["file"] == "blocks_0-1.onnx":
            shard["files"] = shard["files"][:1]
    _write_raw(copy_of, data)
    with pytest.raises(
        ShardError,
        match=r"blocks_0-1\.onnx: tensor .* 'blocks_0-1\.onnx\.data', which the manifest does not list",
    ):
        LocalChain(copy_of)


def test_an_onnx_that_points_outside_the_directory_is_refused(copy_of: Path) -> None:
    """A publisher rewrites the .onnx to read /etc/passwd-style paths and lists its new hash: refused."""
    path = copy_of / "head.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    (copy_of.parent / "secret.bin").write_bytes(b"\0" * 10**6)
    path.write_bytes(model.SerializeToString())
    data = _raw(copy_of)
    head = next(s for s in data["shards"] if s["kind"] == "head")
    head["sha256"], head["bytes"] = sha256_file(path), path.stat().st_size
    head["files"][0] = {"file": "head.onnx", "sha256": head["sha256"], "bytes": head["bytes"]}
    _write_raw(copy_of, data)
    with pytest.raises(
        ShardError, match=r"head\.onnx: tensor .* '\.\./secret\.bin', which the manifest does not"
    ):
        LocalChain(copy_of)


def test_an_onnx_that_reads_past_its_weights_file_is_refused(copy_of: Path) -> None:
    path = copy_of / "embed.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = str(10**9)
    path.write_bytes(model.SerializeToString())
    data = _raw(copy_of)
    embed = next(s for s in data["shards"] if s["kind"] == "embed")
    embed["sha256"], embed["bytes"] = sha256_file(path), path.stat().st_size
    embed["files"][0] = {"file": "embed.onnx", "sha256": embed["sha256"], "bytes": embed["bytes"]}
    _write_raw(copy_of, data)
    with pytest.raises(ShardError, match=r"embed\.onnx: tensor .* reads bytes 1000000000-"):
        LocalChain(copy_of)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "file": "../x.data"}), "plain file name"),
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "file": "/etc/passwd"}), "plain file name"),
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "file": "other.data"}), "only other file"),
        (lambda s: s["files"].append(dict(s["files"][1])), "listed 2 times"),
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "sha256": "0" * 63}), "64 lowercase hex"),
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "bytes": 0}), "positive integer"),
        (lambda s: s["files"].__setitem__(1, {**s["files"][1], "bytes": True}), "positive integer"),
        (lambda s: s["files"].__setitem__(0, {**s["files"][0], "bytes": 1}), "first of 'files'"),
        (lambda s: s["files"].reverse(), "first of 'files'"),
        (lambda s: s.pop("files"), "'files' must list"),
        (lambda s: s.update(files=[]), "'files' must list"),
        (lambda s: s.update(files="blocks_0-1.onnx.data"), "'files' must list"),
    ],
)
def test_malformed_file_lists_are_refused(external_export: Path, mutate, needle: str) -> None:
    data = _raw(external_export)
    bad = copy.deepcopy(data)
    mutate(next(s for s in bad["shards"] if s["file"] == "blocks_0-1.onnx"))
    with pytest.raises(ManifestError, match=r"shard blocks_0-1\.onnx.*" + needle.replace(".", r"\.")):
        Manifest.from_dict(bad)


def test_one_file_cannot_belong_to_two_shards(external_export: Path) -> None:
    data = _raw(external_export)
    shards = data["shards"]
    shards[2]["file"], shards[2]["sha256"], shards[2]["bytes"] = (
        shards[1]["file"],
        shards[1]["sha256"],
        shards[1]["bytes"],
    )
    shards[2]["files"] = copy.deepcopy(shards[1]["files"])
    with pytest.raises(
        ManifestError, match=r"file blocks_0-1\.onnx is listed by shard blocks_0-1\.onnx and by"
    ):
        Manifest.from_dict(data)


def test_a_version_1_manifest_still_reads_as_single_file_shards(tiny_llama_export: Path) -> None:
    data = _raw(tiny_llama_export)
    data["format_version"] = 1
    for shard in data["shards"]:
        shard.pop("files")
    manifest = Manifest.from_dict(data)
    assert all(s.files[0].file == s.file and len(s.files) == 1 for s in manifest.shards)


def test_chat_refuses_a_tampered_weights_file_in_one_line(copy_of: Path) -> None:
    path = copy_of / "blocks_3-4.onnx.data"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    result = run_cli(["chat", "hello", "--model", str(copy_of), "--max-tokens", "2"], timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "blocks_3-4.onnx.data" in last and "sha256" in last and "altered" in last, result.stderr
    assert result.stdout == ""


def test_a_failed_export_leaves_nothing_half_written_and_resumes(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    request = pipeline.ExportRequest(
        source.resolve(str(tiny_llama)), out, spans=SPANS, external_data_threshold=0
    )
    real = external_data.write_shard
    calls: list[str] = []

    def failing(src: Path, onnx_dst: Path, data_dst: Path, *, final_name: str, threshold: int) -> bool:
        calls.append(final_name)
        if final_name == "blocks_1-3.onnx":
            real(src, onnx_dst, data_dst, final_name=final_name, threshold=threshold)  # both temps written
            raise OSError(28, "No space left on device")
        return real(src, onnx_dst, data_dst, final_name=final_name, threshold=threshold)

    monkeypatch.setattr(external_data, "write_shard", failing)
    with pytest.raises(OSError, match="No space"):
        pipeline.run_export(request)
    names = {p.name for p in out.iterdir()} - {".ai4all-staging"}
    assert names == {
        "embed.onnx",
        "embed.onnx.data",
        "blocks_0-1.onnx",
        "blocks_0-1.onnx.data",
        ".ai4all-export.json",
    }
    assert [p.name for p in out.rglob("*") if p.is_file() and ".tmp-" in p.name] == []
    assert not (out / ".ai4all-staging").exists() or not any((out / ".ai4all-staging").rglob("*.onnx*"))

    calls.clear()
    monkeypatch.setattr(external_data, "write_shard", real)
    manifest = pipeline.run_export(request)
    assert [s.file for s in manifest.shards if len(s.files) == 2] == [s.file for s in manifest.shards]
    LocalChain(out)  # every file verifies and loads


def test_a_rerun_verifies_the_weights_files_too(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    request = pipeline.ExportRequest(
        source.resolve(str(tiny_llama)), out, spans=SPANS, external_data_threshold=0
    )
    pipeline.run_export(request)
    path = out / "blocks_0-1.onnx.data"
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"blocks_0-1\.onnx\.data has sha256"):
        pipeline.run_export(request)


def test_below_the_threshold_a_shard_is_one_file(tiny_llama_export: Path) -> None:
    manifest = load_manifest(tiny_llama_export)
    assert all(len(s.files) == 1 for s in manifest.shards)
    assert not list(tiny_llama_export.glob("*.data"))


def test_quantized_shards_keep_their_weights_in_one_data_file(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    request = pipeline.ExportRequest(
        source.resolve(str(tiny_llama)), out, dtype="q8", spans=SPANS, external_data_threshold=0
    )
    manifest = pipeline.run_export(request)
    assert all(len(s.files) == 2 for s in manifest.shards)
    assert not (out / ".ai4all-staging").exists()
    assert manifest.quality is not None and manifest.quality
    LocalChain(out)


def test_the_cli_flag_sets_the_threshold(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = run_cli(
        ["export", str(tiny_llama), "--out", str(out), "--shards", "2", "--external-data-mb", "0", "--quiet"]
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.data")) == [
        "blocks_0-2.onnx.data",
        "blocks_2-4.onnx.data",
        "embed.onnx.data",
        "head.onnx.data",
    ]
    bad = run_cli(["export", str(tiny_llama), "--out", str(tmp_path / "x"), "--external-data-mb", "-1"])
    assert bad.returncode == 1 and "--external-data-mb -1.0 must be 0 or more" in bad.stderr


def test_a_signaling_node_serves_the_weights_files_it_lists(external_export: Path, copy_of: Path) -> None:
    """Browsers fetch every listed file from ``/models/<name>/``; a node refuses a partial copy of one."""
    from fastapi.testclient import TestClient

    from signaling.app import browser_site, create_app
    from signaling.errors import SiteError
    from signaling.node import NodeConfig, SignalingNode
    from signaling.web import ServedModel

    manifest = load_manifest(external_export)
    node = SignalingNode(NodeConfig(node_id="n", url="ws://127.0.0.1:9"))
    app = create_app(node, browser_site(node, [ServedModel.load(external_export)]))
    with TestClient(app) as client:
        for shard in manifest.shards:
            for item in shard.files:
                reply = client.get(f"/models/{manifest.name}/{item.file}")
                assert reply.status_code == 200, item.file
                assert reply.content == (external_export / item.file).read_bytes()
        assert client.get(f"/models/{manifest.name}/blocks_0-1.onnx.data.tmp-1").status_code == 404
    with (copy_of / "blocks_1-3.onnx.data").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SiteError, match=r"shard blocks_1-3\.onnx: blocks_1-3\.onnx\.data has \d+ bytes"):
        ServedModel.load(copy_of)


def test_a_peer_refuses_to_serve_a_span_whose_weights_were_altered(copy_of: Path, tmp_path: Path) -> None:
    """``ai4all peer`` checks its span's files before it announces anything: one line, exit status 1."""
    path = copy_of / "blocks_1-3.onnx.data"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    node = Node("sig", tmp_path)
    try:
        node.wait()
        args = ["peer", "--signal", node.url, "--model", str(copy_of), "--span", "1-3"]
        result = run_cli([*args, "--data-dir", str(tmp_path / "peer")], timeout=300)
    finally:
        node.stop()
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "blocks_1-3.onnx: weights file blocks_1-3.onnx.data has sha256" in last, result.stderr

"""Malformed manifests are refused with a message naming what is wrong; spans parse and validate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from python_peer.core.errors import ManifestError, SpanError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span, even_spans, parse_spans, validate_cover


@pytest.fixture
def raw(tiny_llama_export: Path) -> dict:
    return json.loads((tiny_llama_export / "manifest.json").read_text())


def test_manifest_describes_the_export(tiny_llama_export: Path) -> None:
    manifest = load_manifest(tiny_llama_export)
    assert manifest.raw["format_version"] == 2
    assert all(len(s.files) == 1 and s.files[0].file == s.file for s in manifest.shards)
    assert manifest.architecture == "llama" and manifest.dtype == "fp32" and manifest.quality is None
    assert [(s.kind, s.start, s.end) for s in manifest.shards] == [
        ("embed", 0, 0),
        ("blocks", 0, 1),
        ("blocks", 1, 3),
        ("blocks", 3, 4),
        ("head", 4, 4),
    ]
    names = [spec.name for spec in manifest.blocks[1].inputs]
    assert names == [
        "hidden_states",
        "attention_mask",
        "position_ids",
        "past_key_values.1.key",
        "past_key_values.1.value",
        "past_key_values.2.key",
        "past_key_values.2.value",
    ]
    assert [spec.name for spec in manifest.blocks[1].outputs] == [
        "hidden_states_out",
        "present.1.key",
        "present.1.value",
        "present.2.key",
        "present.2.value",
    ]
    assert [s.name for s in manifest.embed.inputs] == ["input_ids"]
    assert [s.name for s in manifest.head.outputs] == ["logits"]
    tok = manifest.tokenizer
    assert tok["file"] == "tokenizer.json" and tok["chat_template_file"] == "chat_template.jinja"
    assert tok["eos_token_ids"] == [2]
    for key in ("hidden_size", "num_layers", "num_key_value_heads", "head_dim", "vocab_size"):
        assert key in manifest.config


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m.update(dtype="int3"), "dtype 'int3'"),
        (lambda m: m["shards"][0].update(file="../../etc/passwd"), "plain file name"),
        (lambda m: m["shards"][0].update(sha256="abc"), "64 lowercase hex"),
        (lambda m: m["shards"][0].update(kind="tail"), "kind 'tail'"),
        (lambda m: m["shards"][1].update(bytes=-1), "positive integer"),
        (lambda m: m["shards"].pop(2), "covered by no span"),
        (lambda m: m["shards"].pop(0), "exactly one embed shard"),
        (lambda m: m["shards"][2].update(start=0), "overlaps"),
        (lambda m: m["shards"][1]["inputs"].append({"name": 3}), "string name"),
        (lambda m: m["model"].pop("config"), "'config' object"),
    ],
)
def test_malformed_manifest(raw: dict, mutate, needle: str) -> None:
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ManifestError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        Manifest.from_dict(bad)


def test_unreadable_manifest_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="JSON object"):
        load_manifest(tmp_path)


def test_spans() -> None:
    assert parse_spans("0-10, 10-20,20-30") == [Span(0, 10), Span(10, 20), Span(20, 30)]
    assert validate_cover([Span(2, 4), Span(0, 2)], 4) == [Span(0, 2), Span(2, 4)]
    assert even_spans(30, 4) == [Span(0, 8), Span(8, 16), Span(16, 23), Span(23, 30)]
    assert even_spans(3, 3) == [Span(0, 1), Span(1, 2), Span(2, 3)]
    for bad in ("", "a-b", "1-", "5-2", "1-2-3"):
        with pytest.raises(SpanError):
            parse_spans(bad)
    with pytest.raises(SpanError, match="at least 1"):
        even_spans(4, 0)

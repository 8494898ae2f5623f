"""The golden registry vectors (``tests/vectors/registry/``, written by ``generate_registry.py``): the files
on disk are what the generator writes, Python verifies them, and refuses the alterations the browser test
(``web/test/publication.test.js``) refuses too."""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path
from typing import Any

import pytest

from python_peer.core.errors import PublicationError
from python_peer.core.publication import Publication
from python_peer.core.registry_record import RegistryRecord, signed_sha256
from python_peer.identity import Identity, verify

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
REGISTRY = VECTORS / "registry"


def test_the_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    generator = runpy.run_path(str(VECTORS / "generate_registry.py"))
    generator["write"](tmp_path)
    for path in sorted(REGISTRY.iterdir()):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name}: regenerate the vectors"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in REGISTRY.iterdir())


def _signed() -> dict[str, Any]:
    return dict(json.loads((REGISTRY / "manifest.sig.json").read_text()))


def test_python_verifies_the_signed_manifest_and_its_record() -> None:
    publication = Publication.from_dict(_signed())
    publication.verify(verify)
    assert publication.publisher == json.loads((REGISTRY / "publisher.json").read_text())["publisher"]
    text = (REGISTRY / "manifest.json").read_bytes()
    assert (len(text), hashlib.sha256(text).hexdigest()) == (
        publication.manifest_bytes,
        publication.manifest_sha256,
    )
    for item in publication.files:
        data = (REGISTRY / item.file).read_bytes()
        for index in range(len(item.chunks)):
            offset, length = item.chunk_range(index)
            item.check_chunk(index, data[offset : offset + length])
    record = RegistryRecord.from_dict(json.loads((REGISTRY / "manifest.record.json").read_text()))
    record.verify(verify)
    record.check_publication(publication)
    assert record.signed_sha256 == signed_sha256(publication)


def test_python_refuses_what_the_browser_refuses() -> None:
    altered = _signed()
    altered["body"]["files"][0]["sha256"] = "0" * 64  # a hash changed after signing
    with pytest.raises(PublicationError, match="valid signature"):
        Publication.from_dict(altered).verify(verify)
    stranger = Identity.generate()
    resigned = _signed()
    resigned["sig"] = stranger.sign_body("ai4all/manifest/v1", resigned["body"])
    with pytest.raises(PublicationError, match="valid signature"):
        Publication.from_dict(resigned).verify(verify)
    publication = Publication.from_dict(_signed())
    shard = publication.file("blocks_0-2.onnx")
    data = bytearray((REGISTRY / "blocks_0-2.onnx").read_bytes())
    data[100] ^= 1
    with pytest.raises(PublicationError, match="sha256"):
        shard.check_chunk(0, bytes(data))
    with pytest.raises(PublicationError, match="bytes"):
        shard.check_chunk(0, bytes(data[:-1]))

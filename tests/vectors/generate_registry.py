"""Regenerate the golden registry vectors: ``python tests/vectors/generate_registry.py [--out DIR]``.

A tiny published model directory in ``registry/``: ``manifest.json`` (with a float, pinned by its bytes),
the files it names (a stand-in shard, ``tokenizer.json``, ``chat_template.jinja``), its signed manifest
``manifest.sig.json`` and its registry record ``manifest.record.json``, signed by a publisher whose key
comes from a fixed seed (Ed25519 signatures are deterministic, so the files are always the same bytes).
``publisher.json`` names the publisher. They are the contract between python_peer/core/publication.py and
registry_record.py and the browser's web/src/runtime/publication.js: ``tests/fast/test_registry_vectors.py``
and ``web/test/publication.test.js`` verify them and refuse the same alterations, and the Python test
checks the files on disk are what this script writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from python_peer.core.canonical import signing_bytes  # noqa: E402
from python_peer.core.publication import MANIFEST_CONTEXT, Publication, PublishedFile, chunk_hashes  # noqa: E402
from python_peer.core.registry_record import RegistryRecord  # noqa: E402
from python_peer.identity import Identity  # noqa: E402

OUT = Path(__file__).resolve().parent / "registry"
SEED = b"ai4all golden registry vector 01"  # 32 bytes
ISSUED_MS = 1_800_000_000_000
VERSION = 7
MODEL = "vectors/tiny-model"


def files() -> dict[str, bytes]:
    """The model's files but the manifest: a stand-in shard (data, as far as the registry knows), the
    tokenizer and the chat template."""
    shard = bytes((i * 31 + 7) % 256 for i in range(3000))
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}}}).encode()
    template = b"{% for m in messages %}{{ m.content }}{% endfor %}"
    return {"blocks_0-2.onnx": shard, "tokenizer.json": tokenizer, "chat_template.jinja": template}


def manifest_text(contents: dict[str, bytes]) -> bytes:
    shard = contents["blocks_0-2.onnx"]
    manifest = {
        "format": 2,
        "model": {"name": MODEL, "config": {"num_layers": 2, "hidden_size": 8}},
        "quality": {"max_abs_error": 0.125},
        "shards": [
            {
                "file": "blocks_0-2.onnx",
                "sha256": hashlib.sha256(shard).hexdigest(),
                "bytes": len(shard),
                "files": [
                    {
                        "file": "blocks_0-2.onnx",
                        "sha256": hashlib.sha256(shard).hexdigest(),
                        "bytes": len(shard),
                    }
                ],
                "kind": "blocks",
                "start": 0,
                "end": 2,
            }
        ],
        "tokenizer": {"file": "tokenizer.json", "chat_template_file": "chat_template.jinja"},
    }
    return (json.dumps(manifest, indent=1) + "\n").encode()


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    publisher = Identity.from_seed(SEED)
    contents = files()
    for name, data in contents.items():
        (out / name).write_bytes(data)
    text = manifest_text(contents)
    (out / "manifest.json").write_bytes(text)
    published = []
    for name in sorted(contents):
        sha, size, chunks = chunk_hashes(out / name)
        published.append(PublishedFile(name, size, sha, chunks))
    unsigned = Publication(
        publisher.peer_id, MODEL, VERSION, ISSUED_MS, len(text), hashlib.sha256(text).hexdigest(),
        tuple(published), "0" * 128,
    )  # fmt: skip
    sig = publisher.sign(signing_bytes(MANIFEST_CONTEXT, unsigned.body()))
    publication = Publication(**{**unsigned.__dict__, "sig": sig})
    (out / "manifest.sig.json").write_text(json.dumps(publication.to_dict(), indent=1) + "\n")
    record = RegistryRecord.sign_publication(publication, publisher.sign)
    (out / "manifest.record.json").write_text(json.dumps(record.to_dict(), indent=1) + "\n")
    (out / "publisher.json").write_text(json.dumps({"publisher": publisher.peer_id}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()

"""Regenerate the golden frames of the chunk protocol: ``python tests/vectors/generate_chunks.py``.

``tests/vectors/chunks/`` holds one frame per request and answer kind of docs/chunks.md and a refusal;
``index.json`` describes each (type, session, step, metadata, and each uint8 tensor's length and
sha256). ``tests/fast/test_chunks_vectors.py`` checks the files are what this writes and that the Python
parsers read them; ``web/test/chunks.test.js`` decodes them with the browser's codec. Fixed bytes, no
clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from python_peer.core.chunks import ChunkErrorCode
from python_peer.core.wire import Frame, FrameType, WireTensor, encode_frame, error_frame

OUT = Path(__file__).resolve().parent / "chunks"
SESSION = bytes(range(16))
PUBLISHER = "ab" * 32
DATA = bytes(i * 7 % 256 for i in range(1000))  # a short last chunk
SIGNED = b'{"body":{},"sig":""}'
MANIFEST = b'{"format_version": 1}'


def _bytes(name: str, data: bytes) -> WireTensor:
    return WireTensor(name, "uint8", (len(data),), data)


def vector_frames() -> dict[str, Frame]:
    chunk = {
        "kind": "chunk",
        "model": "tiny",
        "publisher": PUBLISHER,
        "version": 3,
        "file": "embed.onnx",
        "index": 2,
    }
    return {
        "manifest_request.bin": Frame(FrameType.CHUNK, SESSION, 0, meta={"kind": "manifest", "model": "tiny"}),
        "manifest_answer.bin": Frame(
            FrameType.CHUNK, SESSION, 0, meta={"kind": "manifest", "model": "tiny"},
            tensors=(_bytes("signed", SIGNED), _bytes("manifest", MANIFEST)),
        ),
        "have_request.bin": Frame(FrameType.CHUNK, SESSION, 0, meta={"kind": "have", "model": "tiny"}),
        "have_answer.bin": Frame(
            FrameType.CHUNK, SESSION, 0,
            meta={"kind": "have", "model": "tiny", "publisher": PUBLISHER, "version": 3,
                  "files": ["embed.onnx", "head.onnx"]},
        ),
        "chunk_request.bin": Frame(FrameType.CHUNK, SESSION, 0, meta=chunk),
        "chunk_answer.bin": Frame(
            FrameType.CHUNK, SESSION, 0, meta={"kind": "chunk", "file": "embed.onnx", "index": 2},
            tensors=(_bytes("data", DATA),),
        ),
        "not_seeded.bin": error_frame(
            SESSION, 0, ChunkErrorCode.NOT_SEEDED, "this node does not seed file embed.onnx of tiny"
        ),
    }  # fmt: skip


def describe(frame: Frame) -> dict[str, Any]:
    return {
        "type": frame.type.name,
        "session": frame.session.hex(),
        "step": frame.step,
        "meta": frame.meta,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "bytes": len(t.data),
                "sha256": hashlib.sha256(t.data).hexdigest(),
            }
            for t in frame.tensors
        ],
    }


def render() -> dict[str, bytes]:
    """Every file of ``chunks/`` by name, ``index.json`` included."""
    frames = vector_frames()
    files = {name: encode_frame(frame) for name, frame in frames.items()}
    index = {name: describe(frame) for name, frame in frames.items()}
    files["index.json"] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    return files


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, data in render().items():
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()

"""Regenerate the golden wire vectors: ``python tests/vectors/generate.py [--out DIR]``.

The bytes on disk are the contract between the Python codec (``python_peer/core/wire.py``) and the JS
mirror (``web/src/protocol/``): both test suites decode every file and compare it with ``index.json``.
Everything here is fixed (no clocks, no randomness), so running it twice gives identical files, and
``tests/test_wire.py`` checks that the files on disk are what this script writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from python_peer.core.wire import (
    NO_SESSION,
    ErrorCode,
    Frame,
    FrameFlags,
    FrameType,
    WireTensor,
    chunk_message,
    encode_frame,
    error_frame,
)

SESSION = bytes(range(16))
CHUNKED_MESSAGE = "forward_f32.bin"
CHUNK_MESSAGE_ID = 7
CHUNK_SIZE = 100


def vector_frames() -> dict[str, Frame]:
    """The frames, by file name; values are exact in their dtype so the description round-trips."""
    hidden32 = [(i - 12) / 8 for i in range(24)]
    return {
        "open.bin": Frame(
            FrameType.OPEN,
            SESSION,
            0,
            meta={"model": "SmolLM2-135M-Instruct", "start": 0, "end": 10, "max_length": 2048},
        ),
        "forward_f32.bin": Frame(
            FrameType.FORWARD,
            SESSION,
            0,
            FrameFlags.PREFILL,
            tensors=(WireTensor.from_values("hidden_states", "float32", (1, 3, 8), hidden32),),
        ),
        "forward_f16_pos.bin": Frame(
            FrameType.FORWARD,
            SESSION,
            2,
            FrameFlags.REPLAY,
            tensors=(
                WireTensor.from_values(
                    "hidden_states", "float16", (1, 2, 3), [0.5, -1.25, 2.0, 0.0, -0.0, 65504.0]
                ),
                WireTensor.from_values("position_ids", "int64", (1, 2), [4, 5]),
            ),
        ),
        "result.bin": Frame(
            FrameType.RESULT,
            SESSION,
            3,
            tensors=(
                WireTensor.from_values("hidden_states", "float32", (1, 1, 4), [1.5, -2.25, 3.0e-3, 1.0e30]),
            ),
        ),
        "error.bin": error_frame(
            SESSION, 3, ErrorCode.BAD_SHAPE, "hidden_states: expected [1, 1, 576] — got [1, 1, 575]"
        ),
        "ping.bin": Frame(FrameType.PING, NO_SESSION, 0, meta={"nonce": 12345}),
        "close.bin": Frame(FrameType.CLOSE, SESSION, 4),
        "gossip.bin": Frame(
            FrameType.GOSSIP, NO_SESSION, 0, meta={"heads": [{"author": "ab" * 8, "seq": 3}]}
        ),
    }


def describe(frame: Frame) -> dict[str, Any]:
    """The decoded content of a frame, in plain JSON a JS test can compare against."""
    return {
        "type": frame.type.name,
        "session": frame.session.hex(),
        "step": frame.step,
        "flags": [flag.name for flag in FrameFlags if flag in frame.flags],
        "meta": frame.meta,
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "values": list(t.values())}
            for t in frame.tensors
        ],
    }


def build() -> dict[str, bytes]:
    """Every file of the vector directory, by name, ``index.json`` included."""
    files: dict[str, bytes] = {}
    frames = []
    for name, frame in vector_frames().items():
        files[name] = encode_frame(frame)
        frames.append({"file": name, **describe(frame)})
    chunks = chunk_message(CHUNK_MESSAGE_ID, files[CHUNKED_MESSAGE], CHUNK_SIZE)
    chunk_files = [f"chunked.{i}.bin" for i in range(len(chunks))]
    files.update(zip(chunk_files, chunks, strict=True))
    index = {
        "version": 1,
        "frames": frames,
        "chunks": [
            {
                "files": chunk_files,
                "message_id": CHUNK_MESSAGE_ID,
                "chunk_size": CHUNK_SIZE,
                "message_file": CHUNKED_MESSAGE,
            }
        ],
    }
    text = json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    files["index.json"] = text.encode("utf-8")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (args.out / name).write_bytes(data)


if __name__ == "__main__":
    main()

"""The golden frames of the chunk protocol (``tests/vectors/chunks/``): on disk as the generator writes
them, decoded by the Python codec into what ``index.json`` says, and read by the protocol's parsers."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from python_peer.core.chunks import (
    ChunkKind,
    parse_chunk_answer,
    parse_have_answer,
    parse_manifest_answer,
    parse_request,
)
from python_peer.core.errors import MetadataError, RemoteError
from python_peer.core.wire import decode_frame, encode_frame, raise_for_error

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CHUNKS = VECTORS / "chunks"
INDEX = json.loads((CHUNKS / "index.json").read_text())


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_chunks", VECTORS / "generate_chunks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_files_on_disk_are_what_the_generator_writes() -> None:
    rendered = _generator().render()
    assert sorted(rendered) == sorted(p.name for p in CHUNKS.iterdir())
    for name, data in rendered.items():
        assert (CHUNKS / name).read_bytes() == data, f"{name} is stale: run tests/vectors/generate_chunks.py"


@pytest.mark.parametrize("name", sorted(INDEX))
def test_each_frame_decodes_to_its_description(name: str) -> None:
    frame = decode_frame((CHUNKS / name).read_bytes())
    expected = INDEX[name]
    assert frame.type.name == expected["type"] and frame.session.hex() == expected["session"]
    assert frame.meta == expected["meta"]
    got = [
        {"name": t.name, "dtype": t.dtype, "bytes": len(t.data), "sha256": hashlib.sha256(t.data).hexdigest()}
        for t in frame.tensors
    ]
    assert got == expected["tensors"]


def test_the_parsers_read_the_vectors_and_refuse_their_mix_ups() -> None:
    load = lambda name: decode_frame((CHUNKS / name).read_bytes())  # noqa: E731
    assert parse_request(load("manifest_request.bin")).kind is ChunkKind.MANIFEST
    request = parse_request(load("chunk_request.bin"))
    assert (request.file, request.index, request.version) == ("embed.onnx", 2, 3)
    signed, manifest = parse_manifest_answer(load("manifest_answer.bin"), "tiny")
    assert signed.startswith(b"{") and manifest.startswith(b"{")
    assert parse_have_answer(load("have_answer.bin"), "tiny").files == {"embed.onnx", "head.onnx"}
    assert len(parse_chunk_answer(load("chunk_answer.bin"), "embed.onnx", 2)) == 1000
    with pytest.raises(MetadataError, match="asked for chunk 3"):
        parse_chunk_answer(load("chunk_answer.bin"), "embed.onnx", 3)
    with pytest.raises(MetadataError):
        parse_manifest_answer(load("manifest_answer.bin"), "other")
    with pytest.raises(MetadataError):
        parse_request(load("chunk_answer.bin"))  # an answer is not a request
    with pytest.raises(RemoteError) as refused:
        raise_for_error(load("not_seeded.bin"))
    assert refused.value.code == "not_seeded"


def test_a_uint8_tensor_is_bytes_never_a_tensor_a_shard_takes() -> None:
    from python_peer.core.errors import TensorError
    from python_peer.core.wire import Frame, FrameType, WireTensor, check_finite
    from python_peer.tensors import expect

    data = bytes([0x7C, 0xFF] * 4)  # NaN bits if it were read as float16
    tensor = WireTensor("hidden_states", "uint8", (1, 2, 4), data)
    check_finite(tensor)  # bytes are never NaN
    assert tensor.values() == tuple(data)
    forward = Frame(FrameType.FORWARD, bytes(16), 0, tensors=(tensor,))
    with pytest.raises(TensorError, match="expected a float tensor"):
        expect(decode_frame(encode_frame(forward)), "hidden_states", "f", 3)


def test_a_have_answer_offers_only_the_file_names_that_fit_one_frame() -> None:
    from python_peer.core.chunks import have_answer, have_request

    names = [f"{i:04d}-" + "x" * 200 + ".onnx" for i in range(1024)]  # plain names, 200 KiB in all
    answer = decode_frame(encode_frame(have_answer(have_request("tiny"), "tiny", "ab" * 32, 1, names)))
    offered = parse_have_answer(answer, "tiny").files
    assert 0 < len(offered) < len(names) and offered == set(sorted(names)[: len(offered)])

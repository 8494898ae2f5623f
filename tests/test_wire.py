"""Tests of the wire format: golden vectors, every malformed input, fuzzing, chunking (the core's
stdlib-only rule is checked in ``test_layering.py``)."""

from __future__ import annotations

import contextlib
import json
import random
import struct
import subprocess
import sys
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_peer.core import wire
from python_peer.core.errors import (
    BadMagicError,
    ChunkError,
    DuplicateTensorError,
    FrameHeaderError,
    FrameLayoutError,
    LimitExceededError,
    MetadataError,
    NonFiniteError,
    RemoteError,
    TensorError,
    TruncatedFrameError,
    UnknownFlagsError,
    UnknownFrameTypeError,
    UnsupportedVersionError,
    WireError,
)
from python_peer.core.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_SAFE_INT,
    REMOTE_ERRORS,
    VERSION,
    ErrorCode,
    Frame,
    FrameFlags,
    FrameType,
    Reassembler,
    WireTensor,
    check_finite,
    chunk_message,
    decode_frame,
    encode_frame,
    error_frame,
    raise_for_error,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parent / "vectors"
INDEX: dict[str, Any] = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))
FRAME_ENTRIES: list[dict[str, Any]] = INDEX["frames"]
GOLDEN = {entry["file"]: (VECTORS / entry["file"]).read_bytes() for entry in FRAME_ENTRIES}
SESSION = bytes(range(16))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame_from_entry(entry: dict[str, Any]) -> Frame:
    """Build the frame an index entry describes, packing values with struct (not the codec)."""
    codes = {"float32": "f", "float16": "e", "int64": "q"}
    tensors = tuple(
        WireTensor(
            t["name"],
            t["dtype"],
            tuple(t["shape"]),
            struct.pack(f"<{len(t['values'])}{codes[t['dtype']]}", *t["values"]),
        )
        for t in entry["tensors"]
    )
    flags = reduce(lambda a, b: a | b, (FrameFlags[name] for name in entry["flags"]), FrameFlags(0))
    return Frame(
        FrameType[entry["type"]],
        bytes.fromhex(entry["session"]),
        entry["step"],
        flags,
        entry["meta"],
        tensors,
    )


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def raw_frame(
    meta: bytes | object = b"{}",
    section: bytes = b"",
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    ftype: int = FrameType.FORWARD,
    flags: int = 0,
    step: int = 0,
    meta_len: int | None = None,
    tensors_len: int | None = None,
    pad: bytes | None = None,
) -> bytes:
    """Hand-assemble a frame so each field can be wrong on its own."""
    meta_bytes = meta if isinstance(meta, bytes) else canonical(meta)
    if pad is None:
        pad = bytes(-(HEADER_SIZE + len(meta_bytes)) % 8)
    header = HEADER.pack(
        magic,
        version,
        ftype,
        flags,
        SESSION,
        step,
        len(meta_bytes) if meta_len is None else meta_len,
        len(section) if tensors_len is None else tensors_len,
    )
    return header + meta_bytes + pad + section


def desc(name: str, dtype: Any, shape: list[Any], offset: int, nbytes: int) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "offset": offset, "nbytes": nbytes}


def decodes_or_wire_error(data: bytes) -> Frame | None:
    """Decode; a WireError is an answer, anything else escapes and fails the test."""
    try:
        return decode_frame(data)
    except WireError:
        return None


# --- golden vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FRAME_ENTRIES, ids=[e["file"] for e in FRAME_ENTRIES])
def test_golden_frame_encodes_to_and_decodes_from_the_bytes_on_disk(entry: dict[str, Any]) -> None:
    frame = frame_from_entry(entry)
    assert encode_frame(frame) == GOLDEN[entry["file"]]
    assert decode_frame(GOLDEN[entry["file"]]) == frame


def test_golden_vectors_cover_every_required_case() -> None:
    kinds = {(e["type"], tuple(t["dtype"] for t in e["tensors"])) for e in FRAME_ENTRIES}
    assert ("OPEN", ()) in kinds
    assert ("FORWARD", ("float32",)) in kinds
    assert ("FORWARD", ("float16", "int64")) in kinds
    assert ("RESULT", ("float32",)) in kinds
    assert ("ERROR", ()) in kinds
    assert ("PING", ()) in kinds
    assert [len(c["files"]) for c in INDEX["chunks"]] == [3]


@pytest.mark.parametrize("entry", INDEX["chunks"])
def test_golden_chunks_match_and_reassemble(entry: dict[str, Any]) -> None:
    message = (VECTORS / entry["message_file"]).read_bytes()
    on_disk = [(VECTORS / name).read_bytes() for name in entry["files"]]
    assert chunk_message(entry["message_id"], message, entry["chunk_size"]) == on_disk
    assert all(len(chunk) <= entry["chunk_size"] for chunk in on_disk)
    reassembler = Reassembler()
    assert [reassembler.feed(chunk, 0.0) for chunk in on_disk] == [None, None, message]
    assert len(reassembler) == 0 and reassembler.buffered_bytes == 0


# Vectors in the same folder written by their own script, checked by their own test.
OTHER_GENERATORS = {
    "span_choice.json": "generate_span_choice.py (tests/fast/test_memory_budget.py)",
    "narrowing.json": "generate_narrowing.py (tests/fast/test_tensors.py)",
}


def test_vectors_on_disk_are_what_generate_writes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--out", str(tmp_path)], check=True, cwd=ROOT
    )
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    on_disk = {
        p.name: p.read_bytes()
        for p in VECTORS.iterdir()
        if p.suffix in (".bin", ".json") and p.name not in OTHER_GENERATORS
    }
    assert written == on_disk


def test_float16_vector_pads_between_tensors_and_aligns_the_section() -> None:
    frame = decode_frame(GOLDEN["forward_f16_pos.bin"])
    assert frame.flags == FrameFlags.REPLAY
    assert frame.tensor("position_ids").values() == (4, 5)
    data = GOLDEN["forward_f16_pos.bin"]
    tensors_len = HEADER.unpack_from(data)[-1]
    assert tensors_len == 12 + 4 + 16  # float16 hidden states, zero padding, int64 position ids
    assert (len(data) - tensors_len) % 8 == 0  # the tensor section starts 8-aligned


# --- malformed input: each case names its WireError subclass -----------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_truncation_is_truncated_frame_error(name: str) -> None:
    data = GOLDEN[name]
    for end in range(len(data)):
        with pytest.raises(TruncatedFrameError):
            decode_frame(data[:end])


def test_wrong_magic() -> None:
    with pytest.raises(BadMagicError):
        decode_frame(raw_frame(magic=b"A4AX"))
    with pytest.raises(BadMagicError):
        decode_frame(b"GET / HTTP/1.1\r\n" + bytes(40))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_frame(raw_frame(version=version))


@pytest.mark.parametrize("ftype", [0, 11, 255])
def test_unknown_frame_type(ftype: int) -> None:
    with pytest.raises(UnknownFrameTypeError):
        decode_frame(raw_frame(ftype=ftype))


@pytest.mark.parametrize("flags", [4, 0x8000, 0xFFFF])
def test_unknown_flags(flags: int) -> None:
    with pytest.raises(UnknownFlagsError):
        decode_frame(raw_frame(flags=flags))


def test_lengths_that_disagree() -> None:
    meta = {"tensors": [desc("x", "float32", [2], 0, 8)]}
    assert decode_frame(raw_frame(meta, bytes(8))).tensor("x").shape == (2,)
    with pytest.raises(FrameLayoutError, match="longer"):
        decode_frame(raw_frame(meta, bytes(8)) + b"\x00")
    with pytest.raises(FrameLayoutError, match="tensors end"):
        decode_frame(raw_frame(meta, bytes(16)))  # section longer than its tensors
    with pytest.raises(FrameLayoutError):
        decode_frame(raw_frame({"tensors": [desc("x", "float32", [2], 8, 8)]}, bytes(16)))  # gap at 0
    with pytest.raises(FrameLayoutError):
        decode_frame(raw_frame({"tensors": [desc("x", "float32", [2], 0, 8)]}, bytes(4), tensors_len=4))
    two = {"tensors": [desc("a", "float16", [1], 0, 2), desc("b", "float16", [1], 2, 2)]}  # b not aligned
    with pytest.raises(FrameLayoutError):
        decode_frame(raw_frame(two, bytes(4)))
    with pytest.raises(FrameLayoutError, match="padding"):
        decode_frame(raw_frame(b'{"a":1}', pad=b"\x01" + bytes(4)))
    aligned = {"tensors": [desc("a", "float16", [1], 0, 2), desc("b", "float16", [1], 8, 2)]}
    assert len(decode_frame(raw_frame(aligned, bytes(10))).tensors) == 2
    with pytest.raises(FrameLayoutError, match="padding"):
        decode_frame(raw_frame(aligned, bytes(3) + b"\x07" + bytes(6)))


def test_shape_times_itemsize_must_equal_byte_length() -> None:
    with pytest.raises(TensorError):
        decode_frame(raw_frame({"tensors": [desc("x", "float32", [2, 3], 0, 20)]}, bytes(20)))
    with pytest.raises(TensorError):
        WireTensor("x", "float16", (2, 3), bytes(11))


@pytest.mark.parametrize("shape", [[-1], [2, -3], [2**40, 0], [2**31, 0], [True], [1.0], ["2"], [None]])
def test_negative_huge_or_non_integer_dims(shape: list[Any]) -> None:
    with pytest.raises(TensorError):
        decode_frame(raw_frame({"tensors": [desc("x", "float32", shape, 0, 0)]}))


def test_unknown_dtype() -> None:
    for dtype in ("float64", "bfloat16", 4, ["float32"], None):
        with pytest.raises(TensorError):
            decode_frame(raw_frame({"tensors": [desc("x", dtype, [1], 0, 4)]}, bytes(4)))


def test_rank_over_the_limit() -> None:
    with pytest.raises(LimitExceededError):
        decode_frame(raw_frame({"tensors": [desc("x", "float32", [1] * 9, 0, 4)]}, bytes(4)))


def test_too_many_tensors() -> None:
    empty = [desc(f"t{i}", "float32", [0], 0, 0) for i in range(wire.MAX_TENSORS)]
    assert len(decode_frame(raw_frame({"tensors": empty})).tensors) == wire.MAX_TENSORS
    with pytest.raises(LimitExceededError):
        decode_frame(raw_frame({"tensors": [*empty, desc("extra", "float32", [0], 0, 0)]}))
    with pytest.raises(LimitExceededError):
        Frame(FrameType.RESULT, tensors=tuple(WireTensor(f"t{i}", "int64", (0,), b"") for i in range(17)))


def test_duplicate_tensor_names() -> None:
    with pytest.raises(DuplicateTensorError):
        decode_frame(
            raw_frame({"tensors": [desc("x", "int64", [1], 0, 8), desc("x", "int64", [1], 8, 8)]}, bytes(16))
        )
    with pytest.raises(DuplicateTensorError):
        Frame(
            FrameType.FORWARD,
            tensors=(WireTensor("x", "int64", (0,), b""), WireTensor("x", "int64", (0,), b"")),
        )


def test_oversized_frames() -> None:
    data = GOLDEN["forward_f32.bin"]
    assert decode_frame(data, max_frame_bytes=len(data)).step == 0
    with pytest.raises(LimitExceededError):
        decode_frame(data, max_frame_bytes=len(data) - 1)
    with pytest.raises(LimitExceededError):  # declared lengths over the bound, bytes not even sent
        decode_frame(raw_frame(tensors_len=wire.MAX_FRAME_BYTES))
    with pytest.raises(LimitExceededError):
        decode_frame(raw_frame(meta_len=wire.MAX_METADATA_BYTES + 1))
    big = Frame(FrameType.FORWARD, tensors=(WireTensor("x", "float32", (64,), bytes(256)),))
    with pytest.raises(LimitExceededError):
        encode_frame(big, max_frame_bytes=256)
    with pytest.raises(LimitExceededError):
        encode_frame(Frame(FrameType.GOSSIP, meta={"blob": "x" * wire.MAX_METADATA_BYTES}))


@pytest.mark.parametrize(
    "meta",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"a":',  # not JSON
        b"[1,2]",  # not an object
        b'"text"',
        b'{"b":1,"a":2}',  # keys not sorted
        b'{"a": 1}',  # whitespace
        b'{"a":"\\u00e9"}',  # escaped non-ASCII
        b'{"a":1,"a":1}',  # duplicate key
        b'{"a":1.5}',  # floats are refused
        b'{"a":1e3}',
        b'{"a":NaN}',
        b'{"a":-0}',
        b'{"a":9007199254740992}',  # 2**53
        b'{"a":' + b"9" * 5000 + b"}",  # over Python's int digit limit
        b'{"a":"\\ud800"}',  # lone surrogate
        b'{"\xc3\xa9":1}',  # non-ASCII key
        b'{"a":' + b"[" * 20 + b"]" * 20 + b"}",  # deeper than MAX_META_DEPTH
        b"[" * 30000 + b"]" * 30000,  # deeper than the recursion limit
        b'{"tensors":[]}',  # empty tensor list is written as no key
        b'{"tensors":null}',
        b'{"tensors":[{"dtype":"int64","extra":1,"name":"x","nbytes":0,"offset":0,"shape":[0]}]}',
        b'{"tensors":[{"dtype":"int64","name":"","nbytes":0,"offset":0,"shape":[0]}]}',
        b'{"tensors":[{"dtype":"int64","name":7,"nbytes":0,"offset":0,"shape":[0]}]}',
        b'{"tensors":[{"dtype":"int64","name":"x","nbytes":0,"offset":0,"shape":0}]}',
        b'{"tensors":[{"dtype":"int64","name":"x","nbytes":0,"offset":true,"shape":[0]}]}',
    ],
)
def test_bad_metadata(meta: bytes) -> None:
    with pytest.raises(MetadataError):
        decode_frame(raw_frame(meta))


def test_error_frames_need_code_and_message() -> None:
    for meta in ({}, {"code": "internal"}, {"code": 5, "message": "x"}, {"code": "x", "message": "é" * 600}):
        with pytest.raises(MetadataError):
            decode_frame(raw_frame(meta, ftype=FrameType.ERROR))


def test_invalid_frames_are_refused_when_built() -> None:
    with pytest.raises(MetadataError):
        Frame(FrameType.OPEN, meta={"temperature": 0.7})
    with pytest.raises(MetadataError):
        Frame(FrameType.OPEN, meta={"tensors": 1})
    with pytest.raises(MetadataError):
        Frame(FrameType.OPEN, meta={"a": (1, 2)})
    with pytest.raises(MetadataError):
        Frame(FrameType.OPEN, meta={"a": 2**53})
    with pytest.raises(MetadataError):
        encode_frame(Frame(FrameType.OPEN, meta={"a": "\ud800"}))
    with pytest.raises(FrameHeaderError):
        Frame(FrameType.OPEN, session=b"short")
    with pytest.raises(FrameHeaderError):
        Frame(FrameType.OPEN, step=2**32)
    with pytest.raises(UnknownFrameTypeError):
        Frame(99)  # type: ignore[arg-type]
    with pytest.raises(UnknownFlagsError):
        Frame(FrameType.FORWARD, flags=8)  # type: ignore[arg-type]
    with pytest.raises(MetadataError):
        WireTensor("", "float32", (0,), b"")
    with pytest.raises(MetadataError):
        WireTensor("n" * 65, "float32", (0,), b"")
    with pytest.raises(TensorError):
        WireTensor.from_values("x", "float16", (1,), [1e6])
    with pytest.raises(MetadataError):
        decode_frame(GOLDEN["forward_f32.bin"]).tensor("attention_mask")


# --- NaN / Inf ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_finds_the_first_bad_element(dtype: str, bad: float) -> None:
    values = [0.5, -2.0, 0.0, 1.0]
    check_finite(WireTensor.from_values("x", dtype, (4,), values))
    values[2] = bad
    with pytest.raises(NonFiniteError, match="flat index 2"):
        check_finite(WireTensor.from_values("x", dtype, (4,), values))


def test_check_finite_on_large_and_extreme_tensors() -> None:
    n = 70_000  # more than one float16 block
    check_finite(WireTensor.from_values("x", "float16", (n,), [65504.0] * n))
    check_finite(WireTensor.from_values("x", "float32", (n,), [3.4e38] * n))
    check_finite(WireTensor.from_values("ids", "int64", (2,), [-1, 2**63 - 1]))
    values = [1.0] * n
    values[-1] = float("inf")
    with pytest.raises(NonFiniteError, match=f"flat index {n - 1}"):
        check_finite(WireTensor.from_values("x", "float16", (n,), values))
    assert NonFiniteError.code == ErrorCode.NON_FINITE


# --- error frames -------------------------------------------------------------------------------------


def test_every_error_code_maps_to_its_remote_error() -> None:
    assert set(REMOTE_ERRORS) == set(ErrorCode)
    for code in ErrorCode:
        frame = decode_frame(encode_frame(error_frame(SESSION, 4, code, "why")))
        with pytest.raises(REMOTE_ERRORS[code]) as info:
            raise_for_error(frame)
        assert info.value.code == code == REMOTE_ERRORS[code].code
        assert isinstance(info.value, RemoteError) and "why" in str(info.value)
    for exc in (WireError, TensorError, NonFiniteError, ChunkError, MetadataError):
        assert exc.code in set(ErrorCode)


def test_unknown_error_code_raises_the_base_remote_error() -> None:
    with pytest.raises(RemoteError) as info:
        raise_for_error(error_frame(SESSION, 0, "from_the_future", "newer peer"))
    assert type(info.value) is RemoteError and info.value.code == "from_the_future"


def test_non_error_frames_pass_raise_for_error() -> None:
    raise_for_error(decode_frame(GOLDEN["result.bin"]))


def test_error_messages_are_capped_on_a_character_boundary() -> None:
    frame = error_frame(SESSION, 0, ErrorCode.INTERNAL, "é" * 5000)
    message = frame.meta["message"]
    assert len(message.encode("utf-8")) <= MAX_ERROR_MESSAGE_BYTES and set(message) == {"é"}
    assert decode_frame(encode_frame(frame)) == frame
    assert error_frame(SESSION, 0, "internal", "bad \ud800 surrogate").meta["message"] == "bad ? surrogate"


# --- chunking -----------------------------------------------------------------------------------------


def test_chunks_respect_their_size_and_an_empty_message_is_one_chunk() -> None:
    data = bytes(range(256)) * 300
    chunks = chunk_message(1, data)
    assert all(len(c) <= wire.DEFAULT_CHUNK_SIZE for c in chunks) and len(chunks) == 5
    assert chunk_message(2, b"") == [wire.CHUNK_HEADER.pack(wire.CHUNK_MAGIC, 2, 0, 1)]
    assert Reassembler().feed(chunk_message(2, b"")[0], 0.0) == b""
    with pytest.raises(ValueError):
        chunk_message(-1, data)
    with pytest.raises(ValueError):
        chunk_message(1, data, chunk_size=wire.CHUNK_HEADER_SIZE)
    with pytest.raises(LimitExceededError):
        chunk_message(1, bytes(wire.MAX_CHUNKS + 1), chunk_size=wire.CHUNK_HEADER_SIZE + 1)


def chunk(mid: int, index: int, count: int, payload: bytes = b"x") -> bytes:
    return wire.CHUNK_HEADER.pack(wire.CHUNK_MAGIC, mid, index, count) + payload


def test_malformed_chunks() -> None:
    r = Reassembler()
    for bad in (b"A4AC", b"XXXX" + bytes(8) + b"x", chunk(1, 0, 0), chunk(1, 2, 2), chunk(1, 0, 2, b"")):
        with pytest.raises(ChunkError):
            r.feed(bad, 0.0)
    assert len(r) == 0


def test_inconsistent_chunks_drop_only_their_message() -> None:
    r = Reassembler()
    assert r.feed(chunk(1, 0, 3), 0.0) is None
    assert r.feed(chunk(2, 0, 2, b"a"), 0.0) is None
    with pytest.raises(ChunkError, match="twice"):
        r.feed(chunk(1, 0, 3), 0.0)
    assert len(r) == 1  # message 1 dropped, message 2 untouched
    assert r.feed(chunk(1, 1, 3), 0.0) is None  # starts over as a new partial message
    with pytest.raises(ChunkError, match="earlier 3"):
        r.feed(chunk(1, 0, 4), 0.0)
    with pytest.raises(ChunkError, match="earlier 2"):
        r.feed(chunk(2, 0, 1), 0.0)
    assert len(r) == 0 and r.buffered_bytes == 0


def test_reassembler_bounds() -> None:
    r = Reassembler(max_partial=2, max_message_bytes=4, max_buffered_bytes=6)
    r.feed(chunk(1, 0, 9), 0.0)
    r.feed(chunk(2, 0, 9), 0.0)
    with pytest.raises(LimitExceededError):
        r.feed(chunk(3, 0, 9), 0.0)
    assert len(r) == 2
    with pytest.raises(LimitExceededError):
        r.feed(chunk(1, 1, 9, b"abcd"), 0.0)  # message 1 would be 5 bytes
    assert len(r) == 1
    r.feed(chunk(4, 0, 9, b"abcd"), 0.0)
    with pytest.raises(LimitExceededError):
        r.feed(chunk(2, 1, 9, b"ab"), 0.0)  # 1 + 4 + 2 buffered > 6
    with pytest.raises(LimitExceededError):
        r.feed(chunk(5, 0, 1, b"abcde"), 0.0)
    assert r.buffered_bytes == 4


def test_expire_drops_only_old_partial_messages() -> None:
    r = Reassembler(timeout_s=10.0)
    r.feed(chunk(1, 0, 2), 100.0)
    r.feed(chunk(2, 0, 2), 105.0)
    assert r.expire(110.0) == []
    assert r.expire(112.0) == [1]
    assert len(r) == 1 and r.buffered_bytes == 1
    assert r.feed(chunk(2, 1, 2, b"y"), 113.0) == b"xy"


# --- fuzzing ------------------------------------------------------------------------------------------

_KEYS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8).filter(
    lambda k: k != "tensors"
)
_SCALARS = st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.text(max_size=12)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def tensors(draw: st.DrawFn) -> WireTensor:
    dtype = draw(st.sampled_from(sorted(wire.DTYPE_SIZES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    size = wire.DTYPE_SIZES[dtype] * reduce(lambda a, b: a * b, shape, 1)
    return WireTensor("t", dtype, shape, draw(st.binary(min_size=size, max_size=size)))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    ftype = draw(st.sampled_from(list(FrameType)))
    meta = draw(st.dictionaries(_KEYS, _JSON, max_size=4))
    if ftype is FrameType.ERROR:
        meta |= {"code": draw(st.sampled_from(list(ErrorCode))).value, "message": draw(st.text(max_size=40))}
    names = draw(
        st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=8), unique=True, max_size=4)
    )
    return Frame(
        ftype,
        draw(st.binary(min_size=16, max_size=16)),
        draw(st.integers(0, wire.MAX_STEP)),
        FrameFlags(draw(st.integers(0, 3))),
        meta,
        tuple(
            WireTensor(name, t.dtype, t.shape, t.data)
            for name, t in zip(
                names, draw(st.lists(tensors(), min_size=len(names), max_size=len(names))), strict=True
            )
        ),
    )


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_raise_only_wire_errors(data: bytes) -> None:
    decodes_or_wire_error(data)


@FUZZ
@given(st.integers(1, 8), st.integers(0, 3), st.binary(max_size=64), st.binary(max_size=256))
def test_fuzz_random_frames_behind_a_valid_header_prefix(
    ftype: int, flags: int, fields: bytes, rest: bytes
) -> None:
    decodes_or_wire_error(MAGIC + bytes([VERSION, ftype]) + flags.to_bytes(2, "little") + fields + rest)
    meta_len = len(rest) // 2
    decodes_or_wire_error(raw_frame(rest[:meta_len], rest[meta_len:], ftype=ftype, flags=flags, pad=b""))


@FUZZ
@given(frames())
def test_fuzz_valid_frames_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert encode_frame(decode_frame(data)) == data


@FUZZ
@given(st.sampled_from(sorted(GOLDEN)), st.integers(0, 2**16), st.integers(0, 255), st.integers(0, 2**16))
def test_fuzz_mutated_and_truncated_vectors(name: str, position: int, value: int, keep: int) -> None:
    data = bytearray(GOLDEN[name])
    data[position % len(data)] = value
    for candidate in (bytes(data), bytes(data[: keep % (len(data) + 1)])):
        frame = decodes_or_wire_error(candidate)
        if frame is not None:  # a mutation that still decodes is a valid frame in its one encoding
            assert encode_frame(frame) == candidate


@FUZZ
@given(
    st.binary(max_size=3000), st.integers(wire.CHUNK_HEADER_SIZE + 1, 400), st.randoms(use_true_random=False)
)
def test_fuzz_chunks_reassemble_in_any_order(data: bytes, chunk_size: int, rng: random.Random) -> None:
    chunks = chunk_message(123, data, chunk_size)
    other = chunk_message(124, data[::-1], chunk_size)
    assert all(len(c) <= chunk_size for c in chunks)
    mixed = chunks + other
    rng.shuffle(mixed)
    r = Reassembler()
    done = [m for m in (r.feed(c, 0.0) for c in mixed) if m is not None]
    assert sorted(done) == sorted([data, data[::-1]])
    assert len(r) == 0 and r.buffered_bytes == 0


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_fuzz_random_chunks_raise_only_wire_errors(garbage: list[bytes]) -> None:
    r = Reassembler(max_partial=4, max_message_bytes=64, max_buffered_bytes=128)
    for blob in garbage:
        for data in (blob, wire.CHUNK_MAGIC + blob):
            with contextlib.suppress(WireError):
                r.feed(data, 0.0)
        assert len(r) <= 4 and r.buffered_bytes <= 128

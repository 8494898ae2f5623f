"""The JS wire codec (``web/src/protocol/wire.js``) in Chromium against the Python one, byte for byte.

Every golden vector decodes to what ``tests/vectors/index.json`` describes and encodes back to the same
bytes; every truncation and byte mutation of the vectors, and a set of hand-made frames aimed at each
check and at the order of checks, is refused with the error class Python's ``decode_frame`` raises for
the same bytes (Python's answer is computed here, not written down); random valid frames encode to
Python's exact bytes; the Reassembler, ``check_finite``, ERROR frames and float16 conversions agree too.
Cases are sent to the page in batches, so the module runs in seconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from python_peer.core import errors as core_errors
from python_peer.core import wire
from python_peer.core.errors import WireError
from python_peer.core.wire import (
    HEADER,
    MAGIC,
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
from tests.support.browser import Harness, launch_config, script
from tests.support.static_server import WebServer, resolve_url_path

pytestmark = pytest.mark.browser

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
INDEX: dict[str, Any] = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))
FRAME_ENTRIES: list[dict[str, Any]] = INDEX["frames"]
CHUNK_ENTRIES: list[dict[str, Any]] = INDEX["chunks"]
GOLDEN: dict[str, bytes] = {entry["file"]: (VECTORS / entry["file"]).read_bytes() for entry in FRAME_ENTRIES}
SESSION = bytes(range(16))

# Installed once per page: the codec as `T.wire`, plus base64/hex helpers and a frame description in
# the shape of index.json.
SETUP_JS = script("wire_vectors/setup")

DECODE_BATCH_JS = "([cases, max]) => cases.map((b64) => T.decodeOutcome(b64, max))"

ENCODE_BATCH_JS = script("wire_vectors/encode_batch")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def py_decode_outcome(data: bytes, max_frame_bytes: int | None = None) -> str:
    """Python's answer for some bytes: the WireError class name, or OK (and then it re-encodes)."""
    try:
        if max_frame_bytes is None:
            frame = decode_frame(data)
        else:
            frame = decode_frame(data, max_frame_bytes=max_frame_bytes)
    except WireError as exc:
        return type(exc).__name__
    return "OK" if encode_frame(frame) == data else "OK but re-encodes differently"


def js_cannot_hold(data: bytes) -> bool:
    """Whether a frame's metadata holds a number ``JSON.parse`` cannot hold exactly: a float, or an integer
    past ±(2**53 - 1). No valid frame holds one. Python's json reads them exactly and refuses them only
    after the tensor checks; the JS codec (JSON.parse, not a copy of CPython's parser) refuses them as it
    reads the metadata, so both refuse the frame but JS may name MetadataError where Python, finding a
    second fault first, names another error."""
    if len(data) < wire.HEADER_SIZE:
        return False
    meta_len = HEADER.unpack_from(data)[6]
    found = False

    def parse_float(text: str) -> float:
        nonlocal found
        found = True
        return float(text)

    def parse_int(text: str) -> int:
        nonlocal found
        found = found or abs(int(text)) > wire.MAX_SAFE_INT
        return int(text)

    with contextlib.suppress(ValueError, RecursionError):  # the decoders refuse what json cannot read
        json.loads(
            data[wire.HEADER_SIZE : wire.HEADER_SIZE + meta_len], parse_float=parse_float, parse_int=parse_int
        )
    return found


def compare_decoding(
    harness: Harness, cases: list[tuple[str, bytes]], max_frame_bytes: int | None = None
) -> dict[str, int]:
    """Decode every case in both codecs; fail listing the cases where the answers differ (a frame holding
    a number JSON.parse cannot hold may be refused with MetadataError in JS: see js_cannot_hold)."""
    js_answers: list[str] = harness.page.evaluate(
        DECODE_BATCH_JS, [[b64(d) for _, d in cases], max_frame_bytes]
    )
    mismatches = []
    tally: dict[str, int] = {}
    for (label, data), js_answer in zip(cases, js_answers, strict=True):
        py_answer = py_decode_outcome(data, max_frame_bytes)
        tally[py_answer] = tally.get(py_answer, 0) + 1
        relaxed = js_answer == "MetadataError" and py_answer.endswith("Error") and js_cannot_hold(data)
        if js_answer != py_answer and not relaxed:
            mismatches.append(f"{label}: Python {py_answer}, JS {js_answer} ({data[:120]!r})")
    assert not mismatches, f"{len(mismatches)} of {len(cases)} cases differ:\n" + "\n".join(mismatches[:20])
    return tally


def raw_frame(
    meta: bytes | str,
    section: bytes = b"",
    *,
    ftype: int = FrameType.FORWARD,
    flags: int = 0,
    step: int = 0,
    magic: bytes = MAGIC,
    version: int = VERSION,
    meta_len: int | None = None,
    tensors_len: int | None = None,
    pad: bytes | None = None,
) -> bytes:
    """Hand-assemble a frame, each field free to be wrong on its own."""
    meta_bytes = meta.encode("utf-8") if isinstance(meta, str) else meta
    if pad is None:
        pad = bytes(-(wire.HEADER_SIZE + len(meta_bytes)) % 8)
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


def desc(name: Any, dtype: Any, shape: Any, offset: Any, nbytes: Any) -> str:
    """One tensor descriptor as JSON text, any field free to hold any JSON value (floats included)."""
    fields = {"dtype": dtype, "name": name, "nbytes": nbytes, "offset": offset, "shape": shape}
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


# A descriptor the decoder refuses with TensorError: placed next to a metadata value that Python only
# refuses after the tensor checks, it shows whether that value passed the canonical JSON check.
BAD_DESC = '{"dtype":"float99","name":"x","nbytes":0,"offset":0,"shape":[]}'


def with_bad_tensor(key: str, value_text: str) -> str:
    """Metadata text with ``key`` (sorting before "tensors") set to raw JSON ``value_text``."""
    assert key < "tensors"
    return '{"' + key + '":' + value_text + ',"tensors":[' + BAD_DESC + "]}"


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire_page(harness: Harness) -> Harness:
    exports = harness.page.evaluate(SETUP_JS)
    assert exports > 40
    return harness


@pytest.fixture(autouse=True)
def no_page_errors(wire_page: Harness) -> Iterator[None]:
    yield
    assert wire_page.take_errors() == []


# --- serving and constants --------------------------------------------------------------------------


def test_page_is_cross_origin_isolated_and_files_have_their_mime_types(
    wire_page: Harness, web_server: WebServer
) -> None:
    wasm = next((Path(__file__).parents[2] / "web/node_modules/onnxruntime-web/dist").glob("*.wasm"), None)
    paths = ["/web/src/protocol/wire.js", "/tests/vectors/index.json", "/tests/vectors/open.bin"]
    if wasm is not None:
        paths += [
            f"/web/node_modules/onnxruntime-web/dist/{wasm.name}",
            "/web/node_modules/onnxruntime-web/dist/ort.min.mjs",
        ]
    result = wire_page.page.evaluate(
        script("wire_vectors/isolation_and_mime"),
        paths,
    )
    assert result["isolated"] is True
    expected = ["text/javascript; charset=utf-8", "application/json", "application/octet-stream"]
    expected += ["application/wasm", "text/javascript; charset=utf-8"][: len(paths) - 3]
    assert [t[1] for t in result["types"]] == expected
    assert all(status == 200 and coep == "require-corp" for status, _, coep in result["types"])
    assert (result["missing"], result["directory"]) == (404, 404)
    errors = wire_page.take_errors()
    assert len(errors) == 2 and all("404 (Not Found)" in error for error in errors), errors
    assert {path for path, status in web_server.requests if status == 404} == {
        "/web/no-such-file.js",
        "/web/src/protocol/",
    }


def test_the_browser_is_the_configured_chromium(wire_page: Harness) -> None:
    binary = launch_config.find_chromium()
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    browser = wire_page.context.browser
    assert browser is not None and browser.version in version, (browser and browser.version, version)
    assert "HeadlessChrome" in wire_page.page.evaluate("() => navigator.userAgent")


def test_resolve_url_path_stays_inside_the_mounts() -> None:

    assert resolve_url_path("/tests/vectors/open.bin?x=1") == VECTORS / "open.bin"
    for path in (
        "/web/../pyproject.toml",
        "/web/%2e%2e/pyproject.toml",
        "/tests/vectors/",
        "/python_peer/core/wire.py",
        "/web//src/protocol/wire.js",
        "/web/src/protocol/..%2Fwire.js",
    ):
        assert resolve_url_path(path) is None, path


def test_constants_and_error_classes_mirror_python(wire_page: Harness) -> None:
    js = wire_page.page.evaluate(
        script("wire_vectors/constants"),
        [name for name in dir(core_errors) if isinstance(getattr(core_errors, name), type)],
    )
    consts = js["consts"]
    for name in ("VERSION", "HEADER_SIZE", "SESSION_ID_BYTES", "ALIGN", "MAX_FRAME_BYTES", "MAX_METADATA_BYTES",
                 "MAX_TENSORS", "MAX_RANK", "MAX_DIM", "MAX_NAME_BYTES", "MAX_META_DEPTH", "MAX_SAFE_INT",
                 "MAX_ERROR_MESSAGE_BYTES", "MAX_STEP", "CHUNK_HEADER_SIZE", "DEFAULT_CHUNK_SIZE", "MAX_CHUNKS",
                 "MAX_MESSAGE_ID", "DTYPE_SIZES"):  # fmt: skip
        assert consts[name] == getattr(wire, name), name
    assert consts["MAGIC"] == MAGIC.decode() and consts["CHUNK_MAGIC"] == wire.CHUNK_MAGIC.decode()
    assert js["noSession"] == wire.NO_SESSION.hex()
    assert consts["FrameType"] == {t.name: int(t) for t in FrameType}
    assert consts["FrameFlags"] == {f.name: int(f) for f in FrameFlags}
    assert consts["ALL_FLAGS"] == int(FrameFlags.PREFILL | FrameFlags.REPLAY) and consts["NO_FLAGS"] == 0
    assert consts["ErrorCode"] == {c.name: c.value for c in ErrorCode}
    assert js["remote"] == {str(code): cls.__name__ for code, cls in wire.REMOTE_ERRORS.items()}
    wire_classes = [
        cls
        for cls in vars(core_errors).values()
        if isinstance(cls, type) and issubclass(cls, WireError | core_errors.RemoteError)
    ]
    assert len(wire_classes) == 25
    for cls in wire_classes:
        assert cls.__name__ in js["classes"], f"wire.js has no {cls.__name__}"
        assert js["classes"][cls.__name__] == {"parent": cls.__bases__[0].__name__, "code": cls.code}, cls


# --- golden vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FRAME_ENTRIES, ids=[e["file"] for e in FRAME_ENTRIES])
def test_golden_frame_decodes_and_encodes_to_the_bytes_on_disk(
    wire_page: Harness, entry: dict[str, Any]
) -> None:
    result = wire_page.page.evaluate(
        script("wire_vectors/golden_frame"),
        entry,
    )
    expected = {k: v for k, v in entry.items() if k != "file"}
    assert result["described"] == expected
    for js_tensor, tensor in zip(result["described"]["tensors"], entry["tensors"], strict=True):
        signs = [math.copysign(1, v) for v in tensor["values"]]
        assert [math.copysign(1, v) for v in js_tensor["values"]] == signs  # -0.0 stays -0.0
    assert base64.b64decode(result["reencoded"]) == GOLDEN[entry["file"]]
    assert base64.b64decode(result["built"]) == GOLDEN[entry["file"]]
    wire_page.note(
        f"{entry['file']}: decodes to index.json, encodes to the same {len(GOLDEN[entry['file']])} bytes"
    )


@pytest.mark.parametrize("entry", CHUNK_ENTRIES, ids=[e["message_file"] for e in CHUNK_ENTRIES])
def test_golden_chunks_are_cut_and_joined_like_python(wire_page: Harness, entry: dict[str, Any]) -> None:
    result = wire_page.page.evaluate(
        script("wire_vectors/golden_chunks"),
        entry,
    )
    assert result["cut"] == result["files"]
    assert result["cut"] == [
        b64(c) for c in chunk_message(entry["message_id"], GOLDEN[entry["message_file"]], entry["chunk_size"])
    ]
    for joined in result["joined"]:
        assert joined == {"pending": True, "message": result["message"], "left": 0}


# --- malformed input: the same error class as Python --------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_truncated_and_mutated_vectors_fail_as_in_python(wire_page: Harness, name: str) -> None:
    data = GOLDEN[name]
    cases = [(f"first {n} bytes", data[:n]) for n in range(len(data))]
    cases += [("one zero byte more", data + b"\0"), ("one byte more", data + b"\x01")]
    for i in range(len(data)):
        for bit in (0x01, 0x20, 0x80, 0xFF):
            mutated = bytearray(data)
            mutated[i] ^= bit
            cases.append((f"byte {i} ^ {bit:#04x}", bytes(mutated)))
    tally = compare_decoding(wire_page, cases)
    wire_page.note(f"{name}: {len(cases)} truncations and mutations fail alike {sorted(tally.items())}")


def crafted_frames() -> list[tuple[str, bytes]]:
    """Frames aimed at each check of the decoder, and at the order in which Python makes them."""
    f32 = GOLDEN["forward_f32.bin"]
    cases: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("header only, one byte short", f32[:35]),
        ("bad magic", raw_frame("{}", magic=b"A4AG")),
        ("version 0", raw_frame("{}", version=0)),
        ("version 2", raw_frame("{}", version=2)),
        ("type 0", raw_frame("{}", ftype=0)),
        ("type 9", raw_frame("{}", ftype=9)),
        ("type 255", raw_frame("{}", ftype=255)),
        ("flags 4", raw_frame("{}", flags=4)),
        ("flags 0x8000", raw_frame("{}", flags=0x8000)),
        ("flags 3", raw_frame("{}", flags=3)),
        ("metadata length 65537", raw_frame("{}", meta_len=wire.MAX_METADATA_BYTES + 1)),
        ("metadata length 2**32-1", raw_frame("{}", meta_len=2**32 - 1)),
        ("declared tensors over the frame limit", raw_frame("{}", tensors_len=wire.MAX_FRAME_BYTES)),
        ("declared tensors 2**32-1", raw_frame("{}", tensors_len=2**32 - 1)),
        ("declared more tensor bytes than sent", raw_frame("{}", tensors_len=8)),
        ("trailing bytes", raw_frame("{}") + b"\0" * 8),
        ("non-zero padding", raw_frame("{}", pad=b"\0\0\0\x01")),
        ("padding too short", raw_frame("{}", pad=b"\0\0\0")),
        ("ERROR with tensors is fine", raw_frame('{"code":"x","message":"y","tensors":[' + desc("t", "int64", [1], 0, 8) + "]}", bytes(8), ftype=FrameType.ERROR)),
    ]  # fmt: skip
    metas: list[tuple[str, bytes | str]] = [
        ("empty metadata", b""),
        ("empty object", "{}"),
        ("top-level array", "[]"),
        ("top-level string", '"x"'),
        ("top-level number", "1"),
        ("top-level null", "null"),
        ("leading space", " {}"),
        ("trailing space", "{} "),
        ("space after colon", '{"a": 1}'),
        ("newline inside", '{"a":1\n}'),
        ("trailing comma", '{"a":1,}'),
        ("trailing comma in list", '{"a":[1,]}'),
        ("single quotes", "{'a':1}"),
        ("bad literal", '{"a":tru}'),
        ("literals", '{"a":true,"b":false,"c":null}'),
        ("duplicate key", '{"a":1,"a":1}'),
        ("unsorted keys", '{"b":1,"a":2}'),
        ("upper case sorts first", '{"B":1,"a":2}'),
        ("upper case after lower", '{"a":2,"B":1}'),
        ("empty key first", '{"":1,"a":2}'),
        ("'10' before '9'", '{"10":1,"9":2}'),
        ("'9' before '10'", '{"9":2,"10":1}'),
        ("escaped key", '{"\\u0061":1}'),
        ("__proto__ key", '{"__proto__":{"x":1}}'),
        ("constructor key", '{"constructor":1,"toString":2}'),
        ("DEL key is ASCII", '{"\x7f":1}'),
        ("NUL key is ASCII", '{"\\u0000":1}'),
        ("non-ASCII key", '{"é":1}'),
        ("BOM before the object", b"\xef\xbb\xbf{}"),
        ("not UTF-8", b'{"a":"\xff"}'),
        ("overlong UTF-8", b'{"a":"\xc0\xaf"}'),
        ("UTF-8 encoded surrogate", b'{"a":"\xed\xa0\x80"}'),
        ("UTF-8 past U+10FFFF", b'{"a":"\xf4\x90\x80\x80"}'),
        ("truncated UTF-8", b'{"a":"\xe2\x82"}'),
        ("raw DEL", '{"a":"\x7f"}'),
        ("escaped DEL", '{"a":"\\u007f"}'),
        ("raw U+2028 U+2029", '{"a":"\u2028\u2029"}'),
        ("escaped U+2028", '{"a":"\\u2028"}'),
        ("raw slash", '{"a":"a/b"}'),
        ("escaped slash", '{"a":"a\\/b"}'),
        ("controls as Python writes them", '{"a":"\\u0000\\u001f\\u000b"}'),
        ("upper case hex escape", '{"a":"\\u001F"}'),
        ("backspace as \\u0008", '{"a":"\\u0008"}'),
        ("short escapes", '{"a":"\\b\\f\\n\\r\\t"}'),
        ("raw newline in a string", '{"a":"\n"}'),
        ("raw tab in a string", '{"a":"\t"}'),
        ("quote and backslash", '{"a":"\\"\\\\"}'),
        ("bad escape", '{"a":"\\x41"}'),
        ("short unicode escape", '{"a":"\\u12"}'),
        ("raw e-acute", '{"a":"é"}'),
        ("escaped e-acute", '{"a":"\\u00e9"}'),
        ("raw BOM in a string", '{"a":"\ufeff"}'),
        ("raw U+FFFF", '{"a":"\uffff"}'),
        ("raw emoji", '{"a":"😀"}'),
        ("escaped surrogate pair", '{"a":"\\ud83d\\ude00"}'),
        ("lone high surrogate", '{"a":"\\ud800"}'),
        ("lone low surrogate", '{"a":"\\udc00x"}'),
        ("reversed pair", '{"a":"\\ude00\\ud83d"}'),
        ("zero", '{"a":0}'),
        ("minus zero", '{"a":-0}'),
        ("leading zero", '{"a":01}'),
        ("negative", '{"a":-17}'),
        ("plus sign", '{"a":+1}'),
        ("max safe int", '{"a":9007199254740991,"b":-9007199254740991}'),
        ("2**53", '{"a":9007199254740992}'),
        ("exponent", '{"a":1e3}'),
        ("upper case exponent", '{"a":1E3}'),
        ("float", '{"a":1.5}'),
        ("NaN", '{"a":NaN}'),
        ("-Infinity", '{"a":-Infinity}'),
        ("depth 16", '{"a":' + "[" * 16 + "]" * 16 + "}"),
        ("depth 17", '{"a":' + "[" * 17 + "]" * 17 + "}"),
        ("scalar at depth 17", '{"a":' + "[" * 16 + "1" + "]" * 16 + "}"),
        ("objects at depth 17", '{"a":' + '{"a":' * 16 + "1" + "}" * 16 + "}"),
        ("depth 30000", "[" * 30000 + "]" * 30000),
        ("unclosed", '{"a":[1'),
    ]
    # Values Python's json round-trips but refuses only after the tensor checks: a TensorError here
    # proves the metadata passed the canonical check, a MetadataError that it did not.
    ordering: list[tuple[str, str]] = [
        ("canonical float 1.0", with_bad_tensor("a", "1.0")),
        ("float 1.00", with_bad_tensor("a", "1.00")),
        ("canonical float 1e-07", with_bad_tensor("a", "1e-07")),
        ("JS-style float 1e-7", with_bad_tensor("a", "1e-7")),
        ("canonical float 1e+16", with_bad_tensor("a", "1e+16")),
        ("JS-style float 1e16", with_bad_tensor("a", "1e16")),
        ("canonical float 1e+22", with_bad_tensor("a", "1e+22")),
        ("JS-style float 1e+22 written out", with_bad_tensor("a", "10000000000000000000000.0")),
        ("canonical float 1000000000000000.0", with_bad_tensor("a", "1000000000000000.0")),
        ("canonical float 0.0001", with_bad_tensor("a", "0.0001")),
        ("canonical float 1e-05", with_bad_tensor("a", "1e-05")),
        ("canonical float -0.0", with_bad_tensor("a", "-0.0")),
        ("canonical float 5e-324", with_bad_tensor("a", "5e-324")),
        ("canonical float max", with_bad_tensor("a", "1.7976931348623157e+308")),
        ("canonical float 0.1", with_bad_tensor("a", "0.1")),
        ("canonical float in a list", with_bad_tensor("a", "[1,2.5]")),
        ("float overflowing to inf", with_bad_tensor("a", "1e400")),
        ("float underflowing to 0", with_bad_tensor("a", "1e-400")),
        ("NaN", with_bad_tensor("a", "NaN")),
        ("Infinity", with_bad_tensor("a", "Infinity")),
        ("2**53", with_bad_tensor("a", str(2**53))),
        ("-(2**53)", with_bad_tensor("a", str(-(2**53)))),
        ("2**64", with_bad_tensor("a", str(2**64))),
        ("4300-digit integer", with_bad_tensor("a", "9" * 4300)),
        ("negative 4300-digit integer", with_bad_tensor("a", "-" + "9" * 4300)),
        ("4301-digit integer", with_bad_tensor("a", "9" * 4301)),
        ("minus zero", with_bad_tensor("a", "-0")),
        ("depth 17", with_bad_tensor("a", "[" * 17 + "]" * 17)),
        ("depth 200", with_bad_tensor("a", "[" * 200 + "]" * 200)),
        ("depth 500", with_bad_tensor("a", "[" * 500 + "]" * 500)),
        ("depth 5000", with_bad_tensor("a", "[" * 5000 + "]" * 5000)),
        ("non-ASCII key", '{"tensors":[' + BAD_DESC + '],"é":1}'),
        ("non-ASCII key, not in code point order", '{"é":1,"tensors":[' + BAD_DESC + "]}"),
        ("keys in code point order", with_bad_tensor("a", '{"\uffff":1,"\U00010000":2}')),
        ("keys in UTF-16 order", with_bad_tensor("a", '{"\U00010000":2,"\uffff":1}')),
        ("__proto__ key", with_bad_tensor("__proto__", "1")),
        ("lone surrogate", with_bad_tensor("a", '"\\ud800"')),
    ]
    cases += [(label, raw_frame(meta)) for label, meta in metas]
    cases += [(f"before the tensor checks: {label}", raw_frame(meta)) for label, meta in ordering]

    def frame_with(descriptors: list[str], section: bytes = b"", extra: str = "", **kw: Any) -> bytes:
        return raw_frame("{" + extra + '"tensors":[' + ",".join(descriptors) + "]}", section, **kw)

    ok = desc("x", "float32", [2], 0, 8)
    tensor_cases: list[tuple[str, bytes]] = [
        ("one valid tensor", frame_with([ok], bytes(8))),
        ("tensors empty list", raw_frame('{"tensors":[]}')),
        ("tensors null", raw_frame('{"tensors":null}')),
        ("tensors object", raw_frame('{"tensors":{}}')),
        ("tensors string", raw_frame('{"tensors":"x"}')),
        ("descriptor not an object", frame_with(["1"])),
        ("descriptor extra key", frame_with(['{"dtype":"int64","extra":1,"name":"x","nbytes":0,"offset":0,"shape":[0]}'])),
        ("descriptor missing key", frame_with(['{"dtype":"int64","name":"x","offset":0,"shape":[0]}'])),
        ("descriptor __proto__ key", frame_with(['{"__proto__":1,"dtype":"int64","name":"x","offset":0,"shape":[0]}'])),
        ("descriptor comma in a key", frame_with(['{"dtype,name":"x","nbytes":0,"offset":0,"shape":[0]}'])),
        ("shape not a list", frame_with([desc("x", "int64", 0, 0, 0)])),
        ("offset a float", frame_with([desc("x", "int64", [0], 0.0, 0)])),
        ("offset a bool", frame_with([desc("x", "int64", [0], True, 0)])),
        ("nbytes a string", frame_with([desc("x", "int64", [0], 0, "0")])),
        ("nbytes a float", frame_with([desc("x", "float32", [2], 0, 8.0)], bytes(8))),
        ("dim a float", frame_with([desc("x", "float32", [2.0], 0, 8)], bytes(8))),
        ("dim a bool", frame_with([desc("x", "float32", [True], 0, 4)], bytes(4))),
        ("dim a string", frame_with([desc("x", "float32", ["2"], 0, 8)], bytes(8))),
        ("dim negative", frame_with([desc("x", "float32", [-1], 0, 0)])),
        ("dim 2**31-1", frame_with([desc("x", "float16", [2147483647], 0, 2 * (2**31 - 1))])),
        ("dim 2**31", frame_with([desc("x", "float32", [2147483648], 0, 4 * 2**31)])),
        ("dim 2**64", frame_with([desc("x", "float32", [2**64], 0, 0)])),
        ("dtype unknown", frame_with([desc("x", "float64", [1], 0, 8)], bytes(8))),
        ("dtype a number", frame_with([desc("x", 1, [1], 0, 8)], bytes(8))),
        ("dtype toString", frame_with([desc("x", "toString", [1], 0, 8)], bytes(8))),
        ("dtype constructor", frame_with([desc("x", "constructor", [1], 0, 8)], bytes(8))),
        ("rank 9", frame_with([desc("x", "int64", [1,1,1,1,1,1,1,1,1], 0, 8)], bytes(8))),
        ("rank 9, dtype unknown", frame_with([desc("x", "int8", [1,1,1,1,1,1,1,1,1], 0, 1)], bytes(8))),
        ("rank 9, dim negative", frame_with([desc("x", "int64", [-1,1,1,1,1,1,1,1,1], 0, 8)], bytes(8))),
        ("rank 8", frame_with([desc("x", "int64", [1,1,1,1,1,1,1,1], 0, 8)], bytes(8))),
        ("scalar", frame_with([desc("x", "int64", [], 0, 8)], bytes(8))),
        ("empty tensor", frame_with([desc("x", "float32", [0,5], 0, 0)])),
        ("nbytes short", frame_with([desc("x", "float32", [2], 0, 4)], bytes(4))),
        ("nbytes negative", frame_with([desc("x", "float32", [], 0, -4)])),
        ("huge shape, exact nbytes", frame_with([desc("x", "float32", [2147483647,2147483647,2147483647], 0, 4 * (2**31 - 1) ** 3)])),
        ("huge shape, nbytes off by one", frame_with([desc("x", "float32", [2147483647,2147483647,2147483647], 0, 4 * (2**31 - 1) ** 3 + 1)])),
        ("huge shape, nbytes 4 short", frame_with([desc("x", "float32", [2147483647,2147483647,2147483647], 0, 4 * (2**31 - 1) ** 3 - 4)])),
        ("first offset 8", frame_with([desc("x", "float32", [2], 8, 8)], bytes(16))),
        ("offset 2**64", frame_with([desc("x", "float32", [2], 2**64, 8)], bytes(8))),
        ("tensor past the section", frame_with([desc("x", "float32", [4], 0, 16)], bytes(8))),
        ("section longer than the tensors", frame_with([ok], bytes(16))),
        ("second tensor aligned", frame_with([desc("a", "float16", [3], 0, 6), desc("b", "int64", [1], 8, 8)], bytes(16))),
        ("second tensor unaligned", frame_with([desc("a", "float16", [3], 0, 6), desc("b", "int64", [1], 6, 8)], bytes(14))),
        ("non-zero gap", frame_with([desc("a", "float16", [3], 0, 6), desc("b", "int64", [1], 8, 8)], bytes(6) + b"\0\x01" + bytes(8))),
        ("trailing gap after the last tensor", frame_with([desc("a", "float16", [3], 0, 6)], bytes(8))),
        ("name empty", frame_with([desc("", "float32", [2], 0, 8)], bytes(8))),
        ("name empty, layout wrong too", frame_with([desc("", "float32", [2], 8, 8)], bytes(16))),
        ("name a number", frame_with([desc(7, "float32", [2], 0, 8)], bytes(8))),
        ("name a number, dtype wrong too", frame_with([desc(7, "float99", [2], 0, 8)], bytes(8))),
        ("name of 64 bytes", frame_with([desc("é" * 21 + "n" * 22, "float32", [2], 0, 8)], bytes(8))),
        ("name of 65 bytes", frame_with([desc("é" * 21 + "n" * 23, "float32", [2], 0, 8)], bytes(8))),
        ("name of 64 bytes with an emoji", frame_with([desc("😀" * 16, "float32", [2], 0, 8)], bytes(8))),
        ("duplicate names", frame_with([desc("a", "int64", [1], 0, 8), desc("a", "int64", [1], 8, 8)], bytes(16))),
        ("duplicate names and a float", frame_with([desc("a", "int64", [1], 0, 8), desc("a", "int64", [1], 8, 8)], bytes(16), extra='"f":1.5,')),
        ("duplicate names and depth 17", frame_with([desc("a", "int64", [1], 0, 8), desc("a", "int64", [1], 8, 8)], bytes(16), extra='"d":' + "[" * 17 + "]" * 17 + ",")),
        ("16 tensors", frame_with([desc(f"t{i:02}", "int64", [1], 8 * i, 8) for i in range(16)], bytes(128))),
        ("17 tensors", frame_with([desc(f"t{i:02}", "int64", [1], 8 * i, 8) for i in range(17)], bytes(136))),
        ("17 tensors, the first malformed", frame_with(["1"] + [desc(f"t{i:02}", "int64", [1], 8 * i, 8) for i in range(16)], bytes(128))),
        ("ERROR without metadata", raw_frame("{}", ftype=FrameType.ERROR)),
        ("ERROR without message", raw_frame('{"code":"internal"}', ftype=FrameType.ERROR)),
        ("ERROR code a number", raw_frame('{"code":5,"message":"x"}', ftype=FrameType.ERROR)),
        ("ERROR message of 1024 bytes", raw_frame(canonical({"code": "x", "message": "é" * 512}), ftype=FrameType.ERROR)),
        ("ERROR message of 1025 bytes", raw_frame(canonical({"code": "x", "message": "é" * 512 + "!"}), ftype=FrameType.ERROR)),
        ("ERROR message of 1024 bytes, emoji", raw_frame(canonical({"code": "x", "message": "😀" * 256}), ftype=FrameType.ERROR)),
        ("ERROR code and a float", raw_frame('{"code":"x","message":"y","z":0.5}', ftype=FrameType.ERROR)),
        ("PING with anything", raw_frame(canonical({"a": [1, {"b": None}], "c": "😀\u2028"}), ftype=FrameType.PING)),
    ]  # fmt: skip
    return cases + tensor_cases


def test_crafted_frames_fail_as_in_python(wire_page: Harness) -> None:
    cases = crafted_frames()
    tally = compare_decoding(wire_page, cases)
    assert tally["OK"] >= 20 and tally["TensorError"] >= 20 and tally["MetadataError"] >= 60
    wire_page.note(f"{len(cases)} hand-made frames fail alike {sorted(tally.items())}")


def test_max_frame_bytes_is_applied_alike(wire_page: Harness) -> None:
    data = GOLDEN["forward_f32.bin"]
    for limit in (len(data) - 1, len(data), 64, 36, 35):
        compare_decoding(wire_page, [("forward_f32", data), ("open", GOLDEN["open.bin"])], limit)


def test_float_metadata_passes_the_canonical_check_exactly_when_python_writes_it(wire_page: Harness) -> None:
    # Python's answers are as the name says; JS refuses every float as it reads it (see js_cannot_hold).
    rng = random.Random(20240611)
    values = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(300)]
    values += [rng.uniform(-1000, 1000) for _ in range(100)] + [
        rng.randint(-(10**6), 10**6) / 8 for _ in range(50)
    ]
    values += [10.0**e for e in range(-330, 310, 7)] + [2.0**e for e in range(-1074, 1024, 37)]
    values += [1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 0.1, 1 / 3, 5e-324, 2.2250738585072014e-308]
    cases = []
    for value in values:
        if not math.isfinite(value):
            continue
        text = repr(value)
        variants = {text, text.replace("e-0", "e-").replace("e+0", "e+"), text.replace("e+", "e"),
                    text.removesuffix(".0"), text.upper(), f"{value:.17g}"}  # fmt: skip
        cases += [
            (f"float {variant}", raw_frame(with_bad_tensor("a", variant))) for variant in sorted(variants)
        ]
    tally = compare_decoding(wire_page, cases)
    assert tally["TensorError"] >= 600
    wire_page.note(
        f"{len(cases)} float texts: canonical exactly when Python writes them {sorted(tally.items())}"
    )


# --- encoding: Python's exact bytes -------------------------------------------------------------------

UNICODE_POOL = (
    "abcXYZ019 _-.:/@",
    '"\\',
    "".join(chr(c) for c in range(0x20)),
    "\x7f\x80\x9f\xa0\xff",
    "éßüñ€£",
    "\u2028\u2029\ufeff\ufffd\uffff\ud7ff\ue000",
    "中文日本語한국어",
    "😀👍🏽𝄞\U0010ffff\U00010000",
)


def random_text(rng: random.Random, max_len: int = 12) -> str:
    pool = rng.choice(UNICODE_POOL)
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, max_len)))


def random_key(rng: random.Random) -> str:
    return rng.choice(
        ["a", "b", "A", "B", "_", "", "10", "9", "z~", "key", "max_length", "\x00", "\x7f", "a b", "tensor"]
    ) + rng.choice(["", "x", "1"])


def random_json(rng: random.Random, depth: int) -> Any:
    kinds = ["none", "bool", "int", "str"] + (["list", "dict"] if depth < wire.MAX_META_DEPTH else [])
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice(
            [0, 1, -1, 2048, wire.MAX_SAFE_INT, -wire.MAX_SAFE_INT, rng.randint(-(2**53) + 1, 2**53 - 1)]
        )
    if kind == "str":
        return random_text(rng)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_key(rng): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_frame(rng: random.Random) -> Frame:
    ftype = rng.choice(list(FrameType))
    meta = {random_key(rng): random_json(rng, 1) for _ in range(rng.randint(0, 4))}
    meta.pop("tensors", None)
    if ftype is FrameType.ERROR:
        meta["code"] = rng.choice([*ErrorCode, random_text(rng)])
        meta["message"] = random_text(rng, 300)[: wire.MAX_ERROR_MESSAGE_BYTES // 4]
    tensors = []
    names: set[str] = set()
    for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 16])):
        name = random_text(rng, 8) or "t"
        name = name.encode("utf-8")[: wire.MAX_NAME_BYTES].decode("utf-8", "ignore") or "t"
        if name in names:
            continue
        names.add(name)
        dtype = rng.choice(list(wire.DTYPE_SIZES))
        shape = tuple(rng.randint(0, 5) for _ in range(rng.randint(0, 4)))
        numel = math.prod(shape)
        tensors.append(WireTensor(name, dtype, shape, rng.randbytes(numel * wire.DTYPE_SIZES[dtype])))
    return Frame(
        ftype,
        rng.choice([wire.NO_SESSION, rng.randbytes(16)]),
        rng.choice([0, 1, wire.MAX_STEP, rng.randint(0, wire.MAX_STEP)]),
        FrameFlags(rng.randint(0, 3)),
        meta,
        tuple(tensors),
    )


def frame_spec(frame: Frame, max_frame_bytes: int | None = None) -> dict[str, Any]:
    """A frame as the page's buildFrame takes it (metadata as ASCII JSON text: every string survives)."""
    return {
        "type": int(frame.type),
        "session": frame.session.hex(),
        "step": frame.step,
        "flags": int(frame.flags),
        "meta": json.dumps(frame.meta, ensure_ascii=True),
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "data": b64(t.data)}
            for t in frame.tensors
        ],
        "max": max_frame_bytes,
    }


def test_random_frames_encode_to_python_bytes(wire_page: Harness) -> None:
    rng = random.Random(1234)
    frames = [random_frame(rng) for _ in range(200)]
    frames.append(Frame(FrameType.GOSSIP, meta={"blob": "é😀\u2028" * 7000}))  # near the metadata limit
    big = WireTensor.from_values(
        "hidden_states", "float32", (1, 64, 576), [rng.uniform(-4, 4) for _ in range(64 * 576)]
    )
    frames.append(Frame(FrameType.FORWARD, SESSION, 7, FrameFlags.PREFILL, tensors=(big,)))
    answers = wire_page.page.evaluate(ENCODE_BATCH_JS, [frame_spec(f) for f in frames])
    expected = ["OK:" + b64(encode_frame(f)) for f in frames]
    mismatches = [
        f"frame {i}: {f!r:.300}"
        for i, (f, a, e) in enumerate(zip(frames, answers, expected, strict=True))
        if a != e
    ]
    assert not mismatches, "\n".join(mismatches[:10])
    decoded = wire_page.page.evaluate(
        "(cases) => cases.map((b64) => T.describe(T.wire.decodeFrame(T.fromB64(b64))).meta)",
        [e[3:] for e in expected],
    )
    assert decoded == [json.loads(json.dumps(f.meta)) for f in frames]
    wire_page.note(f"{len(frames)} random frames (unicode metadata, every dtype) encode to Python's bytes")


def invalid_frame_specs() -> list[tuple[str, dict[str, Any]]]:
    """Frames Python refuses to build or encode, as page specs (built without the Python codec)."""
    base = {
        "type": 2,
        "session": SESSION.hex(),
        "step": 0,
        "flags": 0,
        "meta": "{}",
        "tensors": [],
        "max": None,
    }

    def spec(**changes: Any) -> dict[str, Any]:
        return {**base, **changes}

    def tensor(name: Any = "x", dtype: str = "float32", shape: Any = (2,), nbytes: int = 8) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": list(shape), "data": b64(bytes(nbytes))}

    return [
        ("valid", spec(tensors=[tensor()])),
        ("type 0", spec(type=0)),
        ("type 9", spec(type=9)),
        ("flags 4", spec(flags=4)),
        ("flags -1", spec(flags=-1)),
        ("flags 2**40 + 1", spec(flags=2**40 + 1)),
        ("session of 15 bytes", spec(session="00" * 15)),
        ("step -1", spec(step=-1)),
        ("step 2**32", spec(step=2**32)),
        ("float in metadata", spec(meta='{"temperature":0.7}')),
        ("2**53 in metadata", spec(meta=json.dumps({"a": 2**53}))),
        ("-(2**53) in metadata", spec(meta=json.dumps({"a": -(2**53)}))),
        ("max safe int in metadata", spec(meta=json.dumps({"a": 2**53 - 1, "b": -(2**53) + 1}))),
        ("depth 16", spec(meta='{"a":' + "[" * 15 + "]" * 15 + "}")),
        ("depth 17", spec(meta='{"a":' + "[" * 16 + "1" + "]" * 16 + "}")),
        ("non-ASCII key", spec(meta='{"\\u00e9":1}')),
        ("nested non-ASCII key", spec(meta='{"a":{"\\u00e9":1}}')),
        ("lone surrogate", spec(meta='{"a":"\\ud800"}')),
        ("lone surrogate in a key", spec(meta='{"\\udc00":1}')),
        ("reserved tensors key", spec(meta='{"tensors":1}')),
        ("ERROR without message", spec(type=5, meta='{"code":"x"}')),
        ("ERROR code a number", spec(type=5, meta='{"code":1,"message":"x"}')),
        (
            "ERROR message of 1025 bytes",
            spec(type=5, meta=json.dumps({"code": "x", "message": "é" * 512 + "!"})),
        ),
        ("ERROR message of 1024 bytes", spec(type=5, meta=json.dumps({"code": "x", "message": "😀" * 256}))),
        ("name empty", spec(tensors=[tensor("")])),
        ("name of 65 bytes", spec(tensors=[tensor("é" * 32 + "n")])),
        ("name of 64 bytes", spec(tensors=[tensor("é" * 32)])),
        ("name a number", spec(tensors=[tensor(7)])),
        ("dtype float64", spec(tensors=[tensor(dtype="float64")])),
        ("rank 9", spec(tensors=[tensor(shape=(1,) * 9, nbytes=4)])),
        ("rank 9, dtype float64", spec(tensors=[tensor(dtype="float64", shape=(1,) * 9, nbytes=4)])),
        ("dim -1", spec(tensors=[tensor(shape=(-1,), nbytes=0)])),
        ("dim 2**31", spec(tensors=[tensor(shape=(2**31,), nbytes=0)])),
        ("data too short", spec(tensors=[tensor(nbytes=7)])),
        ("name empty and data too short", spec(tensors=[tensor("", nbytes=7)])),
        ("17 tensors", spec(tensors=[tensor(f"t{i}") for i in range(17)])),
        ("duplicate names", spec(tensors=[tensor(), tensor()])),
        ("duplicate names and a float", spec(meta='{"a":0.5}', tensors=[tensor(), tensor()])),
        ("metadata over 64 KiB", spec(meta=json.dumps({"blob": "x" * wire.MAX_METADATA_BYTES}))),
        ("frame over max_frame_bytes", spec(tensors=[tensor(shape=(64,), nbytes=256)], max=256)),
        ("frame at max_frame_bytes", spec(tensors=[tensor(shape=(54,), nbytes=216)], max=256)),
    ]


def py_encode_outcome(spec: dict[str, Any]) -> str:
    try:
        tensors = tuple(
            WireTensor(t["name"], t["dtype"], tuple(t["shape"]), base64.b64decode(t["data"]))
            for t in spec["tensors"]
        )
        frame = Frame(
            spec["type"],
            bytes.fromhex(spec["session"]),
            spec["step"],
            spec["flags"],
            json.loads(spec["meta"]),
            tensors,
        )
        if spec["max"] is None:
            return "OK:" + b64(encode_frame(frame))
        return "OK:" + b64(encode_frame(frame, max_frame_bytes=spec["max"]))
    except WireError as exc:
        return type(exc).__name__


def test_invalid_frames_are_refused_when_encoding_as_in_python(wire_page: Harness) -> None:
    cases = invalid_frame_specs()
    answers = wire_page.page.evaluate(ENCODE_BATCH_JS, [spec for _, spec in cases])
    mismatches = [
        f"{label}: Python {py_encode_outcome(spec)[:40]}, JS {answer[:40]}"
        for (label, spec), answer in zip(cases, answers, strict=True)
        if py_encode_outcome(spec) != answer
    ]
    assert not mismatches, "\n".join(mismatches)


# --- ERROR frames and remote errors ---------------------------------------------------------------------


def test_error_frames_and_remote_errors_match_python(wire_page: Harness) -> None:
    messages = [
        "",
        "hidden_states: expected [1, 1, 576] — got [1, 1, 575]",
        "x" * 2000,
        "a" * 1023 + "é",
        "a" * 1022 + "😀" * 3,
        "a" * 1021 + "€€",
        "é" * 600,
        "😀" * 300,
        "\ud800" * 1100,
        "a\ud800b\udc00c",
        "\udc00x\ud800y" * 10,  # never a low right after a high: JS would read the two as one character
        "€" * 400,
        "\u2028\x00\x7f" * 400,
    ]
    codes = [*ErrorCode, "brand_new_code"]
    cases = [(codes[i % len(codes)], message) for i, message in enumerate(messages)] + [
        (code, "boom") for code in codes
    ]
    result = wire_page.page.evaluate(
        script("wire_vectors/error_frames"),
        json.dumps(cases, ensure_ascii=True),
    )
    for i, ((code, message), (js_bytes, js_raised)) in enumerate(zip(cases, result, strict=True)):
        frame = error_frame(SESSION, i, code, message)
        assert base64.b64decode(js_bytes) == encode_frame(frame), (code, message[:40])
        with pytest.raises(core_errors.RemoteError) as raised:
            raise_for_error(frame)
        assert js_raised == [type(raised.value).__name__, raised.value.code, str(raised.value), True]
    assert (
        wire_page.page.evaluate("() => T.wire.raiseForError(T.wire.makeFrame({type: 6})) ?? 'passed'")
        == "passed"
    )


# --- chunks ------------------------------------------------------------------------------------------------


def reassembler_scenarios(rng: random.Random) -> list[dict[str, Any]]:
    """Chunk sequences with duplicates, mutations, interleaving, expiry and tight bounds."""
    golden = [(VECTORS / name).read_bytes() for name in CHUNK_ENTRIES[0]["files"]]
    header = wire.CHUNK_HEADER

    def chunk(
        mid: int, index: int, count: int, payload: bytes = b"x", magic: bytes = wire.CHUNK_MAGIC
    ) -> bytes:
        return header.pack(magic, mid, index, count) + payload

    def feeds(chunks: list[bytes], start: float = 0.0) -> list[list[Any]]:
        return [["feed", b64(c), start + i] for i, c in enumerate(chunks)]

    scripted: list[tuple[dict[str, Any], list[list[Any]]]] = [
        ({}, feeds(golden)),
        ({}, feeds(golden[::-1])),
        ({}, feeds([golden[0], golden[0], golden[1], golden[2]])),
        ({}, feeds([golden[0], chunk(7, 1, 4), golden[1], golden[2]])),
        ({}, feeds([chunk(1, 0, 0, b""), chunk(1, 2, 2), chunk(1, 0, 2, b""), chunk(1, 0, 1, b"")])),
        ({}, feeds([b"", b"A4AC", chunk(1, 0, 1, magic=b"A4AF"), chunk(1, 0, 1, b"")])),
        ({}, feeds([chunk(1, 0, 2), chunk(1, 0, 1, b"single"), chunk(1, 1, 2)])),
        ({"max_message_bytes": 4}, feeds([chunk(1, 0, 1, b"12345"), chunk(2, 0, 2, b"123"), chunk(2, 1, 2, b"45")])),
        ({"max_partial": 2}, feeds([chunk(1, 0, 2), chunk(2, 0, 2), chunk(3, 0, 2), chunk(3, 0, 1), chunk(1, 1, 2)])),
        ({"max_buffered_bytes": 5}, feeds([chunk(1, 0, 2, b"123"), chunk(2, 0, 2, b"123"), chunk(1, 1, 2, b"45")])),
        ({"timeout_s": 2}, [*feeds([chunk(1, 0, 2), chunk(2, 0, 2)]), ["expire", 2.5], ["expire", 3.5], *feeds([chunk(1, 1, 2)], 4)]),
    ]  # fmt: skip
    scenarios = [{"params": p, "steps": s} for p, s in scripted]
    for _ in range(60):
        params = {
            "max_message_bytes": rng.choice([40, 150, 10**6]),
            "max_partial": rng.choice([1, 2, 8]),
            "max_buffered_bytes": rng.choice([60, 250, 10**6]),
            "timeout_s": rng.choice([3.0, 30.0]),
        }
        chunks: list[bytes] = []
        for mid in rng.sample([0, 1, 2, 7, 2**32 - 1], 3):
            chunks += chunk_message(mid, rng.randbytes(rng.randint(0, 120)), rng.randint(13, 48))
        rng.shuffle(chunks)
        steps: list[list[Any]] = []
        now = 0.0
        for c in chunks:
            if rng.random() < 0.15:  # mutate a header byte or cut the chunk short
                m = bytearray(c)
                if rng.random() < 0.5:
                    m[rng.randrange(wire.CHUNK_HEADER_SIZE)] ^= 1 << rng.randrange(8)
                else:
                    del m[rng.randrange(len(m)) :]
                c = bytes(m)
            now += rng.choice([0.0, 0.5, 1.0, 2.5])
            steps.append(["feed", b64(c), now])
            if rng.random() < 0.1:
                steps.append(["feed", b64(c), now])
            if rng.random() < 0.1:
                steps.append(["expire", now])
        scenarios.append({"params": params, "steps": steps})
    return scenarios


def py_reassembler_run(scenario: dict[str, Any]) -> list[str]:
    reassembler = Reassembler(**scenario["params"])
    out = []
    for step in scenario["steps"]:
        if step[0] == "expire":
            answer = f"expired {reassembler.expire(step[1])}"
        else:
            try:
                message = reassembler.feed(base64.b64decode(step[1]), step[2])
                answer = "none" if message is None else "message " + b64(message)
            except WireError as exc:
                answer = type(exc).__name__
        out.append(f"{answer} | {len(reassembler)} partial, {reassembler.buffered_bytes} bytes")
    return out


def test_reassembler_matches_python(wire_page: Harness) -> None:
    scenarios = reassembler_scenarios(random.Random(99))
    js_runs = wire_page.page.evaluate(
        script("wire_vectors/reassembler"),
        scenarios,
    )
    steps = 0
    for i, (scenario, js_run) in enumerate(zip(scenarios, js_runs, strict=True)):
        assert js_run == py_reassembler_run(scenario), f"scenario {i}: {scenario['params']}"
        steps += len(js_run)
    wire_page.note(f"Reassembler: {len(scenarios)} scenarios, {steps} steps agree")


# --- NaN / Inf and float16 ----------------------------------------------------------------------------------


def test_check_finite_matches_python(wire_page: Harness) -> None:
    rng = random.Random(7)
    tensors: list[WireTensor] = []
    for i in range(300):
        dtype = rng.choice([d for d in wire.DTYPE_SIZES if d != "uint8"])  # numbers; bytes below
        n = rng.randint(0, 40)
        if i % 3 == 0:  # any bit patterns: NaN payloads, subnormals
            tensors.append(WireTensor(f"t{i}", dtype, (n,), rng.randbytes(n * wire.DTYPE_SIZES[dtype])))
            continue
        if dtype == "int64":
            values: list[float] = [rng.randint(-(2**63), 2**63 - 1) for _ in range(n)]
        else:
            values = [rng.uniform(-60000, 60000) for _ in range(n)]
            if n and rng.random() < 0.7:
                values[rng.randrange(n)] = rng.choice([math.nan, math.inf, -math.inf])
        tensors.append(WireTensor.from_values(f"t{i}", dtype, (n,), values))
    for i in range(20):  # bytes (model file chunks) are never NaN, whatever their bits
        tensors.append(WireTensor(f"b{i}", "uint8", (8 * i,), rng.randbytes(8 * i)))

    def py_answer(tensor: WireTensor) -> str:
        try:
            check_finite(tensor)
        except core_errors.NonFiniteError as exc:
            return str(exc).split(" holds ")[1]
        return "OK"

    answers = wire_page.page.evaluate(
        script("wire_vectors/check_finite"),
        [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "data": b64(t.data)} for t in tensors],
    )
    assert answers == [py_answer(t) for t in tensors]
    assert sum(answer != "OK" for answer in answers) > 100


def test_float16_conversions_match_python_struct(wire_page: Harness) -> None:
    to_number = wire_page.page.evaluate(script("wire_vectors/float16_all"))
    expected_numbers: list[Any] = []
    for bits in range(65536):
        (x,) = struct.unpack("<e", struct.pack("<H", bits))
        expected_numbers.append(
            "nan" if math.isnan(x) else x if math.isfinite(x) else ("Infinity" if x > 0 else "-Infinity")
        )
    assert to_number == expected_numbers

    rng = random.Random(5)
    halves = [struct.unpack("<e", struct.pack("<H", b))[0] for b in range(0x7C00)]
    inputs = [*halves]
    for _ in range(4000):  # ties between neighbours, and a hair either side of them
        i = rng.randrange(len(halves) - 1)
        mid = (halves[i] + halves[i + 1]) / 2
        inputs += [mid, math.nextafter(mid, 0), math.nextafter(mid, math.inf)]
    inputs += [2.0 ** rng.uniform(-30, 17) for _ in range(3000)]
    inputs += [
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        1e300,
        2**-24,
        2**-25,
        math.nextafter(2**-25, 1),
        2**-26,
        3 * 2**-26,
        1e-300,
        5e-324,
        math.inf,
    ]
    inputs += [-x for x in inputs]
    packed = struct.pack(f"<{len(inputs)}d", *inputs)
    answers = wire_page.page.evaluate(
        script("wire_vectors/float16"),
        b64(packed),
    )

    def py_bits(x: float) -> int | str:
        try:
            return int.from_bytes(struct.pack("<e", x), "little")
        except OverflowError:
            return "RangeError"

    assert answers[:-1] == [py_bits(x) for x in inputs]
    assert answers[-1] == 0x7E00
    wire_page.note(f"float16: all 65536 bit patterns and {len(inputs)} doubles convert as Python's struct")


def test_tensor_views_and_helpers(wire_page: Harness) -> None:
    result = wire_page.page.evaluate(script("wire_vectors/tensor_views"))
    entry = next(e for e in FRAME_ENTRIES if e["file"] == "forward_f16_pos.bin")
    assert result["views"] == [True, True] and result["copies"] == [False, False]
    assert result["widened"] == entry["tensors"][0]["values"]
    assert result["positions"] == entry["tensors"][1]["values"]
    assert result["named"] is True
    assert (result["missing"], result["overflow"], result["wrongDtype"]) == (
        "MetadataError",
        "RangeError",
        "TypeError",
    )
    expected = [struct.unpack("<e", struct.pack("<e", x))[0] for x in (0.1, -2, 65504, 1e-8)]
    assert result["roundTrip"] == expected

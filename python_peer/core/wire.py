"""The binary frame format peers exchange over WebRTC data channels, defined once.

Standard library only: this module also runs in the browser under Pyodide, and the JS codec in
``web/src/protocol/`` mirrors it constant for constant; ``docs/wire.md`` is the implementer's page and
``tests/vectors/`` holds the golden bytes both test suites decode. All integers are little-endian.

Frame (version 1)::

    offset  size  field
    0       4     magic            b"A4AF"
    4       1     version          u8, 1
    5       1     type             u8, FrameType
    6       2     flags            u16, FrameFlags; unknown bits are refused
    8       16    session          session id (16 raw bytes; all zero outside a session)
    24      4     step             u32, the step within the session
    28      4     metadata_len     u32, M <= MAX_METADATA_BYTES
    32      4     tensors_len      u32, T
    36      M     metadata         canonical JSON object, UTF-8
    36+M    P     padding          P = (-(36 + M)) % 8 zero bytes: the tensor section starts 8-aligned
    36+M+P  T     tensor section   raw little-endian tensors, C order

Metadata is exactly ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``:
an object with ASCII keys whose values are strings, integers with ``|n| <= 2**53 - 1``, booleans, null,
arrays and objects, nested at most MAX_META_DEPTH deep. Floats are refused because Python and JS print
them differently, so they could not be canonical in both. The key ``"tensors"`` is reserved: when a
frame carries tensors it is a list, in section order, of ``{"dtype", "name", "nbytes", "offset",
"shape"}``; tensor ``i`` starts at the first multiple of 8 at or after the end of tensor ``i - 1`` (the
first at 0), gaps are zero bytes, and the section ends where the last tensor ends. Every valid frame has
exactly one encoding, so the decoder refuses anything ``encode_frame`` would not have written.

Chunk (one data channel message, at most ``chunk_size`` bytes in all)::

    0   4   magic       b"A4AC"
    4   4   message_id  u32
    8   2   index       u16, 0 <= index < count
    10  2   count       u16, >= 1
    12  ..  payload     bytes [index * (chunk_size - 12), ...) of the message; non-empty if count > 1
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag, StrEnum
from typing import Any

from .errors import (
    BadMagicError,
    ChunkError,
    DuplicateTensorError,
    FrameHeaderError,
    FrameLayoutError,
    LimitExceededError,
    MetadataError,
    NonFiniteError,
    OutOfOrderError,
    OverloadedError,
    PaymentRequiredError,
    RemoteBadFrameError,
    RemoteBadShapeError,
    RemoteError,
    RemoteInternalError,
    RemoteNonFiniteError,
    RemoteTimeoutError,
    SessionRefusedError,
    TensorError,
    TruncatedFrameError,
    UnknownFlagsError,
    UnknownFrameTypeError,
    UnknownSessionError,
    UnsupportedVersionError,
)

MAGIC = b"A4AF"
VERSION = 1
HEADER = struct.Struct("<4sBBH16sIII")
HEADER_SIZE = HEADER.size  # 36
SESSION_ID_BYTES = 16
ALIGN = 8
NO_SESSION = bytes(SESSION_ID_BYTES)

MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_TENSORS = 16
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_NAME_BYTES = 64
MAX_META_DEPTH = 16
MAX_SAFE_INT = 2**53 - 1
MAX_ERROR_MESSAGE_BYTES = 1024
MAX_STEP = 2**32 - 1

CHUNK_MAGIC = b"A4AC"
CHUNK_HEADER = struct.Struct("<4sIHH")
CHUNK_HEADER_SIZE = CHUNK_HEADER.size  # 12
DEFAULT_CHUNK_SIZE = 16 * 1024
MAX_CHUNKS = 2**16 - 1
MAX_MESSAGE_ID = 2**32 - 1

# bytes per element of each dtype the wire carries
DTYPE_SIZES: dict[str, int] = {"float32": 4, "float16": 2, "int64": 8, "uint8": 1}  # uint8: raw bytes
_STRUCT_CODES = {"float32": "f", "float16": "e", "int64": "q", "uint8": "B"}
_TENSOR_KEYS = frozenset({"dtype", "name", "nbytes", "offset", "shape"})
_FLOAT16_BLOCK = 1 << 16


class FrameType(IntEnum):
    """What a frame asks for or answers; the number is the header's ``type`` byte."""

    OPEN = 1  # open a session: meta {model, start, end, max_length, ...}
    FORWARD = 2  # hidden states of a prefill or a decode step
    RESULT = 3  # the output hidden states of a step
    CLOSE = 4  # end a session and free its KV cache
    ERROR = 5  # meta {code, message}; see ErrorCode
    PING = 6
    PONG = 7
    GOSSIP = 8  # ledger gossip; metadata opaque to this layer
    CHUNK = 9  # model files between peers: requests and answers of core/chunks.py (docs/chunks.md)
    FETCH = 10  # a step's output a pushing peer kept instead of answering it (docs/mesh.md, "Kept outputs")


class FrameFlags(IntFlag):
    """Header flag bits; a frame with a bit not defined here is refused."""

    PREFILL = 1  # the step carries a whole prompt, not one token
    REPLAY = 2  # failover: hidden states replayed to rebuild a replacement peer's KV cache


_ALL_FLAGS = int(FrameFlags.PREFILL | FrameFlags.REPLAY)  # an int: ~ on an IntFlag stays inside it
NO_FLAGS = FrameFlags(0)


class ErrorCode(StrEnum):
    """The ``code`` of an ERROR frame; each maps to a ``RemoteError`` subclass on the caller."""

    BAD_FRAME = "bad_frame"
    BAD_SHAPE = "bad_shape"
    NON_FINITE = "non_finite"
    UNKNOWN_SESSION = "unknown_session"
    OUT_OF_ORDER = "out_of_order"
    SESSION_REFUSED = "session_refused"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    TIMEOUT = "timeout"
    PAYMENT_REQUIRED = "payment_required"


REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    ErrorCode.BAD_FRAME: RemoteBadFrameError,
    ErrorCode.BAD_SHAPE: RemoteBadShapeError,
    ErrorCode.NON_FINITE: RemoteNonFiniteError,
    ErrorCode.UNKNOWN_SESSION: UnknownSessionError,
    ErrorCode.OUT_OF_ORDER: OutOfOrderError,
    ErrorCode.SESSION_REFUSED: SessionRefusedError,
    ErrorCode.OVERLOADED: OverloadedError,
    ErrorCode.INTERNAL: RemoteInternalError,
    ErrorCode.TIMEOUT: RemoteTimeoutError,
    ErrorCode.PAYMENT_REQUIRED: PaymentRequiredError,
}


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _numel(dtype: object, shape: Sequence[object]) -> int:
    """Validate a dtype and shape and return the element count, refusing before any big product."""
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise TensorError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_SIZES)}")
    if len(shape) > MAX_RANK:
        raise LimitExceededError(f"tensor rank {len(shape)} is over the limit of {MAX_RANK}")
    numel = 1
    for dim in shape:
        if type(dim) is not int or not 0 <= dim <= MAX_DIM:
            raise TensorError(f"shape {list(shape)!r} has dim {dim!r}: dims are integers in 0..{MAX_DIM}")
        numel *= dim
    return numel


@dataclass(frozen=True)
class WireTensor:
    """One tensor on the wire: ``data`` is raw little-endian bytes in C order (numpy: ``frombuffer``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise MetadataError(f"tensor name {self.name!r} must be a non-empty string")
        if len(self.name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
            raise MetadataError(f"tensor name {self.name[:80]!r} is over {MAX_NAME_BYTES} bytes")
        if not isinstance(self.shape, tuple | list):
            raise TensorError(f"tensor {self.name!r}: shape must be a tuple of ints, got {self.shape!r}")
        if not isinstance(self.data, bytes | bytearray | memoryview):
            raise TensorError(f"tensor {self.name!r}: data must be bytes, got {type(self.data).__name__}")
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "data", bytes(self.data))
        expected = _numel(self.dtype, self.shape) * DTYPE_SIZES[self.dtype]
        if len(self.data) != expected:
            raise TensorError(
                f"tensor {self.name!r} has {len(self.data)} bytes but shape {list(self.shape)} "
                f"of {self.dtype} needs {expected}"
            )

    @property
    def numel(self) -> int:
        return len(self.data) // DTYPE_SIZES[self.dtype]

    @classmethod
    def from_values(cls, name: str, dtype: str, shape: Sequence[int], values: Sequence[float]) -> WireTensor:
        """Pack flat Python numbers; for tests, vectors and Pyodide, where there is no numpy."""
        _numel(dtype, shape)
        try:
            data = struct.pack(f"<{len(values)}{_STRUCT_CODES[dtype]}", *values)
        except (struct.error, OverflowError) as exc:
            raise TensorError(f"tensor {name!r}: values do not fit {dtype}: {exc}") from exc
        return cls(name, dtype, tuple(shape), data)

    def values(self) -> tuple[float, ...]:
        """The elements as flat Python numbers (int for int64)."""
        return struct.unpack(f"<{self.numel}{_STRUCT_CODES[self.dtype]}", self.data)


def _check_json(value: object, depth: int, where: str) -> None:
    """Refuse anything that is not canonical JSON in both Python and JS (see module docstring)."""
    if depth > MAX_META_DEPTH:
        raise MetadataError(f"metadata {where} is nested deeper than {MAX_META_DEPTH}")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise MetadataError(f"metadata {where} is an integer outside ±(2**53 - 1), which JS cannot hold")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, depth + 1, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise MetadataError(f"metadata {where} has key {key!r}: keys are ASCII strings")
            _check_json(item, depth + 1, f"{where}.{key}")
    else:
        raise MetadataError(
            f"metadata {where} is a {type(value).__name__}: only str, int, bool, None, list, dict "
            "(floats print differently in Python and JS, so they cannot be canonical)"
        )


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``meta`` excludes the reserved ``"tensors"`` key, which the codec writes."""

    type: FrameType
    session: bytes = NO_SESSION
    step: int = 0
    flags: FrameFlags = NO_FLAGS
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[WireTensor, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", FrameType(self.type))
        except ValueError as exc:
            raise UnknownFrameTypeError(f"frame type {self.type!r} is not one of {list(FrameType)}") from exc
        if not isinstance(self.flags, int) or int(self.flags) & ~_ALL_FLAGS or self.flags < 0:
            raise UnknownFlagsError(f"flags {self.flags!r} set bits outside {_ALL_FLAGS:#06x}")
        object.__setattr__(self, "flags", FrameFlags(self.flags))
        if not isinstance(self.session, bytes) or len(self.session) != SESSION_ID_BYTES:
            raise FrameHeaderError(f"session id must be {SESSION_ID_BYTES} bytes, got {self.session!r}")
        if not isinstance(self.step, int) or not 0 <= self.step <= MAX_STEP:
            raise FrameHeaderError(f"step {self.step!r} is not in 0..{MAX_STEP}")
        if not isinstance(self.meta, dict):
            raise MetadataError(f"metadata must be a dict, got {type(self.meta).__name__}")
        if "tensors" in self.meta:
            raise MetadataError('metadata key "tensors" is reserved for the tensor descriptors')
        _check_json(self.meta, 0, "$")
        if self.type is FrameType.ERROR:
            code, message = self.meta.get("code"), self.meta.get("message")
            if not isinstance(code, str) or not isinstance(message, str):
                raise MetadataError(
                    f"ERROR frame metadata needs string code and message, got {self.meta!r:.200}"
                )
            if len(message.encode("utf-8", "replace")) > MAX_ERROR_MESSAGE_BYTES:
                raise MetadataError(f"ERROR message is over {MAX_ERROR_MESSAGE_BYTES} bytes")
        object.__setattr__(self, "tensors", tuple(self.tensors))
        if len(self.tensors) > MAX_TENSORS:
            raise LimitExceededError(f"{len(self.tensors)} tensors is over the limit of {MAX_TENSORS}")
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise DuplicateTensorError(f"tensor names {names} are not unique")

    def tensor(self, name: str) -> WireTensor:
        """The tensor called ``name``; a missing one is the sender's mistake, so it is a WireError."""
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise MetadataError(
            f"{self.type.name} frame has no tensor {name!r} (has {[t.name for t in self.tensors]})"
        )


def _canonical(obj: object) -> bytes:
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise MetadataError(f"metadata cannot be written as canonical JSON: {exc}") from exc


def encode_frame(frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Write a frame in its one canonical encoding; refuses what a peer's decoder would refuse."""
    meta: dict[str, Any] = dict(frame.meta)
    offsets, end = [], 0
    for tensor in frame.tensors:
        offsets.append(_align(end))
        end = offsets[-1] + len(tensor.data)
    if frame.tensors:
        meta["tensors"] = [
            {"dtype": t.dtype, "name": t.name, "nbytes": len(t.data), "offset": o, "shape": list(t.shape)}
            for t, o in zip(frame.tensors, offsets, strict=True)
        ]
    meta_bytes = _canonical(meta)
    if len(meta_bytes) > MAX_METADATA_BYTES:
        raise LimitExceededError(f"metadata of {len(meta_bytes)} bytes is over {MAX_METADATA_BYTES}")
    start = _align(HEADER_SIZE + len(meta_bytes))
    if start + end > max_frame_bytes:
        raise LimitExceededError(f"frame of {start + end} bytes is over the limit of {max_frame_bytes}")
    out = bytearray(start + end)
    HEADER.pack_into(
        out, 0, MAGIC, VERSION, frame.type, frame.flags, frame.session, frame.step, len(meta_bytes), end
    )
    out[HEADER_SIZE : HEADER_SIZE + len(meta_bytes)] = meta_bytes
    for tensor, offset in zip(frame.tensors, offsets, strict=True):
        out[start + offset : start + offset + len(tensor.data)] = tensor.data
    return bytes(out)


def decode_frame(data: bytes | bytearray | memoryview, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Parse and validate a frame; any malformed input raises a ``WireError`` subclass, nothing else."""
    view = memoryview(data).cast("B")
    if len(view) > max_frame_bytes:
        raise LimitExceededError(f"frame of {len(view)} bytes is over the limit of {max_frame_bytes}")
    if len(view) < HEADER_SIZE:
        raise TruncatedFrameError(f"frame of {len(view)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, ftype, flags, session, step, meta_len, tensors_len = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise BadMagicError(f"frame starts with {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise UnsupportedVersionError(f"wire version {version} is not supported (this peer speaks {VERSION})")
    try:
        frame_type = FrameType(ftype)
    except ValueError:
        raise UnknownFrameTypeError(
            f"frame type {ftype} is not one of {[int(t) for t in FrameType]}"
        ) from None
    if flags & ~_ALL_FLAGS:
        raise UnknownFlagsError(f"flags {flags:#06x} set bits outside {_ALL_FLAGS:#06x}")
    if meta_len > MAX_METADATA_BYTES:
        raise LimitExceededError(f"metadata of {meta_len} bytes is over the limit of {MAX_METADATA_BYTES}")
    start = _align(HEADER_SIZE + meta_len)
    if start + tensors_len > max_frame_bytes:
        raise LimitExceededError(f"declared frame of {start + tensors_len} bytes is over {max_frame_bytes}")
    if len(view) < start + tensors_len:
        raise TruncatedFrameError(
            f"frame of {len(view)} bytes is shorter than its declared {start + tensors_len}"
        )
    if len(view) > start + tensors_len:
        raise FrameLayoutError(
            f"frame of {len(view)} bytes is longer than its declared {start + tensors_len}"
        )
    if any(view[HEADER_SIZE + meta_len : start]):
        raise FrameLayoutError("padding after the metadata is not zero")
    meta_bytes = bytes(view[HEADER_SIZE : HEADER_SIZE + meta_len])
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MetadataError(f"metadata is not UTF-8 JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise MetadataError(f"metadata is a JSON {type(meta).__name__}, not an object")
    if _canonical(meta) != meta_bytes:
        raise MetadataError("metadata is not canonical JSON (sorted keys, no spaces, UTF-8, no escapes)")
    has_tensors = "tensors" in meta
    descriptors: Any = meta.pop("tensors", [])
    if has_tensors and (not isinstance(descriptors, list) or not descriptors):
        raise MetadataError('metadata "tensors" must be a non-empty list when present')
    if len(descriptors) > MAX_TENSORS:
        raise LimitExceededError(f"{len(descriptors)} tensors is over the limit of {MAX_TENSORS}")
    section = view[start:]
    tensors = []
    end = 0
    for desc in descriptors:
        if not isinstance(desc, dict) or desc.keys() != _TENSOR_KEYS:
            raise MetadataError(
                f"tensor descriptor {desc!r:.200} must have exactly the keys {sorted(_TENSOR_KEYS)}"
            )
        name, dtype, shape, offset, nbytes = (desc[k] for k in ("name", "dtype", "shape", "offset", "nbytes"))
        if not isinstance(shape, list) or type(offset) is not int or type(nbytes) is not int:
            raise MetadataError(
                f"tensor descriptor {desc!r:.200}: shape is a list, offset and nbytes integers"
            )
        if nbytes != _numel(dtype, shape) * DTYPE_SIZES[dtype]:
            raise TensorError(f"tensor {name!r}: shape {shape} of {dtype} does not fill its {nbytes} bytes")
        if offset != _align(end) or offset + nbytes > tensors_len:
            raise FrameLayoutError(f"tensor {name!r} at {offset}+{nbytes} is not where the layout puts it")
        if any(section[end:offset]):
            raise FrameLayoutError(f"padding before tensor {name!r} is not zero")
        tensors.append(WireTensor(name, dtype, tuple(shape), bytes(section[offset : offset + nbytes])))
        end = offset + nbytes
    if end != tensors_len:
        raise FrameLayoutError(f"tensor section is {tensors_len} bytes but its tensors end at {end}")
    return Frame(frame_type, bytes(session), step, FrameFlags(flags), meta, tuple(tensors))


def _float_blocks(tensor: WireTensor) -> Iterator[tuple[int, Sequence[float]]]:
    if tensor.dtype == "float32":
        values = array("f")
        values.frombytes(tensor.data)
        if sys.byteorder == "big":
            values.byteswap()
        yield 0, values
        return
    for first in range(0, tensor.numel, _FLOAT16_BLOCK):  # float16: no array type, unpack in blocks
        count = min(_FLOAT16_BLOCK, tensor.numel - first)
        yield first, struct.unpack_from(f"<{count}e", tensor.data, first * 2)


def check_finite(tensor: WireTensor) -> None:
    """Raise ``NonFiniteError`` if a float tensor holds NaN or Inf; for Pyodide and tests (no numpy).

    Summing in double precision is exact for this purpose: finite float16/float32 values cannot
    overflow a double, so the sum is finite exactly when every element is.
    """
    if tensor.dtype in ("int64", "uint8"):
        return
    for first, block in _float_blocks(tensor):
        if not math.isfinite(sum(block)):
            index, value = next((i, v) for i, v in enumerate(block) if not math.isfinite(v))
            raise NonFiniteError(
                f"tensor {tensor.name!r} ({tensor.dtype}, shape {list(tensor.shape)}) holds {value} "
                f"at flat index {first + index}"
            )


def _cap_message(message: str) -> str:
    raw = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE_BYTES]
    return raw.decode("utf-8", "ignore")


def error_frame(session: bytes, step: int, code: ErrorCode | str, message: str) -> Frame:
    """The ERROR frame a peer sends back; the message is cut to MAX_ERROR_MESSAGE_BYTES of UTF-8."""
    return Frame(FrameType.ERROR, session, step, meta={"code": str(code), "message": _cap_message(message)})


def raise_for_error(frame: Frame) -> None:
    """On the caller: raise the typed ``RemoteError`` an ERROR frame stands for; other frames pass.

    An unknown code (a newer peer) raises the base ``RemoteError`` with that code.
    """
    if frame.type is not FrameType.ERROR:
        return
    code, message = str(frame.meta["code"]), str(frame.meta["message"])
    cls = REMOTE_ERRORS.get(code, RemoteError)
    raise cls(f"peer answered {code}: {message}", code=code)


def chunk_message(message_id: int, data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """Cut one message into data channel messages of at most ``chunk_size`` bytes each."""
    if not 0 <= message_id <= MAX_MESSAGE_ID:
        raise ValueError(f"message id {message_id} is not in 0..{MAX_MESSAGE_ID}")
    if chunk_size <= CHUNK_HEADER_SIZE:
        raise ValueError(f"chunk size {chunk_size} leaves no room after the {CHUNK_HEADER_SIZE}-byte header")
    payload = chunk_size - CHUNK_HEADER_SIZE
    count = max(1, -(-len(data) // payload))
    if count > MAX_CHUNKS:
        raise LimitExceededError(f"message of {len(data)} bytes needs {count} chunks, over {MAX_CHUNKS}")
    return [
        CHUNK_HEADER.pack(CHUNK_MAGIC, message_id, i, count) + data[i * payload : (i + 1) * payload]
        for i in range(count)
    ]


@dataclass
class _Partial:
    started: float
    count: int
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Joins chunks back into messages, within fixed bounds; time is passed in, so tests need no clock.

    Any inconsistency drops that message's partial state and raises a ``WireError`` subclass; other
    messages are untouched. A stuck message holds its room until ``expire`` drops it.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_FRAME_BYTES,
        max_partial: int = 8,
        max_buffered_bytes: int = 2 * MAX_FRAME_BYTES,
        timeout_s: float = 30.0,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_partial = max_partial
        self.max_buffered_bytes = max_buffered_bytes
        self.timeout_s = timeout_s
        self._partial: dict[int, _Partial] = {}
        self._buffered = 0

    def __len__(self) -> int:
        return len(self._partial)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def _drop(self, message_id: int) -> None:
        partial = self._partial.pop(message_id, None)
        if partial is not None:
            self._buffered -= partial.size

    def _refuse(self, message_id: int, error: Exception) -> Exception:
        self._drop(message_id)
        return error

    def feed(self, chunk: bytes | bytearray | memoryview, now: float) -> bytes | None:
        """Take one chunk; return the whole message when this chunk completes it, else None."""
        chunk = bytes(chunk)
        if len(chunk) < CHUNK_HEADER_SIZE:
            raise ChunkError(
                f"chunk of {len(chunk)} bytes is shorter than the {CHUNK_HEADER_SIZE}-byte header"
            )
        magic, mid, index, count = CHUNK_HEADER.unpack_from(chunk)
        payload = chunk[CHUNK_HEADER_SIZE:]
        if magic != CHUNK_MAGIC:
            raise ChunkError(f"chunk starts with {magic!r}, not {CHUNK_MAGIC!r}")
        if count == 0 or index >= count:
            raise self._refuse(
                mid, ChunkError(f"message {mid}: chunk index {index} is outside 0..{count - 1}")
            )
        if count > 1 and not payload:
            raise self._refuse(mid, ChunkError(f"message {mid}: chunk {index} of {count} is empty"))
        partial = self._partial.get(mid)
        if partial is None:
            if count == 1:
                if len(payload) > self.max_message_bytes:
                    raise LimitExceededError(
                        f"message {mid} of {len(payload)} bytes is over {self.max_message_bytes}"
                    )
                return payload
            if len(self._partial) >= self.max_partial:
                raise LimitExceededError(
                    f"{len(self._partial)} partial messages already; refusing message {mid}"
                )
            partial = self._partial[mid] = _Partial(now, count)
        elif count != partial.count:
            raise self._refuse(
                mid, ChunkError(f"message {mid}: chunk says {count} chunks, earlier {partial.count}")
            )
        elif index in partial.parts:
            raise self._refuse(mid, ChunkError(f"message {mid}: chunk {index} arrived twice"))
        if partial.size + len(payload) > self.max_message_bytes:
            raise self._refuse(
                mid, LimitExceededError(f"message {mid} is over {self.max_message_bytes} bytes")
            )
        if self._buffered + len(payload) > self.max_buffered_bytes:
            raise self._refuse(
                mid, LimitExceededError(f"reassembly buffer is over {self.max_buffered_bytes} bytes")
            )
        partial.parts[index] = payload
        partial.size += len(payload)
        self._buffered += len(payload)
        if len(partial.parts) < count:
            return None
        self._drop(mid)
        return b"".join(partial.parts[i] for i in range(count))

    def expire(self, now: float) -> list[int]:
        """Drop partial messages whose first chunk came more than ``timeout_s`` before ``now``."""
        stale = [mid for mid, p in self._partial.items() if now - p.started > self.timeout_s]
        for mid in stale:
            self._drop(mid)
        return stale

"""Canonical JSON for signing, and the signed bodies of the signaling protocol.

Standard library only: the browser node runs this file under Pyodide, and a browser written in plain
JavaScript must produce the very same bytes, so the rules are few and stated in ``docs/signaling.md``:
keys sorted by code point, no whitespace, UTF-8 without escaping non-ASCII, integers within
``±(2**53 - 1)`` (what a JavaScript number holds exactly), no NaN or Inf. Finite floats are allowed but
their text can differ between Python and JavaScript (``1e-07`` vs ``1e-7``), so signed bodies defined
here hold integers only.

A signature always covers ``signing_bytes(context, body)``: a context string naming what is signed
(so an announcement signature can never pass for a signal or a ledger entry), a newline, then the
canonical JSON of the body.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import AnnouncementError, CanonicalError, MessageError

MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 32

ANNOUNCE_CONTEXT = "ai4all/announce/v1"
SIGNAL_CONTEXT = "ai4all/signal/v1"
AUTH_CONTEXT = "ai4all/auth/v1"
BYE_CONTEXT = "ai4all/bye/v1"  # a peer withdrawing its announcement: signs ``bye_body(peer_id, seq)``

PROTOCOL_VERSION = 1
PEER_KINDS = ("native", "browser")
MAX_MESSAGE_BYTES = 64 * 1024  # one websocket text message, in UTF-8 bytes
MAX_SIGNAL_PAYLOAD_BYTES = 32 * 1024  # canonical JSON of one signal's payload
MIN_TTL_MS = 1_000
MAX_TTL_MS = 600_000
MAX_CLOCK_SKEW_MS = 60_000  # how far in the future an announcement may be issued
# How far ``seq`` may run ahead of ``issued_ms``: peers announce with seq = max(previous + 1, now in ms),
# so a seq far past its issue time is a forgery or a bug that would make every later announcement of
# that identity ``stale`` until it expired. With issued_ms bounded by now + MAX_CLOCK_SKEW_MS, a seq
# can never be more than MAX_SEQ_AHEAD_MS + MAX_CLOCK_SKEW_MS ahead of a node's clock.
MAX_SEQ_AHEAD_MS = 60_000
MAX_SIGNAL_AGE_MS = 60_000  # a signal older (or newer) than this is refused as a replay
MAX_SERVES = 32
MAX_SIGNALING_URLS = 8
MAX_LAYER = 65_536
MAX_COUNTER = 10**15  # bound of throughput and free KV room

PEER_ID_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{128}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
URL_RE = re.compile(r"^wss?://[\x21-\x7e]{1,250}$")


def bye_body(peer_id: str, seq: int) -> dict[str, Any]:
    """What a peer signs (``BYE_CONTEXT``) to withdraw its announcement ``seq``: a ``bye`` to its node
    carries it, and the ``gone`` the node gossips carries it on, so no node can withdraw an announcement
    its peer did not."""
    return {"peer_id": peer_id, "seq": seq}


def _check_canonical(value: Any, depth: int) -> None:
    """Refuse anything whose canonical form is ambiguous or differs between Python and JavaScript."""
    if depth > MAX_DEPTH:
        raise CanonicalError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalError(f"integer {value} is outside ±(2**53 - 1), which JavaScript cannot hold")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(f"{value} has no JSON form: only finite numbers are allowed")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_canonical(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"object key {key!r} is a {type(key).__name__}: keys must be strings")
            _check_canonical(item, depth + 1)
        return
    raise CanonicalError(f"a {type(value).__name__} has no JSON form")


def canonical_bytes(value: Any) -> bytes:
    """The one byte string that ``value`` signs as: sorted keys, no spaces, UTF-8."""
    _check_canonical(value, 0)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from exc


def signing_bytes(context: str, body: Any) -> bytes:
    """The bytes a signature covers: ``context``, a newline, the canonical JSON of ``body``."""
    return context.encode("utf-8") + b"\n" + canonical_bytes(body)


def is_peer_id(value: object) -> bool:
    """Whether ``value`` is a peer id: 64 lowercase hex digits (an Ed25519 public key)."""
    return isinstance(value, str) and PEER_ID_RE.match(value) is not None


def is_signature(value: object) -> bool:
    """Whether ``value`` is a signature: 128 lowercase hex digits (an Ed25519 signature)."""
    return isinstance(value, str) and SIGNATURE_RE.match(value) is not None


def _int(name: str, value: object, low: int, high: int, error: type[Exception] = AnnouncementError) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise error(f"{name} = {value} is outside [{low}, {high}]")
    return value


def _exact_keys(what: str, data: object, keys: frozenset[str], error: type[Exception]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, not {type(data).__name__}")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(str(k) for k in set(data) - keys)
        raise error(f"{what} has missing fields {missing} and unknown fields {extra[:8]}")
    return data


@dataclass(frozen=True)
class ServedSpan:
    """Blocks ``[start, end)`` of ``model`` that a peer serves."""

    model: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise AnnouncementError(
                f"model {self.model!r} is not a model name: 1-128 of A-Z a-z 0-9 . _ : / @ + -"
            )
        _int("start", self.start, 0, MAX_LAYER - 1)
        _int("end", self.end, self.start + 1, MAX_LAYER)

    def overlaps(self, model: str, start: int, end: int) -> bool:
        return self.model == model and self.start < end and start < self.end

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, data: object) -> ServedSpan:
        fields = _exact_keys("a served span", data, _SPAN_KEYS, AnnouncementError)
        return cls(fields["model"], fields["start"], fields["end"])


_SPAN_KEYS = frozenset({"model", "start", "end"})


@dataclass(frozen=True)
class Announcement:
    """What a peer tells signaling nodes about itself; signed by the peer, soft state with an expiry.

    ``seq`` orders announcements of one peer: a node keeps the highest. Times are milliseconds since
    the Unix epoch; ``throughput_milli`` is tokens per second times 1000 (integers keep the canonical
    form identical in every language).
    """

    peer_id: str
    kind: str
    seq: int
    issued_ms: int
    expires_ms: int
    serves: tuple[ServedSpan, ...] = ()
    throughput_milli: int = 0
    kv_free_tokens: int = 0
    signaling: tuple[str, ...] = ()
    v: int = field(default=PROTOCOL_VERSION)

    def __post_init__(self) -> None:
        _int("v (the announcement version)", self.v, PROTOCOL_VERSION, PROTOCOL_VERSION)
        if not is_peer_id(self.peer_id):
            raise AnnouncementError("peer_id must be 64 lowercase hex digits (an Ed25519 public key)")
        if self.kind not in PEER_KINDS:
            raise AnnouncementError(f"kind {self.kind!r} is not one of {', '.join(PEER_KINDS)}")
        _int("seq", self.seq, 0, MAX_SAFE_INT)
        _int("issued_ms", self.issued_ms, 0, MAX_SAFE_INT)
        if self.seq > self.issued_ms + MAX_SEQ_AHEAD_MS:
            raise AnnouncementError(
                f"seq {self.seq} runs more than {MAX_SEQ_AHEAD_MS} ahead of issued_ms {self.issued_ms}: "
                "announce with seq = max(previous seq + 1, now in ms)"
            )
        _int("expires_ms", self.expires_ms, self.issued_ms + MIN_TTL_MS, self.issued_ms + MAX_TTL_MS)
        _int("throughput_milli", self.throughput_milli, 0, MAX_COUNTER)
        _int("kv_free_tokens", self.kv_free_tokens, 0, MAX_COUNTER)
        if not isinstance(self.serves, tuple) or len(self.serves) > MAX_SERVES:
            raise AnnouncementError(f"serves must hold at most {MAX_SERVES} spans")
        if not all(isinstance(s, ServedSpan) for s in self.serves):
            raise AnnouncementError("serves must hold ServedSpan values")
        if not isinstance(self.signaling, tuple) or len(self.signaling) > MAX_SIGNALING_URLS:
            raise AnnouncementError(f"signaling must hold at most {MAX_SIGNALING_URLS} URLs")
        for url in self.signaling:
            if not isinstance(url, str) or URL_RE.match(url) is None:
                raise AnnouncementError(
                    f"signaling URL {url!r} is not ws:// or wss:// with at most 256 chars"
                )

    def covers(self, model: str, start: int, end: int) -> bool:
        """Whether this peer serves any block of ``model`` in ``[start, end)``."""
        return any(span.overlaps(model, start, end) for span in self.serves)

    def check_fresh(self, now_ms: int, max_skew_ms: int = MAX_CLOCK_SKEW_MS) -> None:
        """Refuse an announcement that has expired or claims to be issued in the future."""
        if self.expires_ms <= now_ms:
            raise AnnouncementError(
                f"announcement of {self.peer_id[:12]}… expired {now_ms - self.expires_ms} ms ago",
                code="expired",
            )
        if self.issued_ms > now_ms + max_skew_ms:
            raise AnnouncementError(
                f"announcement is issued {self.issued_ms - now_ms} ms in the future: check the peer's clock"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "peer_id": self.peer_id,
            "kind": self.kind,
            "seq": self.seq,
            "issued_ms": self.issued_ms,
            "expires_ms": self.expires_ms,
            "serves": [s.to_dict() for s in self.serves],
            "throughput_milli": self.throughput_milli,
            "kv_free_tokens": self.kv_free_tokens,
            "signaling": list(self.signaling),
        }

    @classmethod
    def from_dict(cls, data: object) -> Announcement:
        """Validate a body received as JSON; unknown or missing fields are refused, never guessed."""
        body = _exact_keys("an announcement body", data, _ANNOUNCEMENT_KEYS, AnnouncementError)
        serves, signaling = body["serves"], body["signaling"]
        if not isinstance(serves, list) or len(serves) > MAX_SERVES:
            raise AnnouncementError(f"serves must be a list of at most {MAX_SERVES} spans")
        if not isinstance(signaling, list) or len(signaling) > MAX_SIGNALING_URLS:
            raise AnnouncementError(f"signaling must be a list of at most {MAX_SIGNALING_URLS} URLs")
        return cls(
            peer_id=body["peer_id"],
            kind=body["kind"],
            seq=body["seq"],
            issued_ms=body["issued_ms"],
            expires_ms=body["expires_ms"],
            serves=tuple(ServedSpan.from_dict(s) for s in serves),
            throughput_milli=body["throughput_milli"],
            kv_free_tokens=body["kv_free_tokens"],
            signaling=tuple(signaling),
            v=body["v"],
        )


_ANNOUNCEMENT_KEYS = frozenset(
    {
        "v",
        "peer_id",
        "kind",
        "seq",
        "issued_ms",
        "expires_ms",
        "serves",
        "throughput_milli",
        "kv_free_tokens",
        "signaling",
    }
)


@dataclass(frozen=True)
class SignalBody:
    """The signed part of a ``signal``: the receiving peer verifies it, so no node can forge a sender."""

    sender: str
    recipient: str
    ts_ms: int
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        if not is_peer_id(self.sender) or not is_peer_id(self.recipient):
            raise MessageError("from and to must be peer ids (64 lowercase hex digits)")
        _int("ts_ms", self.ts_ms, 0, MAX_SAFE_INT, MessageError)
        if not isinstance(self.payload, dict):
            raise MessageError("payload must be a JSON object")
        try:
            size = len(canonical_bytes(self.payload))
        except CanonicalError as exc:
            raise MessageError(f"payload: {exc}") from exc
        if size > MAX_SIGNAL_PAYLOAD_BYTES:
            raise MessageError(
                f"payload is {size} bytes of canonical JSON, over {MAX_SIGNAL_PAYLOAD_BYTES}",
                code="too_large",
            )

    def check_fresh(self, now_ms: int) -> None:
        """Refuse a signal from too far in the past or future: a replay, or a clock far off."""
        if abs(now_ms - self.ts_ms) > MAX_SIGNAL_AGE_MS:
            raise MessageError(f"signal timestamp is {now_ms - self.ts_ms} ms off: a replay?", code="expired")

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.sender, "to": self.recipient, "ts_ms": self.ts_ms, "payload": self.payload}

    def signing_bytes(self) -> bytes:
        return signing_bytes(SIGNAL_CONTEXT, self.to_dict())

    @classmethod
    def from_dict(cls, data: object) -> SignalBody:
        body = _exact_keys("a signal body", data, _SIGNAL_KEYS, MessageError)
        return cls(body["from"], body["to"], body["ts_ms"], body["payload"])


_SIGNAL_KEYS = frozenset({"from", "to", "ts_ms", "payload"})

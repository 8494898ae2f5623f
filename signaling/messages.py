"""Every signaling message as a strict pydantic model, and the one function that parses them.

Messages are JSON text over a websocket, one object per message, with a ``type`` field. Parsing never
coerces ("5" is not 5, true is not 1), refuses unknown fields, and turns every failure into a
``MessageError`` whose ``code`` goes back to the sender in an ``error`` message. The signed bodies
(announcements, signals) are checked by ``python_peer.core.canonical``, which the browser shares.
``docs/signaling.md`` describes each message for implementers in other languages.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from python_peer.core.canonical import (
    MAX_LAYER,
    MAX_MESSAGE_BYTES,
    MAX_SAFE_INT,
    MODEL_RE,
    PEER_ID_RE,
    SIGNATURE_RE,
    URL_RE,
)
from python_peer.core.errors import MessageError
from python_peer.core.model_summary import MAX_MODELS

MAX_LOOKUP_RESULTS = 64
DEFAULT_LOOKUP_RESULTS = 32
MAX_HOPS = 8  # gossip travels at most this many sibling links
MAX_RELAY_TTL = 4  # a relayed signal crosses at most this many sibling links
MAX_REPLY_BYTES = 256 * 1024  # a ``peers`` reply is cut (``truncated: true``) to stay under this

# Codes of ``error`` messages; docs/signaling.md says when each is sent.
ERROR_CODES = (
    "bad_json",
    "too_large",
    "bad_message",
    "bad_announcement",
    "bad_signature",
    "expired",
    "stale",
    "not_announced",
    "unknown_peer",
    "rate_limited",
    "table_full",
    "not_sibling",
    "bad_record",
    "timeout",
    "internal",
)

PeerId = Annotated[str, Field(pattern=PEER_ID_RE.pattern)]
Signature = Annotated[str, Field(pattern=SIGNATURE_RE.pattern)]
ModelName = Annotated[str, Field(pattern=MODEL_RE.pattern)]
Url = Annotated[str, Field(pattern=URL_RE.pattern)]
NodeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Nonce = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,128}$")]
FEDERATE_CONTEXT = "ai4all/federate/v1"  # signatures of signaling nodes proving their node key
SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
RequestId = Annotated[int | None, Field(ge=0, le=MAX_SAFE_INT)]
JsonObject = dict[str, Any]


class Message(BaseModel):
    """Base of every message: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    def encode(self) -> str:
        """The JSON text sent on the websocket."""
        return self.model_dump_json(by_alias=True)


# --- peer -> node -------------------------------------------------------------------------------------


class Announce(Message):
    """A signed announcement, plus ``proof`` that this connection holds the key (signs the hello nonce)."""

    type: Literal["announce"]
    id: RequestId = None
    body: JsonObject
    sig: Signature
    proof: Signature


class Lookup(Message):
    """Who serves any block of ``model`` in ``[start, end)``?"""

    type: Literal["lookup"]
    id: RequestId = None
    model: ModelName
    start: Annotated[int, Field(ge=0, le=MAX_LAYER - 1)]
    end: Annotated[int, Field(ge=1, le=MAX_LAYER)]
    limit: Annotated[int, Field(ge=1, le=MAX_LOOKUP_RESULTS)] = DEFAULT_LOOKUP_RESULTS

    @model_validator(mode="after")
    def _span_not_empty(self) -> Lookup:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self


class Models(Message):
    """Which models do the peers known here serve, and which blocks of each? (``core/model_summary.py``)"""

    type: Literal["models"]
    id: RequestId = None
    limit: Annotated[int, Field(ge=1, le=MAX_MODELS)] = MAX_MODELS


class SignalFields(Message):
    """The fields of a signed signal, as sent by its author and delivered to its target."""

    from_: PeerId = Field(alias="from")
    to: PeerId
    ts_ms: SafeInt
    payload: JsonObject
    sig: Signature

    def body(self) -> dict[str, Any]:
        """The signed part, as ``core.canonical.SignalBody`` defines it."""
        return {"from": self.from_, "to": self.to, "ts_ms": self.ts_ms, "payload": self.payload}


class Signal(SignalFields):
    """SDP or ICE for peer ``to``; ``from`` must be the peer this connection announced."""

    type: Literal["signal"]
    id: RequestId = None


class Bye(Message):
    """The peer leaves: its announcement is withdrawn here, and on siblings when signed.

    ``seq`` and ``sig``, both or neither: the peer's signature (``BYE_CONTEXT``) over
    ``bye_body(peer_id, seq)``; it withdraws every announcement of the peer with a seq up to ``seq``, so a
    peer says bye with its next seq (``max(last seq + 1, now in ms)``, at most as far ahead of a node's
    clock as an announcement's seq may be), which supersedes every announcement it signed, one in flight
    included. Only a signed bye travels to siblings (as ``gone``, with the signature): a node cannot
    withdraw what the peer did not, and a replayed bye never withdraws an announcement signed after it."""

    type: Literal["bye"]
    id: RequestId = None
    seq: SafeInt | None = None
    sig: Signature | None = None

    @model_validator(mode="after")
    def _signed_or_not(self) -> Bye:
        if (self.seq is None) != (self.sig is None):
            raise ValueError("a signed bye carries both seq and sig")
        return self


class Register(Message):
    """A publisher-signed registry record (``core/registry_record.py``) of a model this peer serves."""

    type: Literal["register"]
    id: RequestId = None
    body: JsonObject
    sig: Signature


class ManifestsQuery(Message):
    """The records of ``model`` with their publishers, or (no ``model``) the model names known here."""

    type: Literal["manifests"]
    id: RequestId = None
    model: ModelName | None = None


class Federate(Message):
    """Sent by a signaling node that dials a sibling: the connection becomes a sibling link.

    ``key`` is the dialer's node key (Ed25519, 64 hex digits), which the other node must have configured
    as a sibling; ``proof`` signs ``federate_claim(node_id, key, the other node's id, the hello's nonce)``
    under ``FEDERATE_CONTEXT``; ``nonce`` is the dialer's own challenge, which the ``federated`` reply signs.
    """

    type: Literal["federate"]
    id: RequestId = None
    node_id: NodeId
    url: Url | None = None
    key: PeerId
    nonce: Nonce
    proof: Signature


class Federated(Message):
    """The accepting node's answer to ``federate``: its node key and its signature of the dialer's nonce."""

    type: Literal["federated"] = "federated"
    node_id: NodeId
    key: PeerId
    proof: Signature


def federate_claim(from_node: str, key: str, to_node: str, nonce: str) -> dict[str, str]:
    """What a ``federate`` or ``federated`` proof signs: who speaks, with which key, to whom, which nonce."""
    return {"from": from_node, "key": key, "to": to_node, "nonce": nonce}


# --- sibling <-> sibling ------------------------------------------------------------------------------


class Gossip(Message):
    """An announcement passed between siblings, exactly as its peer signed it."""

    type: Literal["gossip"]
    hops: Annotated[int, Field(ge=0, le=MAX_HOPS)]
    body: JsonObject
    sig: Signature


class Gone(Message):
    """A peer said ``bye``: drop its announcement if its seq is at most ``seq`` (never a later one).
    ``sig`` is the peer's own signature of ``bye_body(peer_id, seq)`` (``BYE_CONTEXT``), checked by every
    node that takes it."""

    type: Literal["gone"]
    hops: Annotated[int, Field(ge=0, le=MAX_HOPS)]
    peer_id: PeerId
    seq: SafeInt
    sig: Signature


class RecordGossip(Message):
    """A registry record passed between siblings, as its publisher signed it, with its expiry so far."""

    type: Literal["record"]
    hops: Annotated[int, Field(ge=0, le=MAX_HOPS)]
    body: JsonObject
    sig: Signature
    expires_ms: SafeInt


class Relay(SignalFields):
    """A signal on its way to the node where its target is connected."""

    type: Literal["relay"]
    ttl: Annotated[int, Field(ge=0, le=MAX_RELAY_TTL)]


PeerRequest = Announce | Lookup | Models | Signal | Bye | Federate | Register | ManifestsQuery
SiblingRequest = Gossip | Gone | Relay | RecordGossip
PeerMessage = Annotated[PeerRequest, Field(discriminator="type")]
SiblingMessage = Annotated[SiblingRequest, Field(discriminator="type")]
PEER_TYPES = ("announce", "lookup", "models", "signal", "bye", "federate", "register", "manifests")
SIBLING_TYPES = ("gossip", "gone", "relay", "record")
_PEER_ADAPTER: TypeAdapter[PeerRequest] = TypeAdapter(PeerMessage)
_SIBLING_ADAPTER: TypeAdapter[SiblingRequest] = TypeAdapter(SiblingMessage)


# --- node -> peer -------------------------------------------------------------------------------------


class Limits(Message):
    """The bounds a node enforces, so a client can stay inside them: ``first_message_ms``, how soon after
    opening a websocket must send a message the node takes, and ``idle_ms``, how long a peer connection
    may then go without one (a client re-announces well within it)."""

    max_message_bytes: int
    messages_per_s: float
    burst: int
    max_ttl_ms: int
    max_lookup_results: int
    first_message_ms: int
    idle_ms: int


class Hello(Message):
    """First message on every connection: who the node is and the nonce that ``proof`` signs."""

    type: Literal["hello"] = "hello"
    protocol: int
    node_id: str
    nonce: str
    siblings: list[str]
    limits: Limits


class Announced(Message):
    type: Literal["announced"] = "announced"
    id: int | None
    peer_id: str
    seq: int
    expires_ms: int


class SignedAnnouncement(Message):
    body: JsonObject
    sig: str


class Peers(Message):
    """Answer to ``lookup``: the matching announcements as signed, for the client to verify itself."""

    type: Literal["peers"] = "peers"
    id: int | None
    peers: list[SignedAnnouncement]
    truncated: bool = False


class Registered(Message):
    """``register`` was taken: the record held here for (publisher, model), and its expiry here."""

    type: Literal["registered"] = "registered"
    id: int | None
    publisher: str
    model: str
    version: int
    expires_ms: int


class Registry(Message):
    """Answer to ``manifests``: ``records`` of ``model`` (each ``{"body", "sig", "trusted", "expires_ms"}``,
    to verify yourself; ``trusted`` is this node's view), or ``models``: the names known here."""

    type: Literal["registry"] = "registry"
    id: int | None
    model: str | None
    records: list[dict[str, Any]]
    models: list[dict[str, Any]]
    truncated: bool = False


class ModelList(Message):
    """Answer to ``models``: each model's distinct peers and announced spans, most peers first, bounded
    (``MAX_MODELS`` models of ``MAX_MODEL_SPANS`` spans); ``truncated`` when models were left out."""

    type: Literal["model_list"] = "model_list"
    id: int | None
    models: list[JsonObject]
    truncated: bool = False


class Ack(Message):
    """``signal`` was delivered or relayed, or ``bye`` was done."""

    type: Literal["ack"] = "ack"
    id: int | None


class Delivered(SignalFields):
    """A signal handed to its target."""

    type: Literal["signal"] = "signal"


class Error(Message):
    type: Literal["error"] = "error"
    id: int | None
    code: str
    message: str


# --- parsing ------------------------------------------------------------------------------------------


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _reject_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def decode_json(raw: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Turn websocket text into a JSON object, refusing binary, oversized and non-JSON input."""
    if not isinstance(raw, str):
        raise MessageError("binary websocket messages are not accepted: send JSON text")
    if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MessageError(f"message is over {max_bytes} bytes", code="too_large")
    try:
        data = json.loads(raw, parse_float=_finite_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message is not JSON: {str(exc)[:120]}", code="bad_json") from exc
    if not isinstance(data, dict):
        raise MessageError(f"a message is a JSON object, not {type(data).__name__}")
    return data


def request_id(data: object) -> int | None:
    """The ``id`` of a message, if it has a usable one, so even an error reply can echo it."""
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INT:
            return value
    return None


def _validate(adapter: TypeAdapter[Any], data: dict[str, Any], types: tuple[str, ...], role: str) -> Any:
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in types:
        raise MessageError(
            f"message type {str(kind)[:40]!r} is not one of {', '.join(types)} on a {role} link"
        )
    try:
        return adapter.validate_python(data, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "message"
        raise MessageError(f"{kind}: {where}: {first['msg']}"[:240]) from exc
    except RecursionError as exc:
        raise MessageError(f"{kind}: message nested too deeply") from exc


def parse_peer_message(data: dict[str, Any]) -> PeerRequest:
    """Validate a decoded message from a peer (or from a sibling before it sent ``federate``)."""
    result: PeerRequest = _validate(_PEER_ADAPTER, data, PEER_TYPES, "peer")
    return result


def parse_sibling_message(data: dict[str, Any]) -> SiblingRequest:
    """Validate a decoded message on a sibling link."""
    result: SiblingRequest = _validate(_SIBLING_ADAPTER, data, SIBLING_TYPES, "sibling")
    return result

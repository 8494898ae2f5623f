"""The ledger exchange on a session link: the metadata of its GOSSIP requests and of their answers.

A client and a span server exchange three ledger requests over the link of their sessions, each the
metadata of a GOSSIP frame, each answered by a RESULT frame:

=========  ===================================================  =======================
request    request metadata                                     answer metadata
=========  ===================================================  =======================
push       ``{kind: "push", entries: [entry, ...]}``            ``{stored: n}``
receipt    ``{kind: "receipt", receipt, client_sig, server_sig}``  ``{recorded: receipt_id}``
gossip     ``{kind: "gossip", msg}``                            ``{replies: [msg, ...]}``
=========  ===================================================  =======================

and the answer to CLOSE carries the receipt the server proposes: ``{closed: true, receipt, server_sig}``
(or only ``{closed: true}`` when there is nothing to pay for). A client pushes its own log (at most
``PUSH_ENTRIES`` entries) before its first session on a peer, returns the countersigned receipt after
CLOSE, and runs anti-entropy rounds (``gossip.py`` messages) with the peer.

OPEN may carry the push itself: ``log: [entry, ...]`` (``OPEN_LOG``, at most ``PUSH_ENTRIES``) in its
metadata, stored as a push would be before the hold it names is checked, which saves the push's round
trip. A peer that takes it says so in every answer to OPEN (``log: true``); a client sends it only to
peers that said so (a peer that does not would refuse the hold it has not seen), and only the entries a
peer lacks past what it is known to hold (``parse_open_log``).

This module builds and parses those dicts, once, for every implementation: the native peer
(``python_peer/link_ledger.py``) and the browser node, which calls it under Pyodide through
``call_json``. The wire bytes are those of canonical JSON (``wire.py``), so key order does not matter.

Builders: ``push_request``, ``receipt_request``, ``gossip_request``; ``push_answer``, ``receipt_answer``,
``gossip_answer`` (keeps the leading replies that fit one frame's metadata: ``fit_replies``),
``close_answer``. Parsers: ``parse_request`` (-> ``PushRequest | ReceiptRequest | GossipRequest``),
``parse_push_answer`` (-> int), ``parse_receipt_answer`` (-> str), ``parse_gossip_answer``
(-> list of messages), ``parse_close_answer`` (-> None or ``(receipt, server_sig)``). Every parser
raises ``ExchangeError`` (a ``LedgerError``) whose message says what is wrong; a server answers it with
a ``bad_frame`` error frame, a client treats it as a failure of the peer that sent it.

``call_json(name, args_json)``: one of the functions above by name, with a JSON list of arguments; the
result as JSON (dataclasses as objects with their ``kind``). This is the browser's entry point:
``pyodide.pyimport('python_peer.core.ledger_exchange').call_json('parse_request', '[{...}]')``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .canonical import canonical_bytes
from .entries import Entry
from .errors import LedgerError
from .protocol import PUSH_BYTES, PUSH_ENTRIES
from .wire import MAX_METADATA_BYTES

log = logging.getLogger(__name__)

PUSH = "push"
RECEIPT = "receipt"
GOSSIP = "gossip"
OPEN_LOG = "log"  # OPEN's metadata: the entries a push would carry; OPEN's answer: true, this peer takes them


class ExchangeError(LedgerError):
    """Metadata of a ledger request or answer on a session link that is malformed: the message says how."""


@dataclass(frozen=True)
class PushRequest:
    """A client's own log entries (as JSON), for the server to judge its balance; invalid ones are skipped."""

    entries: list[Any]
    kind: Literal["push"] = "push"


@dataclass(frozen=True)
class ReceiptRequest:
    """The receipt a server proposed at CLOSE, countersigned by the client."""

    receipt: dict[str, Any]
    client_sig: str
    server_sig: str
    kind: Literal["receipt"] = "receipt"


@dataclass(frozen=True)
class GossipRequest:
    """One anti-entropy message (``gossip.py``) from the client."""

    msg: dict[str, Any]
    kind: Literal["gossip"] = "gossip"


LedgerRequest = PushRequest | ReceiptRequest | GossipRequest


# --- requests -------------------------------------------------------------------------------------------


def push_request(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The metadata of a push: a client's own entries, sent before its first session on a peer."""
    return {"kind": PUSH, "entries": list(entries)}


def receipt_request(receipt: dict[str, Any], client_sig: str, server_sig: str) -> dict[str, Any]:
    """The metadata returning a countersigned receipt, on the link of the session it pays for."""
    return {"kind": RECEIPT, "receipt": receipt, "client_sig": client_sig, "server_sig": server_sig}


def gossip_request(msg: dict[str, Any]) -> dict[str, Any]:
    """The metadata of one gossip message from the client."""
    return {"kind": GOSSIP, "msg": msg}


def _object(meta: object, what: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ExchangeError(f"{what} must be a JSON object, not {type(meta).__name__}")
    return meta


def parse_request(meta: object) -> LedgerRequest:
    """The ledger request in a GOSSIP frame's metadata, or ``ExchangeError`` saying what is wrong."""
    data = _object(meta, "a ledger request's metadata")
    kind = data.get("kind")
    if kind == PUSH:
        entries = data.get("entries")
        if not isinstance(entries, list) or len(entries) > PUSH_ENTRIES:
            raise ExchangeError(f"a push carries a list of at most {PUSH_ENTRIES} entries")
        return PushRequest(entries)
    if kind == RECEIPT:
        receipt, client_sig, server_sig = data.get("receipt"), data.get("client_sig"), data.get("server_sig")
        if not isinstance(receipt, dict):
            raise ExchangeError("a returned receipt must be a JSON object")
        if not isinstance(client_sig, str) or not isinstance(server_sig, str):
            raise ExchangeError("a returned receipt needs client_sig and server_sig strings")
        return ReceiptRequest(receipt, client_sig, server_sig)
    if kind == GOSSIP:
        msg = data.get("msg")
        if not isinstance(msg, dict):
            raise ExchangeError("a gossip message must be a JSON object")
        return GossipRequest(msg)
    raise ExchangeError(f"unknown ledger request {kind!r:.40}")


def parse_open_log(meta: dict[str, Any]) -> list[Any] | None:
    """The entries an OPEN's metadata carries (``OPEN_LOG``), None when it carries none, or
    ``ExchangeError``; each entry is parsed and checked where it is stored, as a push's."""
    entries = meta.get(OPEN_LOG)
    if entries is None:
        return None
    if not isinstance(entries, list) or len(entries) > PUSH_ENTRIES:
        raise ExchangeError(f"OPEN's {OPEN_LOG} carries a list of at most {PUSH_ENTRIES} entries")
    return entries


# --- answers --------------------------------------------------------------------------------------------


def push_answer(stored: int, held: int | None = None) -> dict[str, Any]:
    """How many of the pushed entries were new here, and (``held``, when given) the seq through which
    this peer now holds the pusher's own log: its next push here need carry only what follows."""
    return {"stored": stored} if held is None else {"stored": stored, "held": held}


def receipt_answer(receipt_id: str) -> dict[str, Any]:
    """The id of the receipt the server has just recorded."""
    return {"recorded": receipt_id}


def fit_replies(replies: list[dict[str, Any]], limit: int = MAX_METADATA_BYTES) -> list[dict[str, Any]]:
    """The leading gossip replies whose ``{"replies": [...]}`` fits one frame's metadata. Two replies can
    outgrow it (a 60 KiB ``heads`` and its ``want``); the ones left out cost a round, as pulling is
    idempotent: the client asks again."""
    kept: list[dict[str, Any]] = []
    size = len(b'{"replies":[]}')
    for reply in replies:
        cost = len(canonical_bytes(reply)) + (1 if kept else 0)
        if size + cost > limit:
            log.info("gossip reply of %d bytes left out: the frame is full", cost)
            break
        kept.append(reply)
        size += cost
    return kept


def push_bytes(entries: list[Entry]) -> int:
    """What ``entries`` weigh in a push's list, as canonical JSON with their commas."""
    return sum(len(e.encoded) + 1 for e in entries)


def fit_push(first: list[Entry], recent: list[Entry]) -> list[Entry]:
    """``first`` (a log's grant) and as many of ``recent`` (oldest first), the latest kept, as fit one push
    beside it (``PUSH_BYTES``): fork proofs, which a neighbour's gossip can make a node write by the dozen,
    are ten times a receipt's size, and 64 of them would outgrow a frame."""
    room = PUSH_BYTES - push_bytes(first)
    kept: list[Entry] = []
    for entry in reversed(recent):
        room -= len(entry.encoded) + 1
        if room < 0:
            break
        kept.append(entry)
    return [*first, *reversed(kept)]


def gossip_answer(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """The server's replies to one gossip message, as many as fit one frame."""
    return {"replies": fit_replies(replies)}


def close_answer(receipt: dict[str, Any] | None, server_sig: str | None) -> dict[str, Any]:
    """The answer to CLOSE, proposing ``receipt`` (signed ``server_sig``) when there is work to pay for."""
    if receipt is None or server_sig is None:
        return {"closed": True}
    return {"closed": True, "receipt": receipt, "server_sig": server_sig}


def parse_push_answer(meta: object) -> int:
    """The number of entries the server stored."""
    stored = _object(meta, "the answer to a push").get("stored")
    if not isinstance(stored, int) or isinstance(stored, bool) or stored < 0:
        raise ExchangeError("answered a push without a count of stored entries")
    return stored


def parse_push_held(meta: object) -> int | None:
    """The seq through which the server says it holds our log (``held``), or None if it did not say."""
    held = _object(meta, "the answer to a push").get("held")
    if not isinstance(held, int) or isinstance(held, bool) or held < 0:
        return None
    return held


def parse_receipt_answer(meta: object) -> str:
    """The id of the receipt the server recorded."""
    recorded = _object(meta, "the answer to a receipt").get("recorded")
    if not isinstance(recorded, str):
        raise ExchangeError("answered a receipt without the id it recorded")
    return recorded


def parse_gossip_answer(meta: object) -> list[dict[str, Any]]:
    """The server's replies to a gossip message, each a JSON object for the client's gossip session."""
    replies = _object(meta, "the answer to a gossip request").get("replies")
    if not isinstance(replies, list):
        raise ExchangeError("answered a gossip request without a list of replies")
    if not all(isinstance(reply, dict) for reply in replies):
        raise ExchangeError("a gossip message must be a JSON object")
    return replies


def parse_close_answer(meta: object) -> tuple[dict[str, Any], str] | None:
    """The receipt proposed at CLOSE and the server's signature, or None when it proposes none."""
    data = _object(meta, "the answer to CLOSE")
    if "receipt" not in data:
        return None
    receipt, server_sig = data.get("receipt"), data.get("server_sig")
    if not isinstance(receipt, dict):
        raise ExchangeError("the receipt proposed at CLOSE must be a JSON object")
    if not isinstance(server_sig, str):
        raise ExchangeError("the receipt proposed at CLOSE comes without the server's signature")
    return receipt, server_sig


# --- the browser's entry point --------------------------------------------------------------------------

_CALLABLE: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        push_request,
        receipt_request,
        gossip_request,
        parse_request,
        push_answer,
        receipt_answer,
        gossip_answer,
        close_answer,
        fit_replies,
        parse_push_answer,
        parse_push_held,
        parse_receipt_answer,
        parse_gossip_answer,
        parse_close_answer,
        parse_open_log,
    )
}


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def call_json(name: str, args_json: str) -> str:
    """``name(*args)`` for one public function of this module, arguments and result as JSON."""
    function = _CALLABLE.get(name)
    if function is None:
        raise ExchangeError(f"unknown ledger exchange function {name!r:.40}; one of: {', '.join(_CALLABLE)}")
    try:
        args = json.loads(args_json)
    except (ValueError, RecursionError) as exc:
        raise ExchangeError(f"{name}: arguments are not JSON: {exc}") from None
    if not isinstance(args, list):
        raise ExchangeError(f"{name}: arguments must be a JSON list")
    try:
        result = function(*args)
    except TypeError as exc:  # a wrong number of arguments
        raise ExchangeError(f"{name}: {exc}") from None
    return json.dumps(_jsonable(result), separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "OPEN_LOG",
    "ExchangeError",
    "GossipRequest",
    "LedgerRequest",
    "PushRequest",
    "ReceiptRequest",
    "call_json",
    "close_answer",
    "fit_push",
    "fit_replies",
    "gossip_answer",
    "gossip_request",
    "parse_close_answer",
    "parse_gossip_answer",
    "parse_open_log",
    "parse_push_answer",
    "parse_push_held",
    "parse_receipt_answer",
    "parse_request",
    "push_answer",
    "push_bytes",
    "push_request",
    "receipt_answer",
    "receipt_request",
]

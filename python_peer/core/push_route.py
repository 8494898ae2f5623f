"""The route a FORWARD carries when a peer is to push its output on to the next peer (docs/mesh.md, "Push").

A client sends a step to the first peer of a run of push-capable hops with ``push``: the rest of the run,
one entry per hop (``{"peer", "session", "step", "start", "end"}``). That peer runs its blocks, sends its
output as a FORWARD to the first entry's peer with ``client`` (the client's id) and the entries after it,
and answers the client as usual. The peer that gets a pushed FORWARD runs it in the client's session
(the session id is the client's secret: only a peer the client told it can name it) and answers the
client directly, on the link the client opened to it.

``parse_route`` is the one check of a route, before any block runs; stdlib only (it runs under Pyodide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .canonical import is_peer_id
from .errors import MetadataError
from .wire import MAX_STEP

PUSH_KEY = "push"  # FORWARD metadata: the rest of the route; OPEN answer: true when this peer pushes
PUSH_CLIENT_KEY = "client"  # a pushed FORWARD's metadata: the id of the client whose session it is
PUSH_ERROR_KEY = "push_error"  # a RESULT's metadata: why this peer could not push its output on
PUSHED_BY_KEY = "pushed_by"  # an ERROR's metadata: the peer whose pushed FORWARD was refused
KEEP_KEY = "keep"  # FORWARD metadata: true asks a peer that pushes its output on to keep it (FETCH)
MAX_PUSH_ROUTE = 64  # entries of a route, at most (and never more than the model's blocks left)
ROUTE_ENTRY_KEYS = frozenset({"peer", "session", "step", "start", "end"})

_SESSION_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class PushTarget:
    """One hop of a pushed route: the client's session ``session`` on ``peer``, at ``step``, for blocks
    ``[start, end)``."""

    peer: str
    session: bytes
    step: int
    start: int
    end: int

    def to_meta(self) -> dict[str, Any]:
        return {
            "end": self.end,
            "peer": self.peer,
            "session": self.session.hex(),
            "start": self.start,
            "step": self.step,
        }


def _int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_route(raw: object, *, end: int, num_layers: int, excluded: set[str]) -> list[PushTarget]:
    """The route of a FORWARD from a session whose span ends at ``end``, checked; ``MetadataError``
    (answered ``bad_frame``) for anything else.

    A route is a list of at most ``MAX_PUSH_ROUTE`` entries whose spans chain from ``end`` without gap
    or overlap and stay within the model's ``num_layers`` blocks; each names a distinct peer, none of
    ``excluded`` (the peer itself, the client, the peer that pushed the step here: a loop otherwise).
    """
    if not isinstance(raw, list):
        raise MetadataError(f"{PUSH_KEY} must be a list of route entries, not {type(raw).__name__}")
    if len(raw) > min(MAX_PUSH_ROUTE, num_layers - end):
        raise MetadataError(
            f"a route of {len(raw)} hops after block {end} is longer than the model's {num_layers} blocks "
            f"allow (at most {min(MAX_PUSH_ROUTE, max(0, num_layers - end))})"
        )
    route: list[PushTarget] = []
    seen = set(excluded)
    at = end
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != ROUTE_ENTRY_KEYS:
            raise MetadataError(f"route entry {index} must hold exactly {sorted(ROUTE_ENTRY_KEYS)}")
        peer, session, step = entry["peer"], entry["session"], entry["step"]
        start, stop = entry["start"], entry["end"]
        if not is_peer_id(peer):
            raise MetadataError(f"route entry {index}: {peer!r} is not a peer id")
        if peer in seen:
            raise MetadataError(
                f"route entry {index}: peer {peer[:16]} appears twice on the route, or is the client, this "
                "peer or the peer that pushed the step (a loop)"
            )
        if not isinstance(session, str) or _SESSION_HEX.fullmatch(session) is None:
            raise MetadataError(f"route entry {index}: session must be 32 lowercase hex digits")
        if not _int(step, 0, MAX_STEP):
            raise MetadataError(f"route entry {index}: step {step!r} is not a step number")
        if not _int(start, at, at) or not _int(stop, at + 1, num_layers):
            raise MetadataError(
                f"route entry {index}: blocks {start!r}-{stop!r} do not follow block {at} within the "
                f"model's {num_layers} blocks"
            )
        seen.add(peer)
        route.append(PushTarget(peer, bytes.fromhex(session), step, start, stop))
        at = stop
    return route


__all__ = [
    "KEEP_KEY",
    "MAX_PUSH_ROUTE",
    "PUSHED_BY_KEY",
    "PUSH_CLIENT_KEY",
    "PUSH_ERROR_KEY",
    "PUSH_KEY",
    "PushTarget",
    "parse_route",
]

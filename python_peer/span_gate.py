"""The gate between a peer's links and its span servers, so that a settings change never cuts a session.

A ``SpanGate`` is the ``hop.FrameHandler`` a ``Peer`` serves every link (and its API's in-process hops)
through. OPEN goes to the current ``SpanServer``, or is refused while the peer is paused; every other
frame of a session goes to the server that opened it, and FORWARD is refused (``payment_required``) once
the hold that paid for the session has expired. Swapping in a server for a new span keeps the old
one answering its open sessions (and their receipts) until they are done and ``RETIRED_GRACE_S`` more
has passed; then it is unloaded.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict

from python_peer.core.ledger_exchange import RECEIPT
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame

from .server import SpanServer

log = logging.getLogger(__name__)

MAX_ROUTES = 4096  # sessions remembered (client, session) -> the server that opened them
RETIRED_GRACE_S = 60.0  # an old server stays for receipts this long after its last session closed


class ServingState(enum.Enum):
    SERVING = "serving"  # announced, taking new sessions
    PAUSED = "paused"  # not announced; open sessions finish, new ones are refused


class SpanGate:
    """The serving side of one peer: its current span server and the ones it is moving away from."""

    def __init__(self, server: SpanServer, name: str = "") -> None:
        self.server = server
        self.name = name  # for the log: whose gate this is
        self._state = ServingState.SERVING
        self._routes: OrderedDict[tuple[str, bytes], SpanServer] = OrderedDict()
        self._retired: list[tuple[SpanServer, float]] = []  # (server, when it last held a session)
        self._unloaded_tokens = 0  # tokens served by servers swapped out and unloaded since

    @property
    def state(self) -> ServingState:
        return self._state

    def set_serving(self, serving: bool) -> bool:
        """Take new sessions (True) or finish the open ones and refuse new ones (False); True if changed."""
        state = ServingState.SERVING if serving else ServingState.PAUSED
        if state is self._state:
            return False
        log.info("serving of %s: %s -> %s", self.name[:8], self._state.value, state.value)
        self._state = state
        return True

    @property
    def open_sessions(self) -> int:
        """Sessions open on this peer, on the current span and on any span it is moving away from."""
        return sum(len(server.sessions) for server in self.servers())

    @property
    def tokens_served(self) -> int:
        """Token positions served since the peer started, across span changes."""
        return self._unloaded_tokens + sum(server.tokens_served for server in self.servers())

    def servers(self) -> list[SpanServer]:
        """The current server first, then the retired ones still loaded."""
        return [self.server, *(server for server, _ in self._retired)]

    def swap(self, server: SpanServer) -> SpanServer:
        """Serve new sessions from ``server``; the old one (returned) finishes its own."""
        old, self.server = self.server, server
        self._retired.append((old, time.monotonic()))
        self._prune()
        return old

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        """The span of ``client``'s open session ``session`` on this peer and its model's layer count,
        or None."""
        return self._routes.get((client, session), self.server).session_span(client, session)

    # --- FrameHandler -------------------------------------------------------------------------------

    async def handle(self, client: str, frame: Frame) -> Frame:
        """Answer a frame: OPEN goes to the current server (or is refused while paused), the rest of a
        session to the server that opened it."""
        key = (client, frame.session)
        if frame.type is FrameType.OPEN:
            if self._state is ServingState.PAUSED:
                return error_frame(
                    frame.session,
                    frame.step,
                    ErrorCode.SESSION_REFUSED,
                    "this peer has paused serving: it finishes its open sessions and takes no new ones; "
                    "open the session on another peer",
                )
            server = self.server
            answer = await server.handle(client, frame)
            if answer.type is FrameType.RESULT:
                self._routes[key] = server
                self._routes.move_to_end(key)
                while len(self._routes) > MAX_ROUTES:
                    self._routes.popitem(last=False)
            return answer
        server = self._routes.get(key, self.server)
        if (
            frame.type is FrameType.FORWARD
            and server.exchange is not None
            and server.exchange.hold_expired(client, frame.session)
        ):
            return error_frame(
                frame.session,
                frame.step,
                ErrorCode.PAYMENT_REQUIRED,
                "the hold that pays for this session has expired (its credits may be promised elsewhere "
                "now): open a new session",
            )
        answer = await server.handle(client, frame)
        if frame.type is FrameType.GOSSIP and frame.meta.get("kind") == RECEIPT:
            self._routes.pop(key, None)  # the session's last frame
        self._prune()
        return answer

    def close_client(self, client: str) -> None:
        """A link is gone: drop its sessions on every server still loaded."""
        for server in self.servers():
            server.close_client(client)
        for key in [k for k in self._routes if k[0] == client]:
            del self._routes[key]
        self._prune()

    def _prune(self, now: float | None = None) -> None:
        """Forget old servers whose sessions are over and whose receipts had time to be countersigned."""
        now = time.monotonic() if now is None else now
        kept: list[tuple[SpanServer, float]] = []
        for server, last in self._retired:
            server.evict_idle()
            if server.sessions:
                kept.append((server, now))
            elif now - last < RETIRED_GRACE_S:
                kept.append((server, last))
            else:
                log.info("unloaded the retired span %s", server.span)
                self._unloaded_tokens += server.tokens_served
                for key in [k for k, s in self._routes.items() if s is server]:
                    del self._routes[key]
        self._retired = kept


__all__ = ["MAX_ROUTES", "RETIRED_GRACE_S", "ServingState", "SpanGate"]

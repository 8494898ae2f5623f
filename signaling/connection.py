"""One websocket seen by a signaling node: a peer, or a sibling node (dialed by us or by it).

Both kinds of websocket (Starlette's for incoming, ``websockets``' for links we dial) hide behind
``Transport``, so the node handles messages the same way whichever side opened the link. Each
connection owns a writer task that drains a bounded ``Outbox``: a slow reader never blocks the node.
Replies and signals that do not fit are dropped, counted and logged (clients retry signals); gossip
coalesces to the newest state per peer, so a burst never loses the latest announcement.

Time bounds (docs/signaling.md, "Bounds"): a websocket must send a message the node takes (an
``announce``, a ``lookup``, a ``federate``...) within ``FIRST_MESSAGE_TIMEOUT_S`` of opening, and a peer
connection is closed after ``IDLE_TIMEOUT_S`` without one; either way it is told why with an ``error``
(``timeout``) and closed with 1008. Sibling links have no idle bound (gossip may be quiet for long);
the websocket pings (20 s, see ``app.py``) find dead ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import secrets
import time
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from python_peer.core.protocol import SIGNALING_FIRST_MESSAGE_MS, SIGNALING_IDLE_MS

from .messages import Error, Message
from .outbox import Outbox, Rank
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

OUTBOX_SIZE = 256  # replies and signals waiting to be written, per connection
# ... and their characters in all: a slow reader holds at most this much of the node's memory, not 256
# ``peers`` replies of up to MAX_REPLY_BYTES each (64 MiB per connection, times --max-connections)
OUTBOX_CHARS = 1 << 20
FLUSH_TIMEOUT_S = 0.5
DROP_LOG_INTERVAL_S = 10.0  # at most one warning this often per connection, with the count so far
# A websocket that opens and says nothing useful (a slowloris of websockets) holds a connection slot:
# the first message the node takes must come this soon; clients send ``announce`` or ``lookup`` at once.
# A peer re-announces well within its announcement's lifetime (at most MAX_TTL_MS): a peer connection
# silent longer than that, plus the clock skew allowed, has nothing listed here any more. Both are the
# protocol's defaults (``core/protocol.py``), advertised in ``hello.limits`` as a node applies them.
FIRST_MESSAGE_TIMEOUT_S = SIGNALING_FIRST_MESSAGE_MS / 1000
IDLE_TIMEOUT_S = SIGNALING_IDLE_MS / 1000
TIMEOUT_CLOSE_CODE = 1008
_ids = itertools.count(1)


class Transport(Protocol):
    """The three things a node does with a websocket."""

    async def send_text(self, text: str) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next message, or ``None`` once the websocket is closed."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class StarletteTransport:
    """An incoming websocket, accepted by the FastAPI app."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._closed = False

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ConnectionError(f"websocket closed: {exc}") from exc

    async def receive(self) -> str | bytes | None:
        if self._closed:
            return None
        try:
            event = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True
            return None
        if event["type"] == "websocket.disconnect":
            self._closed = True
            return None
        text = event.get("text")
        if text is not None:
            return str(text)
        return bytes(event.get("bytes") or b"")

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._ws.close(code, reason)


class WebsocketsTransport:
    """An outgoing websocket, dialed to a sibling with the ``websockets`` client."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._ws = websocket

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionError(f"websocket closed: {exc}") from exc

    async def receive(self) -> str | bytes | None:
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            return None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self._ws.close(code, reason)


class Role(enum.Enum):
    PEER = "peer"
    SIBLING = "sibling"


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """A websocket with its role, its bound peer id, its rate limit and its outbox."""

    def __init__(
        self, transport: Transport, bucket: TokenBucket, *, dialed: bool = False, max_states: int = 10_000
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.transport = transport
        self.bucket = bucket
        self.dialed = dialed  # we opened it (an outgoing sibling link)
        self.role = Role.SIBLING if dialed else Role.PEER
        self.nonce = secrets.token_hex(16)  # this node's challenge, in its hello
        self.peer_nonce = ""  # on a dialed sibling link: the other node's hello nonce
        self.peer_id: str | None = None  # bound by the first valid announce
        self.node_id: str | None = None  # the sibling's node id
        self.url: str | None = None  # the sibling's URL, if it told us
        self.address: str | None = None  # an incoming websocket's source (``directory.address_group``)
        self.limited_in_a_row = 0
        self.state = ConnectionState.OPEN
        self.sent = 0  # messages written to the websocket
        self.outbox = Outbox(OUTBOX_SIZE, max_states, OUTBOX_CHARS)  # max_states: the directory's bound
        self.first_message_timeout_s = FIRST_MESSAGE_TIMEOUT_S
        self.idle_timeout_s = IDLE_TIMEOUT_S
        self.greeted = dialed  # True once the node took a message (a link we dialed is greeted already)
        self._heard_at = time.monotonic()  # when the node last took a message from it
        self._drop_logged_at = -math.inf
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"writer-{self.id}")

    def __repr__(self) -> str:
        who = self.peer_id[:12] if self.peer_id else self.node_id
        return f"<Connection {self.id} {self.role.value} {who} {self.state.value}>"

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            log.debug("%s %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    def send(self, message: Message | str) -> bool:
        """Queue a message; drop it (counted, and logged now and then) when the outbox is full."""
        if self.state is not ConnectionState.OPEN:
            return False
        if self.outbox.put(message if isinstance(message, str) else message.encode()):
            return True
        self._log_drop()
        return False

    def send_latest(self, key: str, rank: Rank, message: Message | str) -> bool:
        """Queue the newest state of peer ``key``, replacing an older one still waiting (gossip, ``gone``)."""
        if self.state is not ConnectionState.OPEN:
            return False
        if self.outbox.put_latest(key, rank, message if isinstance(message, str) else message.encode()):
            return True
        self._log_drop()
        return False

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            self._drop_logged_at = now
            log.warning("%r: outbox full; %d messages dropped so far", self, self.outbox.dropped)

    def took_message(self) -> None:
        """The node took a message from this connection (valid, not refused): its time bounds restart."""
        self.greeted = True
        self._heard_at = time.monotonic()

    def _deadline(self) -> tuple[float, str] | None:
        """Seconds left before this connection is cut off for silence, and why; ``None``: no bound."""
        if not self.greeted:
            bound, why = self.first_message_timeout_s, "no announce, lookup or federate"
        elif self.role is Role.PEER:
            bound, why = self.idle_timeout_s, "no message the node took"
        else:
            return None
        return self._heard_at + bound - time.monotonic(), f"{why} within {bound:g} s"

    async def receive(self) -> str | bytes | None:
        """The next message, or ``None`` once the websocket is closed; a connection silent past its
        bound (``FIRST_MESSAGE_TIMEOUT_S``, then ``IDLE_TIMEOUT_S`` for a peer) is told why and closed."""
        while True:
            deadline = self._deadline()
            if deadline is None:
                return await self.transport.receive()
            left, why = deadline
            if left > 0:
                try:
                    async with asyncio.timeout(left):
                        return await self.transport.receive()
                except TimeoutError:
                    continue  # the bound may have moved (a message taken meanwhile): look again
            log.info("%r: %s; closing it", self, why)
            self.send(Error(id=None, code="timeout", message=f"{why}: closing the connection"))
            await self.close(TIMEOUT_CLOSE_CODE, why, flush=True)
            return None

    async def _write_loop(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.transport.send_text(text)
                self.sent += 1
            except ConnectionError as exc:
                log.debug("%s: send failed: %s", self.id, exc)
                self._set_state(ConnectionState.CLOSING)
                return
            finally:
                self.outbox.task_done()

    async def close(self, code: int = 1000, reason: str = "", *, flush: bool = False) -> None:
        """Close the websocket, first sending what is queued when ``flush`` (an error reply, say)."""
        if self.state is ConnectionState.CLOSED:
            return
        if flush and self.state is ConnectionState.OPEN and not self._writer.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self.outbox.join()
        self._set_state(ConnectionState.CLOSING)
        self._writer.cancel()
        await asyncio.wait({self._writer})  # unlike awaiting it, never swallows our own cancellation
        await self.transport.close(code, reason[:120])
        self._set_state(ConnectionState.CLOSED)

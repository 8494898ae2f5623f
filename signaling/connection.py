"""One websocket seen by a signaling node: a peer, or a sibling node (dialed by us or by it).

Both kinds of websocket (Starlette's for incoming, ``websockets``' for links we dial) hide behind
``Transport``, so the node handles messages the same way whichever side opened the link. Each
connection owns a writer task that drains a bounded outbox: a slow reader never blocks the node, and
what does not fit is dropped (signals and gossip are best effort; peers re-announce).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .messages import Message
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

OUTBOX_SIZE = 256
FLUSH_TIMEOUT_S = 0.5
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

    def __init__(self, transport: Transport, bucket: TokenBucket, *, dialed: bool = False) -> None:
        self.id = f"c{next(_ids)}"
        self.transport = transport
        self.bucket = bucket
        self.dialed = dialed  # we opened it (an outgoing sibling link)
        self.role = Role.SIBLING if dialed else Role.PEER
        self.nonce = secrets.token_hex(16)
        self.peer_id: str | None = None  # bound by the first valid announce
        self.node_id: str | None = None  # the sibling's node id
        self.url: str | None = None  # the sibling's URL, if it told us
        self.limited_in_a_row = 0
        self.state = ConnectionState.OPEN
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_SIZE)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"writer-{self.id}")

    def __repr__(self) -> str:
        who = self.peer_id[:12] if self.peer_id else self.node_id
        return f"<Connection {self.id} {self.role.value} {who} {self.state.value}>"

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            log.debug("%s %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    def send(self, message: Message | str) -> bool:
        """Queue a message; drop it (and say so) when the outbox is full or the connection closing."""
        if self.state is not ConnectionState.OPEN:
            return False
        text = message if isinstance(message, str) else message.encode()
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("%s: outbox full, dropping a message", self.id)
            return False
        return True

    async def send_wait(self, message: Message) -> None:
        """Queue a message, waiting for room (used for the directory dump to a new sibling)."""
        if self.state is ConnectionState.OPEN:
            await self._outbox.put(message.encode())

    async def receive(self) -> str | bytes | None:
        return await self.transport.receive()

    async def _write_loop(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self.transport.send_text(text)
            except ConnectionError as exc:
                log.debug("%s: send failed: %s", self.id, exc)
                self._set_state(ConnectionState.CLOSING)
                return
            finally:
                self._outbox.task_done()

    async def close(self, code: int = 1000, reason: str = "", *, flush: bool = False) -> None:
        """Close the websocket, first sending what is queued when ``flush`` (an error reply, say)."""
        if self.state is ConnectionState.CLOSED:
            return
        if flush and self.state is ConnectionState.OPEN and not self._writer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), FLUSH_TIMEOUT_S)
        self._set_state(ConnectionState.CLOSING)
        self._writer.cancel()
        await asyncio.wait({self._writer})  # unlike awaiting it, never swallows our own cancellation
        await self.transport.close(code, reason[:120])
        self._set_state(ConnectionState.CLOSED)

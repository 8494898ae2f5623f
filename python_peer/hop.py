"""The seam of one hop: what answers frames for a span, and what a client calls a span through.

A serving side is a ``FrameHandler``: ``SpanServer`` (one span's sessions), ``SpanGate`` (the peer's
current span and the spans it is moving away from, paused or not). ``rpc.serve_link`` feeds it the
frames of a WebRTC link; ``LocalHop`` feeds it the frames of this process's own mesh client, for a peer
that also serves the API and routes through its own span.

A client side is a ``HopClient``: ``rpc.RpcClient`` over a link, or ``LocalHop`` in-process. The mesh
client and the ledger exchange talk to a hop only through it. Links are ``FrameLink``s, opened by a
``LinkConnector``: WebRTC (``transport.py``) in a node, in-memory pairs in the fast tests.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from python_peer.core.errors import RemoteError, WireError
from python_peer.core.wire import ErrorCode, Frame, WireTensor, raise_for_error

from .errors import LinkClosedError, PeerError

# What counts as a hop failing: a client routes around these; anything else is a bug and propagates.
HOP_FAILURES = (LinkClosedError, RemoteError, WireError, TimeoutError, PeerError)

# A step's output, handed on before its answer is digested and signed: a caller of ``FrameHandler.handle``
# sets it around the call (``relay.PushRelay``, which pushes the output to the next peer from here: the
# push is the critical path, the signed RESULT is not), and a handler that runs a FORWARD awaits it once,
# with the very tensor its RESULT then carries (encoded once), after the step is committed. Unset by default.
OutputHook = Callable[[WireTensor], Awaitable[None]]
STEP_OUTPUT: contextvars.ContextVar[OutputHook | None] = contextvars.ContextVar("step_output", default=None)


class FrameLink(Protocol):
    """A link that carries frames to and from one remote peer: ``transport.Link`` (WebRTC), or an
    in-memory pair in tests."""

    @property
    def remote_id(self) -> str: ...

    async def send(self, frame: Frame) -> None: ...

    async def recv(self) -> Frame:
        """The next frame; ``LinkClosedError`` once the link is closed."""
        ...

    async def ping(self, timeout_s: float | None = None) -> float:
        """Seconds until the remote's PONG."""
        ...

    async def aclose(self) -> None: ...


class LinkConnector(Protocol):
    """Opens links to peers by id: ``transport.LinkManager``, or an in-memory network in tests."""

    async def connect(self, peer_id: str) -> FrameLink: ...


class FrameHandler(Protocol):
    """Something that answers the request frames of clients for a span."""

    async def handle(self, client: str, frame: Frame) -> Frame:
        """The answer to ``frame`` from ``client`` (a peer id); failures are ERROR frames, not exceptions."""
        ...

    def close_client(self, client: str) -> None:
        """``client``'s link is gone: drop its sessions."""
        ...


@runtime_checkable
class LinkHandler(FrameHandler, Protocol):
    """A ``FrameHandler`` that also sees the links its frames come on (``relay.PushRelay``): it answers a
    pushed step on its client's link, not on the link of the peer that pushed it."""

    def link_opened(self, link: FrameLink) -> None: ...

    def link_closed(self, link: FrameLink) -> bool:
        """Forget ``link``; True when its remote has no other link here (its sessions may go)."""
        ...

    async def answer(self, link: FrameLink, frame: Frame) -> Frame | None:
        """The answer to send back on ``link``, or None when it was sent elsewhere (or nowhere)."""
        ...


class HopClient(Protocol):
    """A client's end of a hop: calls that return the answer frame or raise its typed error."""

    @property
    def closed(self) -> bool: ...

    async def call(self, frame: Frame, timeout: float) -> Frame:
        """Send ``frame``, return its answer; an ERROR answer raises its ``RemoteError``."""
        ...

    async def aclose(self) -> None: ...


class Refusal(PeerError):
    """A request a serving side refuses; answered as an ERROR frame with ``code`` and this message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class LocalHop:
    """A hop to a ``FrameHandler`` in this process: the peer's own span, with no link to itself."""

    def __init__(self, handler: FrameHandler, client_id: str) -> None:
        self._handler = handler
        self._client_id = client_id
        self._open = True

    @property
    def closed(self) -> bool:
        return not self._open

    async def call(self, frame: Frame, timeout: float) -> Frame:
        if not self._open:
            raise LinkClosedError("the in-process route to this peer's own span is closed")
        async with asyncio.timeout(timeout):
            answer = await self._handler.handle(self._client_id, frame)
        raise_for_error(answer)
        return answer

    async def aclose(self) -> None:
        self._open = False
        self._handler.close_client(self._client_id)


__all__ = [
    "HOP_FAILURES",
    "FrameHandler",
    "FrameLink",
    "HopClient",
    "LinkConnector",
    "LinkHandler",
    "LocalHop",
    "Refusal",
]

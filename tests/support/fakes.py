"""In-memory fakes of the mesh's transports, for the fast tier (``tests/fast``): no process, no socket.

- ``MemoryLink``: one end of a link pair. Every frame goes through the real codec (``core/wire.py``:
  ``encode_frame`` on send, ``decode_frame`` on arrival), PINGs are answered on arrival as a WebRTC link
  answers them, and closing one end closes both (``LinkClosedError`` on the other side's ``recv``).
- ``MemoryNetwork``: the peers of one test. ``serve`` puts a ``FrameHandler`` (a real ``SpanServer`` or
  ``SpanGate``) behind a peer id and announces it; ``connector`` gives a client a ``LinkConnector`` whose
  links are answered by ``rpc.serve_link``; ``kill`` makes a peer die mid-generation (its links close,
  new connections fail) while its announcement stays, as a dead peer's does until it expires;
  ``refuse_signals`` makes signaling refuse to relay offers to a peer (``unknown_peer``), as a node does
  for a listed peer whose own signaling node died.
- ``MemorySignalClient``: announce / lookup / signals against the network's in-memory directory.

The real ``RpcClient`` runs over these links, so the fakes replace only aiortc and websockets.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.errors import RemoteSignalingError
from python_peer.core.wire import MAX_STEP, Frame, FrameType, decode_frame, encode_frame
from python_peer.errors import LinkClosedError, LinkTimeoutError
from python_peer.hop import FrameHandler
from python_peer.rpc import serve_link
from python_peer.signal_client import IncomingSignal


class MemoryLink:
    """One end of an in-memory link; build pairs with ``MemoryLink.pair``."""

    def __init__(self, local_id: str, remote_id: str) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.other: MemoryLink | None = None
        self.sent = 0  # frames sent from this end, for assertions
        self._inbox: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._ping_steps = itertools.count(1)
        self._closed = False

    @staticmethod
    def pair(a: str, b: str) -> tuple[MemoryLink, MemoryLink]:
        """``(a's end, b's end)`` of a new link between peers ``a`` and ``b``."""
        left, right = MemoryLink(a, b), MemoryLink(b, a)
        left.other, right.other = right, left
        return left, right

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, frame: Frame) -> None:
        if self._closed or self.other is None:
            raise LinkClosedError(f"link to {self.remote_id[:16]} is closed")
        data = encode_frame(frame)
        self.sent += 1
        await asyncio.sleep(0)  # a real send yields to the loop too
        if self.other._closed:
            raise LinkClosedError(f"link to {self.remote_id[:16]} is closed")
        self.other._arrive(data)

    def _arrive(self, data: bytes) -> None:
        frame = decode_frame(data)
        if frame.type is FrameType.PING:
            pong = Frame(FrameType.PONG, frame.session, frame.step)
            if self.other is not None and not self.other._closed:
                self.other._arrive(encode_frame(pong))
            return
        if frame.type is FrameType.PONG:
            waiter = self._pongs.pop(frame.step, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self._inbox.put_nowait(frame)

    async def recv(self) -> Frame:
        if self._closed and self._inbox.empty():
            raise LinkClosedError(f"link to {self.remote_id[:16]} is closed")
        frame = await self._inbox.get()
        if frame is None:
            raise LinkClosedError(f"link to {self.remote_id[:16]} was closed")
        return frame

    async def ping(self, timeout_s: float | None = None) -> float:
        if self._closed:
            raise LinkClosedError(f"link to {self.remote_id[:16]} is closed")
        step = next(self._ping_steps) % (MAX_STEP + 1)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[step] = waiter
        start = time.perf_counter()
        await self.send(Frame(FrameType.PING, bytes(16), step))
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            raise LinkTimeoutError(f"no PONG from {self.remote_id[:16]} within {timeout_s} s") from None
        finally:
            self._pongs.pop(step, None)
        return time.perf_counter() - start

    def _close_end(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put_nowait(None)
            for waiter in self._pongs.values():
                if not waiter.done():
                    waiter.set_exception(LinkClosedError(f"link to {self.remote_id[:16]} closed"))

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close both ends, as a dropped connection does."""
        self._close_end()
        if self.other is not None:
            self.other._close_end()


def announcement(
    peer_id: str,
    model: str,
    start: int,
    end: int,
    *,
    throughput: float = 1000.0,
    kv_free_tokens: int = 10_000,
) -> Announcement:
    now = int(time.time() * 1000)
    return Announcement(
        peer_id=peer_id,
        kind="native",
        seq=1,
        issued_ms=now,
        expires_ms=now + 120_000,
        serves=(ServedSpan(model, start, end),),
        throughput_milli=int(throughput * 1000),
        kv_free_tokens=kv_free_tokens,
    )


class MemoryNetwork:
    """The peers of one test: their handlers, their announcements, and the links between them."""

    def __init__(self) -> None:
        self.directory: dict[str, Announcement] = {}
        self.handlers: dict[str, FrameHandler] = {}
        self.links: list[MemoryLink] = []
        self.inboxes: dict[str, asyncio.Queue[IncomingSignal]] = {}
        self.refused: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def serve(self, peer_id: str, handler: FrameHandler, announced: Announcement | None = None) -> None:
        """``handler`` answers the links opened to ``peer_id``; ``announced`` goes into the directory."""
        self.handlers[peer_id] = handler
        if announced is not None:
            self.directory[peer_id] = announced

    def kill(self, peer_id: str) -> None:
        """``peer_id`` dies: its links close and nothing answers it any more; its announcement stays."""
        self.handlers.pop(peer_id, None)
        for link in self.links:
            if peer_id in (link.local_id, link.remote_id):
                link.close()

    def refuse_signals(self, peer_id: str) -> None:
        """Offers to ``peer_id`` are refused by signaling, as a node refuses them for a peer listed through a
        sibling that is gone; its handler and announcement stay."""
        self.refused.add(peer_id)

    def connector(self, client_id: str) -> MemoryConnector:
        return MemoryConnector(self, client_id)

    async def connect(self, client_id: str, peer_id: str) -> MemoryLink:
        if peer_id in self.refused:
            # What ``SignalClient.send_signal`` raises when the node answers the offer with an error.
            raise RemoteSignalingError(
                f"peer {peer_id[:12]}… is not connected here nor known to a sibling", code="unknown_peer"
            )
        handler = self.handlers.get(peer_id)
        if handler is None:
            raise LinkTimeoutError(f"peer {peer_id[:16]} does not answer")
        mine, theirs = MemoryLink.pair(client_id, peer_id)
        self.links += [mine, theirs]
        task = asyncio.create_task(serve_link(theirs, handler), name=f"serve-{peer_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return mine

    def signal_client(self, peer_id: str) -> MemorySignalClient:
        return MemorySignalClient(self, peer_id)

    async def aclose(self) -> None:
        for link in self.links:
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class MemoryConnector:
    """A client's ``LinkConnector`` on a ``MemoryNetwork``."""

    def __init__(self, network: MemoryNetwork, client_id: str) -> None:
        self.network = network
        self.client_id = client_id
        self.connects = 0

    async def connect(self, peer_id: str) -> MemoryLink:
        self.connects += 1
        return await self.network.connect(self.client_id, peer_id)


class MemorySignalClient:
    """A signal client on a ``MemoryNetwork``: announce, lookup and signals, all in memory."""

    def __init__(self, network: MemoryNetwork, peer_id: str) -> None:
        self.network = network
        self._peer_id = peer_id
        self.lookups = 0
        network.inboxes.setdefault(peer_id, asyncio.Queue())

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def announce(self, announced: Announcement) -> None:
        self.network.directory[announced.peer_id] = announced

    async def lookup(self, model: str, start: int, end: int, *, limit: int = 32) -> list[Announcement]:
        self.lookups += 1
        found = [
            a for a in self.network.directory.values() if any(s.overlaps(model, start, end) for s in a.serves)
        ]
        return sorted(found, key=lambda a: -a.throughput_milli)[:limit]

    async def send_signal(self, peer_id: str, payload: dict[str, Any]) -> None:
        inbox = self.network.inboxes.get(peer_id)
        if inbox is None:
            raise LinkClosedError(f"no peer {peer_id[:16]} on this network")
        inbox.put_nowait(IncomingSignal(self._peer_id, payload, int(time.time() * 1000)))

    def pending(self) -> int:
        return self.network.inboxes[self._peer_id].qsize()

    async def signals(self) -> AsyncIterator[IncomingSignal]:
        inbox = self.network.inboxes[self._peer_id]
        while True:
            yield await inbox.get()


__all__ = [
    "MemoryConnector",
    "MemoryLink",
    "MemoryNetwork",
    "MemorySignalClient",
    "announcement",
]

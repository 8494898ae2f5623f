"""One WebRTC link to one remote peer (aiortc): an ordered, reliable data channel carrying frames.

A ``Link`` cuts each frame into chunks and sends them with backpressure on the channel's buffered
amount; it hands whole, decoded frames to ``recv()`` and answers PING by itself. Malformed input from the
remote is answered with an ERROR frame and never closes the link. Links are made by ``LinkManager``
(``transport.py``), which owns their background tasks.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError

from python_peer.core.errors import ChunkError, WireError
from python_peer.core.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_MESSAGE_ID,
    MAX_STEP,
    NO_SESSION,
    Frame,
    FrameType,
    Reassembler,
    chunk_message,
    decode_frame,
    encode_frame,
    error_frame,
)
from python_peer.errors import LinkClosedError, LinkOverflowError, LinkTimeoutError, TransportError

from .ice import socket_drops

if TYPE_CHECKING:
    from .transport import LinkManager

log = logging.getLogger(__name__)

CHANNEL_LABEL = "ai4all"
MAX_PENDING_REPLIES = 64  # PONG and ERROR replies waiting for the send lock, per link


def _header_ids(message: bytes | None) -> tuple[bytes, int]:
    """Session and step of a refused frame, when its header is readable, so the ERROR names them."""
    if message is None or len(message) < HEADER_SIZE or message[:4] != MAGIC:
        return NO_SESSION, 0
    fields = HEADER.unpack_from(message)
    return bytes(fields[4]), int(fields[5])


class LinkState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"  # offer/answer exchanged or pending; ICE, DTLS, SCTP on their way
    OPEN = "open"  # the data channel is open: send() and recv() work
    CLOSED = "closed"  # for good; the reason is ``Link.close_error``


@dataclass
class LinkStats:
    """Counters of one link, for logs and the dashboard."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    bad_frames: int = 0  # malformed chunks or frames from the remote, each answered with ERROR
    backpressure_waits: int = 0  # times send() waited for bufferedAmount to fall
    peak_buffered_bytes: int = 0  # highest bufferedAmount right after a chunk was queued
    receive_buffer_bytes: int = 0  # SO_RCVBUF granted to the link's UDP sockets (0: not sized)


class Link:
    """One WebRTC connection to one remote peer: frames in order both ways, PING answered by itself.

    Made by ``LinkManager`` only; the links it hands out are OPEN.
    """

    def __init__(
        self, manager: LinkManager, remote_id: str, link_id: str, pc: RTCPeerConnection, *, initiator: bool
    ) -> None:
        self._manager = manager
        self._config = manager.config
        self.remote_id = remote_id
        self.link_id = link_id
        self.initiator = initiator
        self.stats = LinkStats()
        self._name = f"link {link_id} to peer {remote_id!r}"  # for messages and logs
        self._pc = pc
        self._channel: RTCDataChannel | None = None
        self._state = LinkState.NEW
        self._error: LinkClosedError | None = None
        self._open_event = asyncio.Event()  # set on OPEN and on CLOSED
        self._drained = asyncio.Event()  # set by bufferedamountlow and on CLOSED
        self._send_lock = asyncio.Lock()  # one frame's chunks at a time
        self._queue: asyncio.Queue[tuple[Frame, int] | None] = asyncio.Queue()  # None: closed
        self._queued_bytes = 0
        self._pending_replies = 0
        self._reassembler = Reassembler(
            max_message_bytes=self._config.max_message_bytes,
            max_partial=self._config.reassembly_partial,
            max_buffered_bytes=self._config.reassembly_partial * self._config.max_message_bytes,
            timeout_s=self._config.reassembly_timeout_s,
        )
        self._message_ids = itertools.count()
        self._ping_steps = itertools.count(1)
        self._pings: dict[int, asyncio.Future[float]] = {}
        self._srtt: float | None = None
        self._udp_sockets: list[Any] = []  # set by LinkManager once ICE gathered (``udp_drops``)
        pc.on("connectionstatechange", self._on_connection_state)

    def __repr__(self) -> str:
        return f"<Link {self.link_id} to {self.remote_id!r} {self._state.name}>"

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def close_error(self) -> LinkClosedError | None:
        """Why the link closed (None while it is not CLOSED)."""
        return self._error

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in aiortc and not yet handed to SCTP (the channel's ``bufferedAmount``)."""
        return self._channel.bufferedAmount if self._channel is not None else 0

    def udp_drops(self) -> int | None:
        """Datagrams the kernel dropped at this link's UDP sockets for a full receive buffer (Linux's
        ``SO_MEMINFO``; None elsewhere). Each drop costs SCTP a retransmission, at least 1 s in aiortc."""
        return socket_drops(self._udp_sockets)

    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds from ``ping()`` (TCP's 1/8 weighting); None before any."""
        return self._srtt

    def _set_state(self, new: LinkState) -> None:
        old, self._state = self._state, new
        log.info("%s: %s -> %s", self._name, old.name, new.name)

    def _closed_error(self) -> LinkClosedError:
        """A fresh copy of the close reason, so each raise has its own traceback."""
        if self._error is None:
            return LinkClosedError(f"{self._name} is {self._state.name}")
        return type(self._error)(str(self._error))

    # --- wiring to aiortc ---

    def _attach(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self._channel is not None:
            log.warning("%s: closing unexpected data channel %r", self._name, channel.label)
            channel.close()
            return
        self._channel = channel
        channel.bufferedAmountLowThreshold = self._config.low_water_bytes
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("close", self._on_channel_close)
        if channel.readyState == "open":
            self._on_open()
        else:
            channel.on("open", self._on_open)

    def _on_open(self) -> None:
        if self._state is LinkState.CONNECTING:
            self._set_state(LinkState.OPEN)
            self._open_event.set()

    def _on_channel_close(self) -> None:
        self._close_soon(LinkClosedError(f"{self._name}: the data channel closed"))

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            self._close_soon(LinkClosedError(f"{self._name}: connection {state}"))

    def _mark_closed(self, error: LinkClosedError, *, discard_queue: bool = False) -> None:
        """Enter CLOSED once: wake every waiter, fail pending pings, end the receive queue."""
        if discard_queue:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queued_bytes = 0
        if self._state is LinkState.CLOSED:
            if discard_queue:
                self._queue.put_nowait(None)  # the end marker went with the discarded frames
            return
        self._error = error
        self._set_state(LinkState.CLOSED)
        self._open_event.set()
        self._drained.set()
        for future in self._pings.values():
            if not future.done():
                future.set_exception(self._closed_error())
        self._queue.put_nowait(None)
        self._manager._forget(self)

    def _close_soon(self, error: LinkClosedError) -> None:
        """From an aiortc callback: close now, and the RTCPeerConnection in an owned task."""
        if self._state is not LinkState.CLOSED:
            self._mark_closed(error)
            self._manager._spawn(self._pc.close(), f"close link {self.link_id}")

    async def _abort(self, error: LinkClosedError) -> None:
        self._mark_closed(error, discard_queue=True)
        await self._pc.close()

    async def _wait_open(self) -> None:
        await self._open_event.wait()
        if self._state is not LinkState.OPEN:
            raise self._closed_error()

    async def aclose(self) -> None:
        """Close the link and its connection; unread frames are dropped and the remote sees it close."""
        await self._abort(LinkClosedError(f"{self._name} was closed locally"))

    # --- sending ---

    def _check_open(self) -> RTCDataChannel:
        if self._state is LinkState.CLOSED:
            raise self._closed_error()
        if self._state is not LinkState.OPEN or self._channel is None:
            raise TransportError(f"{self._name} is {self._state.name}, not OPEN")
        return self._channel

    async def send(self, frame: Frame) -> None:
        """Queue one frame for the remote; returns once its last chunk is in aiortc's send buffer.

        Frames go out whole and in call order. Raises ``LinkClosedError`` if the link closes, and a
        ``WireError`` if the frame cannot be encoded (e.g. over ``max_message_bytes``).
        """
        data = encode_frame(frame, max_frame_bytes=self._config.max_message_bytes)
        async with self._send_lock:
            channel = self._check_open()
            message_id = next(self._message_ids) & MAX_MESSAGE_ID
            for chunk in chunk_message(message_id, data, self._config.chunk_size):
                while channel.bufferedAmount + len(chunk) > self._config.high_water_bytes:
                    self._drained.clear()
                    self.stats.backpressure_waits += 1
                    await self._drained.wait()
                    self._check_open()
                try:
                    channel.send(chunk)
                except InvalidStateError as exc:
                    self._close_soon(LinkClosedError(f"{self._name}: channel not open"))
                    raise self._closed_error() from exc
                self.stats.peak_buffered_bytes = max(self.stats.peak_buffered_bytes, channel.bufferedAmount)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(data)

    def _reply(self, frame: Frame) -> None:
        """Send a PONG or ERROR in an owned task; dropped when too many are already waiting."""
        if self._pending_replies >= MAX_PENDING_REPLIES:
            log.debug(
                "link %s: dropping %s reply, %d pending", self.link_id, frame.type.name, self._pending_replies
            )
            return
        self._pending_replies += 1
        self._manager._spawn(self._send_reply(frame), f"reply on link {self.link_id}")

    async def _send_reply(self, frame: Frame) -> None:
        try:
            await self.send(frame)
        except LinkClosedError:
            pass  # nobody left to answer
        finally:
            self._pending_replies -= 1

    async def ping(self, timeout_s: float | None = None) -> float:
        """Send a PING and return the seconds until its PONG (queueing behind earlier frames included)."""
        step = next(self._ping_steps) % (MAX_STEP + 1)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pings[step] = future
        timeout = self._config.ping_timeout_s if timeout_s is None else timeout_s
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await self.send(Frame(FrameType.PING, step=step))
                rtt = await future - start  # the PONG's arrival time, before this task wakes up
        except TimeoutError:
            raise LinkTimeoutError(f"peer {self.remote_id!r} sent no PONG within {timeout} s") from None
        finally:
            self._pings.pop(step, None)
        self._srtt = rtt if self._srtt is None else 0.875 * self._srtt + 0.125 * rtt
        return rtt

    # --- receiving ---

    def _on_message(self, data: bytes | str) -> None:
        try:
            self._receive(data)
        except Exception:  # a bug here must not break aiortc's SCTP receive loop or other links
            log.exception("%s: receive failed", self._name)
            self._close_soon(LinkClosedError(f"{self._name}: internal receive error"))

    def _receive(self, data: bytes | str) -> None:
        if self._state is LinkState.CLOSED:
            return
        now = asyncio.get_running_loop().time()
        for message_id in self._reassembler.expire(now):
            log.warning("%s: dropped stale partial message %d", self._name, message_id)
        if isinstance(data, str):
            self._refuse(ChunkError("text message on the ai4all channel: chunks are binary"), None)
            return
        try:
            message = self._reassembler.feed(data, now)
        except WireError as exc:
            self._refuse(exc, None)
            return
        if message is None:
            return
        try:
            frame = decode_frame(message, max_frame_bytes=self._config.max_message_bytes)
        except WireError as exc:
            self._refuse(exc, message)
            return
        self.stats.frames_received += 1
        self.stats.bytes_received += len(message)
        if frame.type is FrameType.PING:
            self._reply(Frame(FrameType.PONG, frame.session, frame.step, meta=frame.meta))
        elif frame.type is FrameType.PONG:
            future = self._pings.get(frame.step)
            if future is not None and not future.done():
                future.set_result(now)
        elif (
            self._queue.qsize() >= self._config.recv_queue_frames
            or self._queued_bytes + len(message) > self._config.recv_queue_bytes
        ):
            self._close_soon(
                LinkOverflowError(
                    f"{self._name} closed: {self._queue.qsize()} frames "
                    f"({self._queued_bytes} bytes) were waiting for recv(); the consumer is too slow"
                )
            )
        else:
            self._queue.put_nowait((frame, len(message)))
            self._queued_bytes += len(message)

    def _refuse(self, error: WireError, message: bytes | None) -> None:
        """Answer a malformed chunk or frame with ERROR; the link and every other link go on."""
        self.stats.bad_frames += 1
        if self.stats.bad_frames <= 10 or self.stats.bad_frames % 1000 == 0:
            kind, count = type(error).__name__, self.stats.bad_frames
            log.warning("%s: refused input #%d (%s): %s", self._name, count, kind, error)
        session, step = _header_ids(message)
        self._reply(error_frame(session, step, error.code, str(error)))

    async def recv(self) -> Frame:
        """The next frame from the remote (ERROR frames included; PING and PONG are handled here).

        After the link closes, frames already received are still returned, then ``LinkClosedError``
        (``LinkOverflowError`` when the consumer fell behind).
        """
        if self._state is LinkState.CLOSED and self._queue.empty():
            raise self._closed_error()
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later or concurrent recv() raises too
            raise self._closed_error()
        frame, size = item
        self._queued_bytes -= size
        return frame

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        """Frames until the link closes; ``close_error`` says why it ended."""
        while True:
            try:
                yield await self.recv()
            except LinkClosedError:
                return

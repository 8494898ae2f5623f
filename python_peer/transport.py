"""WebRTC links between peers (aiortc): one ordered, reliable data channel per link, carrying frames.

``LinkManager`` owns every link of one peer. It makes offers (``connect``) and answers them
(``handle_signal``) through a ``send_signal`` callable that the signaling layer supplies; the payloads
are plain JSON, so a browser's ``RTCPeerConnection`` can speak them too (``docs/wire.md``, "Transport").
A ``Link`` cuts each frame into chunks and sends them with backpressure on the channel's buffered
amount; it hands whole, decoded frames to ``recv()``. Malformed input from the remote is answered with
an ERROR frame and never closes the link.

aiortc gathers ICE candidates once, without trickle, inside ``setLocalDescription``, and aioice leaves
out 127.0.0.1 when it lists host addresses. ``TransportConfig.ice_addresses`` replaces that list (see
``_install_host_address_hook``), and ``remote_addresses`` drops remote candidates outside its list, so by
default every packet stays on 127.0.0.1 and no STUN server is contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import inspect
import ipaddress
import itertools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError

from python_peer.core.errors import ChunkError, WireError
from python_peer.core.wire import (
    CHUNK_HEADER_SIZE,
    DEFAULT_CHUNK_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_BYTES,
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
from python_peer.errors import (
    LinkClosedError,
    LinkOverflowError,
    LinkTimeoutError,
    SignalPayloadError,
    TransportError,
)

__all__ = [
    "CHANNEL_LABEL",
    "IceServer",
    "Link",
    "LinkManager",
    "LinkState",
    "LinkStats",
    "SendSignal",
    "TransportConfig",
]

log = logging.getLogger(__name__)

CHANNEL_LABEL = "ai4all"
SIGNAL_KIND = "webrtc"
MAX_SDP_CHARS = 64 * 1024
MAX_PEER_ID_CHARS = 256
MAX_PENDING_REPLIES = 64  # PONG and ERROR replies waiting for the send lock, per link
_LINK_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

SendSignal = Callable[[str, dict[str, Any]], Awaitable[None]]
OnLink = Callable[["Link"], Awaitable[None] | None]


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server that a deployment runs; none by default, so no packet leaves the machine."""

    urls: str
    username: str | None = None
    credential: str | None = None


def _ip_set(addresses: tuple[str, ...] | None, field: str) -> frozenset[str] | None:
    if addresses is None:
        return None
    try:
        return frozenset(str(ipaddress.ip_address(a)) for a in addresses)
    except ValueError as exc:
        raise ValueError(f"TransportConfig.{field} must hold IP addresses, got {addresses!r}") from exc


@dataclass(frozen=True)
class TransportConfig:
    """How links are made and bounded; sizes in bytes, times in seconds.

    ``ice_addresses`` are the only host addresses ICE candidates are gathered on (None: aioice's own
    choice, every non-loopback interface); ``remote_addresses`` are the only remote candidate addresses
    accepted from the other side's SDP (None: any, mDNS names included). Both default to loopback.
    """

    ice_servers: tuple[IceServer, ...] = ()
    ice_addresses: tuple[str, ...] | None = ("127.0.0.1",)
    remote_addresses: tuple[str, ...] | None = ("127.0.0.1",)
    chunk_size: int = DEFAULT_CHUNK_SIZE  # one data channel message; 16 KiB is safe in every browser
    high_water_bytes: int = 1024 * 1024  # send() waits while bufferedAmount would pass this
    low_water_bytes: int = 256 * 1024  # ... until it drops to this (bufferedAmountLowThreshold)
    connect_timeout_s: float = 10.0
    ping_timeout_s: float = 5.0
    max_message_bytes: int = MAX_FRAME_BYTES  # one encoded frame, either way
    max_links: int = 64  # links in any state, outgoing and incoming together
    recv_queue_frames: int = 64  # decoded frames waiting for recv(); more closes the link
    recv_queue_bytes: int = 128 * 1024 * 1024
    reassembly_partial: int = 8  # messages being reassembled at once
    reassembly_timeout_s: float = 30.0  # a partial message older than this is dropped

    def __post_init__(self) -> None:
        _ip_set(self.ice_addresses, "ice_addresses")
        _ip_set(self.remote_addresses, "remote_addresses")
        if not CHUNK_HEADER_SIZE < self.chunk_size <= 65536:
            raise ValueError(f"chunk_size {self.chunk_size} is not in {CHUNK_HEADER_SIZE + 1}..65536")
        if not 0 <= self.low_water_bytes <= self.high_water_bytes - self.chunk_size:
            raise ValueError(
                f"need 0 <= low_water_bytes ({self.low_water_bytes}) <= high_water_bytes "
                f"({self.high_water_bytes}) - chunk_size ({self.chunk_size}), or send() could wait forever"
            )
        for name in ("connect_timeout_s", "ping_timeout_s", "reassembly_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TransportConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_message_bytes", "max_links", "recv_queue_frames", "recv_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransportConfig.{name} must be at least 1, got {getattr(self, name)!r}")


# --- loopback ICE -------------------------------------------------------------------------------------

# The host addresses the current task gathers on; None outside a LinkManager, so other users of aioice
# in the process keep aioice's behaviour. aiortc gathers in child tasks of setLocalDescription, which
# copy the caller's context, so each manager gathers on its own configured addresses.
_ICE_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "ai4all_ice_addresses", default=None
)
_aioice_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    configured = _ICE_ADDRESSES.get()
    if configured is None:
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    return [a for a in configured if (use_ipv6 if ":" in a else use_ipv4)]


def _install_host_address_hook() -> None:
    """Replace ``aioice.ice.get_host_addresses`` (which skips 127.0.0.1) once per process."""
    global _aioice_host_addresses
    if aioice.ice.get_host_addresses is _host_addresses:
        return
    _aioice_host_addresses = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _host_addresses
    log.info(
        "aioice.ice.get_host_addresses replaced: LinkManager gathers ICE candidates only on "
        "TransportConfig.ice_addresses (aioice alone skips 127.0.0.1)"
    )


@contextlib.contextmanager
def _gathering_on(addresses: tuple[str, ...] | None) -> Iterator[None]:
    token = _ICE_ADDRESSES.set(addresses)
    try:
        yield
    finally:
        _ICE_ADDRESSES.reset(token)


def _filter_remote_candidates(sdp: str, allowed: frozenset[str] | None) -> tuple[str, int]:
    """Drop ``a=candidate`` lines whose address is not in ``allowed``; return the SDP and the count."""
    if allowed is None:
        return sdp, 0
    kept, dropped = [], 0
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            try:
                address = str(ipaddress.ip_address(parts[4])) if len(parts) >= 8 else ""
            except ValueError:  # an mDNS name such as abcd.local
                address = ""
            if address not in allowed:
                dropped += 1
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", dropped


def _parse_signal(from_peer_id: object, payload: object) -> tuple[str, str, str]:
    """Check a signaling payload; return (type, sdp, link id) or raise ``SignalPayloadError``."""
    if not isinstance(from_peer_id, str) or not 0 < len(from_peer_id) <= MAX_PEER_ID_CHARS:
        raise SignalPayloadError(
            f"sender peer id {from_peer_id!r:.80} is not a string of 1..{MAX_PEER_ID_CHARS}"
        )
    if not isinstance(payload, dict):
        raise SignalPayloadError(
            f"signal from peer {from_peer_id!r} is a {type(payload).__name__}, not an object"
        )
    kind, typ, sdp, link_id = (payload.get(k) for k in ("kind", "type", "sdp", "link"))
    if kind != SIGNAL_KIND:
        raise SignalPayloadError(
            f"signal from peer {from_peer_id!r} has kind {kind!r:.40}, not {SIGNAL_KIND!r}"
        )
    if typ not in ("offer", "answer"):
        raise SignalPayloadError(
            f"signal from peer {from_peer_id!r} has type {typ!r:.40}: expected offer or answer"
        )
    if not isinstance(link_id, str) or not _LINK_ID.fullmatch(link_id):
        raise SignalPayloadError(
            f"{typ} from peer {from_peer_id!r} has link {link_id!r:.80}: need [0-9A-Za-z_-]{{1,64}}"
        )
    if not isinstance(sdp, str) or not 0 < len(sdp) <= MAX_SDP_CHARS:
        raise SignalPayloadError(
            f"{typ} from peer {from_peer_id!r} needs an sdp string of 1..{MAX_SDP_CHARS} chars"
        )
    if "m=application" not in sdp:
        raise SignalPayloadError(
            f"{typ} from peer {from_peer_id!r} has no data channel (m=application) section"
        )
    return typ, sdp, link_id


def _header_ids(message: bytes | None) -> tuple[bytes, int]:
    """Session and step of a refused frame, when its header is readable, so the ERROR names them."""
    if message is None or len(message) < HEADER_SIZE or message[:4] != MAGIC:
        return NO_SESSION, 0
    fields = HEADER.unpack_from(message)
    return bytes(fields[4]), int(fields[5])


# --- Link -----------------------------------------------------------------------------------------------


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


# --- LinkManager ----------------------------------------------------------------------------------------


class LinkManager:
    """Every WebRTC link of one peer: outgoing through ``connect()``, incoming through ``handle_signal()``.

    Incoming links go to ``on_link`` (a function or coroutine function, run in an owned task) once
    their channel is open, or, without ``on_link``, wait for ``accept()``.
    """

    def __init__(
        self, send_signal: SendSignal, *, on_link: OnLink | None = None, config: TransportConfig | None = None
    ) -> None:
        self.config = config or TransportConfig()
        self._send_signal = send_signal
        self._on_link = on_link
        self._remote_allowed = _ip_set(self.config.remote_addresses, "remote_addresses")
        self._links: dict[tuple[str, str], Link] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._incoming: asyncio.Queue[Link | None] = asyncio.Queue()
        self._closed = False
        if self.config.ice_addresses is not None:
            _install_host_address_hook()

    async def __aenter__(self) -> LinkManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def links(self) -> tuple[Link, ...]:
        """Links not yet closed, connecting ones included."""
        return tuple(self._links.values())

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %r failed", task.get_name(), exc_info=task.exception())

    def _forget(self, link: Link) -> None:
        if self._links.get((link.remote_id, link.link_id)) is link:
            del self._links[(link.remote_id, link.link_id)]

    def _new_link(self, peer_id: str, link_id: str, *, initiator: bool) -> Link:
        if self._closed:
            raise TransportError("the LinkManager is closed")
        if len(self._links) >= self.config.max_links:
            raise TransportError(
                f"{len(self._links)} links already (TransportConfig.max_links); refusing a link with peer {peer_id!r}"
            )
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # [] means no STUN; None means Google's
        link = Link(self, peer_id, link_id, pc, initiator=initiator)
        self._links[(peer_id, link_id)] = link
        return link

    async def _set_local(self, pc: RTCPeerConnection, description: RTCSessionDescription) -> str:
        """Set the local description, gathering candidates on the configured addresses; return its SDP."""
        with _gathering_on(self.config.ice_addresses):
            await pc.setLocalDescription(description)
        return pc.localDescription.sdp

    def _remote_sdp(self, sdp: str, typ: str, peer_id: str) -> RTCSessionDescription:
        filtered, dropped = _filter_remote_candidates(sdp, self._remote_allowed)
        if dropped:
            log.info("%s from %r: dropped %d candidates outside remote_addresses", typ, peer_id, dropped)
        return RTCSessionDescription(sdp=filtered, type=typ)

    async def connect(self, peer_id: str) -> Link:
        """Open a link to ``peer_id``: offer through signaling, wait for the answer and an open channel.

        Raises ``LinkTimeoutError`` after ``connect_timeout_s`` (the half-open connection is closed) and
        ``LinkClosedError`` if the connection fails first.
        """
        if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
            raise ValueError(f"peer id {peer_id!r:.80} is not a string of 1..{MAX_PEER_ID_CHARS} chars")
        link = self._new_link(peer_id, secrets.token_hex(8), initiator=True)
        pc = link._pc
        deadline = asyncio.timeout(self.config.connect_timeout_s)
        try:
            async with deadline:
                link._attach(pc.createDataChannel(CHANNEL_LABEL, ordered=True))
                link._set_state(LinkState.CONNECTING)
                sdp = await self._set_local(pc, await pc.createOffer())
                offer = {"kind": SIGNAL_KIND, "type": "offer", "sdp": sdp, "link": link.link_id}
                await self._send_signal(peer_id, offer)
                await link._wait_open()
        except TimeoutError:
            if not deadline.expired():  # a TimeoutError of send_signal's own
                await link._abort(LinkClosedError(f"link {link.link_id} to peer {peer_id!r}: connect failed"))
                raise
            stage = "no answer came" if pc.remoteDescription is None else "the data channel did not open"
            message = (
                f"link {link.link_id} to peer {peer_id!r}: {stage} within {self.config.connect_timeout_s} s"
            )
            await link._abort(LinkClosedError(message))
            raise LinkTimeoutError(message) from None
        except BaseException:
            await link._abort(LinkClosedError(f"link {link.link_id} to peer {peer_id!r}: connect failed"))
            raise
        return link

    async def handle_signal(self, from_peer_id: str, payload: dict[str, Any]) -> None:
        """Apply one signaling payload: an offer starts an incoming link (and answers), an answer
        completes a pending ``connect()``. Anything malformed raises ``SignalPayloadError``; the
        manager and its other links are unaffected."""
        if self._closed:
            raise TransportError("the LinkManager is closed")
        typ, sdp, link_id = _parse_signal(from_peer_id, payload)
        if typ == "offer":
            await self._answer(from_peer_id, link_id, sdp)
        else:
            await self._complete(from_peer_id, link_id, sdp)

    async def _answer(self, peer_id: str, link_id: str, sdp: str) -> None:
        if (peer_id, link_id) in self._links:
            raise SignalPayloadError(f"offer from peer {peer_id!r} reuses link id {link_id}")
        link = self._new_link(peer_id, link_id, initiator=False)
        pc = link._pc
        pc.on("datachannel", link._attach)
        link._set_state(LinkState.CONNECTING)
        try:
            await pc.setRemoteDescription(self._remote_sdp(sdp, "offer", peer_id))
            answer_sdp = await self._set_local(pc, await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError, KeyError, InvalidStateError... on bad SDP
            await link._abort(LinkClosedError(f"link {link_id} from peer {peer_id!r}: unusable offer"))
            raise SignalPayloadError(
                f"cannot answer the offer from peer {peer_id!r} (link {link_id}): {exc!r}"
            ) from exc
        try:
            await self._send_signal(
                peer_id, {"kind": SIGNAL_KIND, "type": "answer", "sdp": answer_sdp, "link": link_id}
            )
        except BaseException:
            await link._abort(
                LinkClosedError(f"link {link_id} from peer {peer_id!r}: the answer was not sent")
            )
            raise
        self._spawn(self._deliver_when_open(link), f"incoming link {link_id}")

    async def _complete(self, peer_id: str, link_id: str, sdp: str) -> None:
        link = self._links.get((peer_id, link_id))
        if link is None or not link.initiator or link._pc.signalingState != "have-local-offer":
            raise SignalPayloadError(
                f"answer from peer {peer_id!r} for link {link_id}: no connect() is waiting for it "
                "(unknown, timed out, closed or answered already)"
            )
        try:
            await link._pc.setRemoteDescription(self._remote_sdp(sdp, "answer", peer_id))
        except Exception as exc:  # translated at the aiortc boundary, as in _answer
            await link._abort(
                LinkClosedError(f"link {link_id} to peer {peer_id!r}: unusable answer: {exc!r}")
            )
            raise SignalPayloadError(
                f"answer from peer {peer_id!r} for link {link_id} is unusable: {exc!r}"
            ) from exc

    async def _deliver_when_open(self, link: Link) -> None:
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await link._wait_open()
        except TimeoutError:
            await link._abort(
                LinkClosedError(f"link {link.link_id} from peer {link.remote_id!r}: did not open")
            )
            log.warning("incoming link %s from %r did not open in time", link.link_id, link.remote_id)
            return
        except LinkClosedError as exc:
            log.warning(
                "incoming link %s from %r closed before it opened: %s", link.link_id, link.remote_id, exc
            )
            return
        if self._on_link is None:
            self._incoming.put_nowait(link)
            return
        result = self._on_link(link)
        if inspect.isawaitable(result):
            await result

    async def accept(self) -> Link:
        """The next incoming link (only without ``on_link``); raises ``TransportError`` once closed."""
        link = await self._incoming.get()
        if link is None:
            self._incoming.put_nowait(None)
            raise TransportError("the LinkManager is closed")
        return link

    async def aclose(self) -> None:
        """Close every link and wait for the background tasks (cancelling those that linger)."""
        self._closed = True
        while not self._incoming.empty():  # links nobody accepted are closed below
            self._incoming.get_nowait()
        self._incoming.put_nowait(None)
        await asyncio.gather(*(link.aclose() for link in list(self._links.values())), return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self._tasks:
            tasks = set(self._tasks)
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if pending:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

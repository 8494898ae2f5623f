"""WebRTC links between peers (aiortc): one ordered, reliable data channel per link, carrying frames.

``LinkManager`` owns every link of one peer. It makes offers (``connect``) and answers them
(``handle_signal``) through a ``send_signal`` callable that the signaling layer supplies; the payloads
are plain JSON, so a browser's ``RTCPeerConnection`` can speak them too (``docs/wire.md``, "Transport").
The links themselves (``Link``: chunked frames with backpressure, PING answered) are in ``link.py``.

``TransportConfig.ice_addresses`` are the only host addresses candidates are gathered on, and
``remote_addresses`` the only remote candidate addresses accepted; how aiortc and aioice are made to
do that is in ``ice.py``. By default every packet stays on 127.0.0.1 and no STUN server is contacted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCSctpTransport, RTCSessionDescription

from python_peer.core.errors import SignalingError
from python_peer.core.ice import IceServer, IceSettings
from python_peer.core.protocol import MAX_SDP_CHARS, WEBRTC_SIGNAL
from python_peer.core.wire import CHUNK_HEADER_SIZE, DEFAULT_CHUNK_SIZE, MAX_FRAME_BYTES
from python_peer.errors import LinkClosedError, LinkTimeoutError, SignalPayloadError, TransportError

from .ice import (
    filter_remote_candidates,
    gathering_on,
    host_sockets,
    install_host_address_hook,
    ip_set,
    rtc_configuration,
    size_buffers,
)
from .link import CHANNEL_LABEL, Link, LinkState, LinkStats

__all__ = [
    "CHANNEL_LABEL",
    "Link",
    "LinkManager",
    "LinkState",
    "LinkStats",
    "SendSignal",
    "TransportConfig",
]

log = logging.getLogger(__name__)

SIGNAL_KIND = WEBRTC_SIGNAL
MAX_PEER_ID_CHARS = 256
MAX_SOCKET_BUFFER_BYTES = 64 * 1024 * 1024
_LINK_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

SendSignal = Callable[[str, dict[str, Any]], Awaitable[None]]
OnLink = Callable[[Link], Awaitable[None] | None]


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
    # SO_RCVBUF and SO_SNDBUF of each link's UDP sockets (0: aioice's 256 KiB). Linux grants twice the
    # request (capped at net.core.rmem_max) and charges ~2.3 KB per 1200-byte datagram on loopback, so
    # 1 MiB holds ~900 datagrams, ~1 MiB of SCTP payload: the window aiortc advertises, which a
    # browser's SCTP (unlike aiortc's) heeds when it sends to us.
    socket_buffer_bytes: int = 1024 * 1024
    # Bytes aiortc's SCTP may have in flight (its congestion window, capped; 0: uncapped). aiortc ignores
    # the receiver's window and grows its own until a datagram drops: 12 MiB each way over one link
    # dropped ~530 datagrams at each end (aioice's socket holds ~220), each a retransmission and a lost
    # tail 1 s of stall (aiortc's minimum RTO). Well under what the remote's socket holds, a link cannot
    # overflow it, and the queue stays short: aioice closes a link after 6 consent checks in a row got
    # no answer within 0.5 s, which a 512 KiB window (or a big socket alone) caused under load. It also
    # bounds one link's rate at max_flight_bytes / round trip (2.6 MB/s over 50 ms).
    max_flight_bytes: int = 128 * 1024

    def __post_init__(self) -> None:
        ip_set(self.ice_addresses, "ice_addresses")
        ip_set(self.remote_addresses, "remote_addresses")
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
        if self.socket_buffer_bytes != 0 and not 65536 <= self.socket_buffer_bytes <= MAX_SOCKET_BUFFER_BYTES:
            raise ValueError(
                f"TransportConfig.socket_buffer_bytes {self.socket_buffer_bytes} is not 0 (aioice's default) "
                f"or in 65536..{MAX_SOCKET_BUFFER_BYTES}"
            )
        if self.max_flight_bytes != 0 and not 16 * 1024 <= self.max_flight_bytes <= MAX_SOCKET_BUFFER_BYTES:
            raise ValueError(
                f"TransportConfig.max_flight_bytes {self.max_flight_bytes} is not 0 (uncapped) "
                f"or in 16384..{MAX_SOCKET_BUFFER_BYTES}"
            )
        for name in ("max_message_bytes", "max_links", "recv_queue_frames", "recv_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransportConfig.{name} must be at least 1, got {getattr(self, name)!r}")

    @classmethod
    def from_ice(cls, ice: IceSettings) -> TransportConfig:
        """The configuration of these ICE settings: loopback as by default, or any address."""
        if ice.loopback_only:
            return cls(ice_servers=ice.ice_servers())
        return cls(ice_servers=ice.ice_servers(), ice_addresses=None, remote_addresses=None)


class _CappedWindow:
    """A data descriptor for aiortc's ``RTCSctpTransport._cwnd``: every value it is set to is capped."""

    def __get__(self, obj: Any, objtype: type | None = None) -> int:
        return int(obj.__dict__["_ai4all_cwnd"])

    def __set__(self, obj: Any, value: int) -> None:
        obj.__dict__["_ai4all_cwnd"] = min(int(value), obj.__dict__["_ai4all_cwnd_cap"])


_CAPPED_CLASSES: dict[type, type] = {}


def cap_congestion_window(sctp: RTCSctpTransport, max_bytes: int) -> None:
    """Keep aiortc's SCTP congestion window (``_cwnd``, bytes in flight) at most ``max_bytes``.

    aiortc grows it while nothing is lost and does not heed the receiver's advertised window, so
    without a cap a sender overruns the receiver's UDP socket whenever that process is busy; the
    instance moves to a subclass whose ``_cwnd`` caps what aiortc sets (its code is unchanged).
    """
    cls = type(sctp)
    if "_ai4all_cwnd_cap" not in sctp.__dict__:
        capped = _CAPPED_CLASSES.get(cls)
        if capped is None:
            capped = _CAPPED_CLASSES[cls] = type(f"Capped{cls.__name__}", (cls,), {"_cwnd": _CappedWindow()})
        current = sctp.__dict__.get("_cwnd", max_bytes)
        sctp.__dict__["_ai4all_cwnd_cap"] = max_bytes
        sctp.__class__ = capped
        sctp._cwnd = current
    else:
        sctp.__dict__["_ai4all_cwnd_cap"] = max_bytes


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
        self._remote_allowed = ip_set(self.config.remote_addresses, "remote_addresses")
        self._links: dict[tuple[str, str], Link] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._incoming: asyncio.Queue[Link | None] = asyncio.Queue()
        self._closed = False
        if self.config.ice_addresses is not None:
            install_host_address_hook()

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
        pc = RTCPeerConnection(rtc_configuration(self.config.ice_servers))
        link = Link(self, peer_id, link_id, pc, initiator=initiator)
        self._links[(peer_id, link_id)] = link
        return link

    async def _set_local(self, link: Link, description: RTCSessionDescription) -> str:
        """Set the local description, gathering candidates on the configured addresses, and size the
        buffers of the UDP sockets gathering bound; return its SDP."""
        pc = link._pc
        with gathering_on(self.config.ice_addresses):
            await pc.setLocalDescription(description)
        sockets = host_sockets(pc)
        link._udp_sockets = sockets
        if self.config.socket_buffer_bytes:
            granted = size_buffers(sockets, self.config.socket_buffer_bytes)
            link.stats.receive_buffer_bytes = granted
            if sockets and granted < self.config.socket_buffer_bytes:
                log.info(
                    "%r: UDP receive buffer %d bytes, asked for %d (net.core.rmem_max caps it)",
                    link,
                    granted,
                    self.config.socket_buffer_bytes,
                )
        if self.config.max_flight_bytes and pc.sctp is not None:
            cap_congestion_window(pc.sctp, self.config.max_flight_bytes)
        return pc.localDescription.sdp

    def _remote_sdp(self, sdp: str, typ: str, peer_id: str) -> RTCSessionDescription:
        filtered, dropped = filter_remote_candidates(sdp, self._remote_allowed)
        if dropped:
            log.info("%s from %r: dropped %d candidates outside remote_addresses", typ, peer_id, dropped)
        return RTCSessionDescription(sdp=filtered, type=typ)

    async def connect(self, peer_id: str) -> Link:
        """Open a link to ``peer_id``: offer through signaling, wait for the answer and an open channel.

        Raises ``LinkTimeoutError`` after ``connect_timeout_s`` (the half-open connection is closed) and
        ``LinkClosedError`` if the connection fails first, or if signaling cannot relay the offer (the
        peer is connected to no signaling node we reach): either way the link never opens.
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
                sdp = await self._set_local(link, await pc.createOffer())
                offer = {"kind": SIGNAL_KIND, "type": "offer", "sdp": sdp, "link": link.link_id}
                await self._send_signal(peer_id, offer)
                await link._wait_open()
        except SignalingError as exc:
            message = f"link {link.link_id} to peer {peer_id!r}: signaling could not relay the offer: {exc}"
            await link._abort(LinkClosedError(message))
            raise LinkClosedError(message) from exc
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
            answer_sdp = await self._set_local(link, await pc.createAnswer())
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
        # Nothing is handed on any more: the callback (often its owner's bound method: a cycle) is let go,
        # so that a closed owner is freed when it is dropped, not when the cyclic collector runs.
        self._on_link = None

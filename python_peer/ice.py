"""aiortc and aioice, configured for ICE: the one module of the peer that knows how they gather candidates.

aiortc gathers ICE candidates once, without trickle, inside ``setLocalDescription``, and aioice leaves
out 127.0.0.1 when it lists host addresses. ``install_host_address_hook`` replaces that list, once per
process, with the addresses of the ``gathering_on`` block that is running (each ``LinkManager`` gathers on
its ``TransportConfig.ice_addresses``), and ``filter_remote_candidates`` drops remote candidates outside a
list, so by default every packet stays on 127.0.0.1 and no STUN server is contacted.
``rtc_configuration`` turns the deployment's STUN/TURN servers (``python_peer.core.ice``) into aiortc's.
``host_sockets`` finds the UDP sockets aioice bound for a connection, so their buffers can be sized.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from python_peer.core.ice import IceServer

log = logging.getLogger(__name__)


def ip_set(addresses: tuple[str, ...] | None, field: str) -> frozenset[str] | None:
    """The addresses, normalised; None stays None (any address). ``field`` names them in the error."""
    if addresses is None:
        return None
    try:
        return frozenset(str(ipaddress.ip_address(a)) for a in addresses)
    except ValueError as exc:
        raise ValueError(f"TransportConfig.{field} must hold IP addresses, got {addresses!r}") from exc


def rtc_configuration(servers: Iterable[IceServer]) -> RTCConfiguration:
    """aiortc's configuration for these servers; none gives ``[]``, which means no STUN (None would
    mean Google's)."""
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers]
    )


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


def install_host_address_hook() -> None:
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
def gathering_on(addresses: tuple[str, ...] | None) -> Iterator[None]:
    token = _ICE_ADDRESSES.set(addresses)
    try:
        yield
    finally:
        _ICE_ADDRESSES.reset(token)


def filter_remote_candidates(sdp: str, allowed: frozenset[str] | None) -> tuple[str, int]:
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


def host_sockets(pc: RTCPeerConnection) -> list[Any]:
    """The UDP sockets aioice bound for ``pc``'s host candidates (after ``setLocalDescription``).

    aiortc exposes none of them: the path goes through aioice's ``Connection`` (private names, checked
    by ``tests/test_transport.py``); an empty list when it is not there.
    """
    sctp = pc.sctp
    connection = getattr(sctp.transport.transport, "_connection", None) if sctp is not None else None
    sockets = []
    for protocol in getattr(connection, "_protocols", ()):
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sockets.append(sock)
    return sockets


SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux: struct of u32 counters, drops at index 8
_MEMINFO = struct.Struct("9I")


def size_buffers(sockets: Iterable[Any], nbytes: int) -> int:
    """Ask for ``nbytes`` of receive and send buffer on each socket; return the smallest receive
    buffer granted (Linux doubles the request and caps it at ``2 * net.core.rmem_max``)."""
    granted = []
    for sock in sockets:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
            except OSError as exc:
                log.warning("cannot size a UDP socket buffer to %d bytes: %s", nbytes, exc)
        granted.append(int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
    return min(granted, default=0)


def socket_drops(sockets: Iterable[Any]) -> int | None:
    """Datagrams the kernel dropped at these sockets (full receive buffer): ``SO_MEMINFO``, Linux only."""
    total = 0
    try:
        for sock in sockets:
            total += _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))[8]
    except (OSError, struct.error):
        return None
    return total

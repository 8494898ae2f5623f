"""aiortc and aioice, configured for ICE: the one module of the peer that knows how they gather candidates.

aiortc gathers ICE candidates once, without trickle, inside ``setLocalDescription``, and aioice leaves
out 127.0.0.1 when it lists host addresses. ``install_host_address_hook`` replaces that list, once per
process, with the addresses of the ``gathering_on`` block that is running (each ``LinkManager`` gathers on
its ``TransportConfig.ice_addresses``), and ``filter_remote_candidates`` drops remote candidates outside a
list, so by default every packet stays on 127.0.0.1 and no STUN server is contacted.
``rtc_configuration`` turns the deployment's STUN/TURN servers (``python_peer.core.ice``) into aiortc's.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

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

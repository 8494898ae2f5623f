"""Which host names stay on this machine: the API listens there without a key, and the pages fetch
their own node's status there without a proxy."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (the default; anything else wants an API key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_address_or_localhost(host: str) -> bool:
    """Whether ``host`` (of a Host or Origin header) names this machine in a way DNS rebinding cannot
    forge: an IP address or ``localhost``. Any other name may have been pointed at 127.0.0.1 by its owner."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

"""ICE settings: which STUN/TURN servers WebRTC uses and whether candidates stay on loopback.

Standard library only, so the peer (``python_peer/ice.py`` turns these settings into aiortc's), the
signaling node (which hands them to browsers in its page configuration) and every command line share one
definition. ``IceSettings`` is the checked domain value: its errors (``SettingsError``) name its
fields. The command-line side lives here too, in one place: ``add_ice_args`` adds the ``--ice-*`` flags,
and ``ice_settings`` reads them back into an ``IceSettings``, mapping each error to the flag a user typed
(``CommandError``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from .errors import CommandError, SettingsError

# RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:) URLs: a host name or IPv4 address, an optional
# port, and for TURN an optional ?transport=udp|tcp. No IPv6 literal: aiortc's parser cannot read one.
ICE_URL_RE = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)
MAX_ICE_SERVERS = 16
MAX_ICE_SECRET_CHARS = 512
_PRINTABLE_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]*")

# How each field of ``IceSettings`` is named in a message: by itself, and by the command-line flag that
# sets it (``ice_settings`` renders the errors of the flags with these).
FIELD_NAMES = {"urls": "ICE server", "username": "username", "credential": "credential"}
FLAG_NAMES = {"urls": "--ice-server", "username": "--ice-username", "credential": "--ice-credential"}


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server that a deployment runs; none by default, so no packet leaves the machine."""

    urls: str
    username: str | None = None
    credential: str | None = None


def _error(field: str, template: str, **values: Any) -> SettingsError:
    return SettingsError(field, template, values, FIELD_NAMES)


@dataclass(frozen=True)
class IceSettings:
    """The ICE settings, checked: server URLs, the TURN servers' username and credential, and whether
    candidates stay on loopback (the default, which every test relies on)."""

    urls: tuple[str, ...] = ()
    username: str | None = None
    credential: str | None = None
    loopback_only: bool = True

    def __post_init__(self) -> None:
        if len(self.urls) > MAX_ICE_SERVERS:
            raise _error(
                "urls", "{count} ICE servers: at most {limit}", count=len(self.urls), limit=MAX_ICE_SERVERS
            )
        turn = False
        for url in self.urls:
            match = ICE_URL_RE.fullmatch(url) if len(url) <= 300 else None
            if match is None:
                raise _error(
                    "urls",
                    "{urls} {url!r} is not a STUN or TURN URL: give stun:HOST[:PORT], "
                    "stuns:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT] "
                    "(a host name or IPv4 address, no //)",
                    url=url[:100],
                )
            if match["port"] is not None and not 0 < int(match["port"]) < 65536:
                raise _error(
                    "urls", "{urls} {url!r}: port {port} is not in 1..65535", url=url, port=match["port"]
                )
            if match["transport"] is not None and match["scheme"].startswith("stun"):
                raise _error("urls", "{urls} {url!r}: ?transport= is for turn: and turns: URLs only", url=url)
            if match["scheme"] == "turns" and match["transport"] == "udp":
                raise _error("urls", "{urls} {url!r}: turns: runs over TLS, so over tcp only", url=url)
            turn = turn or match["scheme"].startswith("turn")
        for name, value in (("username", self.username), ("credential", self.credential)):
            if value is None:
                if turn:
                    raise _error(name, "a turn: or turns: server needs {username} and {credential}")
                continue
            if not turn:
                raise _error(name, "{" + name + "} is for turn: and turns: servers, and no {urls} names one")
            if len(value) > MAX_ICE_SECRET_CHARS or _PRINTABLE_RE.fullmatch(value) is None:
                raise _error(
                    name,
                    "{" + name + "} must be 1-{limit} printable ASCII characters, not starting with a space",
                    limit=MAX_ICE_SECRET_CHARS,
                )

    def check_native(self) -> None:
        """Refuse what the native stack (aiortc) cannot use (stuns:) rather than have it dropped silently."""
        for url in self.urls:
            if url.startswith("stuns:"):
                raise _error(
                    "urls",
                    "{urls} {url!r}: the native WebRTC stack (aiortc) has no STUN over TLS; "
                    "give a stun: or turns: URL",
                    url=url,
                )

    def ice_servers(self) -> tuple[IceServer, ...]:
        """One ``IceServer`` per URL; the turn(s) servers carry the username and credential."""
        return tuple(
            IceServer(url, self.username, self.credential) if url.startswith("turn") else IceServer(url)
            for url in self.urls
        )

    def page_config(self) -> dict[str, Any]:
        """The ``ice`` entry of a browser page's configuration (docs/browser.md)."""
        servers: list[dict[str, Any]] = []
        for server in self.ice_servers():
            entry: dict[str, Any] = {"urls": [server.urls]}
            if server.username is not None:
                entry["username"] = server.username
                entry["credential"] = server.credential
            servers.append(entry)
        return {"servers": servers, "loopback_only": self.loopback_only}


# --- the command line ------------------------------------------------------------------------------------


def add_ice_args(parser: argparse.ArgumentParser, *, for_browsers: bool = False) -> None:
    """The ICE flags, shared by ``ai4all peer``, ``ai4all chat`` and ``ai4all signal`` (which hands
    them to browsers in its page configuration); ``ice_settings`` reads them back."""
    whose = "browsers' " if for_browsers else ""
    group = parser.add_argument_group(
        "ICE (WebRTC connectivity)",
        "By default links are made over 127.0.0.1 only, with no STUN or TURN server. For a mesh across "
        "machines give --ice-any-address, and STUN/TURN servers where peers sit behind NAT.",
    )
    group.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help=(
            f"a STUN or TURN server for {whose}ICE: stun:HOST[:PORT], "
            + ("stuns:HOST[:PORT], " if for_browsers else "")
            + "turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT][?transport=tcp] (repeatable)"
            + ("" if for_browsers else "; the native stack uses the first stun: and the first turn(s): one")
        ),
    )
    group.add_argument("--ice-username", default=None, help="username for the turn:/turns: servers")
    group.add_argument(
        "--ice-credential", default=None, help="credential (password) for the turn:/turns: servers"
    )
    group.add_argument(
        "--ice-any-address",
        action="store_true",
        help=(
            f"do not confine {whose}ICE candidates to 127.0.0.1: gather on every interface and accept "
            "any remote address (needed for a mesh across machines)"
        ),
    )


def ice_settings(args: argparse.Namespace, *, native: bool = True) -> IceSettings:
    """The checked flags of ``add_ice_args``; ``CommandError`` names the flag that is wrong. ``native``:
    refuse what aiortc cannot use (stuns:) rather than drop it silently."""
    try:
        settings = IceSettings(
            urls=tuple(dict.fromkeys(args.ice_server)),
            username=args.ice_username,
            credential=args.ice_credential,
            loopback_only=not args.ice_any_address,
        )
        if native:
            settings.check_native()
    except SettingsError as exc:
        raise CommandError(exc.render(FLAG_NAMES)) from exc
    return settings

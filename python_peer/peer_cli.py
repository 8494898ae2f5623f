"""``ai4all peer``: serve a span of a model to the mesh until Ctrl-C or SIGTERM.

With ``--api-port`` the peer also serves the OpenAI-compatible API (``python_peer/api``) on its own
node: generations route through the mesh, and through this peer's own span in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api.app import ApiServer
    from .api.service import MeshNodeService
    from .node import Peer
    from .transport import IceServer, TransportConfig

# RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:) URLs: a host name or IPv4 address, an optional
# port, and for TURN an optional ?transport=udp|tcp. No IPv6 literal: aiortc's parser cannot read one.
ICE_URL_RE = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)
MAX_ICE_SERVERS = 16
MAX_ICE_SECRET_CHARS = 512
_PRINTABLE_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]*")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "peer",
        help="serve a span of a model's blocks to the mesh",
        description=(
            "Connect to signaling nodes, announce a span of MODEL's blocks and serve inference sessions over "
            "WebRTC. Without --span the peer serves the block shard the mesh serves least."
        ),
    )
    add_signal_args(parser)
    add_ice_args(parser)
    parser.add_argument(
        "--model", required=True, type=Path, help="directory of an exported model (ai4all export)"
    )
    parser.add_argument(
        "--span", default=None, help="blocks to serve, START-END (a run of the model's block shards)"
    )
    parser.add_argument(
        "--max-memory-mb", type=float, default=512, help="KV-cache memory budget in MiB (default 512)"
    )
    parser.add_argument(
        "--max-weights-mb", type=int, default=4096, help="weights this peer may load, for choosing a span"
    )
    parser.add_argument(
        "--gossip-interval",
        type=float,
        default=10.0,
        help="seconds between ledger gossip rounds (default 10)",
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=300.0, help="seconds before an idle session is evicted"
    )
    api = parser.add_argument_group("OpenAI-compatible API")
    api.add_argument(
        "--api-port",
        type=int,
        default=None,
        metavar="P",
        help="also serve the OpenAI-compatible API on port P (0 picks a free port)",
    )
    api.add_argument(
        "--api-host",
        default="127.0.0.1",
        help="address the API listens on (default 127.0.0.1; any other wants --api-key)",
    )
    api.add_argument(
        "--api-key",
        default=os.environ.get("AI4ALL_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $AI4ALL_API_KEY, else none)",
    )
    api.add_argument(
        "--api-rate", type=float, default=5.0, help="API requests per second per client (default 5)"
    )
    api.add_argument(
        "--api-burst", type=int, default=20, help="API requests a client may make at once (default 20)"
    )
    parser.set_defaults(handler=run)


def add_signal_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--signal",
        action="append",
        required=True,
        metavar="URL",
        help="signaling node, ws://HOST:PORT (repeat for fail-over)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where this node keeps its identity and state"
    )


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


@dataclass(frozen=True)
class IceSettings:
    """The ICE flags, checked: server URLs, the TURN servers' username and credential, and whether
    candidates stay on loopback (the default, which every test relies on)."""

    urls: tuple[str, ...] = ()
    username: str | None = None
    credential: str | None = None
    loopback_only: bool = True

    def __post_init__(self) -> None:
        if len(self.urls) > MAX_ICE_SERVERS:
            raise ValueError(f"{len(self.urls)} ICE servers: at most {MAX_ICE_SERVERS}")
        turn = False
        for url in self.urls:
            match = ICE_URL_RE.fullmatch(url) if len(url) <= 300 else None
            if match is None:
                raise ValueError(
                    f"--ice-server {url[:100]!r} is not a STUN or TURN URL: give stun:HOST[:PORT], "
                    "stuns:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT] "
                    "(a host name or IPv4 address, no //)"
                )
            if match["port"] is not None and not 0 < int(match["port"]) < 65536:
                raise ValueError(f"--ice-server {url!r}: port {match['port']} is not in 1..65535")
            if match["transport"] is not None and match["scheme"].startswith("stun"):
                raise ValueError(f"--ice-server {url!r}: ?transport= is for turn: and turns: URLs only")
            if match["scheme"] == "turns" and match["transport"] == "udp":
                raise ValueError(f"--ice-server {url!r}: turns: runs over TLS, so over tcp only")
            turn = turn or match["scheme"].startswith("turn")
        for name, value in (("--ice-username", self.username), ("--ice-credential", self.credential)):
            if value is None:
                if turn:
                    raise ValueError("a turn: or turns: server needs --ice-username and --ice-credential")
                continue
            if not turn:
                raise ValueError(f"{name} is for turn: and turns: servers, and no --ice-server names one")
            if len(value) > MAX_ICE_SECRET_CHARS or _PRINTABLE_RE.fullmatch(value) is None:
                raise ValueError(
                    f"{name} must be 1-{MAX_ICE_SECRET_CHARS} printable ASCII characters, not starting with a space"
                )

    def ice_servers(self) -> tuple[IceServer, ...]:
        """One ``IceServer`` per URL; the turn(s) servers carry the username and credential."""
        from .transport import IceServer

        return tuple(
            IceServer(url, self.username, self.credential) if url.startswith("turn") else IceServer(url)
            for url in self.urls
        )

    def transport_config(self) -> TransportConfig:
        """The native transport's configuration: loopback as before, or any address."""
        from .transport import TransportConfig

        if self.loopback_only:
            return TransportConfig(ice_servers=self.ice_servers())
        return TransportConfig(ice_servers=self.ice_servers(), ice_addresses=None, remote_addresses=None)

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


def ice_settings(args: argparse.Namespace, *, native: bool = True) -> IceSettings:
    """The checked ICE flags of ``add_ice_args``; CommandError names what is wrong. ``native``: refuse
    what aiortc cannot use (stuns:) rather than drop it silently."""
    from .cli import CommandError

    try:
        settings = IceSettings(
            urls=tuple(dict.fromkeys(args.ice_server)),
            username=args.ice_username,
            credential=args.ice_credential,
            loopback_only=not args.ice_any_address,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if native:
        for url in settings.urls:
            if url.startswith("stuns:"):
                raise CommandError(
                    f"--ice-server {url!r}: the native WebRTC stack (aiortc) has no STUN over TLS; "
                    "give a stun: or turns: URL"
                )
    return settings


def check_api_args(args: argparse.Namespace) -> None:
    """Refuse an API that listens beyond this machine without a key, before anything loads."""
    from .cli import CommandError

    if args.api_port is None:
        return
    if not 0 <= args.api_port <= 65535:
        raise CommandError(f"--api-port {args.api_port} is not a port (0..65535)")
    if args.api_rate <= 0 or args.api_burst < 1:
        raise CommandError("--api-rate must be above 0 and --api-burst at least 1")
    from .api.app import is_loopback

    if not is_loopback(args.api_host) and not args.api_key:
        raise CommandError(
            f"--api-host {args.api_host} listens beyond this machine: give --api-key (or $AI4ALL_API_KEY)"
        )


async def start_api(peer: Peer, args: argparse.Namespace) -> tuple[MeshNodeService, ApiServer]:
    """The API on the peer's own node, listening; the caller closes both (server first)."""
    from .api.app import ApiConfig, ApiServer, create_app
    from .api.service import MeshNodeService
    from .ledger_service import ApiLedger

    ledger = ApiLedger(peer.node.ledger) if peer.node.ledger is not None else None
    service = await MeshNodeService.create(peer.node, [args.model], peer=peer, ledger=ledger)
    config = ApiConfig(api_key=args.api_key or None, rate_per_s=args.api_rate, burst=args.api_burst)
    server = ApiServer(create_app(service, config), args.api_host, args.api_port)
    try:
        await server.start()
    except BaseException:
        await service.aclose()
        raise
    return service, server


async def serve(args: argparse.Namespace) -> int:
    from python_peer.core.spans import Span

    from .node import NodeConfig, Peer, PeerConfig
    from .server import ServerConfig

    config = PeerConfig(
        node=NodeConfig(
            signal_urls=tuple(args.signal),
            data_dir=args.data_dir,
            gossip_interval_s=args.gossip_interval,
            transport=ice_settings(args).transport_config(),
        ),
        model_dir=args.model,
        span=Span.parse(args.span) if args.span else None,
        server=ServerConfig(
            memory_budget_bytes=int(args.max_memory_mb * 2**20), idle_timeout_s=args.idle_timeout
        ),
        max_weights_bytes=args.max_weights_mb * 2**20,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await Peer.create(config) as peer:
        api = await start_api(peer, args) if args.api_port is not None else None
        try:
            print(
                f"peer {peer.node.peer_id} serves {peer.manifest.name} blocks {peer.span} "
                f"(KV budget {args.max_memory_mb} MiB)",
                file=sys.stderr,
                flush=True,
            )
            if api is not None:
                print(f"api {api[1].url}", file=sys.stderr, flush=True)
            await stop.wait()
            print("peer stopping", file=sys.stderr, flush=True)
        finally:
            if api is not None:
                await api[1].aclose()
                await api[0].aclose()
    return 0


def run(args: argparse.Namespace) -> int:
    check_api_args(args)
    ice_settings(args)  # refused before anything loads
    return asyncio.run(serve(args))

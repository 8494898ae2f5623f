"""``ai4all peer``: serve a span of a model to the mesh until Ctrl-C or SIGTERM.

With ``--api-port`` the peer also serves the OpenAI-compatible API (``python_peer/api``) on its own
node: generations route through the mesh, and through this peer's own span in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api.app import ApiServer
    from .api.service import MeshNodeService
    from .node import Peer


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
            signal_urls=tuple(args.signal), data_dir=args.data_dir, gossip_interval_s=args.gossip_interval
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
    return asyncio.run(serve(args))

"""``ai4all peer``: serve a span of a model to the mesh until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any


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
        "--idle-timeout", type=float, default=300.0, help="seconds before an idle session is evicted"
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


async def serve(args: argparse.Namespace) -> int:
    from python_peer.core.spans import Span

    from .node import NodeConfig, Peer, PeerConfig
    from .server import ServerConfig

    config = PeerConfig(
        node=NodeConfig(signal_urls=tuple(args.signal), data_dir=args.data_dir),
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
        print(
            f"peer {peer.node.peer_id} serves {peer.manifest.name} blocks {peer.span} "
            f"(KV budget {args.max_memory_mb} MiB)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        print("peer stopping", file=sys.stderr, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))

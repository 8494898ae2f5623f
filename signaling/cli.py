"""``ai4all signal``: run a signaling node.

Registering only adds arguments; FastAPI, uvicorn and pynacl are imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.ice import add_ice_args
from python_peer.core.publisher_trust import add_trust_args

from .directory import MAX_PEERS_PER_ADDRESS

if TYPE_CHECKING:
    from .app import SignalOptions


def register(subparsers: Any) -> None:
    """Add the ``signal`` subcommand to the ``ai4all`` parser."""
    parser = subparsers.add_parser(
        "signal",
        help="run a signaling node (rendezvous for peers; federates with sibling nodes)",
        description=(
            "Run a signaling node. Its URL is ws://HOST:PORT (a websocket at the root path); give that URL "
            "to peers (--signal) and to other signaling nodes (--sibling). Browsers join by opening "
            "http://HOST:PORT/ (the contribute page) or /chat; --model-dir makes the node serve a model's "
            "files to them."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--sibling",
        action="append",
        default=[],
        metavar="URL#KEY",
        help=(
            "a sibling signaling node to federate with: its ws:// URL and its node key (64 hex digits, "
            "printed when it starts and at /healthz), as URL#KEY (repeatable)"
        ),
    )
    parser.add_argument(
        "--accept-sibling",
        action="append",
        default=[],
        metavar="KEY",
        help="node key of a sibling that dials this node (it lists this node's URL#KEY); repeatable",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory holding this node's key, created on first start (default: a fresh key each start)",
    )
    parser.add_argument("--url", default=None, help="public URL of this node, if not ws://HOST:PORT")
    parser.add_argument(
        "--node-id", default=None, help="name of this node in logs and views (default: the key's start)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1024, help="websockets served at once (default: %(default)s)"
    )
    parser.add_argument(
        "--max-peers-per-address",
        type=int,
        default=MAX_PEERS_PER_ADDRESS,
        metavar="N",
        help=(
            "peers announced here that the directory lists per source address, an IPv4 address or an "
            "IPv6 /64; a new peer past it is refused with table_full (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="messages per second per peer connection (default: %(default)s)",
    )
    parser.add_argument(
        "--burst", type=int, default=60, help="messages a peer may send at once (default: %(default)s)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help=(
            "seconds a peer connection may send nothing before it is closed, advertised in hello so "
            "clients re-announce sooner (default: the protocol's, an announcement's longest life + 60 s)"
        ),
    )
    parser.add_argument(
        "--model-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help=(
            "an exported model directory (with manifest.json) whose files browsers download from this "
            "node at /models/NAME/ (repeatable)"
        ),
    )
    add_ice_args(parser, for_browsers=True)
    # which --model-dir this node serves (signed by a trusted publisher, or unsigned), and which publishers'
    # records its registry shows as trusted (it keeps others' too, fewer, marked untrusted)
    add_trust_args(parser)
    parser.set_defaults(handler=run)


def signal_options(args: argparse.Namespace) -> SignalOptions:
    """The checked arguments of ``ai4all signal``; ``CommandError`` names the flag that is wrong."""
    import re

    from python_peer.core.canonical import URL_RE, is_peer_id
    from python_peer.core.errors import CommandError, IdentityError
    from python_peer.core.ice import ice_settings
    from python_peer.core.publisher_trust import DEFAULT_TRUSTED_PUBLISHERS, check_model_dir, trust_policy
    from python_peer.identity import Identity, verify

    from .app import SignalOptions
    from .connection import IDLE_TIMEOUT_S
    from .node import NodeConfig
    from .web import ServedModel

    if not 0 < args.port < 65536:
        raise CommandError(f"--port {args.port} is not a TCP port (1-65535)")
    for spec in args.sibling:
        url, _, key = spec.partition("#")
        if URL_RE.match(url) is None or not is_peer_id(key):
            raise CommandError(
                f"--sibling {spec!r}: give URL#KEY, the sibling's ws:// or wss:// URL and its node key "
                "(64 lowercase hex digits, printed when it starts and at /healthz)"
            )
    for key in args.accept_sibling:
        if not is_peer_id(key):
            raise CommandError(f"--accept-sibling {key!r}: a node key is 64 lowercase hex digits")
    if args.url and URL_RE.match(args.url) is None:
        raise CommandError(f"{args.url!r} is not a signaling URL: give ws://HOST:PORT or wss://HOST:PORT")
    if args.node_id is not None and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.node_id) is None:
        raise CommandError(f"--node-id {args.node_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
    if args.max_connections < 1 or args.rate <= 0 or args.burst < 1:
        raise CommandError("--max-connections, --rate and --burst must be positive")
    if args.max_peers_per_address < 1:
        raise CommandError(f"--max-peers-per-address {args.max_peers_per_address} must be positive")
    ice = ice_settings(args, native=False)  # browsers speak stuns: too
    try:
        identity = Identity.load_or_create(args.data_dir) if args.data_dir else Identity.generate()
    except IdentityError as exc:
        raise CommandError(f"--data-dir {args.data_dir}: {exc}") from exc
    if args.idle_timeout is not None and not 2.0 <= args.idle_timeout <= 86_400:
        raise CommandError(f"--idle-timeout {args.idle_timeout:g} must be between 2 and 86400 seconds")
    policy = trust_policy(args)
    records = []
    for model_dir in args.model_dir:  # served to browsers only if this node would use it itself
        ServedModel.load(model_dir)  # the site's own checks first, in its words
        verdict = check_model_dir(model_dir, policy, verify)
        if verdict.record is not None:  # registered with this node's registry, and gossiped
            records.append(verdict.record)
    node = NodeConfig(
        host=args.host,
        port=args.port,
        siblings=tuple(dict.fromkeys(args.sibling)),
        url=args.url,
        node_id=args.node_id,
        identity=identity,
        accept=tuple(args.accept_sibling),
        max_connections=args.max_connections,
        max_peers_per_address=args.max_peers_per_address,
        messages_per_s=args.rate,
        burst=args.burst,
        idle_timeout_s=IDLE_TIMEOUT_S if args.idle_timeout is None else args.idle_timeout,
        trusted_publishers=frozenset(policy.publishers) | frozenset(DEFAULT_TRUSTED_PUBLISHERS),
        records=tuple(records),
    )
    return SignalOptions(
        node=node, model_dirs=tuple(args.model_dir), ice=ice, allow_unsigned=policy.allow_unsigned
    )


def run(args: argparse.Namespace) -> int:
    """Check the arguments, then serve the node until SIGINT or SIGTERM."""
    import logging

    from python_peer.core.errors import CommandError, LedgerError

    from .app import run_node
    from .errors import SiteError

    options = signal_options(args)
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))  # frame dumps
    try:
        run_node(options)  # the models and the ledger rules are checked before anything listens
    except (SiteError, LedgerError) as exc:
        raise CommandError(str(exc)) from exc
    return 0

"""``ai4all peer``: serve a span of a model to the mesh until Ctrl-C or SIGTERM.

With ``--api-port`` the peer also serves the OpenAI-compatible API (``python_peer/api``) on its own
node. This module only parses and checks the flags into ``PeerOptions``; ``serving.py`` runs the peer.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import CommandError
from python_peer.core.ice import add_ice_args, ice_settings
from python_peer.core.memory_budget import (
    PLAN_CONTEXT,
    PLAN_SESSIONS,
    RAM_FRACTION,
    available_ram,
    parse_size,
)
from python_peer.core.publisher_trust import add_trust_args, trust_policy

if TYPE_CHECKING:
    from python_peer.core.spans import Span

    from .serving import ApiOptions, PeerOptions


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "peer",
        help="serve a span of a model's blocks to the mesh",
        description=(
            "Connect to signaling nodes, announce a span of MODEL's blocks and serve inference sessions over "
            "WebRTC. Without --span the peer serves the least-served run of the model's block shards that fits "
            "its --memory-budget (weights plus KV room for "
            f"{PLAN_SESSIONS} sessions of up to {PLAN_CONTEXT} tokens); a --span that does not fit is refused. "
            "Repeat --model to serve a span of several models from one identity, announcement and ledger: "
            "they share the one --memory-budget (explicit spans first, then each model without one gets the "
            "least-served run that fits an equal share of what is left, and passes on what it does not use)."
        ),
    )
    add_signal_args(parser)
    add_ice_args(parser)
    add_trust_args(parser)
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        type=Path,
        help=(
            "directory of an exported model (ai4all export), repeat to serve several models; or one model "
            "NAME to fetch from its seeders"
        ),
    )
    parser.add_argument(
        "--upload-rate",
        default=None,
        metavar="SIZE",
        help="bytes a second this peer seeds model files at, e.g. 8MiB (default 32MiB; docs/chunks.md)",
    )
    parser.add_argument(
        "--span",
        action="append",
        default=None,
        help=(
            "blocks to serve, START-END (a run of the model's block shards); with several --model, give "
            "one --span per --model in the same order, 'auto' for the least-served run that fits"
        ),
    )
    parser.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help=(
            "memory for this peer's weights and KV caches, e.g. 2GiB or 800MB "
            f"(default: {RAM_FRACTION:.0%} of MemAvailable in /proc/meminfo)"
        ),
    )
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        default=None,
        help="cap on the KV caches in MiB (default: what --memory-budget leaves after the weights)",
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
    if args.api_port is None:
        return
    if not 0 <= args.api_port <= 65535:
        raise CommandError(f"--api-port {args.api_port} is not a port (0..65535)")
    if args.api_rate <= 0 or args.api_burst < 1:
        raise CommandError("--api-rate must be above 0 and --api-burst at least 1")
    from .api.hosts import is_loopback

    if not is_loopback(args.api_host) and not args.api_key:
        raise CommandError(
            f"--api-host {args.api_host} listens beyond this machine: give --api-key (or $AI4ALL_API_KEY)"
        )


def memory_budget(text: str | None) -> int:
    """``--memory-budget`` in bytes; without it ``RAM_FRACTION`` of this machine's available memory."""
    from python_peer.core.errors import SpanError

    try:
        if text is not None:
            return parse_size(text)
        try:
            meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
        except OSError as exc:
            raise SpanError(f"cannot read /proc/meminfo ({exc.strerror}): give --memory-budget") from None
        return int(available_ram(meminfo) * RAM_FRACTION)
    except SpanError as exc:
        raise CommandError(f"--memory-budget: {exc}") from None


def upload_rate(text: str | None) -> int:
    """``--upload-rate`` in bytes a second."""
    from python_peer.core.chunks import DEFAULT_UPLOAD_BYTES_PER_S
    from python_peer.core.errors import SpanError

    try:
        rate = parse_size(text) if text is not None else DEFAULT_UPLOAD_BYTES_PER_S
    except SpanError as exc:
        raise CommandError(f"--upload-rate: {exc}") from None
    if rate < 1:
        raise CommandError("--upload-rate must be at least 1 byte a second")
    return rate


def api_options(args: argparse.Namespace) -> ApiOptions | None:
    """The API's flags, checked (``check_api_args``); None without ``--api-port``."""
    from .api.app import ApiConfig
    from .serving import ApiOptions

    if args.api_port is None:
        return None
    config = ApiConfig(api_key=args.api_key or None, rate_per_s=args.api_rate, burst=args.api_burst)
    return ApiOptions(host=args.api_host, port=args.api_port, config=config)


def model_spans(args: argparse.Namespace) -> list[tuple[Path, Span | None]]:
    """Each ``--model`` with its ``--span`` (None: chosen at start), in order: the one place where the
    values of ``--model`` become model directories."""
    from python_peer.core.errors import SpanError
    from python_peer.core.spans import Span

    models: list[Path] = list(args.model)
    texts: list[str] = list(args.span or [])
    if texts and len(texts) != len(models):
        raise CommandError(
            f"{len(texts)} --span for {len(models)} --model: give one --span per --model, in the same "
            "order ('auto' lets the peer choose), or none"
        )
    spans: list[Span | None] = []
    for text in texts or ["auto"] * len(models):
        try:
            spans.append(None if text == "auto" else Span.parse(text))
        except SpanError as exc:
            raise CommandError(f"--span {text}: {exc}") from None
    return list(zip(models, spans, strict=True))


def peer_options(args: argparse.Namespace) -> PeerOptions:
    """The checked arguments of ``ai4all peer``; ``CommandError`` names the flag that is wrong."""
    from .node import ServedModel
    from .serving import PeerOptions

    check_api_args(args)
    if args.max_memory_mb is not None and not (0 < args.max_memory_mb < float("inf")):
        raise CommandError(f"--max-memory-mb {args.max_memory_mb} must be a positive number of MiB")
    ice = ice_settings(args)  # refused before anything loads
    budget = memory_budget(args.memory_budget)
    from .model_fetch import is_model_name
    from .model_trust import check_trusted_model
    from .seeding import SeedConfig

    models = model_spans(args)
    policy = trust_policy(args)
    names = [str(d) for d, _ in models if is_model_name(d)]  # NAMEs: fetched from seeders (model_fetch.py)
    if names and len(models) > 1:
        raise CommandError(
            f"--model {names[0]} is a model name: a peer fetches one model by name and serves it alone; "
            "give directories to serve several models"
        )
    for model_dir, _ in [] if names else models:
        check_trusted_model(
            model_dir, policy
        )  # a signed manifest of a trusted publisher, or --allow-unsigned
    (model_dir, span), more = models[0], models[1:]
    return PeerOptions(
        signal_urls=tuple(args.signal),
        model_dir=model_dir,
        more_models=tuple(ServedModel(d, s) for d, s in more),
        data_dir=args.data_dir,
        span=span,
        memory_budget_bytes=budget,
        max_memory_mb=args.max_memory_mb,
        gossip_interval_s=args.gossip_interval,
        idle_timeout_s=args.idle_timeout,
        ice=ice,
        api=api_options(args),
        model_name=names[0] if names else None,
        trust=policy,
        seed=SeedConfig(upload_bytes_per_s=upload_rate(args.upload_rate)),
    )


def run(args: argparse.Namespace) -> int:
    from . import event_loop
    from .serving import serve

    return event_loop.run(serve(peer_options(args)))

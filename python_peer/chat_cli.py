"""``ai4all chat``: one reply, through the mesh (``--signal``) or through shards loaded here.

The reply goes alone to stdout, streamed; progress and logs go to stderr. This module parses the flags
into ``ChatOptions``; ``chat.py`` answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.ice import IceSettings, add_ice_args, ice_settings
from python_peer.core.publisher_trust import add_trust_args, trust_policy

if TYPE_CHECKING:
    from .chat import ChatOptions
    from .generate import SamplingParams


def register(subparsers: Any) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="answer one prompt, through the mesh or through shards loaded here",
        description=(
            "Answer PROMPT through the model's chat template. With --signal the blocks run on peers of the "
            "mesh and only hidden states leave this machine; without it every shard runs here."
        ),
    )
    chat.add_argument("prompt", help="the user's message")
    chat.add_argument(
        "--model",
        required=True,
        type=Path,
        help="directory of an exported model (ai4all export), or a model NAME to fetch (with --signal)",
    )
    chat.add_argument(
        "--signal",
        action="append",
        default=[],
        metavar="URL",
        help="signaling node of the mesh, ws://HOST:PORT (repeatable); without it the shards run here",
    )
    chat.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where this client keeps its identity and ledger (default: $AI4ALL_DATA_DIR or ~/.local/share/ai4all)",
    )
    add_ice_args(chat)
    add_trust_args(chat)
    add_sampling(chat)
    chat.set_defaults(handler=run_chat)


def add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="at most this many new tokens (default 128; fewer where the model's context ends)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    from .generate import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )


def chat_options(args: argparse.Namespace) -> ChatOptions:
    """The checked arguments of ``ai4all chat``; ``CommandError`` names the flag that is wrong."""
    from .chat import ChatOptions

    ice = ice_settings(args)  # refused before anything loads, with or without --signal
    from .model_fetch import is_model_name
    from .model_trust import check_trusted_model

    model_dir = args.model
    if args.signal and is_model_name(args.model):  # a model NAME: its client files from its seeders
        model_dir = fetch_client_files(str(args.model), args, ice)
    check_trusted_model(
        model_dir, trust_policy(args)
    )  # a signed manifest of a trusted publisher, or --allow-unsigned
    return ChatOptions(
        model_dir=model_dir,
        prompt=args.prompt,
        sampling=sampling_params(args),
        signal_urls=tuple(args.signal),
        data_dir=args.data_dir,
        ice=ice,
    )


def fetch_client_files(name: str, args: argparse.Namespace, ice: IceSettings) -> Path:
    """``ai4all chat --model NAME``: the embedding, head and tokenizer of NAME fetched from its seeders."""
    from . import event_loop
    from .model_fetch import fetch_with_node
    from .node import NodeConfig
    from .transport import TransportConfig

    config = NodeConfig(tuple(args.signal), args.data_dir, TransportConfig.from_ice(ice))
    return event_loop.run(fetch_with_node(name, config, trust_policy(args))).model_dir


def run_chat(args: argparse.Namespace) -> int:
    from .chat import reply

    return reply(chat_options(args))

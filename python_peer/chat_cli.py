"""``ai4all chat``: one reply, through the mesh (``--signal``) or through shards loaded here.

The reply goes alone to stdout, streamed; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .peer_cli import add_ice_args, ice_settings

if TYPE_CHECKING:
    from .generate import SamplingParams
    from .tokenizer import ModelTokenizer


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
        "--model", required=True, type=Path, help="directory of an exported model (ai4all export)"
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
    add_sampling(chat)
    chat.set_defaults(handler=run_chat)


def add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="at most this many new tokens (default 128)"
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


def prompt_ids(tokenizer: ModelTokenizer, prompt: str) -> list[int]:
    """The user's message through the chat template (a plain prompt for models without one)."""
    if tokenizer.chat_template is not None:
        return tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
    return tokenizer.encode(prompt)


def local_reply(model_dir: Path, prompt: str, args: argparse.Namespace) -> int:
    """Answer through every shard loaded in this process."""
    from .chain import LocalChain
    from .generate import stream
    from .tokenizer import ModelTokenizer

    chain = LocalChain(model_dir)
    tokenizer = ModelTokenizer(model_dir, chain.manifest)
    for piece in stream(chain, tokenizer, prompt_ids(tokenizer, prompt), sampling_params(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


async def mesh_reply(model_dir: Path, prompt: str, args: argparse.Namespace, signal_urls: list[str]) -> int:
    """Answer through the mesh: embed and head here, every block on peers found through signaling."""
    from .generate import astream
    from .ledger_cli import default_data_dir
    from .node import NodeConfig, open_client
    from .tokenizer import ModelTokenizer

    # The identity and its ledger are kept, so the starter grant's proof of work is paid once.
    data_dir = args.data_dir or default_data_dir()
    transport = ice_settings(args).transport_config()
    node, client = await open_client(
        NodeConfig(signal_urls=tuple(signal_urls), data_dir=data_dir, transport=transport), model_dir
    )
    try:
        tokenizer = ModelTokenizer(model_dir, client.manifest)
        async for piece in astream(client, tokenizer, prompt_ids(tokenizer, prompt), sampling_params(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        await client.aclose()
        await node.aclose()
    return 0


def run_chat(args: argparse.Namespace) -> int:
    ice_settings(args)  # refused before anything loads, with or without --signal
    if args.signal:
        import asyncio

        return asyncio.run(mesh_reply(args.model, args.prompt, args, args.signal))
    return local_reply(args.model, args.prompt, args)

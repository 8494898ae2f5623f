"""One chat reply, streamed to stdout: through the mesh (embed and head here, every block on peers found
through signaling) or through every shard loaded in this process.

``ai4all chat`` (``chat_cli.py``) and ``ai4all up`` build a ``ChatOptions`` and call ``reply`` (or
``mesh_reply`` from a running event loop); nothing here reads command-line arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from python_peer.core.ice import IceSettings

from .chain import LocalChain
from .generate import SamplingParams, astream, stream
from .identity import default_data_dir
from .tokenizer import ModelTokenizer


@dataclass(frozen=True)
class ChatOptions:
    """One prompt to answer: the model, the sampling, and for the mesh its signaling nodes, the
    client's data directory (its identity and ledger) and ICE."""

    model_dir: Path
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    signal_urls: tuple[str, ...] = ()  # empty: every shard runs here
    data_dir: Path | None = None  # None: ``default_data_dir()``
    ice: IceSettings = field(default_factory=IceSettings)


def prompt_ids(tokenizer: ModelTokenizer, prompt: str) -> list[int]:
    """The user's message through the chat template (a plain prompt for models without one)."""
    if tokenizer.chat_template is not None:
        return tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
    return tokenizer.encode(prompt)


def local_reply(options: ChatOptions) -> int:
    """Answer through every shard loaded in this process."""
    chain = LocalChain(options.model_dir)
    tokenizer = ModelTokenizer(options.model_dir, chain.manifest)
    for piece in stream(chain, tokenizer, prompt_ids(tokenizer, options.prompt), options.sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


async def mesh_reply(options: ChatOptions) -> int:
    """Answer through the mesh: embed and head here, every block on peers found through signaling."""
    from .node import NodeConfig, open_client  # WebRTC is loaded only for the mesh
    from .transport import TransportConfig

    # The identity and its ledger are kept, so the starter grant's proof of work is paid once.
    data_dir = options.data_dir or default_data_dir()
    config = NodeConfig(
        signal_urls=options.signal_urls, data_dir=data_dir, transport=TransportConfig.from_ice(options.ice)
    )
    node, client = await open_client(config, options.model_dir)
    try:
        tokenizer = ModelTokenizer(options.model_dir, client.manifest)
        ids = prompt_ids(tokenizer, options.prompt)
        async for piece in astream(client, tokenizer, ids, options.sampling):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        await client.aclose()
        await node.aclose()
    return 0


def reply(options: ChatOptions) -> int:
    """Answer ``options.prompt``: through the mesh when signaling nodes are given, else locally."""
    if options.signal_urls:
        from . import event_loop

        return event_loop.run(mesh_reply(options))
    return local_reply(options)

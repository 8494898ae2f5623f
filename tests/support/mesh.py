"""What the mesh tests share: short client and transport timeouts, prompts, greedy runs, and the greedy
reference every mesh must reproduce (``reference_greedy``: the same shards chained in this process).

Used by ``test_mesh.py`` and ``test_channel_gossip.py``, which start signaling nodes and peers as
processes (``tests/support/procs.py``) and drive a native client against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from python_peer.generate import SamplingParams, agenerate
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import TransportConfig

# Short timeouts so that failures are found quickly; the tiny model answers in milliseconds.
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "hello world"]


FAST = ClientConfig(request_timeout_s=8.0, connect_timeout_s=8.0, ban_seconds=30.0)


FAST_TRANSPORT = TransportConfig(connect_timeout_s=8.0)


async def mesh_tokens(client: MeshClient, prompt: str, max_tokens: int = 16) -> tuple[int, ...]:
    """Greedy tokens for ``prompt`` through the mesh."""
    tokenizer = ModelTokenizer(client.model_dir, client.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
    return (await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=max_tokens))).token_ids


def reference_greedy(model_dir: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens after ``prompt`` through the model's shards in this process: what the mesh must give."""
    from python_peer.chain import LocalChain

    chain = LocalChain(model_dir, threads=1)
    session = chain.open(1)
    ids = np.array([prompt], dtype=np.int64)
    logits = chain.step(session, ids, np.ones_like(ids))
    tokens: list[int] = []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(logits[0, -1])))
        if len(tokens) == new_tokens:
            break
        logits = chain.step(session, np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
    chain.close(session)
    return tokens

"""A closed client and node are freed as soon as they are dropped, not when the cyclic collector runs.

A process that replaces a client (a new identity, a reconnect, the chaos run's users) would otherwise hold
the old client's embed and head sessions, the model's largest weights (216 MiB on SmolLM2, measured in
bench/README.md's chaos section), beside the new one's until the collector's next full pass. Both used to
be in a reference cycle: the client's head batcher held its bound ``head``, the node's link manager its
bound ``_incoming_link``.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from python_peer.node import NodeConfig, open_client
from tests.support.mesh import FAST
from tests.support.procs import Node

pytestmark = pytest.mark.timeout(60)


async def test_a_closed_client_and_its_node_are_freed_without_the_cyclic_collector(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    signal = Node("node-a", tmp_path)
    signal.wait()
    try:
        config = NodeConfig(signal_urls=(signal.url,), data_dir=tmp_path / "user")
        node, client = await open_client(config, tiny_llama_export, FAST)
        held = {
            "client": client,
            "node": node,
            "embed session": client.embed_runner.session,
            "head session": client.head_runner.session,
            "links": node.links,
        }
        refs = {name: weakref.ref(obj) for name, obj in held.items()}
        del held
        gc.collect()
        gc.disable()
        try:
            await client.aclose()
            await node.aclose()
            del client, node
            for _ in range(3):  # the closed tasks' last callbacks
                await asyncio.sleep(0)
            alive = sorted(name for name, ref in refs.items() if ref() is not None)
        finally:
            gc.enable()
        assert alive == [], f"still alive after close without a collection: {alive}"
    finally:
        signal.stop()

"""A hello proves nothing: a node dialing a configured sibling must not give that sibling up for good
because whatever answers at its URL *says* it is the dialing node itself.

Attack over the documented protocol only: the process answering at a configured ``--sibling`` URL
(the sibling's port taken over while the sibling restarts, say) sends a ``hello`` whose ``node_id`` is
the dialing node's own name, and proves no key. The node used to stop dialing that URL forever, so
the real sibling was never linked again once it came back; a node that cannot prove the configured key
is dropped and redialed later (docs/signaling.md, "Federation").
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from python_peer.identity import Identity
from tests.support.procs import Node, free_port

pytestmark = pytest.mark.timeout(60)

LIMITS = {
    "max_message_bytes": 65536,
    "messages_per_s": 20.0,
    "burst": 60,
    "max_ttl_ms": 600_000,
    "max_lookup_results": 64,
    "first_message_ms": 10_000,
    "idle_ms": 660_000,
}


async def test_a_hello_naming_the_dialer_itself_does_not_stop_it_for_good(tmp_path: Path) -> None:
    name = "audit-dialer"
    dials = 0

    async def impostor(ws: ServerConnection) -> None:
        nonlocal dials
        dials += 1
        hello = {"type": "hello", "protocol": 1, "node_id": name, "nonce": "ab" * 16, "siblings": []}
        await ws.send(json.dumps({**hello, "limits": LIMITS}))
        await ws.wait_closed()

    port = free_port()
    async with serve(impostor, "127.0.0.1", port):
        sibling = f"ws://127.0.0.1:{port}#{Identity.generate().peer_id}"
        node = Node(name, tmp_path, siblings=(sibling,))
        try:
            await asyncio.to_thread(node.wait)
            async with asyncio.timeout(15):
                while dials < 3:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pytest.fail(f"the node dialed its configured sibling {dials} time(s), then gave it up")
        finally:
            node.stop(signal.SIGTERM)
        assert node.health() is None
        assert "says it is this node itself" in node.log.read_text()

"""A slow reader cannot make a signaling node hold its replies without bound.

Attack over the documented protocol only: a few throwaway identities announce the biggest
announcements the schema allows (32 spans, 8 URLs of 250 characters) for one model, so one ``lookup``
answers 256 KiB (``MAX_REPLY_BYTES``); then a few websockets send ``lookup`` within their rate limit and
never read. The per-connection FIFO of 256 messages alone let each such websocket hold 256 of those
replies (64 MiB of the node's memory, times ``--max-connections``); it is also bounded in size, so the
node's memory stays flat and the replies past the bound are dropped, as documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect

from python_peer.core.canonical import Announcement, ServedSpan
from signaling.outbox import Outbox
from tests.support.procs import Node
from tests.support.raw_signaling import RawPeer, raw_peer

pytestmark = pytest.mark.timeout(120)

MODEL = "audit/" + "m" * 118  # 124 characters: every span of an announcement names a long model
SLOW_READERS = 3
LOOKUPS = 300  # past the 256 messages the FIFO holds, besides what the sockets buffer


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = Node("slow-reader", tmp_path_factory.mktemp("signaling-slow-reader"))
    try:
        started.wait()
        yield started
    finally:
        started.stop(signal.SIGTERM)


def rss_mib(node: Node) -> float:
    for line in open(f"/proc/{node.proc.pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc")


def big_body(peer: RawPeer) -> dict[str, object]:
    now = time.time_ns() // 1_000_000
    serves = tuple(ServedSpan(MODEL if i == 0 else f"{MODEL[:-3]}{i:03d}", i, i + 1) for i in range(32))
    urls = tuple(f"ws://{'h' * 238}{i}.x:1" for i in range(8))
    return Announcement(
        peer_id=peer.identity.peer_id,
        kind="native",
        seq=now,
        issued_ms=now,
        expires_ms=now + 120_000,
        serves=serves,
        signaling=urls,
    ).to_dict()


async def slow_reader(url: str) -> ClientConnection:
    """A websocket whose socket buffers almost nothing: what the node sends it waits in the node."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    ws = await connect(url, sock=sock, proxy=None, max_size=2**22, max_queue=1)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello", hello
    return ws


async def flood(ws: ClientConnection) -> None:
    """``LOOKUPS`` lookups within the connection's rate limit (20/s, burst 60), none of them read."""
    for i in range(LOOKUPS):
        lookup = {"type": "lookup", "id": i, "model": MODEL, "start": 0, "end": 64, "limit": 64}
        await ws.send(json.dumps(lookup))
        await asyncio.sleep(0 if i < 50 else 0.055)


async def test_a_slow_reader_holds_a_bounded_amount_of_the_nodes_memory(node: Node) -> None:
    for _ in range(40):
        async with raw_peer(node.url) as peer:
            assert (await peer.announce(big_body(peer)))["type"] == "announced"
    async with raw_peer(node.url) as user:
        reply = await user.ask({"type": "lookup", "model": MODEL, "start": 0, "end": 64, "limit": 64})
        assert reply["type"] == "peers" and reply["truncated"], "the attack needs replies of 256 KiB"
        assert len(json.dumps(reply)) > 200_000
    before = rss_mib(node)

    readers = [await slow_reader(node.url) for _ in range(SLOW_READERS)]
    try:
        await asyncio.gather(*(flood(ws) for ws in readers))
        await asyncio.sleep(1.0)
        grown = rss_mib(node) - before
        # each reader may cost the node its FIFO's bound (1 MiB) and what is in flight, not 256 replies
        assert grown < 16 * SLOW_READERS, f"the node grew by {grown:.0f} MiB for {SLOW_READERS} slow readers"

        # nothing else is lost: the node still answers others, and a slow reader that starts reading
        # gets the replies kept for it, then answers again
        async with raw_peer(node.url) as user:
            assert (await user.ask({"type": "lookup", "model": MODEL, "start": 0, "end": 1}))[
                "type"
            ] == "peers"
        ws = readers[0]
        kept = 0
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(2.0):
                    reply = json.loads(await ws.recv())
                assert reply["type"] == "peers", reply
                kept += 1
        assert 1 < kept < LOOKUPS, f"{kept} replies: those past the bound are dropped, the others kept"
        await ws.send(json.dumps({"type": "lookup", "id": LOOKUPS, "model": MODEL, "start": 0, "end": 1}))
        async with asyncio.timeout(5.0):
            reply = json.loads(await ws.recv())
        assert (reply["type"], reply["id"]) == ("peers", LOOKUPS), reply
    finally:
        for ws in readers:
            ws.transport.abort()


async def test_the_fifo_is_bounded_in_text_and_still_takes_one_big_message() -> None:
    box = Outbox(max_messages=256, max_keys=4, max_chars=100)
    assert box.put("x" * 300), "a message bigger than the bound alone is still taken"
    assert not box.put("y"), "then nothing more until it is sent"
    assert await box.get() == "x" * 300
    box.task_done()
    assert box.put("a" * 60) and box.put("b" * 40) and not box.put("c")
    assert box.dropped == 2
    assert box.put_latest("peer", (1, 0), "z" * 500), "gossip states are bounded per peer, not here"

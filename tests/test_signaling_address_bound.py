"""The directory's bound per source address: one host cannot fill a node's directory with throwaway peers.

The attack: open a websocket, announce a freshly generated identity with the longest lifetime, close,
repeat. Entries outlive their connections, so about 10 000 of them filled the directory and every
honest new peer got ``table_full`` for 10 minutes. A node now lists at most ``--max-peers-per-address``
peers announced over its own websockets from one address (docs/signaling.md, "Bounds"). The attack
tests run a real ``ai4all signal`` with a bound of 4 and speak only the documented protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from python_peer.core.canonical import BYE_CONTEXT, Announcement, ServedSpan, bye_body
from python_peer.core.errors import SignalingError
from python_peer.identity import Identity
from signaling.directory import Directory, Entry, PutResult, address_group
from tests.support.procs import Node
from tests.support.raw_signaling import RawPeer, raw_peer
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.timeout(60)

BOUND = 4
NOW = 1_700_000_000_000


# --- the directory alone --------------------------------------------------------------------------------


def entry(peer: str, seq: int = 1, address: str | None = "10.0.0.1", expires_ms: int = NOW + 60_000) -> Entry:
    ann = Announcement(
        peer_id=peer,
        kind="browser",
        seq=seq,
        issued_ms=NOW,
        expires_ms=expires_ms,
        serves=(ServedSpan("m", 0, 4),),
    )
    return Entry(ann, ann.to_dict(), "00" * 64, "local" if address else "link-1", address)


def peer(i: int) -> str:
    return f"{i:064x}"


def test_address_groups() -> None:
    assert address_group("203.0.113.7") == "203.0.113.7"
    assert address_group("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4-mapped counts as IPv4
    assert (
        address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert address_group("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_group("fe80::1%eth0") == "fe80::/64"
    assert address_group("testclient") == "testclient"  # not an address: counted as it is
    assert address_group(None) is None


def test_directory_bounds_entries_per_address_without_leaks() -> None:
    d = Directory(max_entries=100, max_per_address=2)
    assert d.put(entry(peer(1)), NOW) is PutResult.NEW
    assert d.put(entry(peer(2), expires_ms=NOW + 1_000), NOW) is PutResult.NEW
    with pytest.raises(SignalingError) as full:
        d.put(entry(peer(3)), NOW)
    assert full.value.code == "table_full" and "at most 2 peers" in str(full.value)
    assert d.put(entry(peer(1), seq=2), NOW) is PutResult.REPLACED  # a held id is never refused
    assert d.put(entry(peer(3), address="10.0.0.2"), NOW) is PutResult.NEW  # another address
    assert d.put(entry(peer(4), address=None), NOW) is PutResult.NEW  # gossip: not counted
    assert d.count_from("10.0.0.1") == 2

    assert d.withdraw(peer(1), 2)  # bye
    assert d.count_from("10.0.0.1") == 1
    assert d.put(entry(peer(5)), NOW) is PutResult.NEW
    assert d.put(entry(peer(6)), NOW + 2_000) is PutResult.NEW  # peer 2 expired: its place is free
    assert d.get(peer(2)) is None and d.count_from("10.0.0.1") == 2

    assert d.put(entry(peer(5), seq=2, address=None), NOW) is PutResult.REPLACED  # replaced by gossip
    assert d.count_from("10.0.0.1") == 1
    assert d.put(entry(peer(6), seq=2, address="10.0.0.2"), NOW) is PutResult.REPLACED  # moved away
    assert d.count_from("10.0.0.1") == 0 and d.count_from("10.0.0.2") == 2
    with pytest.raises(SignalingError):
        d.put(entry(peer(1), seq=3, address="10.0.0.2"), NOW)  # moving in counts as new there
    assert d.expire(NOW + 120_000) and len(d) == 0
    assert d.count_from("10.0.0.1") == d.count_from("10.0.0.2") == 0 and not d._by_address


# --- the attack, against a real node --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = Node(
        "bounded",
        tmp_path_factory.mktemp("address-bound"),
        extra_args=("--max-peers-per-address", str(BOUND)),
    )
    try:
        started.wait()
        yield started
    finally:
        assert started.stop() == 0


@asynccontextmanager
async def peer_from(url: str, source: str) -> AsyncIterator[RawPeer]:
    """A raw peer whose websocket comes from ``source``, another loopback address than 127.0.0.1."""
    async with connect(url, proxy=None, local_addr=(source, 0)) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        yield RawPeer(ws, hello, Identity.generate())


async def bye(raw: RawPeer, last_seq: int) -> dict[str, Any]:
    seq = max(last_seq + 1, time.time_ns() // 1_000_000)
    sig = raw.identity.sign_body(BYE_CONTEXT, bye_body(raw.identity.peer_id, seq))
    return await raw.ask({"type": "bye", "seq": seq, "sig": sig})


async def throwaway(url: str, ttl_ms: int = 600_000) -> dict[str, Any]:
    """One round of the attack: a fresh identity, the longest lifetime, then the websocket is closed."""
    async with raw_peer(url) as raw:
        return await raw.announce(ttl_ms=ttl_ms)


async def test_throwaway_identities_fill_only_their_addresss_share(node: Node) -> None:
    async with raw_peer(node.url) as held, raw_peer(node.url) as refused, raw_peer(node.url) as honest:
        first = await held.announce(ttl_ms=600_000)
        assert first["type"] == "announced", first
        for _ in range(BOUND - 2):
            assert (await throwaway(node.url))["type"] == "announced"
        short = await throwaway(node.url, ttl_ms=1_000)  # its place comes back by expiry
        assert short["type"] == "announced"

        # At the bound: a new identity from 127.0.0.1 is refused, and its connection stays usable.
        answer = await refused.announce(ttl_ms=600_000)
        assert answer["type"] == "error" and answer["code"] == "table_full", answer
        assert f"at most {BOUND} peers" in answer["message"] and "127.0.0.1" in answer["message"]
        assert "another node" in answer["message"]
        assert held.identity.peer_id in await refused.lookup()
        # A held id re-announcing adds no entry: never refused.
        again = await held.announce(body=held.body(ttl_ms=600_000, issued_ms=first["seq"] + 1))
        assert again["type"] == "announced", again
        # Honest peers elsewhere still announce, and look up as before.
        async with peer_from(node.url, "127.0.0.2") as elsewhere:
            assert (await elsewhere.announce())["type"] == "announced"
            listed = await honest.lookup()
            assert held.identity.peer_id in listed and elsewhere.identity.peer_id in listed
            assert len(listed) == BOUND + 1

        # bye gives the place back: the refused connection announces now, and the bound holds again.
        assert (await bye(held, again["seq"]))["type"] == "ack"
        retry = await refused.announce(ttl_ms=600_000)
        assert retry["type"] == "announced", retry
        assert (await throwaway(node.url))["code"] == "table_full"

        # So does expiry: the 1 s entry goes, and one more throwaway fits, not two.
        await wait_for_async(
            lambda: short["peer_id"] not in {e["peer_id"] for e in node.directory()["entries"]},
            10.0,
            what="the short announcement expired",
        )
        assert (await throwaway(node.url))["type"] == "announced"
        assert (await throwaway(node.url))["code"] == "table_full"
        assert (await honest.lookup()) and refused.identity.peer_id in await honest.lookup()


async def test_gossip_is_not_counted_and_replaced_entries_stop_counting(tmp_path: Path) -> None:
    """A sibling's peers are the sibling's to bound; a local entry replaced by gossip frees its place."""
    ant = Node("ant", tmp_path, accept=("bee",), extra_args=("--max-peers-per-address", "2"))
    bee = Node("bee", tmp_path, siblings=(ant,))
    try:
        ant.wait(siblings=1)
        bee.wait(siblings=1)
        async with raw_peer(ant.url) as mover:
            moved = await mover.announce(ttl_ms=600_000)
            assert moved["type"] == "announced"
        assert (await throwaway(ant.url))["type"] == "announced"
        assert (await throwaway(ant.url))["code"] == "table_full"

        # Three peers announced on bee (default bound) reach ant by gossip, past ant's bound of 2.
        gossiped = [(await throwaway(bee.url))["peer_id"] for _ in range(3)]

        def on_ant() -> dict[str, str]:
            return {e["peer_id"]: e["via"] for e in ant.directory()["entries"]}

        await wait_for_async(lambda: set(gossiped) <= set(on_ant()), 10.0, what="gossip reached ant")
        assert (await throwaway(ant.url))["code"] == "table_full"

        # The mover re-announces on bee: ant now holds it from gossip, and its place on ant is free.
        async with raw_peer(bee.url) as again:
            again.identity = mover.identity
            newer = again.body(ttl_ms=600_000, issued_ms=moved["seq"] + 1)
            assert (await again.announce(body=newer))["type"] == "announced"
        await wait_for_async(lambda: on_ant().get(moved["peer_id"]) not in (None, "local"), 10.0)
        assert (await throwaway(ant.url))["type"] == "announced"
        assert (await throwaway(ant.url))["code"] == "table_full"
    finally:
        codes = (ant.stop(), bee.stop())
    assert codes == (0, 0)

"""Signaling against real nodes: ``ai4all signal`` subprocesses on free loopback ports, real websockets.

Two federated nodes serve most tests (module scope); two that list each other (as ``ai4all up`` starts
them) serve the tests of one link per pair and of gossip under a burst; failover gets its own nodes.
Raw websocket peers speak the protocol by hand where a test needs to send what ``SignalClient`` never
would (forgeries, garbage, floods).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from python_peer.core.canonical import ANNOUNCE_CONTEXT, AUTH_CONTEXT, Announcement
from python_peer.core.errors import RemoteSignalingError, SignalClientError
from python_peer.identity import Identity
from python_peer.signal_client import SignalClient, SignalClientConfig, SignalClientState
from tests.support import procs
from tests.support.procs import Node, free_port
from tests.support.raw_signaling import raw_peer, spans
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    """Two federated nodes; only the second is told about the first (links work both ways)."""
    logs = tmp_path_factory.mktemp("signaling-mesh")
    first = Node("alpha", logs, accept=("beta",))
    second = Node("beta", logs, siblings=(first,))
    try:
        first.wait(siblings=1)
        second.wait(siblings=1)
        yield first, second
    finally:
        codes = (first.stop(signal.SIGINT), second.stop(signal.SIGTERM))
    assert codes == (0, 0), "signaling nodes must stop cleanly on SIGINT and SIGTERM"


def config(*urls: str, **kw: Any) -> SignalClientConfig:
    return SignalClientConfig(urls=tuple(urls), request_timeout_s=5.0, connect_timeout_s=5.0, **kw)


# --- one node -------------------------------------------------------------------------------------------


async def test_announce_and_lookup_on_one_node(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    server = await SignalClient.create(Identity.generate(), config(alpha.url, serves=spans("one/m", 0, 8)))
    async with server, await SignalClient.create(Identity.generate(), config(alpha.url)) as user:
        assert server.state is SignalClientState.CONNECTED and server.url == alpha.url
        assert server.urls == (alpha.url, mesh[1].url)  # beta learned from alpha's hello, for failover
        found = await user.lookup("one/m", 2, 4)
        assert [a.peer_id for a in found] == [server.peer_id]
        assert found[0].serves == spans("one/m", 0, 8) and found[0].signaling == (alpha.url,)
        assert await user.lookup("one/m", 8, 12) == []  # no overlap
        assert await user.lookup("other/m", 0, 8) == []
        entries = {e["peer_id"]: e for e in alpha.directory()["entries"]}
        assert entries[server.peer_id]["connected_here"] and entries[server.peer_id]["kind"] == "native"
        await server.update(serves=spans("one/m", 8, 16))
        assert [a.peer_id for a in await user.lookup("one/m", 8, 12)] == [server.peer_id]


async def test_healthz_and_directory_endpoints(mesh: tuple[Node, Node]) -> None:
    alpha, beta = mesh
    health = alpha.health()
    assert health is not None and health["status"] == "ok" and health["node_id"] == "alpha"
    assert [s["node_id"] for s in health["siblings"]] == ["beta"]
    assert beta.directory()["node_id"] == "beta"


# --- two federated nodes --------------------------------------------------------------------------------


async def test_peers_on_two_nodes_meet_and_signal_both_ways(mesh: tuple[Node, Node]) -> None:
    alpha, beta = mesh
    a = await SignalClient.create(Identity.generate(), config(alpha.url, serves=spans("fed/m", 0, 2)))
    b = await SignalClient.create(Identity.generate(), config(beta.url, serves=spans("fed/m", 2, 4)))
    async with a, b:

        async def both_seen() -> bool:
            seen_by_a = {x.peer_id for x in await a.lookup("fed/m", 0, 4)}
            seen_by_b = {x.peer_id for x in await b.lookup("fed/m", 0, 4)}
            return seen_by_a == seen_by_b == {a.peer_id, b.peer_id}

        assert await wait_for_async(both_seen, 5.0, what="both peers seen on both nodes")
        await a.send_signal(b.peer_id, {"sdp": "offer from a", "kind": "offer"})
        async with asyncio.timeout(5):
            got = await b.recv_signal()
        assert (got.sender, got.payload) == (a.peer_id, {"sdp": "offer from a", "kind": "offer"})
        await b.send_signal(a.peer_id, {"sdp": "answer from b", "kind": "answer"})
        async with asyncio.timeout(5):
            got = await a.recv_signal()
        assert (got.sender, got.payload["kind"]) == (b.peer_id, "answer")
        for i in range(5):  # ICE candidates, in order
            await a.send_signal(b.peer_id, {"candidate": f"c{i}", "sdpMLineIndex": 0})
        assert [(await b.recv_signal()).payload["candidate"] for _ in range(5)] == [f"c{i}" for i in range(5)]
    # bye withdraws the announcements on both nodes at once, without waiting for expiry

    async def gone() -> bool:
        return not any(
            e["peer_id"] in (a.peer_id, b.peer_id) for node in mesh for e in node.directory()["entries"]
        )

    assert await wait_for_async(gone, 5.0, what="both announcements withdrawn")


async def test_client_reannounces_before_expiry(mesh: tuple[Node, Node]) -> None:
    alpha, beta = mesh
    cfg = config(alpha.url, serves=spans("renew/m", 0, 1), ttl_s=1.2, reannounce_s=0.3)
    async with await SignalClient.create(Identity.generate(), cfg) as peer:

        def seq_on_beta() -> int:
            entries = [e for e in beta.directory()["entries"] if e["peer_id"] == peer.peer_id]
            return int(entries[0]["seq"]) if entries else -1

        first = seq_on_beta()
        # Time passing IS the test: past one ttl the entry must still be there, re-announced meanwhile.
        await asyncio.sleep(2.0)  # well past one ttl
        assert seq_on_beta() > first > 0
        assert [p.peer_id for p in await peer.lookup("renew/m", 0, 1)] == [peer.peer_id]


async def test_signal_to_unknown_peer_is_an_error(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    async with await SignalClient.create(Identity.generate(), config(alpha.url)) as client:
        with pytest.raises(RemoteSignalingError) as info:
            await client.send_signal("ee" * 32, {"sdp": "x"})
        assert info.value.code == "unknown_peer"
        assert await client.lookup("any/m", 0, 1) == []  # the connection goes on
    async with raw_peer(alpha.url) as raw:
        signal_msg = {"type": "signal", "from": raw.identity.peer_id, "to": "ee" * 32, "ts_ms": 1}
        signal_msg |= {"payload": {}, "sig": "00" * 64}
        assert (await raw.ask(signal_msg))["code"] == "not_announced"
        assert (await raw.announce())["type"] == "announced"
        assert (await raw.ask({**signal_msg, "from": "dd" * 32}))["code"] == "bad_message"
        assert (await raw.ask(signal_msg))["code"] == "expired"  # ts_ms far in the past: a replay
        signal_msg["ts_ms"] = time.time_ns() // 1_000_000
        assert (await raw.ask({**signal_msg, "payload": {"sdp": "x" * 40_000}}))["code"] == "too_large"
        assert (await raw.ask(signal_msg))["code"] == "unknown_peer"


# --- bad input ------------------------------------------------------------------------------------------


async def test_forged_announcements_are_refused(mesh: tuple[Node, Node]) -> None:
    alpha, beta = mesh
    bystander = await SignalClient.create(
        Identity.generate(), config(alpha.url, serves=spans("forge/m", 0, 4))
    )
    async with bystander, raw_peer(alpha.url) as raw:
        mallory = Identity.generate()
        body = raw.body(model="forge/m")
        # signed by another key
        by_other = {"type": "announce", "body": body, "sig": mallory.sign_body(ANNOUNCE_CONTEXT, body)}
        reply = await raw.ask({**by_other, "proof": raw.proof()})
        assert (reply["type"], reply["code"]) == ("error", "bad_signature")
        # body altered after signing
        sig = raw.identity.sign_body(ANNOUNCE_CONTEXT, body)
        altered = {**body, "serves": [{"model": "forge/m", "start": 0, "end": 30}]}
        reply = await raw.ask({"type": "announce", "body": altered, "sig": sig, "proof": raw.proof()})
        assert reply["code"] == "bad_signature"
        # a valid announcement replayed by someone who cannot sign the nonce
        replay = (await raw.ask({"type": "lookup", "model": "forge/m", "start": 0, "end": 4}))["peers"][0]
        assert replay["body"]["peer_id"] == bystander.peer_id
        reply = await raw.ask({"type": "announce", **replay, "proof": raw.proof(signer=mallory)})
        assert reply["code"] == "bad_signature" and "proof" in reply["message"]
        # malformed body
        reply = await raw.ask(
            {"type": "announce", "body": {**body, "seq": "1"}, "sig": sig, "proof": raw.proof()}
        )
        assert reply["code"] == "bad_announcement"
        # nothing forged got in, and both this connection and the bystander are fine
        assert await raw.lookup("forge/m") == [bystander.peer_id]
        assert [p.peer_id for p in await bystander.lookup("forge/m", 0, 4)] == [bystander.peer_id]
        assert (await raw.announce(body))["type"] == "announced"
        assert set(await raw.lookup("forge/m")) == {bystander.peer_id, raw.identity.peer_id}
        assert all(e["peer_id"] != mallory.peer_id for e in beta.directory()["entries"])


async def test_expired_announcement_is_refused(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    async with raw_peer(alpha.url) as raw:
        stale = raw.body(ttl_ms=5_000, issued_ms=time.time_ns() // 1_000_000 - 10_000, model="expired/m")
        reply = await raw.announce(stale)
        assert (reply["type"], reply["code"]) == ("error", "expired")
        assert await raw.lookup("expired/m") == []


async def test_announcement_expires_from_every_node(mesh: tuple[Node, Node]) -> None:
    alpha, beta = mesh
    async with raw_peer(alpha.url) as raw, raw_peer(beta.url) as other:
        assert (await raw.announce(ttl_ms=1_000, model="expiry/m"))["type"] == "announced"
        assert await raw.lookup("expiry/m") == [raw.identity.peer_id]

        async def on_beta() -> list[str]:
            return await other.lookup("expiry/m")

        assert await wait_for_async(on_beta, 1.0, what="gossip to beta") == [raw.identity.peer_id]  # gossiped

        async def expired_everywhere() -> bool:
            listed = [e["peer_id"] for node in mesh for e in node.directory()["entries"]]
            return raw.identity.peer_id not in listed and not await other.lookup("expiry/m")

        assert await wait_for_async(expired_everywhere, 4.0, what="expiry on every node")


async def test_oversized_and_malformed_messages(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    async with await SignalClient.create(
        Identity.generate(), config(alpha.url, serves=spans("ok/m", 0, 1))
    ) as good:
        async with raw_peer(alpha.url) as raw:
            cases: list[tuple[str | bytes, str]] = [
                ("x" * 70_000, "too_large"),
                ("not json", "bad_json"),
                ("[1, 2]", "bad_message"),
                ('{"type": "teleport"}', "bad_message"),
                ('{"type": "lookup", "id": 9, "model": "m", "start": "0", "end": 4}', "bad_message"),
                ('{"type": "lookup", "model": "m", "start": 0, "end": 4, "evil": true}', "bad_message"),
                ('{"type": "announce", "body": {}, "sig": "zz", "proof": "zz"}', "bad_message"),
                (
                    '{"type": "announce", "body": {}, "sig": "'
                    + "0" * 128
                    + '", "proof": "'
                    + "0" * 128
                    + '"}',
                    "bad_announcement",
                ),
                ("[" * 30_000 + "]" * 30_000, "bad_json"),
                ('{"a": NaN}', "bad_json"),
                (b"\x00\x01binary", "bad_message"),
            ]
            for raw_message, code in cases:
                await raw.send(raw_message)
                reply = await raw.recv()
                assert (reply["type"], reply["code"]) == ("error", code), raw_message[:60]
            assert reply["id"] is None
            await raw.send('{"type": "lookup", "id": 9, "model": "m", "start": "0", "end": 4}')
            assert (await raw.recv())["id"] == 9  # the id is echoed even when the message is refused
            assert await raw.lookup("ok/m") == [good.peer_id]  # this connection still works
            # past the transport bound the node closes the connection
            await raw.send("x" * 300_000)
            with pytest.raises(ConnectionClosed):
                await raw.recv()
        assert [p.peer_id for p in await good.lookup("ok/m", 0, 1)] == [good.peer_id]  # others unharmed
        assert good.state is SignalClientState.CONNECTED


async def test_rate_limits(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    async with await SignalClient.create(Identity.generate(), config(alpha.url)) as bystander:
        async with raw_peer(alpha.url) as raw:
            burst = raw.hello["limits"]["burst"]
            count = burst + 20
            for i in range(count):
                await raw.send({"type": "lookup", "id": i, "model": "m", "start": 0, "end": 1})
            replies = [await raw.recv() for _ in range(count)]
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            assert len(limited) >= 10 and {r["id"] for r in replies} == set(range(count))
            await asyncio.sleep(0.3)  # waiting out the rate limit's refill IS the test: no condition to poll
            assert await raw.lookup("nobody/m") == []  # tokens came back
        async with raw_peer(alpha.url) as flood:  # a connection that keeps flooding is closed
            with pytest.raises(ConnectionClosed) as closed:
                for i in range(1_000):
                    await flood.send({"type": "lookup", "id": i, "model": "m", "start": 0, "end": 1})
                while True:
                    await flood.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert await bystander.lookup("m", 0, 1) == []


async def test_announce_rate_limit_per_peer(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    async with raw_peer(alpha.url) as raw:
        codes = []
        for _ in range(14):
            reply = await raw.announce()
            codes.append(reply.get("code", reply["type"]))
        assert "rate_limited" in codes and codes[0] == "announced"


# --- failure of a node ----------------------------------------------------------------------------------


async def test_failover_when_a_node_is_killed(tmp_path: Path) -> None:
    first = Node("gamma", tmp_path, accept=("delta",))
    second = Node("delta", tmp_path, siblings=(first,))
    try:
        first.wait(siblings=1)
        second.wait(siblings=1)
        cfg = config(first.url, second.url, serves=spans("fo/m", 0, 4), backoff_initial_s=0.05)
        mover = await SignalClient.create(Identity.generate(), cfg)
        stayer = await SignalClient.create(
            Identity.generate(), config(second.url, serves=spans("fo/m", 4, 8))
        )
        async with mover, stayer:
            assert mover.url == first.url
            first.proc.kill()  # SIGKILL: no goodbye from the node
            first.proc.wait(5)
            started = time.monotonic()
            found = await mover.lookup("fo/m", 0, 8)  # rides over the failover
            assert {p.peer_id for p in found} == {mover.peer_id, stayer.peer_id}
            assert mover.url == second.url and time.monotonic() - started < 5
            await stayer.send_signal(mover.peer_id, {"sdp": "after failover"})
            async with asyncio.timeout(5):
                assert (await mover.recv_signal()).payload == {"sdp": "after failover"}
            assert second.stop(signal.SIGTERM) == 0  # the last node stops cleanly with peers connected

            async def backing_off() -> bool:
                return mover.state in (SignalClientState.BACKOFF, SignalClientState.CONNECTING)

            assert await wait_for_async(backing_off, 5.0, what="the client backing off")
    finally:
        for node in (first, second):
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


# --- the client on its own ------------------------------------------------------------------------------


async def test_client_with_no_reachable_node_fails_with_the_reason() -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    cfg = SignalClientConfig(urls=(dead,), connect_timeout_s=0.5, backoff_initial_s=0.05)
    with pytest.raises(SignalClientError, match="no signaling node reachable") as info:
        await SignalClient.create(Identity.generate(), cfg)
    assert dead in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"urls": ()}, "at least one"),
        ({"urls": ("http://127.0.0.1:1",)}, "not a signaling URL"),
        ({"kind": "robot"}, "kind"),
        ({"ttl_s": 0.1}, "ttl_s"),
        ({"reannounce_s": 500.0}, "reannounce_s"),
        ({"throughput_milli": -1}, "throughput_milli"),
    ],
)
def test_client_config_is_checked(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SignalClientError, match=fragment):
        SignalClientConfig(**{"urls": ("ws://127.0.0.1:1",), **kwargs})


async def test_closed_client_refuses_use_and_ends_iteration(mesh: tuple[Node, Node]) -> None:
    alpha, _ = mesh
    client = await SignalClient.create(Identity.generate(), config(alpha.url))
    waiting = asyncio.ensure_future(anext(client.signals(), None))
    await client.close()
    assert client.state is SignalClientState.CLOSED
    async with asyncio.timeout(2):
        assert await waiting is None  # the iterator ends
    with pytest.raises(SignalClientError, match="closed"):
        await client.lookup("m", 0, 1)
    await client.close()  # closing twice is harmless


# --- siblings that list each other, as ``ai4all up`` starts them ------------------------------------------


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    """Two nodes, each with the other as ``--sibling``: both dial, and one link per pair must remain."""
    logs = tmp_path_factory.mktemp("signaling-mutual")
    ports = [free_port()]
    while len(ports) < 2:
        ports += [port for port in [free_port()] if port not in ports]
    with pytest.MonkeyPatch.context() as patch:  # Node picks its own port; hand it the ones named here
        patch.setattr(procs, "free_port", iter(ports).__next__)
        ant = Node("ant", logs, siblings=(f"ws://127.0.0.1:{ports[1]}#{procs.node_key(logs, 'bee')}",))
        bee = Node("bee", logs, siblings=(ant,))
    try:
        ant.wait(siblings=1)
        bee.wait(siblings=1)
        yield ant, bee
    finally:
        codes = (ant.stop(), bee.stop())
    assert codes == (0, 0)


def sibling_links(node: Node) -> list[dict[str, Any]]:
    health = node.health()
    assert health is not None
    return list(health["siblings"])


async def one_link(ant: Node, bee: Node) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until each node lists one link to the other, the one ``ant`` (the smaller id) dialed."""

    async def settled() -> bool:
        seen = [(s["node_id"], s["dialed"]) for node in (ant, bee) for s in sibling_links(node)]
        return seen == [("bee", True), ("ant", False)]

    assert await wait_for_async(
        settled, 10.0, what="one sibling link", describe=lambda: (sibling_links(ant), sibling_links(bee))
    )
    (on_ant,), (on_bee,) = sibling_links(ant), sibling_links(bee)
    return on_ant, on_bee


async def test_mutual_siblings_keep_one_link(mutual: tuple[Node, Node]) -> None:
    ant, bee = mutual
    on_ant, on_bee = await one_link(ant, bee)
    # Proving that nothing happens during an interval: no condition to poll for.
    await asyncio.sleep(1.0)  # well past a redial: the link closed as a duplicate stays closed
    assert [s["link"] for s in sibling_links(ant) + sibling_links(bee)] == [on_ant["link"], on_bee["link"]]
    assert "duplicate sibling link; keeping the one ant dialed" in ant.log.read_text() + bee.log.read_text()


async def test_gossip_burst_reaches_the_sibling_with_the_latest_state(mutual: tuple[Node, Node]) -> None:
    """200 peers announce 10 times each, at once, on one node: the other ends with every newest ``seq``."""
    ant, bee = mutual
    peers, times = 200, 10
    now = time.time_ns() // 1_000_000
    identities = [Identity.generate() for _ in range(peers)]
    signed: list[list[tuple[dict[str, Any], str]]] = []
    for identity in identities:
        bodies = [
            Announcement(
                peer_id=identity.peer_id,
                kind="native",
                seq=now + k,
                issued_ms=now,
                expires_ms=now + 60_000,
                serves=spans("burst/m", 0, 4),
            ).to_dict()
            for k in range(times)
        ]
        signed.append([(b, identity.sign_body(ANNOUNCE_CONTEXT, b)) for b in bodies])
    before = (await one_link(ant, bee))[1]
    opened, start = [0], asyncio.Event()

    async def announce_all(identity: Identity, announcements: list[tuple[dict[str, Any], str]]) -> list[str]:
        # one connection per peer keeps within the per-connection budget; 10 is the per-peer burst
        async with connect(ant.url, proxy=None, max_size=2**22) as ws:
            hello = json.loads(await ws.recv())
            proof = identity.sign_body(AUTH_CONTEXT, {"node_id": hello["node_id"], "nonce": hello["nonce"]})
            opened[0] += 1
            if opened[0] == peers:
                start.set()  # every connection is open: send all 2000 at once
            await start.wait()
            for i, (body, sig) in enumerate(announcements):
                await ws.send(
                    json.dumps({"type": "announce", "id": i, "body": body, "sig": sig, "proof": proof})
                )
            types: list[str] = []
            for _ in announcements:
                async with asyncio.timeout(20):
                    types.append(json.loads(await ws.recv())["type"])
            return types

    replies = await asyncio.gather(*(announce_all(i, s) for i, s in zip(identities, signed, strict=True)))
    assert all(r == ["announced"] * times for r in replies)
    latest = {identity.peer_id: now + times - 1 for identity in identities}
    up_to_date = 0

    async def bee_has_latest() -> bool:
        nonlocal up_to_date
        held = {e["peer_id"]: e["seq"] for e in bee.directory()["entries"] if e["peer_id"] in latest}
        up_to_date = sum(held.get(peer) == seq for peer, seq in latest.items())
        return up_to_date == peers

    assert await wait_for_async(
        bee_has_latest,
        5.0,
        what="every newest seq on bee",
        describe=lambda: f"bee has the newest seq of {up_to_date}/{peers}",
    )
    on_ant, on_bee = await one_link(ant, bee)
    assert on_ant["dropped"] == on_bee["dropped"] == 0
    assert on_bee["link"] == before["link"]
    assert on_bee["sent"] == before["sent"]  # nothing went back to the node it came from

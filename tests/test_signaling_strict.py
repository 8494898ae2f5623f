"""Directory state from outside a peer's own signature cannot hide it, announcement seq is bounded, and
websockets that say nothing are closed.

Real ``ai4all signal`` nodes, and raw websocket clients that speak only the documented protocol: the
attack of issue 12 (a ``federate`` from any connection, then a ``gone`` with the peer's seq + 10^9), an
announcement with seq = 2^53 - 1, ``bye`` from a connection that does not speak for the peer, a trusted
sibling replaying a ``gone`` or an older announcement, and idle websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from python_peer.core.canonical import (
    ANNOUNCE_CONTEXT,
    BYE_CONTEXT,
    MAX_CLOCK_SKEW_MS,
    MAX_SAFE_INT,
    MAX_SEQ_AHEAD_MS,
    MAX_SIGNAL_AGE_MS,
    MAX_TTL_MS,
    SIGNAL_CONTEXT,
    Announcement,
    bye_body,
    signing_bytes,
)
from python_peer.core.errors import AnnouncementError
from python_peer.core.protocol import SIGNALING_FIRST_MESSAGE_MS, SIGNALING_IDLE_MS
from python_peer.identity import Identity, verify
from signaling.connection import FIRST_MESSAGE_TIMEOUT_S, IDLE_TIMEOUT_S, Connection
from signaling.messages import FEDERATE_CONTEXT, federate_claim
from signaling.ratelimit import TokenBucket
from tests.support.procs import Node, node_data_dir
from tests.support.raw_signaling import RawPeer, raw_peer
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    logs = tmp_path_factory.mktemp("signaling-strict")
    first = Node("strict-a", logs, accept=("strict-b",))
    second = Node("strict-b", logs, siblings=(first,))
    try:
        first.wait(siblings=1)
        second.wait(siblings=1)
        yield first, second
    finally:
        first.stop(signal.SIGTERM)
        second.stop(signal.SIGTERM)


async def test_forged_gone_with_a_far_seq_hides_no_one(mesh: tuple[Node, Node]) -> None:
    """The reported attack: a federate from any connection on node A, then ``gone`` for P (on B) with
    seq + 10^9. The federate is refused and the connection closed; even had it been taken, a ``gone``
    withdraws only the seq it names, so P stays listed and its next announcement is not ``stale``."""
    a, b = mesh
    async with raw_peer(b.url) as p, raw_peer(a.url) as user:
        body = p.body(model="gone/m")
        assert (await p.announce(body))["type"] == "announced"
        await wait_for_async(
            lambda: _has(user, p.identity.peer_id, "gone/m"),
            5.0,
            what="the announcement reaching the other node",
        )
        async with raw_peer(a.url) as evil:
            await evil.send(_federate(Identity.generate(), "zzzz-evil", evil.hello))
            reply = await evil.recv()
            assert (reply["type"], reply["code"]) == ("error", "not_sibling"), reply
            assert "not a sibling" in reply["message"]
            for seq in (body["seq"], body["seq"] + 10**9, MAX_SAFE_INT):
                with contextlib.suppress(ConnectionClosed):
                    await evil.send({"type": "gone", "hops": 0, "peer_id": p.identity.peer_id, "seq": seq})
            assert await _drain(evil) == [], "a refused federate gets no directory gossip"
        assert await user.lookup("gone/m") == [p.identity.peer_id]
        assert any(e["peer_id"] == p.identity.peer_id for e in a.directory()["entries"])
        later = p.body(model="gone/m")
        later["seq"] = body["seq"] + 1
        assert (await p.announce(later))["type"] == "announced"


async def test_federate_must_prove_the_configured_key(mesh: tuple[Node, Node], tmp_path: Path) -> None:
    """A configured sibling's key is accepted only with a signature of this connection's nonce."""
    a, b = mesh
    b_key = Identity.load_or_create(node_data_dir(Path(b.log.parent), b.name))  # B's own key file
    async with raw_peer(a.url) as replay:
        stale_hello = {**replay.hello, "nonce": "ab" * 16}  # a proof made for another connection
        await replay.send(_federate(b_key, "strict-b", stale_hello))
        reply = await replay.recv()
        assert (reply["type"], reply["code"]) == ("error", "bad_signature"), reply
        assert await _drain(replay) == []
    # the same key with a fresh proof is a sibling: A proves its own key over our nonce, then gossips
    async with raw_peer(a.url) as sibling:
        await sibling.send(_federate(b_key, "strict-b2", sibling.hello, nonce="cd" * 16))
        answer = await sibling.recv()
        assert answer["type"] == "federated" and answer["key"] == a.key, answer
        claim = federate_claim(answer["node_id"], a.key, "strict-b2", "cd" * 16)
        verify(a.key, signing_bytes(FEDERATE_CONTEXT, claim), answer["proof"])


def _federate(
    identity: Identity, node_id: str, hello: dict[str, Any], nonce: str = "ef" * 16
) -> dict[str, Any]:
    claim = federate_claim(node_id, identity.peer_id, hello["node_id"], hello["nonce"])
    return {
        "type": "federate",
        "node_id": node_id,
        "url": "ws://127.0.0.1:9",
        "key": identity.peer_id,
        "nonce": nonce,
        "proof": identity.sign_body(FEDERATE_CONTEXT, claim),
    }


async def _has(user: RawPeer, peer_id: str, model: str) -> bool:
    return peer_id in await user.lookup(model)


async def _drain(raw: RawPeer) -> list[dict[str, Any]]:
    """What the node still sends until it closes the connection (within a bound)."""
    got: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            got.append(await raw.recv(timeout=5.0))
    return got


async def test_announce_seq_far_past_its_issue_time_is_refused(mesh: tuple[Node, Node]) -> None:
    a, _ = mesh
    async with raw_peer(a.url) as raw:
        body = raw.body(model="seq/m")
        huge = {**body, "seq": MAX_SAFE_INT}
        sig = raw.identity.sign_body(ANNOUNCE_CONTEXT, huge)
        reply = await raw.ask({"type": "announce", "body": huge, "sig": sig, "proof": raw.proof()})
        assert (reply["type"], reply["code"]) == ("error", "bad_announcement"), reply
        assert "seq" in reply["message"]
        # the identity's normal announcements are not `stale` afterwards
        assert (await raw.announce(body))["type"] == "announced"
        assert await raw.lookup("seq/m") == [raw.identity.peer_id]


def test_seq_window_is_relative_to_issued_ms() -> None:
    now = time.time_ns() // 1_000_000

    def at(seq: int) -> Announcement:
        return Announcement(peer_id="ab" * 32, kind="native", seq=seq, issued_ms=now, expires_ms=now + 60_000)

    assert at(now + MAX_SEQ_AHEAD_MS).seq == now + MAX_SEQ_AHEAD_MS
    assert at(0).seq == 0
    with pytest.raises(AnnouncementError, match="ahead of issued_ms"):
        at(now + MAX_SEQ_AHEAD_MS + 1)


# --- idle websockets ------------------------------------------------------------------------------------


async def _cut_off(raw: RawPeer, bound: float) -> tuple[dict[str, Any], int | None, float]:
    """The ``error`` a node sends before closing ``raw`` for silence, the close code, and when."""
    started = time.monotonic()
    replies: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while time.monotonic() - started < bound:
            replies.append(await raw.recv(timeout=bound))
    timeouts = [r for r in replies if r.get("code") == "timeout"]
    assert len(timeouts) == 1, replies
    return timeouts[0], raw.ws.close_code, time.monotonic() - started


async def test_a_websocket_that_says_nothing_useful_is_closed(mesh: tuple[Node, Node]) -> None:
    """A websocket must send a message the node takes within FIRST_MESSAGE_TIMEOUT_S: one silent after
    the hello, and one sending only garbage (answered, but not taken), are told ``timeout`` and closed
    with 1008; one that looked up at once stays open past the bound."""
    a, _ = mesh
    bound = FIRST_MESSAGE_TIMEOUT_S + 8

    async def garbage(raw: RawPeer) -> None:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(int(FIRST_MESSAGE_TIMEOUT_S) + 4):
                await raw.send("{not json")
                await asyncio.sleep(1.0)

    async with raw_peer(a.url) as silent, raw_peer(a.url) as noisy, raw_peer(a.url) as user:
        assert await user.lookup("idle/m") == []
        chatter = asyncio.create_task(garbage(noisy))
        (error, code, took), (noisy_error, noisy_code, noisy_took) = await asyncio.gather(
            _cut_off(silent, bound), _cut_off(noisy, bound)
        )
        await chatter
        for e, c, t in ((error, code, took), (noisy_error, noisy_code, noisy_took)):
            assert e == {"type": "error", "id": None, "code": "timeout", "message": e["message"]}, e
            assert "within 10 s" in e["message"]
            assert c == 1008
            assert FIRST_MESSAGE_TIMEOUT_S - 2 < t < FIRST_MESSAGE_TIMEOUT_S + 6, t
        assert await user.lookup("idle/m") == []  # past the bound, and still served
    health = a.health()
    assert health is not None and len(health["siblings"]) == 1  # the sibling link is untouched


async def test_hello_advertises_the_time_bounds_and_a_client_re_announces_within_the_idle_one(
    mesh: tuple[Node, Node], tmp_path: Path
) -> None:
    """``hello.limits`` carries the bounds the node applies: ``first_message_ms`` and ``idle_ms`` (the
    protocol's by default; here a node configured with a 3 s idle bound). A raw peer that announces once
    and falls silent is closed after it; the native client, whose own period is 40 s, re-announces
    within half the advertised bound and keeps its one connection across several bounds."""
    from python_peer.signal_client import SignalClient, SignalClientConfig, SignalClientState

    async with raw_peer(mesh[0].url) as default:
        limits = default.hello["limits"]
        assert (limits["first_message_ms"], limits["idle_ms"]) == (
            SIGNALING_FIRST_MESSAGE_MS,
            SIGNALING_IDLE_MS,
        )
        assert (FIRST_MESSAGE_TIMEOUT_S, IDLE_TIMEOUT_S) == (
            SIGNALING_FIRST_MESSAGE_MS / 1000,
            SIGNALING_IDLE_MS / 1000,
        )
    node = Node("strict-idle", tmp_path, extra_args=("--idle-timeout", "3"))
    try:
        node.wait()
        async with raw_peer(node.url) as raw:
            limits = raw.hello["limits"]
            assert (limits["first_message_ms"], limits["idle_ms"]) == (SIGNALING_FIRST_MESSAGE_MS, 3_000)
            assert (await raw.announce(model="idle2/m"))["type"] == "announced"
            error, code, took = await _cut_off(raw, 12.0)
            assert (error["code"], code) == ("timeout", 1008) and 2.0 < took < 9.0, (error, took)

        config = SignalClientConfig(urls=(node.url,))
        assert config.reannounce_s > 3
        client = await SignalClient.create(Identity.generate(), config)
        try:
            assert client.renew_s == 1.5
            first = _held_seq(node, client.peer_id)
            assert first is not None
            await wait_for_async(  # three idle bounds later (seq follows the clock in ms) ...
                lambda: _async((_held_seq(node, client.peer_id) or 0) >= first + 9_000),
                30.0,
                what="the client re-announcing for 9 s",
            )
            # ... on the same connection, never closed for silence
            assert client.connections == 1 and client.state is SignalClientState.CONNECTED
        finally:
            await client.close()
    finally:
        node.stop(signal.SIGTERM)


class _SilentTransport:
    """A websocket that never speaks: what a ``Connection`` sees of an idle client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._gone = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def receive(self) -> str | bytes | None:
        await self._gone.wait()
        return None

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._gone.set()


async def test_a_peer_connection_idle_past_its_bound_is_closed_and_a_sibling_link_is_not() -> None:
    """After its first message, a peer connection is closed once silent for IDLE_TIMEOUT_S (longer than
    any announcement lives, so a live peer's re-announcements keep it open); a sibling link has no idle
    bound (its pings find it dead). In process, with the bound shortened."""
    assert IDLE_TIMEOUT_S * 1000 > MAX_TTL_MS  # a peer re-announces within its TTL: never idle that long
    peer = Connection(_SilentTransport(), TokenBucket(20, 60))
    peer.idle_timeout_s = 0.3
    peer.took_message()
    started = time.monotonic()
    assert await peer.receive() is None
    assert 0.25 < time.monotonic() - started < 3
    transport = peer.transport
    assert isinstance(transport, _SilentTransport)
    assert transport.closed is not None and transport.closed[0] == 1008
    assert [m["code"] for m in transport.sent] == ["timeout"]
    assert "within 0.3 s" in transport.sent[0]["message"]

    sibling = Connection(_SilentTransport(), TokenBucket(20, 60), dialed=True)
    sibling.idle_timeout_s = sibling.first_message_timeout_s = 0.1
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await sibling.receive()
    assert isinstance(sibling.transport, _SilentTransport) and sibling.transport.closed is None
    await sibling.close()
    await peer.close()


# --- bye and gone: only what the peer signed, and never over what it signed later ------------------------


def _held_seq(node: Node, peer_id: str) -> int | None:
    return next((e["seq"] for e in node.directory()["entries"] if e["peer_id"] == peer_id), None)


async def test_bye_from_a_connection_that_does_not_speak_for_the_peer_withdraws_nothing(
    mesh: tuple[Node, Node],
) -> None:
    """``bye`` withdraws only the peer this very connection announced with a proof of its key: a bye
    before any announce, after a replayed announcement (refused: its proof is not this connection's),
    after announcing another identity, even one carrying P's signature, leaves P listed on both nodes."""
    a, b = mesh
    async with raw_peer(a.url) as p, raw_peer(a.url) as evil:
        body = p.body(model="bye/m")
        assert (await p.announce(body))["type"] == "announced"
        assert (await evil.ask({"type": "bye"}))["type"] == "ack"  # speaks for no one: nothing to withdraw
        sig = p.identity.sign_body(ANNOUNCE_CONTEXT, body)
        replayed = await evil.ask({"type": "announce", "body": body, "sig": sig, "proof": evil.proof()})
        assert (replayed["type"], replayed["code"]) == ("error", "bad_signature"), replayed
        stolen_proof = await evil.ask({"type": "announce", "body": body, "sig": sig, "proof": p.proof()})
        assert (stolen_proof["type"], stolen_proof["code"]) == ("error", "bad_signature"), stolen_proof
        assert (await evil.ask({"type": "bye"}))["type"] == "ack"
        own = evil.body(model="bye/m")
        assert (await evil.announce(own))["type"] == "announced"  # its own identity
        own_bye = {
            "type": "bye",
            "seq": own["seq"],
            "sig": _bye_sig(evil.identity, evil.identity.peer_id, own["seq"]),
        }
        assert (await evil.ask(own_bye))["type"] == "ack"  # withdraws only itself, here and on B
        p_bye = {
            "type": "bye",
            "seq": body["seq"],
            "sig": _bye_sig(p.identity, p.identity.peer_id, body["seq"]),
        }
        reply = await evil.ask(p_bye)  # P's own signed bye, from a connection that does not speak for P
        assert reply["type"] == "ack", reply  # it speaks for no one now: nothing withdrawn
        assert await evil.lookup("bye/m") == [p.identity.peer_id]
        await wait_for_async(
            lambda: _async(_held_seq(b, p.identity.peer_id) == body["seq"]),
            5.0,
            what="P's announcement on the sibling",
        )
        await wait_for_async(  # the evil identity's own bye reached B; P's announcement stays
            lambda: _async(_held_seq(b, evil.identity.peer_id) is None), 5.0, what="evil's bye on the sibling"
        )
        assert _held_seq(b, p.identity.peer_id) == body["seq"]


async def _async(value: bool) -> bool:
    return value


async def test_a_sibling_cannot_withdraw_what_the_peer_did_not(mesh: tuple[Node, Node]) -> None:
    """Even a trusted sibling (it holds B's key) withdraws a peer only with the peer's own signed ``bye``:
    an unsigned ``gone``, one signed by another key, or one whose signature is for another seq changes
    nothing. P's signed bye on B withdraws it on A too; once P re-announces, a replay of that very
    ``gone`` (P's signature and all), a ``gone`` past what P signed, and gossip of P's older (or an
    altered) announcement change nothing: A keeps the newest announcement P signed."""
    a, b = mesh
    b_key = Identity.load_or_create(node_data_dir(Path(b.log.parent), b.name))
    pid = ""

    async def marker_seen(sibling: RawPeer) -> None:
        """A marker gossip after the attacks on the same link: once A holds it, A has read them all."""
        marker = Identity.generate()
        now = time.time_ns() // 1_000_000
        body = Announcement(
            peer_id=marker.peer_id, kind="native", seq=now, issued_ms=now, expires_ms=now + 60_000
        )
        sig = marker.sign_body(ANNOUNCE_CONTEXT, body.to_dict())
        await sibling.send({"type": "gossip", "hops": 0, "body": body.to_dict(), "sig": sig})
        await wait_for_async(
            lambda: _async(_held_seq(a, marker.peer_id) is not None), 5.0, what="a marker on A"
        )

    async with raw_peer(b.url) as p, raw_peer(a.url) as sibling:
        pid = p.identity.peer_id
        await sibling.send(_federate(b_key, "strict-b3", sibling.hello, nonce="12" * 16))
        assert (await sibling.recv())["type"] == "federated"
        first = p.body(model="sib/m")
        assert (await p.announce(first))["type"] == "announced"
        await wait_for_async(lambda: _async(_held_seq(a, pid) == first["seq"]), 5.0, what="P on A")

        evil = Identity.generate()
        forged: list[dict[str, Any]] = [
            {"type": "gone", "hops": 0, "peer_id": pid, "seq": first["seq"]},  # unsigned
            {"type": "gone", "hops": 0, "peer_id": pid, "seq": first["seq"], "sig": "00" * 64},
            {
                "type": "gone",
                "hops": 0,
                "peer_id": pid,
                "seq": first["seq"],
                "sig": _bye_sig(evil, pid, first["seq"]),
            },
            {
                "type": "gone",
                "hops": 0,
                "peer_id": pid,
                "seq": first["seq"],
                "sig": _bye_sig(p.identity, pid, 1),
            },
        ]
        for attack in forged:
            await sibling.send(attack)
        await marker_seen(sibling)
        assert _held_seq(a, pid) == first["seq"], "a gone P did not sign withdrew it"

        bye_sig = _bye_sig(p.identity, pid, first["seq"])
        assert (await p.ask({"type": "bye", "seq": first["seq"], "sig": bye_sig}))["type"] == "ack"
        await wait_for_async(lambda: _async(_held_seq(a, pid) is None), 5.0, what="P's signed bye reaching A")

        later = p.body(model="sib/m")
        later["seq"] = first["seq"] + 1
        assert (await p.announce(later))["type"] == "announced"
        await wait_for_async(lambda: _async(_held_seq(a, pid) == later["seq"]), 5.0, what="P back on A")
        old_sig = p.identity.sign_body(ANNOUNCE_CONTEXT, first)
        attacks: list[dict[str, Any]] = [
            {"type": "gone", "hops": 0, "peer_id": pid, "seq": first["seq"], "sig": bye_sig},  # replayed
            {"type": "gone", "hops": 0, "peer_id": pid, "seq": later["seq"] + 10**9, "sig": bye_sig},
            {"type": "gone", "hops": 0, "peer_id": pid, "seq": MAX_SAFE_INT},
            {"type": "gossip", "hops": 0, "body": first, "sig": old_sig},  # older, really signed
            {
                "type": "gossip",
                "hops": 0,
                "body": {**first, "seq": later["seq"] + 5},
                "sig": old_sig,
            },  # altered
        ]
        for attack in attacks:
            await sibling.send(attack)
        await marker_seen(sibling)
        assert _held_seq(a, pid) == later["seq"]  # what P signed last, untouched
        async with raw_peer(a.url) as user:
            assert await user.lookup("sib/m") == [pid]
        newest = p.body(model="sib/m")
        newest["seq"] = later["seq"] + 1
        assert (await p.announce(newest))["type"] == "announced"  # never `stale`
        await wait_for_async(lambda: _async(_held_seq(a, pid) == newest["seq"]), 5.0, what="P's newest on A")


async def test_a_bye_with_a_bad_signature_is_refused_and_an_unsigned_one_stays_here(
    mesh: tuple[Node, Node],
) -> None:
    """A signed ``bye`` must be signed by the connection's peer (``bad_signature`` otherwise, and P
    stays listed everywhere); ``seq`` without ``sig`` is ``bad_message``. An unsigned ``bye`` (an older
    client) withdraws P on its own node only: the siblings cannot check it."""
    a, b = mesh
    async with raw_peer(a.url) as p:
        pid = p.identity.peer_id
        body = p.body(model="bye2/m")
        assert (await p.announce(body))["type"] == "announced"
        await wait_for_async(lambda: _async(_held_seq(b, pid) == body["seq"]), 5.0, what="P on B")
        other = _bye_sig(Identity.generate(), pid, body["seq"])
        reply = await p.ask({"type": "bye", "seq": body["seq"], "sig": other})
        assert (reply["type"], reply["code"]) == ("error", "bad_signature"), reply
        reply = await p.ask({"type": "bye", "seq": body["seq"]})
        assert (reply["type"], reply["code"]) == ("error", "bad_message"), reply
        assert _held_seq(a, pid) == body["seq"] and _held_seq(b, pid) == body["seq"]
        assert (await p.ask({"type": "bye"}))["type"] == "ack"
        assert _held_seq(a, pid) is None
        assert _held_seq(b, pid) == body["seq"]  # until it expires


async def test_a_bye_with_the_next_seq_withdraws_a_re_announcement_and_a_replay_withdraws_nothing_newer(
    mesh: tuple[Node, Node],
) -> None:
    """A peer re-announcing while it says bye: its bye, signed with its next seq, withdraws what the
    nodes hold (the re-announcement included) on both nodes, and the re-announcement still in flight
    when the bye landed is ``stale`` after it. Once the peer is back with a later announcement, its old
    bye replayed on its own connection, or as a ``gone`` by a trusted sibling, withdraws nothing; a bye
    with a seq further ahead than any announcement may be (it would lock the peer out) is refused."""
    a, b = mesh
    b_key = Identity.load_or_create(node_data_dir(Path(b.log.parent), b.name))
    async with raw_peer(b.url) as p, raw_peer(a.url) as sibling:
        pid = p.identity.peer_id
        await sibling.send(_federate(b_key, "strict-b4", sibling.hello, nonce="34" * 16))
        assert (await sibling.recv())["type"] == "federated"
        first = p.body(model="rebye/m")
        assert (await p.announce(first))["type"] == "announced"
        again = {**p.body(model="rebye/m"), "seq": first["seq"] + 1}  # a re-announcement...
        in_flight = {**p.body(model="rebye/m"), "seq": first["seq"] + 2}  # ...and one not sent yet
        assert (await p.announce(again))["type"] == "announced"
        await wait_for_async(lambda: _async(_held_seq(a, pid) == again["seq"]), 5.0, what="P on A")

        bye_seq = max(in_flight["seq"] + 1, time.time_ns() // 1_000_000)  # the client's next seq
        bye = {"type": "bye", "seq": bye_seq, "sig": _bye_sig(p.identity, pid, bye_seq)}
        assert (await p.ask(bye))["type"] == "ack"
        assert _held_seq(b, pid) is None
        await wait_for_async(lambda: _async(_held_seq(a, pid) is None), 5.0, what="P's bye reaching A")
        late = await p.announce(in_flight)
        assert (late["type"], late["code"]) == ("error", "stale"), late
        assert _held_seq(b, pid) is None

        back = {**p.body(model="rebye/m"), "seq": bye_seq + 1}
        assert (await p.announce(back))["type"] == "announced"
        await wait_for_async(lambda: _async(_held_seq(a, pid) == back["seq"]), 5.0, what="P back on A")
        replayed = await p.ask(bye)  # the old bye, replayed on P's own connection
        assert (replayed["type"], replayed.get("code")) == ("error", "stale"), replayed
        assert _held_seq(b, pid) == back["seq"]
        await sibling.send({"type": "gone", "hops": 0, "peer_id": pid, "seq": bye_seq, "sig": bye["sig"]})
        await _marker_seen(a, sibling)  # A has read the replayed gone
        assert _held_seq(a, pid) == back["seq"]

        far = time.time_ns() // 1_000_000 + MAX_SEQ_AHEAD_MS + MAX_CLOCK_SKEW_MS + 60_000
        far_sig = _bye_sig(p.identity, pid, far)
        refused = await p.ask({"type": "bye", "seq": far, "sig": far_sig})
        assert (refused["type"], refused.get("code")) == ("error", "bad_message"), refused
        assert "ahead" in refused["message"]
        await sibling.send({"type": "gone", "hops": 0, "peer_id": pid, "seq": far, "sig": far_sig})
        await _marker_seen(a, sibling)
        assert _held_seq(a, pid) == back["seq"] and _held_seq(b, pid) == back["seq"]
        newest = {**p.body(model="rebye/m"), "seq": back["seq"] + 1}
        assert (await p.announce(newest))["type"] == "announced"  # not locked out
        await wait_for_async(lambda: _async(_held_seq(a, pid) == newest["seq"]), 5.0, what="P's newest on A")


async def _marker_seen(node: Node, sibling: RawPeer) -> None:
    """A marker gossip sent on ``sibling`` after other messages: once ``node`` holds it, it has read them."""
    marker = Identity.generate()
    now = time.time_ns() // 1_000_000
    body = Announcement(
        peer_id=marker.peer_id, kind="native", seq=now, issued_ms=now, expires_ms=now + 60_000
    )
    sig = marker.sign_body(ANNOUNCE_CONTEXT, body.to_dict())
    await sibling.send({"type": "gossip", "hops": 0, "body": body.to_dict(), "sig": sig})
    await wait_for_async(lambda: _async(_held_seq(node, marker.peer_id) is not None), 5.0, what="a marker")


def _bye_sig(signer: Identity, peer_id: str, seq: int) -> str:
    return signer.sign_body(BYE_CONTEXT, bye_body(peer_id, seq))


# --- times bounded relative to now ------------------------------------------------------------------------


async def test_times_are_bounded_relative_to_the_nodes_clock(mesh: tuple[Node, Node]) -> None:
    """Every time a node accepts is checked against its clock: an announcement issued more than
    MAX_CLOCK_SKEW_MS ahead is ``bad_announcement``, one already expired ``expired``; a signal whose
    ``ts_ms`` is more than MAX_SIGNAL_AGE_MS off, either way, ``expired``; and gossip of a (really signed)
    announcement from the future, from a trusted sibling, is dropped, not listed."""
    a, b = mesh
    now = time.time_ns() // 1_000_000
    async with raw_peer(a.url) as raw:
        ahead = raw.body(issued_ms=now + MAX_CLOCK_SKEW_MS + 5_000, model="time/m")
        reply = await raw.ask(
            {
                "type": "announce",
                "body": ahead,
                "sig": raw.identity.sign_body(ANNOUNCE_CONTEXT, ahead),
                "proof": raw.proof(),
            }
        )
        assert (reply["type"], reply["code"]) == ("error", "bad_announcement"), reply
        assert "future" in reply["message"]
        gone_by = raw.body(issued_ms=now - 30_000, ttl_ms=10_000, model="time/m")
        reply = await raw.ask(
            {
                "type": "announce",
                "body": gone_by,
                "sig": raw.identity.sign_body(ANNOUNCE_CONTEXT, gone_by),
                "proof": raw.proof(),
            }
        )
        assert (reply["type"], reply["code"]) == ("error", "expired"), reply
        assert (await raw.announce(model="time/m"))["type"] == "announced"
        async with raw_peer(a.url) as target:
            assert (await target.announce(model="time/t"))["type"] == "announced"
            for skew in (-(MAX_SIGNAL_AGE_MS + 5_000), MAX_SIGNAL_AGE_MS + 5_000):
                body = {
                    "from": raw.identity.peer_id,
                    "to": target.identity.peer_id,
                    "ts_ms": now + skew,
                    "payload": {},
                }
                sig = raw.identity.sign_body(SIGNAL_CONTEXT, body)
                reply = await raw.ask({"type": "signal", **body, "sig": sig})
                assert (reply["type"], reply["code"]) == ("error", "expired"), (skew, reply)

    b_key = Identity.load_or_create(node_data_dir(Path(b.log.parent), b.name))
    future_peer = Identity.generate()
    future = Announcement(
        peer_id=future_peer.peer_id,
        kind="native",
        seq=now + MAX_CLOCK_SKEW_MS + 5_000,
        issued_ms=now + MAX_CLOCK_SKEW_MS + 5_000,
        expires_ms=now + MAX_CLOCK_SKEW_MS + 65_000,
    ).to_dict()
    marker = Identity.generate()
    present = Announcement(
        peer_id=marker.peer_id, kind="native", seq=now, issued_ms=now, expires_ms=now + 60_000
    )
    async with raw_peer(a.url) as sibling:
        await sibling.send(_federate(b_key, "strict-b4", sibling.hello, nonce="34" * 16))
        assert (await sibling.recv())["type"] == "federated"
        for body, who in ((future, future_peer), (present.to_dict(), marker)):
            await sibling.send(
                {"type": "gossip", "hops": 0, "body": body, "sig": who.sign_body(ANNOUNCE_CONTEXT, body)}
            )
        await wait_for_async(lambda: _async(_held_seq(a, marker.peer_id) == now), 5.0, what="the marker on A")
        assert _held_seq(a, future_peer.peer_id) is None

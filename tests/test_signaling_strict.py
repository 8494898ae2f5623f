"""Directory state from outside a peer's own signature cannot hide it, and announcement seq is bounded.

Real ``ai4all signal`` nodes, and raw websocket clients that speak only the documented protocol: the
attack of issue 12 (a ``federate`` from any connection, then a ``gone`` with the peer's seq + 10^9) and an
announcement with seq = 2^53 - 1.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from python_peer.core.canonical import (
    ANNOUNCE_CONTEXT,
    MAX_SAFE_INT,
    MAX_SEQ_AHEAD_MS,
    Announcement,
    signing_bytes,
)
from python_peer.core.errors import AnnouncementError
from python_peer.identity import Identity, verify
from signaling.messages import FEDERATE_CONTEXT, federate_claim
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

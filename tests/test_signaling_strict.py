"""Directory state from outside a peer's own signature cannot hide it, and announcement seq is bounded.

Real ``ai4all signal`` nodes, and raw websocket clients that speak only the documented protocol: the
attack of issue 12 (a ``federate`` from any connection, then a ``gone`` with the peer's seq + 10^9) and an
announcement with seq = 2^53 - 1.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from python_peer.core.canonical import ANNOUNCE_CONTEXT, MAX_SAFE_INT, MAX_SEQ_AHEAD_MS, Announcement
from python_peer.core.errors import AnnouncementError
from tests.procs import Node
from tests.test_signaling import RawPeer, eventually, raw_peer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    logs = tmp_path_factory.mktemp("signaling-strict")
    first = Node("strict-a", logs)
    second = Node("strict-b", logs, siblings=(first.url,))
    try:
        first.wait(siblings=1)
        second.wait(siblings=1)
        yield first, second
    finally:
        first.stop(signal.SIGTERM)
        second.stop(signal.SIGTERM)


async def test_forged_gone_with_a_far_seq_hides_no_one(mesh: tuple[Node, Node]) -> None:
    """The reported attack: forged federate on node A, then ``gone`` for P (on B) with seq + 10^9."""
    a, b = mesh
    async with raw_peer(b.url) as p, raw_peer(a.url) as user:
        body = p.body(model="gone/m")
        assert (await p.announce(body))["type"] == "announced"
        assert await eventually(lambda: _has(user, p.identity.peer_id, "gone/m"))
        async with raw_peer(a.url) as evil:
            await evil.send({"type": "federate", "node_id": "zzzz-evil", "url": "ws://127.0.0.1:9"})
            for seq in (body["seq"] + 10**9, body["seq"] + 1, MAX_SAFE_INT):
                await evil.send({"type": "gone", "hops": 0, "peer_id": p.identity.peer_id, "seq": seq})
            # the node has read the forgeries once it answers something sent after them on that link
            await evil.send({"type": "lookup", "id": 1, "model": "gone/m", "start": 0, "end": 4})
            await _drain(evil)
        assert await user.lookup("gone/m") == [p.identity.peer_id]
        assert any(e["peer_id"] == p.identity.peer_id for e in a.directory()["entries"])
        # and P's own next announcement is not `stale` on either node
        later = p.body(model="gone/m")
        later["seq"] = body["seq"] + 1
        assert (await p.announce(later))["type"] == "announced"


async def _has(user: RawPeer, peer_id: str, model: str) -> bool:
    return peer_id in await user.lookup(model)


async def _drain(raw: RawPeer) -> None:
    """Read until the connection closes or goes quiet (a sibling link answers nothing)."""
    try:
        while True:
            await raw.recv(timeout=0.5)
    except (TimeoutError, ConnectionClosed):
        return


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

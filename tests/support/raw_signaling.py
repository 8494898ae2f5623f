"""A hand-driven signaling peer: a raw websocket that speaks ``docs/signaling.md`` and nothing else.

Attack tests use it to send what a correct client never would: forged federates, replayed or stretched
announcements, gones with made-up seqs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from python_peer.core.canonical import ANNOUNCE_CONTEXT, AUTH_CONTEXT, Announcement, ServedSpan
from python_peer.identity import Identity


def spans(model: str, start: int, end: int) -> tuple[ServedSpan, ...]:
    return (ServedSpan(model, start, end),)


class RawPeer:
    """A hand-driven websocket peer, for sending what a correct client never would."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any], identity: Identity) -> None:
        self.ws, self.hello, self.identity = ws, hello, identity
        self._ids = 0

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return dict(json.loads(await self.ws.recv()))

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        await self.send({**message, "id": self._ids})
        reply = await self.recv()
        assert reply.get("id") == self._ids, reply
        return reply

    def body(
        self, ttl_ms: int = 60_000, issued_ms: int | None = None, model: str = "raw/m"
    ) -> dict[str, Any]:
        now = issued_ms if issued_ms is not None else time.time_ns() // 1_000_000
        return Announcement(
            peer_id=self.identity.peer_id,
            kind="browser",
            seq=now,
            issued_ms=now,
            expires_ms=now + ttl_ms,
            serves=spans(model, 0, 4),
        ).to_dict()

    def proof(self, signer: Identity | None = None) -> str:
        who = signer or self.identity
        return who.sign_body(AUTH_CONTEXT, {"node_id": self.hello["node_id"], "nonce": self.hello["nonce"]})

    async def announce(self, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        body = body if body is not None else self.body(**kw)
        sig = self.identity.sign_body(ANNOUNCE_CONTEXT, body)
        return await self.ask({"type": "announce", "body": body, "sig": sig, "proof": self.proof()})

    async def lookup(self, model: str = "raw/m") -> list[str]:
        reply = await self.ask({"type": "lookup", "model": model, "start": 0, "end": 64})
        assert reply["type"] == "peers", reply
        return [p["body"]["peer_id"] for p in reply["peers"]]


@asynccontextmanager
async def raw_peer(url: str) -> AsyncIterator[RawPeer]:
    async with connect(url, proxy=None, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["protocol"] == 1
        yield RawPeer(ws, hello, Identity.generate())

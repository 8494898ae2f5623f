"""A server-sent event stream whose client is gone: its body is closed at once, not by the garbage
collector (a generation behind it would otherwise run to its last token; python_peer/api/streaming.py).
Spoken as ASGI, the way uvicorn drives the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from python_peer.api.streaming import EventStreamResponse


def endless(closed: list[str]) -> AsyncIterator[bytes]:
    async def events() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: {}\n\n"
                await asyncio.sleep(0)
        finally:
            closed.append("closed")

    return events()


async def never() -> Message:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
async def test_a_stream_whose_client_hung_up_is_closed_at_once(spec_version: str) -> None:
    closed: list[str] = []
    sent: list[Message] = []
    disconnect = asyncio.Event()

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) > 3:  # the client hung up after two events
            disconnect.set()
            if spec_version == "2.4":
                raise OSError("client disconnected")  # uvicorn's ClientDisconnected under ASGI 2.4

    async def receive() -> Message:
        await disconnect.wait()  # before 2.4, the server says so through receive
        return {"type": "http.disconnect"}

    response = EventStreamResponse(endless(closed))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}}
    if spec_version == "2.4":
        with pytest.raises(ClientDisconnect):
            await response(scope, receive, send)
    else:
        async with asyncio.timeout(5):
            await response(scope, receive, send)
    assert closed == ["closed"], "the body was left suspended for the garbage collector"
    assert sent[0]["type"] == "http.response.start"
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")


async def test_a_stream_that_ends_is_closed_once_and_ends_the_response() -> None:
    closed: list[str] = []

    async def two() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            closed.append("closed")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await EventStreamResponse(two())({"type": "http", "asgi": {"spec_version": "2.4"}}, never, send)
    assert closed == ["closed"]
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert sent[-1]["more_body"] is False

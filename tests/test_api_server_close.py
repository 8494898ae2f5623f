"""Stopping the API server while whoever stops it is cancelled (a peer shut down twice over): the cancel is
raised, not swallowed, and the server still stops."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Receive, Scope, Send

from python_peer.api.app import ApiServer


async def test_a_close_cancelled_midway_raises_its_cancel_and_the_server_still_stops() -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        arrived.set()
        await release.wait()  # a request in flight, which a graceful stop waits for
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = ApiServer(slow_app)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            await arrived.wait()
        closing = asyncio.create_task(server.aclose())
        await asyncio.sleep(0.2)  # the close waits for the request in flight ...
        assert not closing.done()
        closing.cancel()  # ... when whoever closes the server is cancelled
        with pytest.raises(asyncio.CancelledError):
            await closing
        release.set()
        async with asyncio.timeout(10):
            await server.aclose()  # the same server stops for good
            assert (await reader.read()).startswith(b"HTTP/1.1 204")
    finally:
        writer.close()

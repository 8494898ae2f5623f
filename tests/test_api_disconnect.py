"""A client that goes away stops its generation, streamed or not (docs/api.md, "Defaults and limits").

The attack, over HTTP on a real server: a non-streamed request with a long ``max_tokens``, and the socket
closed before the answer. An OpenAI client that times out and retries does just that. The generation
used to run to its end on a generation slot, and on the client's credits, with nobody to read it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from python_peer.api.app import ApiConfig, ApiServer, create_app
from python_peer.api.types import ChatCompletionRequest, CompletionRequest
from python_peer.generate import Generation
from tests.support.api_service import RecordingService

pytestmark = pytest.mark.timeout(60)


class _EndlessJob:
    """A generation that never ends by itself; it says whether it was stopped."""

    def __init__(self, service: _EndlessService) -> None:
        self.model = "m"
        self.result = Generation(prompt_tokens=1)
        self.service = service

    async def pieces(self) -> AsyncIterator[str]:
        yield "never"

    async def run(self) -> Generation:
        self.service.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.service.stopped.set()
            raise
        return self.result


class _EndlessService(RecordingService):
    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def chat(self, request: ChatCompletionRequest) -> Any:
        return _EndlessJob(self)

    async def complete(self, request: CompletionRequest) -> Any:
        return _EndlessJob(self)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_non_streamed_generation_stops_when_its_client_goes(path: str) -> None:
    service = _EndlessService()
    body = {"model": "m", "max_tokens": 8000, "stream": False}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    data = json.dumps(body).encode()
    async with ApiServer(create_app(service, ApiConfig())) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        async with asyncio.timeout(10):
            await service.started.wait()
        await asyncio.sleep(0.3)
        assert not service.stopped.is_set(), "the generation runs while its client waits"
        writer.close()
        async with asyncio.timeout(10):
            await service.stopped.wait()

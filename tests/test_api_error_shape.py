"""Every refusal of a peer's API is in OpenAI's error shape, the 408 of a body that never arrives included.

A client written against OpenAI reads ``{"error": {"message", "type", "param", "code"}}`` from every
non-2xx answer; these are the answers an attacker or a careless client can provoke with nothing but HTTP.
The requests are refused before the node's service is reached (a service that fails the test if it is).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from python_peer.api.app import ApiConfig, ApiServer, create_app
from python_peer.api.types import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, NodeStatus
from python_peer.core.http_limits import BODY_TIMEOUT_S
from tests.support.openai_errors import ERROR_KEYS, assert_openai_error

pytestmark = pytest.mark.timeout(60)

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


class _NeverReached:
    """A ``NodeService`` that no request of this module may reach."""

    async def models(self) -> ModelList:
        return ModelList(data=[])

    async def model(self, model_id: str) -> ModelCard:
        raise AssertionError("reached the service")

    async def chat(self, request: ChatCompletionRequest) -> Any:
        raise AssertionError("reached the service")

    async def complete(self, request: CompletionRequest) -> Any:
        raise AssertionError("reached the service")

    async def status(self) -> NodeStatus:
        raise AssertionError("reached the service")

    async def balance(self) -> Any:
        raise AssertionError("reached the service")


def _app() -> Any:
    return create_app(_NeverReached(), ApiConfig(rate_per_s=1000, burst=1000))


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/nope", None, 404, "not_found"),
        ("DELETE", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("GET", "/v1/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", b"{not json", 400, None),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_value"),
        ("POST", "/v1/chat/completions", b"\xff\xfe\x00", 400, None),
        ("POST", "/v1/chat/completions", CHAT + b', "temperature": NaN}', 400, "invalid_value"),
        ("POST", "/v1/chat/completions", CHAT + b', "top_p": Infinity}', 400, "invalid_value"),
        ("POST", "/v1/chat/completions", CHAT + b', "max_tokens": 1e999}', 400, "invalid_value"),
        (
            "POST",
            "/v1/chat/completions",
            CHAT + b', "max_tokens": 100000000000000000000000}',
            400,
            "invalid_value",
        ),
        ("POST", "/v1/chat/completions", CHAT + b', "max_tokens": -1}', 400, "invalid_value"),
        ("POST", "/v1/chat/completions", CHAT + b', "n": "1"}', 400, "invalid_value"),
        ("POST", "/v1/completions", b'{"model": "m", "prompt": 5}', 400, "invalid_value"),
        ("POST", "/v1/chat/completions", b'{"model": "m", "model": "m", "messages": []}', 400, None),
        ("POST", "/v1/chat/completions", b" " * (5 * 1024 * 1024), 413, "request_too_large"),
    ],
)
async def test_refusals_are_in_openais_shape(
    method: str, path: str, body: bytes | None, status: int, code: str | None
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app()), base_url="http://127.0.0.1"
    ) as http:
        headers = {"content-type": "application/json"} if body is not None else {}
        response = await http.request(method, path, content=body, headers=headers)
        error = assert_openai_error(response, status, code)
        assert error["type"] == "invalid_request_error", error


async def test_a_body_that_never_arrives_gets_408_in_openais_shape() -> None:
    server = ApiServer(_app())
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        writer.write(f'{head}Content-Length: 100\r\n\r\n{{"model"'.encode())
        await writer.drain()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S + 5):
                answer = await reader.read()  # closed after it
        finally:
            writer.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in headers.lower()
        error = json.loads(payload)["error"]
        assert set(error) == ERROR_KEYS, error
        assert error["type"] == "invalid_request_error" and "did not arrive" in error["message"]
    finally:
        await server.aclose()

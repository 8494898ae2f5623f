"""Strict inputs, time bounds and CSP on the HTTP servers: a peer's API and a signaling node.

Bodies are validated by type as OpenAI does (400 in its error shape, no coercion, no duplicate keys);
raw sockets on 127.0.0.1 check the header, body and idle bounds of ``core/http_limits.py``; every HTML
route carries a Content-Security-Policy, FastAPI's ``/docs`` included.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from python_peer.api.app import ApiConfig, ApiServer, create_app
from python_peer.api.types import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, NodeStatus
from python_peer.core.http_limits import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, KEEP_ALIVE_S
from tests.support.openai_errors import assert_openai_error
from tests.support.procs import Node

pytestmark = pytest.mark.timeout(90)

BASE = "http://127.0.0.1"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class _Unused:
    """A ``NodeService`` that is never reached by a request refused for its body."""

    async def models(self) -> ModelList:
        return ModelList(data=[])

    async def model(self, model_id: str) -> ModelCard:
        raise NotImplementedError

    async def chat(self, request: ChatCompletionRequest) -> Any:
        raise NotImplementedError("reached the service")

    async def complete(self, request: CompletionRequest) -> Any:
        raise NotImplementedError("reached the service")

    async def status(self) -> NodeStatus:
        raise NotImplementedError

    async def balance(self) -> Any:
        raise NotImplementedError


def _client() -> httpx.AsyncClient:
    app = create_app(_Unused(), ApiConfig(rate_per_s=1000, burst=1000))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "max_tokens": "5"}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": True}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 5.0}),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}),
        ("/v1/chat/completions", {**CHAT, "stream": 1}),
        ("/v1/chat/completions", {**CHAT, "temperature": "0"}),
        ("/v1/chat/completions", {**CHAT, "temperature": False}),
        ("/v1/chat/completions", {**CHAT, "seed": "1"}),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": "true"}}),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": "5"}),
        ("/v1/completions", {"model": "m", "prompt": "hi", "stream": "yes"}),
    ],
)
async def test_wrong_types_are_400_not_coerced(path: str, body: dict[str, Any]) -> None:
    async with _client() as http:
        assert_openai_error(await http.post(path, json=body), 400)


async def test_right_types_reach_the_service() -> None:
    async with _client() as http:
        body = {**CHAT, "max_tokens": 5, "temperature": 0, "stream": False, "seed": 1}
        with pytest.raises(NotImplementedError, match="reached the service"):
            await http.post("/v1/chat/completions", json=body)


async def test_duplicate_json_keys_are_400() -> None:
    async with _client() as http:
        raw = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_tokens": 9}'
        error = assert_openai_error(
            await http.post(
                "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
            ),
            400,
        )
        assert "max_tokens" in error["message"]
        nested = '{"model": "m", "messages": [{"role": "user", "role": "system", "content": "hi"}]}'
        response = await http.post(
            "/v1/chat/completions", content=nested, headers={"content-type": "application/json"}
        )
        assert_openai_error(response, 400)


async def test_every_html_route_of_the_api_carries_a_csp() -> None:
    async with _client() as http:
        for path in ("/docs", "/redoc", "/chat", "/dashboard", "/settings"):
            response = await http.get(path)
            assert response.status_code == 200, (path, response.status_code)
            assert response.headers["content-type"].startswith("text/html"), path
            csp = response.headers.get("content-security-policy", "")
            assert "default-src 'none'" in csp or "default-src 'self'" in csp, (path, csp)


# --- raw sockets: header, body and idle bounds ---------------------------------------------------------


async def _closed_or_answered(reader: asyncio.StreamReader, bound: float) -> tuple[bytes, float]:
    """What the server sends until it closes, and how long that took; fails past ``bound``."""
    started, got = time.monotonic(), b""
    async with asyncio.timeout(bound):
        while chunk := await reader.read(4096):
            got += chunk
    return got, time.monotonic() - started


async def _slowloris(port: int, every_s: float = 2.0) -> float:
    """Send a request line, then one header line every ``every_s``; return when the server cut it off."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def drip() -> None:
        for i in range(100):
            await asyncio.sleep(every_s)
            writer.write(b"X-Slow-%d: y\r\n" % i)
            try:
                await writer.drain()
            except ConnectionError:
                return

    dripping = asyncio.create_task(drip())
    try:
        await _closed_or_answered(reader, HEADER_TIMEOUT_S + 5)
    finally:
        dripping.cancel()
        writer.close()
    return time.monotonic() - started


async def _short_body(port: int) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    writer.write(f'{head}Content-Length: 100\r\n\r\n{{"model"'.encode())
    await writer.drain()
    try:
        return await _closed_or_answered(reader, BODY_TIMEOUT_S + 5)
    finally:
        writer.close()


async def _idle(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        got, took = await _closed_or_answered(reader, KEEP_ALIVE_S + 5)
    finally:
        writer.close()
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return took


async def test_api_server_cuts_off_slow_headers_short_bodies_and_idle_connections() -> None:
    app = create_app(_Unused(), ApiConfig(rate_per_s=1000, burst=1000))
    server = ApiServer(app)
    await server.start()
    try:
        slow, (answer, short_took), idle = await asyncio.gather(
            _slowloris(server.port), _short_body(server.port), _idle(server.port)
        )
        assert slow < HEADER_TIMEOUT_S + 3
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request_error"
        assert short_took < BODY_TIMEOUT_S + 3
        assert idle < KEEP_ALIVE_S + 3
        async with httpx.AsyncClient(trust_env=False) as http:  # and it still answers others
            assert (await http.get(f"{server.url}/models")).status_code == 200
    finally:
        await server.aclose()


@pytest.fixture(scope="module")
def signal_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node("strict-http", tmp_path_factory.mktemp("strict-http"))
    try:
        node.wait()
        yield node
    finally:
        node.stop()


async def test_signaling_node_cuts_off_slow_headers_and_carries_csp(signal_node: Node) -> None:
    took = await _slowloris(signal_node.port)
    assert took < HEADER_TIMEOUT_S + 3
    async with httpx.AsyncClient(trust_env=False) as http:
        for path in ("/", "/chat"):
            response = await http.get(f"{signal_node.http}{path}")
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
            assert "default-src" in response.headers.get("content-security-policy", ""), path
        assert (await http.get(f"{signal_node.http}/docs")).status_code == 404  # not served


def test_bounds_are_stated() -> None:
    assert Path(__file__).exists() and HEADER_TIMEOUT_S <= 10 and BODY_TIMEOUT_S <= 10 and KEEP_ALIVE_S <= 5

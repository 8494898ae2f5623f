"""Bodies a bad (or merely unusual) client can send a peer's API.

- An object naming many keys, one of them twice, is refused in time linear in its size: the duplicate
  check runs in the node's event loop, where a quadratic one froze the whole peer (about 20 s for a
  400 KiB body, hours for one of 4 MiB), and its message names a bounded number of keys.
- JSON nested deeper than the parser recurses is a 400 in OpenAI's shape, not a 500 with a traceback.
- ``null`` for ``temperature``, ``top_p``, ``n``, ``stream`` (and ``echo``), which OpenAI takes and its
  own Python client sends for ``None``, is the field's default, not a 400.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from python_peer.api.app import ApiConfig, create_app
from python_peer.api.types import CompletionRequest
from tests.support.api_service import RecordingService
from tests.support.openai_errors import assert_openai_error

pytestmark = pytest.mark.timeout(120)

BASE = "http://127.0.0.1"
JSON = {"content-type": "application/json"}
CHAT = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


def _client(service: RecordingService) -> httpx.AsyncClient:
    app = create_app(service, ApiConfig(rate_per_s=1000, burst=1000))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


async def test_many_keys_with_a_duplicate_are_refused_in_linear_time() -> None:
    service = RecordingService()
    many = ", ".join(f'"k{i}": 0' for i in range(40_000))
    async with _client(service) as http:
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", content=f'{CHAT}, {many}, "k7": 1}}', headers=JSON)
        took = time.monotonic() - started
        error = assert_openai_error(response, 400)
        assert "'k7'" in error["message"], error
        assert took < 3.0, f"a 400 KiB body held the event loop for {took:.1f} s"

        twice = f"{CHAT}, {many}, {many}}}"  # 40,000 keys named twice: the message names a few
        response = await http.post("/v1/chat/completions", content=twice, headers=JSON)
        error = assert_openai_error(response, 400)
        assert len(error["message"]) < 500, error["message"][:200]
    assert service.requests == []


@pytest.mark.parametrize("depth", [5_000, 200_000])
async def test_json_nested_too_deep_is_400_not_500(depth: int) -> None:
    service = RecordingService()
    deep = "[" * depth + "]" * depth
    async with _client(service) as http:
        for body in (f'{CHAT}, "extra": {deep}}}', f'{{"model": "m", "messages": {deep}}}'):
            response = await http.post("/v1/chat/completions", content=body, headers=JSON)
            assert_openai_error(response, 400)
    assert service.requests == []


async def test_null_optional_fields_take_their_defaults() -> None:
    service = RecordingService()
    nulls = '"temperature": null, "top_p": null, "n": null, "stream": null'
    async with _client(service) as http:
        response = await http.post("/v1/chat/completions", content=f"{CHAT}, {nulls}}}", headers=JSON)
        assert_openai_error(response, 404, "model_not_found")
        plain = f'{{"model": "m", "prompt": "hi", "echo": null, {nulls}}}'
        response = await http.post("/v1/completions", content=plain, headers=JSON)
        assert_openai_error(response, 404, "model_not_found")
        async with openai.AsyncOpenAI(
            base_url=f"{BASE}/v1", api_key="x", max_retries=0, http_client=_client(service)
        ) as client:
            with pytest.raises(openai.NotFoundError):  # the official client sends None as null
                await client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "hi"}],
                    temperature=None,
                    top_p=None,
                    n=None,
                    stream=None,
                )
        for wrong in ('"n": 2', '"stream": "yes"', '"temperature": "1"'):  # still strict otherwise
            response = await http.post("/v1/chat/completions", content=f"{CHAT}, {wrong}}}", headers=JSON)
            assert_openai_error(response, 400)
    assert len(service.requests) == 3
    for request in service.requests:
        assert (request.temperature, request.top_p, request.n, request.stream) == (1.0, 1.0, 1, False)
    assert isinstance(service.requests[1], CompletionRequest) and service.requests[1].echo is False


async def test_a_message_of_text_parts_is_bounded_as_a_message_of_text() -> None:
    service = RecordingService()
    part = {"type": "text", "text": "a" * 60_000}
    async with _client(service) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": [part, part]}]}
        error = assert_openai_error(await http.post("/v1/chat/completions", json=body), 400, "invalid_value")
        assert error["param"] == "messages.0", error
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": [part]}, {"role": "user", "content": [part]}],
        }
        assert_openai_error(await http.post("/v1/chat/completions", json=body), 404, "model_not_found")
    assert len(service.requests) == 1

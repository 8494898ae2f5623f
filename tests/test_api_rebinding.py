"""DNS rebinding and cross-site pages against a node without an API key (docs/api.md, "Defaults and limits").

A page of ``http://attacker.example:8000`` whose name the attacker re-resolves to 127.0.0.1 calls this
node's API as its own origin: no CORS preflight stops it, and it reads the answers. Without an API key it
would generate on this node's compute and balance and read its status, receipts and replies. So a keyless
node answers only requests that name it by an address or ``localhost`` (``Host``), and a browser's POST
only from a page of one (``Origin``; ``null``, which a page gets by asking for no referrer, is refused):
403 ``forbidden_host``. Clients that send no Origin (an OpenAI client, curl), this node's own pages, and
any request to a node with an API key are unaffected.
"""

from __future__ import annotations

import httpx
import pytest

from python_peer.api.app import ApiConfig, create_app
from tests.support.api_service import RecordingService
from tests.support.openai_errors import assert_openai_error

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PLAIN = {"model": "m", "prompt": "hi"}
REBOUND = "attacker.example:8000"


def _client(service: RecordingService, api_key: str | None = None) -> httpx.AsyncClient:
    app = create_app(service, ApiConfig(api_key=api_key, rate_per_s=1000, burst=1000))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000")


@pytest.mark.parametrize("path", ["/v1/models", "/v1/node/status", "/v1/tokens/balance", "/v1/mesh", "/chat"])
async def test_a_rebound_page_reads_nothing_of_a_keyless_node(path: str) -> None:
    async with _client(RecordingService()) as http:
        response = await http.get(path, headers={"host": REBOUND})
        error = assert_openai_error(response, 403, "forbidden_host")
        assert error["type"] == "permission_error", error


@pytest.mark.parametrize("origin", [f"http://{REBOUND}", None])
async def test_a_rebound_page_cannot_generate_on_a_keyless_node(origin: str | None) -> None:
    service = RecordingService()
    headers = {"host": REBOUND} | ({"origin": origin} if origin else {})
    async with _client(service) as http:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", PLAIN)):
            for stream in (False, True):
                response = await http.post(path, json={**body, "stream": stream}, headers=headers)
                assert_openai_error(response, 403, "forbidden_host")
    assert service.requests == []


@pytest.mark.parametrize(
    "origin", ["http://attacker.example:8000", "null", "http://127.0.0.1.nip.io:8000", "http://[oops"]
)
async def test_a_page_of_another_origin_cannot_post_to_a_keyless_node(origin: str) -> None:
    """The node's address in Host, another page's origin: a cross-site POST, refused before it runs."""
    service = RecordingService()
    async with _client(service) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers={"origin": origin})
        assert_openai_error(response, 403, "forbidden_host")
    assert service.requests == []


async def test_own_pages_clients_without_origin_and_keyed_nodes_are_answered() -> None:
    service = RecordingService()
    async with _client(service) as http:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
            assert (await http.get("/v1/models", headers={"host": host})).status_code == 200
        for origin in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", None):
            headers = {"origin": origin} if origin else {}
            response = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert_openai_error(response, 404, "model_not_found")  # reached the service
    async with _client(service, api_key="k") as http:  # with a key, the key decides, whatever the names
        headers = {"host": REBOUND, "origin": "https://app.example", "authorization": "Bearer k"}
        assert (await http.get("/v1/models", headers=headers)).status_code == 200
        assert_openai_error(await http.post("/v1/completions", json=PLAIN, headers=headers), 404)
    assert len(service.requests) == 5

"""The pages' server side, called without sockets (httpx's ASGI transport): templates, static files,
the settings endpoint's validation and effects, and the shape of the live snapshots.

A signaling node runs as a process; the serving peer runs in the test's own loop (so the test can look
at its span server), with the API's app over a real ``MeshNodeService`` on the peer's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from python_peer.api.app import ApiConfig, create_app
from python_peer.api.control import NodeControl, shard_runs
from python_peer.api.ledger import ApiLedger
from python_peer.api.page_types import Earnings, MeshSnapshot, NodeSnapshot, SettingsView
from python_peer.api.service import MeshNodeService
from python_peer.api.types import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, NodeStatus
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType
from python_peer.node import NodeConfig, Peer, PeerConfig
from tests.support.procs import Node

pytestmark = pytest.mark.timeout(120)

ERROR_KEYS = {"message", "type", "param", "code"}
BASE = "http://127.0.0.1:8000"  # an address, as the settings endpoint wants without an API key


@pytest.fixture(scope="module")
def signal_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node("pages-signal", tmp_path_factory.mktemp("pages-signal"))
    try:
        node.wait()
        yield node
    finally:
        node.stop()


@dataclass
class Served:
    http: httpx.AsyncClient
    peer: Peer
    service: MeshNodeService
    control: NodeControl


@contextlib.asynccontextmanager
async def serving(node: Node, model: Path, span: str = "0-1") -> AsyncIterator[Served]:
    """A peer serving ``span`` in this loop, and the API's app (pages included) over its node."""
    config = PeerConfig(
        node=NodeConfig(signal_urls=(node.url,)),
        model_dir=model,
        span=Span.parse(span),
        status_interval_s=0.5,
    )
    peer = await Peer.create(config)
    service = None
    try:
        ledger = ApiLedger(peer.node.ledger) if peer.node.ledger is not None else None
        service = await MeshNodeService.create(peer.node, [model], peer=peer, ledger=ledger)
        app = create_app(service, ApiConfig(rate_per_s=1000, burst=1000))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
            yield Served(http, peer, service, NodeControl(peer))
    finally:
        if service is not None:
            await service.aclose()
        await peer.aclose()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


def announced(node: Node, peer_id: str) -> list[dict[str, Any]] | None:
    """The spans signaling holds for ``peer_id`` (None: not in its directory)."""
    for entry in node.directory()["entries"]:
        if entry["peer_id"] == peer_id:
            return list(entry["serves"])
    return None


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(check):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- without a mesh node --------------------------------------------------------------------------


class _Unused:
    """A ``NodeService`` that is not a mesh node: the pages render, the node's endpoints say why not."""

    async def models(self) -> ModelList:
        return ModelList(data=[])

    async def model(self, model_id: str) -> ModelCard:
        raise NotImplementedError

    async def chat(self, request: ChatCompletionRequest) -> Any:
        raise NotImplementedError

    async def complete(self, request: CompletionRequest) -> Any:
        raise NotImplementedError

    async def status(self) -> NodeStatus:
        raise NotImplementedError

    async def balance(self) -> Any:
        raise NotImplementedError


async def test_pages_and_static_files_are_served() -> None:
    app = create_app(_Unused(), ApiConfig(rate_per_s=1000, burst=1000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        root = await http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/chat"
        for name in ("chat", "dashboard", "settings"):
            page = await http.get(f"/{name}")
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
            assert f'src="/static/src/ui/{name}.js"' in page.text
            config = page.text.split('id="ai4all-config">', 1)[1].split("</script>", 1)[0]
            assert json.loads(config)["page"] == name
        for path, kind in (
            ("/static/src/ui/chat.js", "text/javascript"),
            ("/static/src/ui/api.js", "text/javascript"),
            ("/static/src/ui/style.css", "text/css"),
            ("/static/src/protocol/wire.js", "text/javascript"),
        ):
            response = await http.get(path)
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
            assert response.headers["x-content-type-options"] == "nosniff"
        for path in (
            "/static/templates/base.html",
            "/static/src/ui/nothing.js",
            "/static/src/%2e%2e/%2e%2e/pyproject.toml",
            "/static/%2e%2e/pyproject.toml",
            "/static/src//ui/chat.js",
            "/static/node_modules/.package-lock.json",
        ):
            assert_error(await http.get(path), 404, "not_found")
        # No mesh node behind this API: the node's endpoints say so, in OpenAI's error shape.
        for path in ("/v1/node/events", "/v1/mesh", "/v1/node/earnings", "/v1/node/settings"):
            assert_error(await http.get(path), 409, "not_serving")
        assert_error(await http.post("/v1/node/settings", json={"serving": False}), 409, "not_serving")


# --- a serving peer ---------------------------------------------------------------------------------


async def test_settings_are_validated(signal_node: Node, tiny_llama_export: Path) -> None:
    async with serving(signal_node, tiny_llama_export) as s:
        current = SettingsView.model_validate((await s.http.get("/v1/node/settings")).json())
        assert (current.serving, current.span, current.memory_budget_mb) == (True, "0-1", 512.0)
        assert current.spans == ["0-1", "1-3", "3-4", "0-3", "1-4", "0-4"]

        async def bad(body: Any, param: str | None, *, status: int = 400, **kwargs: Any) -> str:
            response = await s.http.post("/v1/node/settings", json=body, **kwargs)
            error = assert_error(response, status)
            if param is not None:
                assert error["param"] == param, error
            return str(error["message"])

        assert "choose one of: 0-1, 1-3, 3-4, 0-3, 1-4, 0-4" in await bad({"span": "0-2"}, "span")
        assert "is not of the form START-END" in await bad({"span": "zero-two"}, "span")
        assert "empty or negative" in await bad({"span": "3-1"}, "span")
        assert "not a run" in await bad({"span": "0-9"}, "span")
        await bad({"memory_budget_mb": 0}, "memory_budget_mb")
        await bad({"memory_budget_mb": -5}, "memory_budget_mb")
        await bad({"memory_budget_mb": 1e12}, "memory_budget_mb")
        await bad({"memory_budget_mb": "512"}, "memory_budget_mb")
        assert "MiB in [1, " in await bad({"memory_budget_mb": 0.5}, "memory_budget_mb")
        await bad({"serving": "no"}, "serving")
        await bad({"serving": 0}, "serving")
        await bad({"paused": True}, "paused")
        await bad({}, None)
        await bad([1, 2], None)
        # JSON only: what a cross-site form or a no-preflight fetch could send is refused.
        await bad(None, None, content=b'{"serving": false}', headers={"content-type": "text/plain"})
        await bad(None, None, content=b'{"serving": false}')
        patch = {"content-type": "application/merge-patch+json"}
        await bad(None, None, status=415, content=b'{"serving": false}', headers=patch)
        rebound = {"host": "attacker.example:8000"}
        assert "host name" in await bad({"serving": False}, None, status=403, headers=rebound)
        # Nothing of the refused requests was applied.
        assert s.control.settings().serving and s.peer.server.span == Span(0, 1)
        assert s.peer.server.config.memory_budget_bytes == 512 * 2**20

        free = s.peer.server.kv_free_tokens
        changed = await s.http.post("/v1/node/settings", json={"memory_budget_mb": 256, "span": "0-1"})
        view = SettingsView.model_validate(changed.json())
        assert view.changed == ["memory_budget_mb"] and view.memory_budget_mb == 256
        assert (
            s.peer.server.config.memory_budget_bytes == 256 * 2**20
            and s.peer.server.kv_free_tokens == free // 2
        )
        again = await s.http.post("/v1/node/settings", json={"memory_budget_mb": 256})
        assert again.json()["changed"] == []


def _open(session: bytes, start: int, end: int, model: str) -> Frame:
    meta = {"model": model, "start": start, "end": end, "batch": 1, "max_length": 8}
    return Frame(FrameType.OPEN, session, 0, meta=meta)


async def test_pause_resume_and_a_new_span(signal_node: Node, tiny_llama_export: Path) -> None:
    model = load_manifest(tiny_llama_export).name
    async with serving(signal_node, tiny_llama_export) as s:
        me = s.peer.node.peer_id
        await until(lambda: announced(signal_node, me) == [{"model": model, "start": 0, "end": 1}])
        held = await s.control.handle("client-a", _open(b"a" * 16, 0, 1, model))
        assert held.type is FrameType.RESULT

        paused = await s.http.post("/v1/node/settings", json={"serving": False})
        assert paused.status_code == 200 and paused.json()["changed"] == ["serving"]
        assert paused.json()["state"] == "paused"
        await until(lambda: announced(signal_node, me) == [])
        refused = await s.control.handle("client-b", _open(b"b" * 16, 0, 1, model))
        assert refused.type is FrameType.ERROR and refused.meta["code"] == ErrorCode.SESSION_REFUSED
        assert "paused" in refused.meta["message"]
        assert s.control.open_sessions == 1, "the session opened before the pause goes on"
        card = (await s.http.get(f"/v1/models/{model}")).json()
        assert card["coverage"]["covered_blocks"] == 0

        resumed = await s.http.post("/v1/node/settings", json={"serving": True})
        assert resumed.json()["changed"] == ["serving"]
        await until(lambda: announced(signal_node, me) == [{"model": model, "start": 0, "end": 1}])

        old = s.peer.server
        moved = await s.http.post("/v1/node/settings", json={"span": "0-3"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["span"] == "0-3" and moved.json()["changed"] == ["span"]
        assert s.peer.server is not old and s.peer.span == Span(0, 3) and s.peer.server.ledger is old.ledger
        await until(lambda: announced(signal_node, me) == [{"model": model, "start": 0, "end": 3}])
        # The session opened on the old span is still answered by the old server, until it closes.
        assert s.control.open_sessions == 1 and len(old.sessions) == 1
        closed = await s.control.handle("client-a", Frame(FrameType.CLOSE, b"a" * 16, 1))
        assert closed.type is FrameType.RESULT and not old.sessions
        stale = await s.control.handle("client-c", _open(b"c" * 16, 0, 1, model))
        assert stale.type is FrameType.ERROR and "not" in stale.meta["message"]
        fresh = await s.control.handle("client-c", _open(b"d" * 16, 0, 3, model))
        assert fresh.type is FrameType.RESULT and len(s.peer.server.sessions) == 1

        status = (await s.http.get("/v1/node/status")).json()
        assert status["serving"][0]["start"] == 0 and status["serving"][0]["end"] == 3


async def test_live_snapshots_have_their_shape(signal_node: Node, tiny_llama_export: Path) -> None:
    model = load_manifest(tiny_llama_export).name
    async with serving(signal_node, tiny_llama_export, span="1-3") as s:
        me = s.peer.node.peer_id
        await until(lambda: announced(signal_node, me) is not None)
        response = await s.http.get("/v1/node/events", params={"limit": 2})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in response.text.split("\n\n") if b.strip()]
        assert blocks[0] == "retry: 3000"
        events = [b.split("\n", 1) for b in blocks[1:]]
        assert len(events) == 2 and all(e[0] == "event: snapshot" for e in events)
        snapshots = [NodeSnapshot.model_validate_json(e[1].removeprefix("data: ")) for e in events]
        assert snapshots[1].at >= snapshots[0].at
        snap = snapshots[-1]
        assert snap.node.peer_id == me and snap.node.state == "serving" and snap.node.span == "1-3"
        assert snap.node.model == model and snap.node.blocks == 4
        assert snap.node.kv is not None and snap.node.kv.budget_bytes == 512 * 2**20
        assert snap.node.kv.free_tokens > 0 and snap.node.tokens_served >= 0
        assert snap.balance is not None and snap.balance.granted > 0
        assert (
            snap.balance.balance
            == snap.balance.granted + snap.balance.earned + snap.balance.bonuses - snap.balance.spent
        )
        [coverage] = snap.mesh.models
        assert coverage.model == model and coverage.per_block == [0, 1, 1, 0]
        assert (coverage.covered_blocks, coverage.servable, coverage.health) == (2, False, "broken")
        [peer] = [p for p in snap.mesh.peers if p.peer_id == me]
        assert peer.is_self and [(sp.start, sp.end) for sp in peer.serves] == [(1, 3)]
        assert peer.signaling == [signal_node.url] and peer.throughput > 0
        [sig] = snap.mesh.signaling
        assert sig.url == signal_node.url and sig.connected and sig.healthy and sig.node_id == "pages-signal"

        mesh = MeshSnapshot.model_validate((await s.http.get("/v1/mesh")).json())
        assert [m.per_block for m in mesh.models] == [[0, 1, 1, 0]]
        earnings = Earnings.model_validate((await s.http.get("/v1/node/earnings")).json())
        assert earnings.peer_id == me and earnings.points == [] and earnings.earned == 0
        assert earnings.since <= earnings.now
        assert_error(await s.http.get("/v1/node/events", params={"limit": 0}), 400)


async def test_a_node_that_serves_nothing_shows_the_mesh_but_has_no_settings(
    signal_node: Node, tiny_llama_export: Path
) -> None:
    service = await MeshNodeService.open(NodeConfig(signal_urls=(signal_node.url,)), [tiny_llama_export])
    try:
        app = create_app(service, ApiConfig(rate_per_s=1000, burst=1000))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
            response = await http.get("/v1/node/events", params={"limit": 1})
            snap = NodeSnapshot.model_validate_json(response.text.split("data: ", 1)[1])
            assert snap.node.state == "client" and snap.node.span is None and snap.node.kv is None
            assert [p.is_self for p in snap.mesh.peers] == [True] and snap.mesh.peers[0].serves == []
            error = assert_error(await http.get("/v1/node/settings"), 409, "not_serving")
            assert "ai4all peer" in error["message"]
            assert_error(await http.post("/v1/node/settings", json={"serving": True}), 409, "not_serving")
            page = await http.get("/settings")
            assert page.status_code == 200 and "This node serves no blocks" in page.text
    finally:
        await service.aclose()


def test_shard_runs_are_the_loadable_spans(tiny_llama_export: Path) -> None:
    runs = shard_runs(load_manifest(tiny_llama_export))
    assert [str(r) for r in runs] == ["0-1", "1-3", "3-4", "0-3", "1-4", "0-4"]

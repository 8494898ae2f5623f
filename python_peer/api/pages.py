"""The pages of a native node (chat, dashboard, settings) and the live JSON they read, on the API's server.

Pages are jinja2 templates from ``web/templates/`` with the node's configuration injected as JSON; their
scripts are the plain ES modules of ``web/src/ui/``, served from ``web/`` at ``/static/`` (no build step).
The live endpoints:

- ``GET /v1/node/events``  server-sent events, one ``snapshot`` a second: this node (span, serving,
                           KV room, tokens served, sessions), its balance, and the mesh as signaling
                           lookups show it (peers, their spans, coverage and health per model).
- ``GET /v1/mesh``         that mesh snapshot alone, with the signaling nodes' health.
- ``GET /v1/node/earnings`` this node's cumulative earnings over time, from its receipts.
- ``GET|POST /v1/node/settings``  serving on or off, the KV budget, the span (``control.NodeControl``).

Snapshots are computed at most once a second whatever the number of open pages, so a page costs the
node one signaling lookup per model per second at most, and the ledger's report is cached by the store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from python_peer.core.economics import UNITS_PER_CREDIT, earnings
from python_peer.core.errors import AI4AllError
from python_peer.core.ledger import ReceiptBody
from python_peer.ledger_service import LedgerService
from signaling.web import mime_type, resolve_file

from .control import MAX_BUDGET_MB, MIB, NodeControl, NotServingError, ServingState
from .service import MeshNodeService, NodeService
from .translate import ApiError, InvalidRequestError, NotFoundError, RateLimitedError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
SNAPSHOT_TTL_S = 0.9  # one snapshot serves every page open in this second
SIGNALING_TTL_S = 5.0  # signaling nodes' /healthz is read at most this often
LOOKUP_TIMEOUT_S = 2.0
EVENT_INTERVAL_S = 1.0
MAX_EVENT_STREAMS = 32
EARNINGS_WINDOW = 2000  # own ledger entries read for the earnings plot
# Pages and their files come from this origin only; cross-origin isolation for the browser node's WASM.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC_HEADERS = {
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
PAGES = {"chat": "Chat", "dashboard": "Dashboard", "settings": "Contribution settings"}


# --- wire types -------------------------------------------------------------------------------------


class SettingsRequest(BaseModel):
    """``POST /v1/node/settings``: any of the three; what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    serving: StrictBool | None = None
    memory_budget_mb: (
        Annotated[float, Field(gt=0, le=MAX_BUDGET_MB, allow_inf_nan=False, strict=True)] | None
    ) = None
    span: Annotated[str, Field(min_length=1, max_length=32)] | None = None


class SettingsView(BaseModel):
    serving: bool
    state: Literal["serving", "paused"]
    model: str
    span: str
    memory_budget_mb: float
    kv_free_tokens: int
    spans: list[str]  # the spans this peer may serve
    changed: list[str] = []


class KvRoom(BaseModel):
    budget_bytes: int
    reserved_bytes: int
    bytes_per_token: int
    free_tokens: int


class NodeState(BaseModel):
    peer_id: str
    state: Literal["serving", "paused", "client"]  # client: the API runs on a node that serves nothing
    model: str | None
    span: str | None
    blocks: int | None
    tokens_served: int
    open_sessions: int
    api_running: int
    kv: KvRoom | None
    uptime_s: float


class BalanceView(BaseModel):
    """In ledger units (1000 units = 1 credit)."""

    balance: int
    granted: int
    earned: int
    bonuses: int
    spent: int


class SpanView(BaseModel):
    model: str
    start: int
    end: int


class PeerView(BaseModel):
    peer_id: str
    kind: str
    serves: list[SpanView]
    throughput: float  # block-tokens per second, as the peer measured and announced it
    kv_free_tokens: int
    signaling: list[str]  # the signaling node it announced through
    is_self: bool


class ModelCoverage(BaseModel):
    model: str
    blocks: int
    covered_blocks: int
    servable: bool
    per_block: list[int]  # peers serving each block
    health: Literal["healthy", "fragile", "broken"]  # every block by 2+ peers / by 1+ / some by none


class SignalingNodeView(BaseModel):
    url: str
    node_id: str | None
    connected: bool  # this node's signaling connection is to it
    healthy: bool | None  # its /healthz answered; None: not asked yet
    peers: int | None
    siblings: list[str]


class MeshSnapshot(BaseModel):
    at: float
    signaling: list[SignalingNodeView]
    peers: list[PeerView]
    models: list[ModelCoverage]
    error: str | None = None


class NodeSnapshot(BaseModel):
    """One event of ``GET /v1/node/events``."""

    at: float
    node: NodeState
    balance: BalanceView | None
    balance_error: str | None = None
    mesh: MeshSnapshot


class EarningsPoint(BaseModel):
    t: float  # seconds since the Unix epoch
    earned: int  # cumulative units earned by then


class Earnings(BaseModel):
    peer_id: str
    units_per_credit: int = UNITS_PER_CREDIT
    since: float
    now: float
    earned: int  # the base rate for block-tokens served, as the points sum it
    bonuses: int  # rarity and uptime bonuses, not itemised over time
    points: list[EarningsPoint]


class UnsupportedMediaTypeError(ApiError):
    status = 415
    code = "unsupported_media_type"


class ForbiddenHostError(ApiError):
    status = 403
    type = "permission_error"
    code = "forbidden_host"


# --- the node as the pages see it ---------------------------------------------------------------------


class _Cached:
    """One value recomputed at most every ``ttl`` seconds, shared by concurrent readers."""

    def __init__(self, ttl: float, compute: Callable[[], Awaitable[Any]]) -> None:
        self.ttl, self.compute = ttl, compute
        self._value: Any = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl:
                self._value = await self.compute()
                self._at = time.monotonic()
            return self._value


class NodeView:
    """What the pages read: the node, its balance, the mesh, its earnings; cached for cheap polling."""

    def __init__(self, service: MeshNodeService, control: NodeControl | None) -> None:
        self.service = service
        self.control = control
        self._snapshot = _Cached(SNAPSHOT_TTL_S, self._compute_snapshot)
        self._mesh = _Cached(SNAPSHOT_TTL_S, self._compute_mesh)
        self._signaling = _Cached(SIGNALING_TTL_S, self._compute_signaling)
        self.streams = 0

    async def snapshot(self) -> NodeSnapshot:
        result: NodeSnapshot = await self._snapshot.get()
        return result

    async def mesh(self) -> MeshSnapshot:
        result: MeshSnapshot = await self._mesh.get()
        return result

    def node_state(self) -> NodeState:
        service, peer, control = self.service, self.service.peer, self.control
        state = NodeState(
            peer_id=service.node.peer_id,
            state="client",
            model=None,
            span=None,
            blocks=None,
            tokens_served=0,
            open_sessions=0,
            api_running=service.counters.running,
            kv=None,
            uptime_s=round(time.time() - (peer.started if peer else service.started), 3),
        )
        if peer is None or control is None:
            return state
        server = peer.server
        return state.model_copy(
            update={
                "state": control.state.value,
                "model": peer.manifest.name,
                "span": str(server.span),
                "blocks": peer.manifest.num_layers,
                "tokens_served": control.tokens_served,
                "open_sessions": control.open_sessions,
                "kv": KvRoom(
                    budget_bytes=server.config.memory_budget_bytes,
                    reserved_bytes=server.reserved_bytes,
                    bytes_per_token=server.bytes_per_token,
                    free_tokens=server.kv_free_tokens,
                ),
            }
        )

    async def _compute_snapshot(self) -> NodeSnapshot:
        balance, balance_error = None, None
        try:
            b = await self.service.balance()
            balance = BalanceView(
                balance=b.balance, granted=b.granted, earned=b.earned, bonuses=b.bonuses, spent=b.spent
            )
        except AI4AllError as exc:
            balance_error = str(exc)
        return NodeSnapshot(
            at=time.time(),
            node=self.node_state(),
            balance=balance,
            balance_error=balance_error,
            mesh=await self.mesh(),
        )

    async def _compute_mesh(self) -> MeshSnapshot:
        node = self.service.node
        peers: dict[str, PeerView] = {}
        models: list[ModelCoverage] = []
        errors: list[str] = []
        for model in self.service.models_by_name.values():
            blocks = model.manifest.num_layers
            try:
                found = await asyncio.wait_for(
                    node.signal.lookup(model.name, 0, blocks, limit=self.service.config.lookup_limit),
                    LOOKUP_TIMEOUT_S,
                )
            except (AI4AllError, TimeoutError) as exc:
                errors.append(f"lookup of {model.name} failed: {exc or 'timed out'}")
                found = []
            per_block = [0] * blocks
            for ann in found:
                peers.setdefault(
                    ann.peer_id,
                    PeerView(
                        peer_id=ann.peer_id,
                        kind=ann.kind,
                        serves=[SpanView(model=s.model, start=s.start, end=s.end) for s in ann.serves],
                        throughput=ann.throughput_milli / 1000,
                        kv_free_tokens=ann.kv_free_tokens,
                        signaling=list(ann.signaling),
                        is_self=ann.peer_id == node.peer_id,
                    ),
                )
                for served in ann.serves:
                    if served.model == model.name:
                        for block in range(max(0, served.start), min(blocks, served.end)):
                            per_block[block] += 1
            least = min(per_block, default=0)
            models.append(
                ModelCoverage(
                    model=model.name,
                    blocks=blocks,
                    covered_blocks=sum(1 for n in per_block if n),
                    servable=least > 0,
                    per_block=per_block,
                    health="healthy" if least >= 2 else "fragile" if least == 1 else "broken",
                )
            )
        if node.peer_id not in peers:  # this node, paused or only a client: not announced as serving
            connected = node.signal.url
            peers[node.peer_id] = PeerView(
                peer_id=node.peer_id,
                kind="native",
                serves=[],
                throughput=0.0,
                kv_free_tokens=0,
                signaling=[connected] if connected else [],
                is_self=True,
            )
        ordered = sorted(
            peers.values(), key=lambda p: (min((s.start for s in p.serves), default=-1), p.peer_id)
        )
        return MeshSnapshot(
            at=time.time(),
            signaling=await self._signaling.get(),
            peers=ordered,
            models=models,
            error="; ".join(errors) or None,
        )

    async def _compute_signaling(self) -> list[SignalingNodeView]:
        signal = self.service.node.signal
        urls, connected = list(signal.urls), signal.url
        healths = await asyncio.gather(*(asyncio.to_thread(_health, url) for url in urls))
        views: dict[str, SignalingNodeView] = {}
        for url, health in zip(urls, healths, strict=True):
            siblings = [s["url"] for s in (health or {}).get("siblings", []) if isinstance(s.get("url"), str)]
            node_id = (health or {}).get("node_id")
            peers = (health or {}).get("peers")
            views[url] = SignalingNodeView(
                url=url,
                node_id=node_id if isinstance(node_id, str) else None,
                connected=url == connected,
                healthy=health is not None,
                peers=peers if isinstance(peers, int) else None,
                siblings=siblings,
            )
        for view in list(views.values()):
            for sibling in view.siblings:
                views.setdefault(
                    sibling,
                    SignalingNodeView(
                        url=sibling, node_id=None, connected=False, healthy=None, peers=None, siblings=[]
                    ),
                )
        return list(views.values())

    async def earnings(self) -> Earnings:
        ledger = self.service.node.ledger
        since = self.service.peer.started if self.service.peer else self.service.started
        if ledger is None:
            return Earnings(
                peer_id=self.service.node.peer_id,
                since=since,
                now=time.time(),
                earned=0,
                bonuses=0,
                points=[],
            )
        return await asyncio.to_thread(_earnings, ledger, since)


def _health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """A signaling node's ``/healthz`` (``ws://H:P`` -> ``http://H:P/healthz``), or None if it does not answer."""
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    handlers = [urllib.request.ProxyHandler({})] if _is_local(parts.hostname or "") else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{scheme}://{parts.netloc}/healthz", timeout=timeout) as response:
            body = json.loads(response.read(256 * 1024))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _earnings(ledger: LedgerService, since: float) -> Earnings:
    """Cumulative base earnings at each receipt this node served, from the latest entries of its log."""
    store, me = ledger.store, ledger.peer_id
    head = store.head(me)
    entries = store.entries_from(me, max(1, head.seq - EARNINGS_WINDOW + 1), EARNINGS_WINDOW) if head else []
    steps: list[tuple[float, int]] = []
    for entry in entries:
        body = entry.body
        if isinstance(body, ReceiptBody) and body.receipt.server == me:
            r = body.receipt
            steps.append((r.time / 1000, earnings(r.blocks, r.tokens, store.rules)))
    account = store.report().accounts.get(me)
    earned = account.earned if account else 0
    window = sum(amount for _, amount in steps)
    total = max(0, earned - window) if head is not None and head.seq > EARNINGS_WINDOW else 0
    points = []
    for t, amount in sorted(steps):
        total += amount
        points.append(EarningsPoint(t=t, earned=total))
    return Earnings(
        peer_id=me,
        since=min([since, *(p.t for p in points)]),
        now=time.time(),
        earned=total,
        bonuses=(account.rarity_bonus + account.uptime_bonus) if account else 0,
        points=points,
    )


# --- the router -------------------------------------------------------------------------------------


def create_pages(service: NodeService, *, api_key: str | None = None, web_dir: Path = WEB_DIR) -> APIRouter:
    """The pages, their static files and their live endpoints, for ``create_app`` to include."""
    router = APIRouter()
    mesh_service = service if isinstance(service, MeshNodeService) else None
    control = (
        NodeControl(mesh_service.peer) if mesh_service is not None and mesh_service.peer is not None else None
    )
    view = NodeView(mesh_service, control) if mesh_service is not None else None
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(web_dir / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )

    def need_view() -> NodeView:
        if view is None:
            raise NotServingError("this API runs without a mesh node, so it has no node or mesh to show")
        return view

    def need_control() -> NodeControl:
        if control is None:
            raise NotServingError(
                "this node serves no span (it only asks the mesh): start it with `ai4all peer` to contribute"
            )
        return control

    def page(name: str) -> Response:
        try:
            html = templates.get_template(f"{name}.html").render(
                page=name, title=PAGES[name], config=_page_config(name, mesh_service, control)
            )
        except jinja2.TemplateNotFound as exc:
            raise NotFoundError(f"the page template {exc.name} is not in {web_dir / 'templates'}") from exc
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/chat", status_code=307)

    @router.get("/chat", include_in_schema=False)
    async def chat_page() -> Response:
        return page("chat")

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return page("dashboard")

    @router.get("/settings", include_in_schema=False)
    async def settings_page() -> Response:
        return page("settings")

    @router.get("/static/{path:path}", include_in_schema=False)
    async def static(path: str) -> Response:
        file = _static_file(web_dir, path)
        if file is None:
            raise NotFoundError(f"no file /static/{path} (files come from {web_dir}, templates excepted)")
        return FileResponse(file, media_type=mime_type(file), headers=STATIC_HEADERS)

    @router.get("/v1/node/events", response_model=None)
    async def events(limit: Annotated[int | None, Query(ge=1, le=86400)] = None) -> StreamingResponse:
        """Server-sent events: a ``snapshot`` (``NodeSnapshot``) now and every second; ``limit`` ends
        the stream after that many."""
        node_view = need_view()
        if node_view.streams >= MAX_EVENT_STREAMS:
            raise RateLimitedError(
                f"{node_view.streams} event streams are open on this node; close a page", retry_after=5.0
            )
        return StreamingResponse(
            _event_stream(node_view, limit),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/v1/mesh")
    async def mesh() -> MeshSnapshot:
        return await need_view().mesh()

    @router.get("/v1/node/earnings")
    async def node_earnings() -> Earnings:
        return await need_view().earnings()

    @router.get("/v1/node/settings")
    async def get_settings() -> SettingsView:
        return _settings_view(need_control(), [])

    @router.post("/v1/node/settings")
    async def post_settings(request: Request, change: SettingsRequest) -> SettingsView:
        _check_origin(request, api_key)
        node_control = need_control()
        if change.serving is None and change.memory_budget_mb is None and change.span is None:
            raise InvalidRequestError("give at least one of serving, memory_budget_mb and span")
        changed = await node_control.apply(
            serving=change.serving, memory_budget_mb=change.memory_budget_mb, span=change.span
        )
        return _settings_view(node_control, changed)

    return router


async def _event_stream(view: NodeView, limit: int | None) -> AsyncIterator[bytes]:
    view.streams += 1
    try:
        yield b"retry: 3000\n\n"
        sent = 0
        while True:
            snapshot = await view.snapshot()
            yield b"event: snapshot\ndata: " + snapshot.model_dump_json().encode() + b"\n\n"
            sent += 1
            if limit is not None and sent >= limit:
                return
            await asyncio.sleep(EVENT_INTERVAL_S)
    finally:
        view.streams -= 1


def _settings_view(control: NodeControl, changed: list[str]) -> SettingsView:
    s = control.settings()
    return SettingsView(
        serving=s.serving,
        state="serving" if s.state is ServingState.SERVING else "paused",
        model=s.model,
        span=str(s.span),
        memory_budget_mb=round(s.memory_budget_bytes / MIB, 3),
        kv_free_tokens=s.kv_free_tokens,
        spans=[str(span) for span in s.spans],
        changed=changed,
    )


def _check_origin(request: Request, api_key: str | None) -> None:
    """Settings change only as JSON (a cross-site form cannot send it without a preflight) and, without
    an API key, only through an address, never a host name (which DNS rebinding could point here)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise UnsupportedMediaTypeError("send the settings as JSON, with Content-Type: application/json")
    if api_key is not None:
        return
    host = urllib.parse.urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if host != "localhost" and not _is_address(host):
        raise ForbiddenHostError(
            f"settings change through this node's address (127.0.0.1:PORT), not the host name {host!r}"
        )


def _static_file(web_dir: Path, path: str) -> Path | None:
    """The file ``path`` names under ``web_dir``: no hidden names, no ``..``, no templates, no links out."""
    if path.split("/")[0] == "templates":
        return None
    return resolve_file(web_dir, path)


def _page_config(name: str, service: MeshNodeService | None, control: NodeControl | None) -> dict[str, Any]:
    """What a page's script reads from ``<script id="ai4all-config">``: no secret goes in here."""
    models = []
    if service is not None:
        for model in service.models_by_name.values():
            models.append(
                {
                    "id": model.name,
                    "blocks": model.manifest.num_layers,
                    "hidden_size": int(model.manifest.config.get("hidden_size") or 0),
                }
            )
    settings = None
    if control is not None:
        settings = _settings_view(control, []).model_dump()
    return {
        "page": name,
        "api_base": "/v1",
        "events": "/v1/node/events",
        "peer_id": service.node.peer_id if service is not None else None,
        "models": models,
        "settings": settings,
        "units_per_credit": UNITS_PER_CREDIT,
    }


__all__ = [
    "Earnings",
    "MeshSnapshot",
    "NodeSnapshot",
    "NodeView",
    "SettingsRequest",
    "SettingsView",
    "create_pages",
]

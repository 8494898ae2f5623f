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

This module holds the router: page rendering, static files (``python_peer/core/static_files.py``) and
the settings; what the pages read is computed in ``node_view.py`` and typed in ``page_types.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from python_peer.core.economics import UNITS_PER_CREDIT
from python_peer.core.static_files import mime_type, resolve_file

from .control import NodeControl, NotServingError, ServingState, budget_mb
from .errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    UnsupportedMediaTypeError,
)
from .node_view import NodeView, event_stream
from .page_types import Earnings, MeshSnapshot, SettingsRequest, SettingsView
from .service import MeshNodeService, NodeService
from .streaming import EventStreamResponse

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
MAX_EVENT_STREAMS = 32
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


# --- the router -------------------------------------------------------------------------------------


def create_pages(service: NodeService, *, web_dir: Path = WEB_DIR) -> APIRouter:
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
        return EventStreamResponse(event_stream(node_view, limit))  # a closed page frees its stream at once

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
        _check_json(request)
        node_control = need_control()
        if change.serving is None and change.memory_budget_mb is None and change.span is None:
            raise InvalidRequestError("give at least one of serving, memory_budget_mb and span")
        changed = await node_control.apply(
            serving=change.serving, memory_budget_mb=change.memory_budget_mb, span=change.span
        )
        return _settings_view(node_control, changed)

    return router


def _settings_view(control: NodeControl, changed: list[str]) -> SettingsView:
    s = control.settings()
    return SettingsView(
        serving=s.serving,
        state="serving" if s.state is ServingState.SERVING else "paused",
        model=s.model,
        span=str(s.span),
        memory_budget_mb=budget_mb(s.memory_budget_bytes),
        kv_free_tokens=s.kv_free_tokens,
        spans=[str(span) for span in s.spans],
        changed=changed,
    )


def _check_json(request: Request) -> None:
    """Settings change only as JSON (a cross-site form cannot send it without a preflight). Without an API
    key, the guard of ``app.py`` already refused any host name, which DNS rebinding could point here."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise UnsupportedMediaTypeError("send the settings as JSON, with Content-Type: application/json")


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


__all__ = ["PAGES", "create_pages"]

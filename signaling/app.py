"""The FastAPI app of a signaling node, and running it under uvicorn until SIGINT or SIGTERM.

Thin on purpose: the websocket at ``/`` hands each connection to ``SignalingNode``; ``/healthz`` and
``/v1/directory`` are JSON views for dashboards and tests. The browser node's pages, modules and model
files (``GET /`` and the rest, ``web.BrowserSite``) share the port: a websocket route and an HTTP route
on one path do not clash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, WebSocket
from uvicorn.protocols.http.h11_impl import H11Protocol

from python_peer.core.canonical import MAX_MESSAGE_BYTES
from python_peer.core.economics import GRANT_POW_BITS, network_rules
from python_peer.core.errors import SignalingError
from python_peer.core.http_limits import KEEP_ALIVE_S, with_header_deadline
from python_peer.core.ice import IceSettings

from .connection import StarletteTransport
from .node import NodeConfig, SignalingNode
from .web import BrowserSite, ServedModel, index_models

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 3


def browser_site(
    node: SignalingNode,
    models: Sequence[ServedModel] = (),
    pow_bits: int = GRANT_POW_BITS,
    ice: IceSettings | None = None,
    allow_unsigned: bool = False,
) -> BrowserSite:
    """What ``node`` serves to browsers: its pages, the model directories ``models``, and the ICE
    settings its pages' WebRTC links use (by default: loopback only, no STUN or TURN server). Its pages
    trust the publishers ``node`` trusts, and take unsigned exports with ``allow_unsigned``."""
    return BrowserSite(
        node_id=node.node_id,
        public_url=node.config.public_url,
        url_given=node.config.url is not None,
        siblings=node.config.sibling_urls,
        models=models,
        pow_bits=pow_bits,
        known_siblings=node.federation.known_urls,
        ice=ice or IceSettings(),
        trusted_publishers=tuple(sorted(node.config.trusted_publishers)),
        allow_unsigned=allow_unsigned,
    )


def create_app(node: SignalingNode, site: BrowserSite | None = None) -> FastAPI:
    """The ASGI app serving ``node`` and ``site`` (the browser node; by default with no models); the node
    starts and stops with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.close()

    app = FastAPI(title="AI4All signaling node", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.websocket("/")
    async def signaling_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        # uvicorn takes the client's address from X-Forwarded-For of a proxy on loopback (FORWARDED_ALLOW_IPS)
        host = websocket.client.host if websocket.client is not None else None
        await node.serve_incoming(StarletteTransport(websocket), host)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return node.health()

    @app.get("/v1/directory")
    async def directory() -> dict[str, object]:
        return node.directory_view()

    (site or browser_site(node)).install(app)
    return app


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown; a clean stop should exit 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve(
    config: NodeConfig,
    models: Sequence[ServedModel] = (),
    pow_bits: int = GRANT_POW_BITS,
    ice: IceSettings | None = None,
    allow_unsigned: bool = False,
) -> None:
    """Run a signaling node serving ``models`` to browsers until SIGINT or SIGTERM, then close every
    connection and return. ``pow_bits`` is the network's grant proof of work and ``ice`` the pages'
    ICE settings, both told to browsers, as is ``allow_unsigned`` (pages take unsigned exports)."""
    node = SignalingNode(config)
    site = browser_site(node, models, pow_bits, ice, allow_unsigned)
    server = _Server(
        uvicorn.Config(
            create_app(node, site),
            host=config.host,
            port=config.port,
            ws="websockets-sansio",
            ws_max_size=2 * MAX_MESSAGE_BYTES,  # bigger than our bound, so we answer ``too_large`` ourselves
            ws_ping_interval=20,
            ws_ping_timeout=20,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            http=with_header_deadline(H11Protocol),  # headers within HEADER_TIMEOUT_S
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn's way of saying it could not start (it logged why)
        raise SignalingError(
            f"signaling node could not start on {config.host}:{config.port}: see the error above",
            code="internal",
        ) from exc
    log.info("signaling node %s stopped", node.node_id)


@dataclass(frozen=True)
class SignalOptions:
    """What ``ai4all signal`` runs: the node's configuration, the model directories its site serves to
    browsers, and the ICE settings its pages hand to their WebRTC links."""

    node: NodeConfig
    model_dirs: tuple[Path, ...] = ()
    ice: IceSettings = field(default_factory=IceSettings)
    allow_unsigned: bool = False  # --allow-unsigned: this node's pages take unsigned local exports


def load_site(options: SignalOptions) -> tuple[list[ServedModel], int]:
    """The served models and the network's grant proof of work, checked before anything listens;
    ``SiteError`` or ``LedgerError`` says what is wrong."""
    models = [ServedModel.load(directory) for directory in options.model_dirs]
    index_models(models)
    return models, network_rules().grant_pow_bits


def run_node(options: SignalOptions) -> None:
    """Serve a signaling node as ``options`` say until SIGINT or SIGTERM (blocking: its own event loop)."""
    models, pow_bits = load_site(options)
    asyncio.run(serve(options.node, models, pow_bits, options.ice, options.allow_unsigned))

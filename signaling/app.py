"""The FastAPI app of a signaling node, and running it under uvicorn until SIGINT or SIGTERM.

Thin on purpose: the websocket at ``/`` hands each connection to ``SignalingNode``; ``/healthz`` and
``/v1/directory`` are JSON views for dashboards and tests.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, WebSocket

from python_peer.core.canonical import MAX_MESSAGE_BYTES
from python_peer.core.errors import SignalingError

from .connection import StarletteTransport
from .node import NodeConfig, SignalingNode

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 3


def create_app(node: SignalingNode) -> FastAPI:
    """The ASGI app serving ``node``; the node starts and stops with the app's lifespan."""

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
        await node.serve_incoming(StarletteTransport(websocket))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return node.health()

    @app.get("/v1/directory")
    async def directory() -> dict[str, object]:
        return node.directory_view()

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


async def serve(config: NodeConfig) -> None:
    """Run a signaling node until SIGINT or SIGTERM, then close every connection and return."""
    node = SignalingNode(config)
    server = _Server(
        uvicorn.Config(
            create_app(node),
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

"""The FastAPI app over a ``NodeService``, and ``ApiServer`` to run it inside a peer's event loop.

Thin on purpose: each route parses its request model, asks the service, and hands the outcome to the
translator. In front of the routes, one ASGI guard applies a per-client token-bucket rate limit, the
optional API key (``Authorization: Bearer KEY``, on every ``/v1`` route; without one, only requests
naming the node by an address or ``localhost``, against DNS rebinding) and a bound on the body size.
Every error, wherever it is raised, leaves in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from python_peer.core.errors import AI4AllError
from python_peer.core.http_limits import BODY_TIMEOUT_S, KEEP_ALIVE_S, with_header_deadline
from python_peer.generate import Generation

from . import translate
from .errors import (
    ApiError,
    ApiListenError,
    AuthenticationError,
    BodyTooLargeError,
    ForbiddenHostError,
    MethodNotAllowedError,
    NotFoundError,
    RateLimitedError,
)
from .hosts import is_address_or_localhost, is_loopback
from .pages import create_pages
from .service import Job, NodeService
from .streaming import EventStreamResponse
from .types import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    NodeStatus,
    TokenBalance,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiConfig:
    """Who may call the API and how often."""

    api_key: str | None = None  # when set, every /v1 route wants ``Authorization: Bearer <api_key>``
    rate_per_s: float = 5.0  # requests per second per client, refilled continuously
    burst: int = 20  # requests a client may make at once
    max_body_bytes: int = 4 * 2**20
    max_clients: int = 4096  # clients whose buckets are remembered; the least recent are forgotten

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(f"rate_per_s ({self.rate_per_s}) must be > 0 and burst ({self.burst}) >= 1")


class TokenBuckets:
    """One token bucket per client, in bounded memory."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token for ``client``: 0.0 when allowed, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class _Guard:
    """Rate limit, API key and body size, before any route runs."""

    def __init__(self, app: ASGIApp, config: ApiConfig) -> None:
        self.app = app
        self.config = config
        self.buckets = TokenBuckets(config.rate_per_s, config.burst, config.max_clients)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_csp(send)
        try:
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "unknown")
            if wait > 0:
                raise RateLimitedError(
                    f"rate limit of {self.config.rate_per_s:g} requests/s (burst {self.config.burst}) "
                    f"reached; retry in {wait:.1f} s",
                    retry_after=wait,
                )
            if self.config.api_key is not None and str(scope.get("path", "")).startswith("/v1"):
                _check_key(scope, self.config.api_key)
            if self.config.api_key is None:
                _check_host(scope)
            self._check_length(scope)
            if scope.get("method") != "POST":
                await self.app(scope, self._bounded(receive), send)
                return
            body = await self._read_body(self._bounded(receive))
        except ApiError as exc:
            await _error(exc)(scope, receive, send)
            return
        except TimeoutError:
            text = f"the body did not arrive within {BODY_TIMEOUT_S:g} s"
            await JSONResponse(
                translate.error_body(text, "invalid_request_error").model_dump(),
                status_code=408,
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, within ``BODY_TIMEOUT_S`` (``TimeoutError``: one shorter than its
        Content-Length gets a 408), refused when JSON with a duplicate key (OpenAI answers 400)."""
        chunks: list[bytes] = []
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        body = b"".join(chunks)
        try:
            json.loads(body, object_pairs_hook=_no_duplicate_keys)
        except RecursionError:  # a few bytes a level: "[[[[..." within the size bound overflows the parser
            raise translate.InvalidRequestError("the body nests its JSON too deeply") from None
        except ValueError as exc:
            if isinstance(exc, _DuplicateKey):
                raise translate.InvalidRequestError(str(exc)) from None
            # not JSON: the route's own parsing says so
        return body

    def _check_length(self, scope: Scope) -> None:
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise BodyTooLargeError(f"the body is over {self.config.max_body_bytes} bytes")

    def _bounded(self, receive: Receive) -> Receive:
        limit, seen = self.config.max_body_bytes, 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(f"the body is over {limit} bytes")
            return message

        return bounded


# For HTML the pages do not set a policy for themselves: FastAPI's /docs and /redoc, which load their
# script and style from jsDelivr and run one inline script that points them at /openapi.json.
DOCS_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; worker-src blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _with_csp(send: Send) -> Send:
    """``send`` adding ``DOCS_CSP`` to every HTML response that carries no Content-Security-Policy."""

    async def send_with_csp(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {name.lower() for name, _ in headers}
            html = any(n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers)
            if html and b"content-security-policy" not in names:
                message = {**message, "headers": [*headers, (b"content-security-policy", DOCS_CSP.encode())]}
        await send(message)

    return send_with_csp


MAX_NAMED_KEYS = 8  # duplicate keys an error message names


class _DuplicateKey(ValueError):
    """A JSON object naming one key twice."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # counted in one pass: an object of many keys must not cost their square
        twice = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        named = ", ".join(repr(k) for k in twice[:MAX_NAMED_KEYS])
        more = f" and {len(twice) - MAX_NAMED_KEYS} other keys" if len(twice) > MAX_NAMED_KEYS else ""
        raise _DuplicateKey(f"the body names {named}{more} more than once")
    return found


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then what the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _check_key(scope: Scope, key: str) -> None:
    headers = dict(scope.get("headers", []))
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), key.encode()):
        raise AuthenticationError(
            "this node wants an API key: send 'Authorization: Bearer <key>'"
            if not given
            else "the API key is not valid for this node"
        )


def _check_host(scope: Scope) -> None:
    """Without an API key, the node is reached only through an address or ``localhost``: any other host
    name may be one that DNS rebinding points at this machine, whose pages would then call the API as
    their own origin (generate on this node's balance, read its status, receipts and replies). A
    browser's POST must also come from such a page (``Origin``; ``null`` is refused): clients that are
    not browsers send no Origin."""
    headers = dict(scope.get("headers", []))
    host = _hostname(headers.get(b"host", b""), "//")
    if not is_address_or_localhost(host):
        raise ForbiddenHostError(
            f"this node has no API key: reach it through its address (http://127.0.0.1:PORT), "
            f"not the host name {host!r}"
        )
    origin = headers.get(b"origin")
    if (
        scope.get("method") == "POST"
        and origin is not None
        and not is_address_or_localhost(_hostname(origin))
    ):
        raise ForbiddenHostError(
            f"this node has no API key, so browser pages call it only from its address "
            f"(http://127.0.0.1:PORT), not from the origin {origin.decode('latin-1')!r}"
        )


def _hostname(value: bytes, prefix: str = "") -> str:
    """The host name of a Host (``prefix`` "//") or Origin header; "" when it has none or is malformed."""
    try:
        return urllib.parse.urlsplit(prefix + value.decode("latin-1")).hostname or ""
    except ValueError:  # "http://[oops"
        return ""


def _error(exc: BaseException) -> Response:
    status, body = translate.error_response(exc)
    if status == 500:
        log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    elif status >= 500:
        log.warning("request refused with %d: %s", status, exc)
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.49)))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _http_error(exc: HTTPException, request: Request) -> Response:
    if isinstance(exc.__cause__, ApiError):  # raised while FastAPI read the body (a too large one)
        return _error(exc.__cause__)
    if exc.status_code == 404:
        return _error(NotFoundError(f"no endpoint {request.method} {request.url.path}"))
    if exc.status_code == 405:
        return _error(MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}"))
    if exc.status_code == 400:
        return _error(translate.InvalidRequestError(f"the body cannot be read: {exc.detail}"))
    body = translate.error_body(str(exc.detail), "invalid_request_error")
    return JSONResponse(body.model_dump(), status_code=exc.status_code)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (402, "the balance does not cover the request"),
        (403, "no API key, and the request names this node by a host name, or comes from a page of one"),
        (404, "unknown model"),
        (429, "rate limited"),
        (503, "no route through the mesh covers the model, or the ledger is disabled"),
    )
}
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with stream=true, server-sent events of chunks and then [DONE]",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_ERRORS,
}


async def _first(job: Job) -> tuple[AsyncIterator[str], str | None]:
    """Start ``job`` and take its first piece, so that failing to route still gets a status code."""
    pieces = job.pieces()
    try:
        return pieces, await anext(pieces)
    except StopAsyncIteration:
        return pieces, None


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return EventStreamResponse(events)  # a client gone mid-stream stops its generation at once


async def _answer(
    raw: Request,
    job: Job,
    stream: bool,
    include_usage: bool,
    prefix: str,
    events: Callable[..., Any],
    final: Callable[..., Any],
) -> Any:
    """One generation as OpenAI answers it: server-sent chunks from ``events``, or one body from ``final``."""
    id, created = translate.new_id(prefix), translate.now()
    if stream:
        pieces, first = await _first(job)
        return _sse(
            events(
                pieces,
                first,
                job.result,
                model=job.model,
                id=id,
                created=created,
                include_usage=include_usage,
            )
        )
    result = await _unless_gone(raw, job.run())
    if result is None:
        return Response(status_code=204)  # nobody reads it: the client is gone
    return final(result, model=job.model, id=id, created=created)


async def _unless_gone(request: Request, work: Coroutine[Any, Any, Generation]) -> Generation | None:
    """``work``'s result; None if the client disconnected first, and then ``work`` is cancelled: a
    generation nobody waits for stops, its mesh sessions closed (as a stream's does), rather than running
    to ``max_tokens`` on its slot and its credits (a client that timed out and retries would have both)."""
    running = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({running, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not running.done():
            running.cancel()
            await asyncio.wait({running})  # its sessions closed; unlike awaiting it, keeps our own cancel
    return running.result() if not running.cancelled() else None


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone: its body was read, so the next message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(service: NodeService, config: ApiConfig | None = None) -> FastAPI:
    """The API of one node over ``service``; the OpenAPI schema is served at ``/openapi.json``."""
    config = config or ApiConfig()
    app = FastAPI(
        title="AI4All node API",
        version="1",
        description="OpenAI-compatible inference through the AI4All mesh: point an OpenAI client at /v1.",
    )

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=_STREAMED)
    async def chat_completions(
        request: ChatCompletionRequest, raw: Request
    ) -> ChatCompletion | StreamingResponse:
        job = await service.chat(request)
        return await _answer(
            raw,
            job,
            request.stream,
            request.include_usage,
            "chatcmpl",
            translate.chat_events,
            translate.chat_completion,
        )

    @app.post("/v1/completions", response_model=Completion, responses=_STREAMED)
    async def completions(request: CompletionRequest, raw: Request) -> Completion | StreamingResponse:
        job = await service.complete(request)
        return await _answer(
            raw,
            job,
            request.stream,
            request.include_usage,
            "cmpl",
            translate.completion_events,
            translate.completion,
        )

    @app.get("/v1/models", responses=_ERRORS)
    async def models() -> ModelList:
        return await service.models()

    @app.get("/v1/models/{model_id:path}", responses=_ERRORS)
    async def model(model_id: str) -> ModelCard:
        return await service.model(model_id)

    @app.get("/v1/tokens/balance", responses=_ERRORS)
    async def balance() -> TokenBalance:
        return await service.balance()

    @app.get("/v1/node/status", responses=_ERRORS)
    async def status() -> NodeStatus:
        return await service.status()

    app.include_router(create_pages(service))  # the pages: /chat, /dashboard, ...

    async def on_error(request: Request, exc: Exception) -> Response:
        return _error(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
        return JSONResponse(translate.validation_error(errors).model_dump(), status_code=400)

    async def on_http(request: Request, exc: Exception) -> Response:
        return _http_error(exc, request) if isinstance(exc, HTTPException) else _error(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(AI4AllError, on_error)
    app.add_exception_handler(Exception, on_error)
    app.add_middleware(_Guard, config=config)
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn in a loop it does not own: the owner (the peer) handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """An ASGI app served by uvicorn as a task of the running loop; ``async with`` starts and stops it."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def _listen(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            raise ApiListenError(f"the API cannot listen on {self.host}:{self.port}: {exc}") from exc
        sock.set_inheritable(True)
        return sock

    async def start(self, timeout: float = 10.0) -> None:
        """Listen (port 0 picks a free one, then ``port`` says which) and wait until requests are served."""
        sock = self._listen()
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the peer's logging, as configured by the CLI
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=5,
            http=with_header_deadline(H11Protocol),  # headers within HEADER_TIMEOUT_S
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api-server")
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise ApiListenError(f"the API server on {self.url} stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                await self.aclose()
                raise ApiListenError(f"the API server on {self.url} did not start within {timeout} s")
            await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        task = self._task
        # asyncio.wait, not `await task` under suppress(CancelledError): a cancel of our caller propagates
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        self._server = self._task = None
        if done and not task.cancelled() and (failure := task.exception()) is not None:
            raise failure  # the server's own failure, as before

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["ApiConfig", "ApiListenError", "ApiServer", "TokenBuckets", "create_app", "is_loopback"]

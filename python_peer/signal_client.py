"""The peer's side of signaling: one live websocket to a signaling node, kept up across failures.

``SignalClient`` connects to the first reachable URL of its list, proves it holds its key (signing the
node's hello nonce), announces itself and re-announces before the announcement expires. When the node
dies it fails over to the next URL at once, then backs off exponentially (with jitter) once every URL
has failed in a row. Requests made meanwhile wait for the next connection, within their timeout.
Nothing a node sends is trusted blindly: announcements from ``lookup`` and incoming signals are
verified against the signer's key, so a node can drop messages but not forge them.

The protocol is described in ``docs/signaling.md``; this module does not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from python_peer.core.canonical import (
    ANNOUNCE_CONTEXT,
    AUTH_CONTEXT,
    BYE_CONTEXT,
    MAX_TTL_MS,
    MIN_TTL_MS,
    PEER_KINDS,
    PROTOCOL_VERSION,
    URL_RE,
    Announcement,
    ServedSpan,
    SignalBody,
    bye_body,
    is_signature,
)
from python_peer.core.errors import (
    AnnouncementError,
    MessageError,
    RemoteSignalingError,
    SignalClientError,
    SignalingError,
    SignatureError,
)
from python_peer.core.registry_record import RegistryRecord
from python_peer.identity import Identity, verify, verify_body
from python_peer.registry_client import register_records

__all__ = ["IncomingSignal", "SignalClient", "SignalClientConfig", "SignalClientState"]

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1024 * 1024
MAX_PENDING = 256


class SignalClientState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"  # dialing a node, reading its hello, announcing
    CONNECTED = "connected"  # announced on a live connection
    BACKOFF = "backoff"  # every URL failed in a row; waiting before the next round
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class SignalClientConfig:
    """Where to connect and what to announce; times in seconds."""

    urls: tuple[str, ...]
    kind: str = "native"
    serves: tuple[ServedSpan, ...] = ()
    throughput_milli: int = 0
    kv_free_tokens: int = 0
    ttl_s: float = 120.0  # how long an announcement lives
    reannounce_s: float = 40.0  # how often it is renewed; well under ttl_s
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    max_urls: int = 16  # configured plus learned from hellos
    incoming_queue: int = 256  # signals waiting to be read; the oldest is dropped past this
    learn_urls: bool = True
    # registry records (``core/registry_record.py``) of the models served, registered with each announcement
    records: tuple[RegistryRecord, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(self.urls))  # lists welcome; stored immutable
        object.__setattr__(self, "serves", tuple(self.serves))
        if not self.urls:
            raise SignalClientError("give at least one signaling URL (ws://HOST:PORT)")
        for url in self.urls:
            if not isinstance(url, str) or URL_RE.match(url) is None:
                raise SignalClientError(
                    f"{url!r} is not a signaling URL: give ws://HOST:PORT or wss://HOST:PORT"
                )
        if self.kind not in PEER_KINDS:
            raise SignalClientError(f"kind {self.kind!r} is not one of {', '.join(PEER_KINDS)}")
        if not MIN_TTL_MS <= self.ttl_s * 1000 <= MAX_TTL_MS:
            raise SignalClientError(
                f"ttl_s = {self.ttl_s} is outside [{MIN_TTL_MS / 1000}, {MAX_TTL_MS / 1000}]"
            )
        if not 0 < self.reannounce_s < self.ttl_s:
            raise SignalClientError(
                f"reannounce_s = {self.reannounce_s} must be between 0 and ttl_s = {self.ttl_s}"
            )
        try:  # the announcement schema is the one place that knows the bounds of these fields
            Announcement(
                peer_id="0" * 64,
                kind=self.kind,
                seq=0,
                issued_ms=0,
                expires_ms=int(self.ttl_s * 1000),
                serves=self.serves,
                throughput_milli=self.throughput_milli,
                kv_free_tokens=self.kv_free_tokens,
            )
        except AnnouncementError as exc:
            raise SignalClientError(f"cannot announce this configuration: {exc}") from exc


@dataclass(frozen=True)
class IncomingSignal:
    """A verified signal from another peer: SDP or ICE, as that peer wrote it."""

    sender: str
    payload: dict[str, Any]
    ts_ms: int


class _LinkLost(Exception):
    """The websocket a request went out on closed before the answer came: retry on the next one."""


MIN_RENEW_S = 1.0  # never re-announce more often, whatever a node advertises (nodes allow 1/s per peer)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Link:
    """One websocket to one node, with the requests waiting for their answers on it."""

    url: str
    ws: ClientConnection
    node_id: str
    nonce: str
    renew_s: float  # how often to re-announce here: ours, or sooner if the node's idle bound asks it
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def request(self, message: dict[str, Any], request_id: int) -> dict[str, Any]:
        """Send ``message`` under ``request_id`` and wait for the answer carrying the same id."""
        if self.closed.is_set():
            raise _LinkLost(self.url)
        if len(self.pending) >= MAX_PENDING:
            raise SignalClientError(f"{MAX_PENDING} requests are already waiting on {self.url}")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            await self.ws.send(json.dumps({**message, "id": request_id}))
            reply = await future
        except ConnectionClosed as exc:
            raise _LinkLost(self.url) from exc
        finally:
            self.pending.pop(request_id, None)
        if reply.get("type") == "error":
            code, text = reply.get("code"), reply.get("message")
            raise RemoteSignalingError(
                f"{self.url}: {text}", code=code if isinstance(code, str) else "internal"
            )
        return reply

    def lost(self) -> None:
        self.closed.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_LinkLost(self.url))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.wait({self.reader})
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.ws.close()
        self.lost()


class SignalClient:
    """A peer's connection to the signaling mesh: announce, look up peers, exchange signals."""

    def __init__(self, identity: Identity, config: SignalClientConfig) -> None:
        """Use ``await SignalClient.create(...)``, which also connects."""
        self._identity = identity
        self._config = config
        self._urls = list(dict.fromkeys(config.urls))
        self._url_index = 0
        self._state = SignalClientState.NEW
        self._link: _Link | None = None
        self._connected = asyncio.Event()  # set while announced on a live link, and once closed
        self._incoming: asyncio.Queue[IncomingSignal | None] = asyncio.Queue(config.incoming_queue)
        self._ids = itertools.count(1)
        self._seq = 0
        self._last_error = "not tried yet"
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0  # connections made and announced on, the first and every failover

    @classmethod
    async def create(
        cls, identity: Identity, config: SignalClientConfig, *, wait: bool = True
    ) -> SignalClient:
        """Start connecting; with ``wait``, return once announced or raise ``SignalClientError``."""
        client = cls(identity, config)
        task = asyncio.create_task(client._run(), name=f"signal-client-{client.peer_id[:8]}")
        client._tasks.add(task)
        task.add_done_callback(client._manager_done)
        if wait:
            try:
                await client.wait_connected(config.connect_timeout_s)
            except BaseException:
                await client.close()
                raise
        return client

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> SignalClientState:
        return self._state

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def url(self) -> str | None:
        """The node this client is connected to now, if any."""
        return self._link.url if self._link is not None and self._connected.is_set() else None

    @property
    def renew_s(self) -> float | None:
        """How often this client re-announces on its current node (``_read_hello`` says how it is chosen)."""
        return self._link.renew_s if self._link is not None else None

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL this client may fail over to: configured, then learned."""
        return tuple(self._urls)

    def _set_state(self, state: SignalClientState) -> None:
        if state is not self._state:
            log.info("signal client %s: %s -> %s", self.peer_id[:8], self._state.value, state.value)
            self._state = state

    def _manager_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._last_error = f"connection manager failed: {task.exception()!r}"
            log.error("signal client %s: %s", self.peer_id[:8], self._last_error, exc_info=task.exception())

    def _check_open(self) -> None:
        if self._state in (SignalClientState.CLOSING, SignalClientState.CLOSED):
            raise SignalClientError(f"signal client is {self._state.value}; create a new one")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until announced on some node; ``SignalClientError`` names the last failure on timeout."""
        self._check_open()
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
            self._check_open()
        except TimeoutError:
            raise SignalClientError(
                f"no signaling node reachable among {', '.join(self._urls)}: {self._last_error}"
            ) from None

    # --- public API -----------------------------------------------------------------------------------

    async def lookup(self, model: str, start: int, end: int, *, limit: int = 32) -> list[Announcement]:
        """Peers serving any block of ``model`` in ``[start, end)``, verified, best first."""
        reply = await self._call(
            {"type": "lookup", "model": model, "start": start, "end": end, "limit": limit}
        )
        items = reply.get("peers")
        if not isinstance(items, list):
            raise MessageError(f"peers reply without a peers list from {self.url}")
        now, found = _now_ms(), []
        for item in items[:limit]:
            try:
                if not isinstance(item, dict):
                    raise MessageError("peer item is not an object")
                ann = Announcement.from_dict(item.get("body"))
                verify_body(ann.peer_id, ANNOUNCE_CONTEXT, item.get("body"), str(item.get("sig")))
                ann.check_fresh(now)
            except (MessageError, AnnouncementError, SignatureError) as exc:
                log.warning("dropping an announcement from a lookup reply: %s", exc)
                continue
            if ann.covers(model, start, end):
                found.append(ann)
        return found

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """A request (``registry_client.py``'s) and its answer; ``RemoteSignalingError`` if refused."""
        return await self._call(message)

    async def send_signal(self, peer_id: str, payload: dict[str, Any]) -> None:
        """Send SDP or ICE to ``peer_id``; ``RemoteSignalingError`` (``unknown_peer``) if no node knows it."""
        body = SignalBody(self.peer_id, peer_id, _now_ms(), payload)
        sig = self._identity.sign(body.signing_bytes())
        await self._call({"type": "signal", **body.to_dict(), "sig": sig})

    async def recv_signal(self) -> IncomingSignal:
        """The next verified signal for this peer; ``SignalClientError`` once the client is closed."""
        item = await self._incoming.get()
        if item is None:
            self._incoming.put_nowait(None)  # let every other reader see the end too
            raise SignalClientError("signal client is closed")
        return item

    async def signals(self) -> AsyncIterator[IncomingSignal]:
        """Verified signals for this peer, until the client closes."""
        while True:
            try:
                yield await self.recv_signal()
            except SignalClientError:
                return

    async def update(
        self,
        *,
        serves: tuple[ServedSpan, ...] | None = None,
        throughput_milli: int | None = None,
        kv_free_tokens: int | None = None,
        records: tuple[RegistryRecord, ...] | None = None,
    ) -> None:
        """Change what this peer announces (and the records it registers), and announce it now if connected."""
        changes: dict[str, Any] = {} if records is None else {"records": tuple(records)}
        if serves is not None:
            changes["serves"] = tuple(serves)
        if throughput_milli is not None:
            changes["throughput_milli"] = throughput_milli
        if kv_free_tokens is not None:
            changes["kv_free_tokens"] = kv_free_tokens
        self._config = replace(self._config, **changes)
        link = self._link
        if link is not None and self._connected.is_set():
            with contextlib.suppress(_LinkLost):  # the next connection announces the new values anyway
                await self._announce(link)

    def _bye(self) -> dict[str, Any]:
        """``bye``, signed so that sibling nodes withdraw our announcement too, with our next seq: it
        supersedes every announcement signed before it, one still in flight included."""
        if self._seq == 0:
            return {"type": "bye"}
        self._seq = max(self._seq + 1, _now_ms())
        sig = self._identity.sign_body(BYE_CONTEXT, bye_body(self.peer_id, self._seq))
        return {"type": "bye", "seq": self._seq, "sig": sig}

    async def close(self) -> None:
        """Say ``bye`` (so the directory forgets this peer now, not at expiry), then close."""
        if self._state in (SignalClientState.CLOSING, SignalClientState.CLOSED):
            return
        link = self._link if self._connected.is_set() else None
        self._set_state(SignalClientState.CLOSING)
        if link is not None:
            with contextlib.suppress(_LinkLost, RemoteSignalingError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await link.request(self._bye(), next(self._ids))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if link is not None:
            await link.close()
        self._link = None
        self._set_state(SignalClientState.CLOSED)
        self._connected.set()  # wakes every waiting request, which then sees the closed state
        if self._incoming.full():
            self._incoming.get_nowait()
        self._incoming.put_nowait(None)

    # --- requests -------------------------------------------------------------------------------------

    async def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request on the live connection, riding over failovers until ``request_timeout_s``."""
        self._check_open()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                while True:
                    await self._connected.wait()
                    self._check_open()
                    link = self._link
                    if link is None:
                        await asyncio.sleep(0)
                        continue
                    try:
                        return await link.request(message, next(self._ids))
                    except _LinkLost:
                        await asyncio.sleep(0)  # the manager notices and fails over
        except TimeoutError:
            raise SignalClientError(
                f"{message['type']} got no answer within {self._config.request_timeout_s} s "
                f"(state {self._state.value}; last error: {self._last_error})"
            ) from None

    async def _announce(self, link: _Link) -> None:
        cfg = self._config
        now = _now_ms()
        self._seq = max(self._seq + 1, now)
        ann = Announcement(
            peer_id=self.peer_id,
            kind=cfg.kind,
            seq=self._seq,
            issued_ms=now,
            expires_ms=now + int(cfg.ttl_s * 1000),
            serves=cfg.serves,
            throughput_milli=cfg.throughput_milli,
            kv_free_tokens=cfg.kv_free_tokens,
            signaling=(link.url,),
        )
        body = ann.to_dict()
        message = {
            "type": "announce",
            "body": body,
            "sig": self._identity.sign_body(ANNOUNCE_CONTEXT, body),
            "proof": self._identity.sign_body(AUTH_CONTEXT, {"node_id": link.node_id, "nonce": link.nonce}),
        }
        async with asyncio.timeout(self._config.request_timeout_s):
            await link.request(message, next(self._ids))
        ask = lambda message: link.request(message, next(self._ids))  # noqa: E731
        await register_records(ask, cfg.records, link.url, cfg.request_timeout_s)  # models served only

    # --- the connection manager -----------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve, fail over; back off once every URL has failed in a row. Runs until closed."""
        backoff = self._config.backoff_initial_s
        failures = 0
        while True:
            url = self._urls[self._url_index % len(self._urls)]
            self._set_state(SignalClientState.CONNECTING)
            try:
                link = await self._open(url)
            except (OSError, TimeoutError, WebSocketException, SignalingError, _LinkLost) as exc:
                self._last_error = f"{url}: {exc or type(exc).__name__}"
                log.info("signaling node %s failed: %s", url, self._last_error)
                self._url_index += 1
                failures += 1
                if failures >= len(self._urls):
                    self._set_state(SignalClientState.BACKOFF)
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self._config.backoff_max_s)
                    failures = 0
                continue
            backoff, failures = self._config.backoff_initial_s, 0
            self._link = link
            self.connections += 1
            self._set_state(SignalClientState.CONNECTED)
            self._connected.set()
            try:
                await self._keep_announced(link)
            finally:
                self._connected.clear()
                self._link = None
                await link.close()
            self._last_error = f"{url}: connection lost"
            self._url_index += 1  # fail over: try the next node first

    async def _open(self, url: str) -> _Link:
        """Dial ``url``, read its hello, start reading, announce."""
        ws = await connect(
            url,
            open_timeout=self._config.connect_timeout_s,
            max_size=MAX_REPLY_BYTES,
            proxy=None,
            ping_interval=10,
            ping_timeout=10,
            close_timeout=1,
        )
        link: _Link | None = None
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                raw = await ws.recv()
            node_id, nonce, renew_s = self._read_hello(raw)
            link = _Link(url, ws, node_id, nonce, renew_s)
            link.reader = asyncio.get_running_loop().create_task(self._read(link), name=f"signal-read-{url}")
            await self._announce(link)
        except BaseException:
            if link is not None:
                await link.close()
            else:
                with contextlib.suppress(ConnectionClosed, OSError):
                    await ws.close()
            raise
        return link

    def _read_hello(self, raw: str | bytes) -> tuple[str, str, float]:
        """The node's id and nonce, and how often to re-announce there: ``reannounce_s``, or half the
        ``limits.idle_ms`` the node advertises when that is sooner (it closes a connection silent that
        long). The first message goes at once: the announcement, right after the hello."""
        try:
            hello = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MessageError(f"hello is not JSON: {exc}") from exc
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise MessageError("the node did not start with a hello message")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise MessageError(f"node speaks protocol {hello.get('protocol')!r}, not {PROTOCOL_VERSION}")
        node_id, nonce = hello.get("node_id"), hello.get("nonce")
        if not isinstance(node_id, str) or not isinstance(nonce, str) or not 0 < len(nonce) <= 128:
            raise MessageError("hello lacks a node_id or a nonce")
        siblings = hello.get("siblings")
        if self._config.learn_urls and isinstance(siblings, list):
            for url in siblings[:16]:
                if isinstance(url, str) and URL_RE.match(url) and url not in self._urls:
                    if len(self._urls) >= self._config.max_urls:
                        break
                    self._urls.append(url)
                    log.debug("learned signaling node %s", url)
        renew_s = self._config.reannounce_s
        limits = hello.get("limits")
        idle_ms = limits.get("idle_ms") if isinstance(limits, dict) else None
        if isinstance(idle_ms, int) and not isinstance(idle_ms, bool) and idle_ms > 0:
            renew_s = min(renew_s, max(MIN_RENEW_S, idle_ms / 2000))
        return node_id, nonce, renew_s

    async def _keep_announced(self, link: _Link) -> None:
        """Re-announce every ``reannounce_s`` (sooner if the node's idle bound asks) until the connection
        drops."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(link.renew_s):
                    await link.closed.wait()
                    return
            try:
                await self._announce(link)
            except RemoteSignalingError as exc:
                log.warning("re-announcing on %s failed: %s", link.url, exc)
            except (_LinkLost, TimeoutError):
                return

    async def _read(self, link: _Link) -> None:
        """Route answers to their requests and verified signals to the incoming queue."""
        try:
            async for raw in link.ws:
                try:
                    message = json.loads(raw)
                except (ValueError, RecursionError):
                    log.warning("%s sent a message that is not JSON", link.url)
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "signal":
                    self._on_signal(message)
                    continue
                request_id = message.get("id")
                future = link.pending.get(request_id) if isinstance(request_id, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
                elif message.get("type") == "error":
                    log.warning("%s: error %s: %s", link.url, message.get("code"), message.get("message"))
        except ConnectionClosed:
            pass
        finally:
            link.lost()

    def _on_signal(self, message: dict[str, Any]) -> None:
        sig = message.get("sig")
        try:
            body = SignalBody.from_dict({k: message.get(k) for k in ("from", "to", "ts_ms", "payload")})
            if body.recipient != self.peer_id:
                raise MessageError(f"signal is for {body.recipient[:12]}…, not for this peer")
            if not is_signature(sig):
                raise SignatureError("signal carries no signature")
            verify(body.sender, body.signing_bytes(), str(sig))
            body.check_fresh(_now_ms())
        except (MessageError, SignatureError) as exc:
            log.warning("dropping a signal: %s", exc)
            return
        if self._incoming.full():
            self._incoming.get_nowait()
            log.warning("incoming signal queue full: dropped the oldest")
        self._incoming.put_nowait(IncomingSignal(body.sender, body.payload, body.ts_ms))

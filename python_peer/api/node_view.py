"""The node as its pages see it: this node, its balance, the mesh and its earnings, cached so that any
number of open pages costs the node one signaling lookup per model per second at most; and the
server-sent event stream of snapshots (``/v1/node/events``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from python_peer.core.economics import earnings
from python_peer.core.errors import AI4AllError
from python_peer.core.receipts import ReceiptBody
from python_peer.ledger_service import LedgerService

from .control import NodeControl
from .hosts import is_loopback
from .page_types import (
    BalanceView,
    Earnings,
    EarningsPoint,
    KvRoom,
    MeshSnapshot,
    ModelCoverage,
    NodeSnapshot,
    NodeState,
    PeerView,
    SignalingNodeView,
    SpanView,
)
from .service import MeshNodeService

log = logging.getLogger(__name__)

SNAPSHOT_TTL_S = 0.9  # one snapshot serves every page open in this second
SIGNALING_TTL_S = 5.0  # signaling nodes' /healthz is read at most this often
LOOKUP_TIMEOUT_S = 2.0
EVENT_INTERVAL_S = 1.0
EARNINGS_WINDOW = 2000  # own ledger entries read for the earnings plot


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
                async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                    found = await node.signal.lookup(
                        model.name, 0, blocks, limit=self.service.config.lookup_limit
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
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(parts.hostname or "") else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{scheme}://{parts.netloc}/healthz", timeout=timeout) as response:
            body = json.loads(response.read(256 * 1024))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


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


async def event_stream(view: NodeView, limit: int | None) -> AsyncIterator[bytes]:
    """Server-sent events: ``retry``, then a ``snapshot`` now and every ``EVENT_INTERVAL_S``; ``limit``
    ends the stream after that many. ``view.streams`` counts the open streams."""
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

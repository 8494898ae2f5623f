"""A native node on the mesh: identity, signaling and WebRTC links; a peer serves a span, a client asks.

``MeshNode`` is what both roles share: a persistent identity from the data directory, a signal client
connected to one of several signaling nodes, and a link manager fed by the signals that arrive.
``Peer`` adds a span server and announces it; ``open_client`` adds a mesh client for generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from python_peer.core.canonical import ServedSpan
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span

from .block_selection import least_served_span
from .identity import Identity
from .ledger_service import LedgerService
from .mesh_client import ClientConfig, MeshClient
from .rpc import serve_link
from .server import ServerConfig, SpanServer
from .signal_client import SignalClient, SignalClientConfig
from .transport import Link, LinkManager, TransportConfig

log = logging.getLogger(__name__)

LEDGER_SIGNAL = "ledger"  # signal payloads of this kind carry ledger gossip, not WebRTC descriptions


@dataclass(frozen=True)
class NodeConfig:
    """Where a node connects and keeps its state."""

    signal_urls: tuple[str, ...]
    data_dir: Path | None = None  # None: a fresh identity that is not kept
    transport: TransportConfig = field(default_factory=TransportConfig)
    announce_ttl_s: float = 120.0
    reannounce_s: float = 40.0
    claim_grant: bool = True  # claim the ledger's starter grant if this identity has no log yet
    gossip_interval_s: float = 10.0  # how often the ledger is gossiped with a few other peers
    gossip_fanout: int = 3


class MeshNode:
    """Identity + ledger + signaling + links, with the tasks that hand incoming signals on and gossip."""

    def __init__(
        self,
        identity: Identity,
        signal: SignalClient,
        transport: TransportConfig,
        ledger: LedgerService | None = None,
        config: NodeConfig | None = None,
    ) -> None:
        self.identity = identity
        self.signal = signal
        self.ledger = ledger
        self.config = config
        self.links = LinkManager(signal.send_signal, on_link=self._incoming_link, config=transport)
        # What to do with a link another peer opened to us; a node that serves nothing refuses them.
        self.link_handler: Callable[[Link], None] | None = None
        # The model whose peers this node gossips the ledger with (set by the peer or the client).
        self.gossip_model: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.spawn(self._pump_signals(), "signal-pump")
        if ledger is not None and config is not None:
            self.spawn(self._gossip_rounds(config.gossip_interval_s, config.gossip_fanout), "ledger-gossip")

    @classmethod
    async def create(cls, config: NodeConfig) -> MeshNode:
        """Load or make the identity and the ledger, connect to signaling and announce (serving nothing yet)."""
        identity = await asyncio.to_thread(
            lambda: Identity.load_or_create(config.data_dir) if config.data_dir else Identity.generate()
        )
        ledger = await asyncio.to_thread(
            LedgerService.open, config.data_dir, identity, claim_grant=config.claim_grant
        )
        signal = await SignalClient.create(
            identity,
            SignalClientConfig(
                urls=config.signal_urls,
                kind="native",
                ttl_s=config.announce_ttl_s,
                reannounce_s=config.reannounce_s,
            ),
        )
        return cls(identity, signal, config.transport, ledger, config)

    async def _incoming_link(self, link: Link) -> None:
        if self.link_handler is None:
            log.info("refusing a link from %s: this node serves nothing", link.remote_id[:8])
            await link.aclose()
            return
        self.link_handler(link)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _pump_signals(self) -> None:
        async for incoming in self.signal.signals():
            try:
                if incoming.payload.get("kind") == LEDGER_SIGNAL:
                    await self._gossip_received(incoming.sender, incoming.payload.get("msg"))
                else:
                    await self.links.handle_signal(incoming.sender, incoming.payload)
            except AI4AllError as exc:
                log.warning("bad signal from %s: %s", incoming.sender[:8], exc)

    async def _gossip_received(self, sender: str, message: object) -> None:
        if self.ledger is None:
            return
        replies = await asyncio.to_thread(self.ledger.gossip_receive, sender, message)
        for reply in replies:
            await self.signal.send_signal(sender, {"kind": LEDGER_SIGNAL, "msg": reply})

    async def gossip_now(self, fanout: int) -> int:
        """Open a gossip round with up to ``fanout`` random peers of the model; return how many."""
        if self.ledger is None or self.gossip_model is None:
            return 0
        model, layers = self.gossip_model
        peers = {a.peer_id for a in await self.signal.lookup(model, 0, layers, limit=64)} - {self.peer_id}
        chosen = random.sample(sorted(peers), min(fanout, len(peers)))
        for peer in chosen:
            message = await asyncio.to_thread(self.ledger.gossip_start, peer)
            if message is not None:
                await self.signal.send_signal(peer, {"kind": LEDGER_SIGNAL, "msg": message})
        return len(chosen)

    async def _gossip_rounds(self, interval: float, fanout: int) -> None:
        """Anti-entropy through signaling, so peers that share no link still converge."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            try:
                await self.gossip_now(fanout)
            except AI4AllError as exc:
                log.info("ledger gossip round failed: %s", exc)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.links.aclose()
        await self.signal.close()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)

    async def __aenter__(self) -> MeshNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class PeerConfig:
    """A serving peer: the node's settings plus what it serves."""

    node: NodeConfig
    model_dir: Path
    span: Span | None = None  # None: the least-served shard of the mesh
    server: ServerConfig = field(default_factory=ServerConfig)
    max_weights_bytes: int = 4 * 2**30  # weights this peer may load, for choosing a span
    status_interval_s: float = 10.0  # how often KV room is re-announced when it changed


class Peer:
    """A native peer serving one span of one model to clients over WebRTC."""

    def __init__(self, config: PeerConfig, manifest: Manifest, node: MeshNode, server: SpanServer) -> None:
        self.config = config
        self.manifest = manifest
        self.node = node
        self.server = server
        self.started = time.time()

    @classmethod
    async def create(cls, config: PeerConfig) -> Peer:
        manifest = load_manifest(config.model_dir)
        span = config.span
        node = await MeshNode.create(config.node)
        try:
            if span is None:
                announcements = await node.signal.lookup(manifest.name, 0, manifest.num_layers, limit=64)
                span = least_served_span(manifest, announcements, config.max_weights_bytes)
                log.info("serving the least-served span %s", span)
            server = await asyncio.to_thread(SpanServer, config.model_dir, manifest, span, config.server)
            throughput = await asyncio.to_thread(server.measure_throughput)
            peer = cls(config, manifest, node, server)
            server.ledger = node.ledger
            node.gossip_model = (manifest.name, manifest.num_layers)
            node.link_handler = peer._on_link
            await node.signal.update(
                serves=(ServedSpan(manifest.name, span.start, span.end),),
                throughput_milli=int(throughput * 1000),
                kv_free_tokens=server.kv_free_tokens,
            )
        except BaseException:
            await node.aclose()
            raise
        node.spawn(peer._housekeeping(), "housekeeping")
        log.info(
            "peer %s serves %s blocks %s at %.0f block-tokens/s",
            node.peer_id[:16],
            manifest.name,
            span,
            throughput,
        )
        return peer

    @property
    def span(self) -> Span:
        return self.server.span

    def _on_link(self, link: Link) -> None:
        self.node.spawn(
            serve_link(link, self.server.handle, self.server.close_client), f"serve-{link.remote_id[:8]}"
        )

    async def _housekeeping(self) -> None:
        announced = self.server.kv_free_tokens
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            self.server.evict_idle()
            free = self.server.kv_free_tokens
            if free != announced:
                await self.node.signal.update(kv_free_tokens=free)
                announced = free

    async def aclose(self) -> None:
        await self.node.aclose()

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_client(
    config: NodeConfig, model_dir: Path, client_config: ClientConfig | None = None
) -> tuple[MeshNode, MeshClient]:
    """A node that serves nothing and a mesh client on it, for ``ai4all chat`` and the API."""
    manifest = load_manifest(model_dir)
    node = await MeshNode.create(config)
    try:
        client = await asyncio.to_thread(
            MeshClient, model_dir, manifest, node.signal, node.links, client_config, node.ledger
        )
        node.gossip_model = (manifest.name, manifest.num_layers)
    except BaseException:
        await node.aclose()
        raise
    return node, client

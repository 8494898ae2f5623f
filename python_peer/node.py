"""A native node on the mesh: identity, signaling and WebRTC links; a peer serves a span, a client asks.

``MeshNode`` is what both roles share: a persistent identity from the data directory, a signal client
connected to one of several signaling nodes, a link manager fed by the signals that arrive, and ledger
gossip through signaling (``link_ledger.SignalingExchange``). ``Peer`` adds the span it serves: a
``SpanServer`` behind a ``SpanGate`` (pause, new span) that answers every link; ``open_client`` adds a
mesh client for generation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path

from python_peer.core.canonical import ServedSpan
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.registry_record import read_record
from python_peer.core.spans import Span

from .benchmark import announced_throughput
from .block_selection import checked_span, shared_spans
from .errors import PeerError
from .heap import trim_rounds
from .hop import FrameHandler
from .identity import Identity, verify
from .ledger_service import LedgerService
from .link_ledger import LEDGER_SIGNAL, SignalingExchange
from .mesh_client import ClientConfig, MeshClient
from .model_router import ModelRouter
from .relay import PushRelay
from .rpc import serve_link
from .seeding import SeedConfig, Seeder, SeedingHandler
from .server import ServerConfig, SpanServer
from .signal_client import SignalClient, SignalClientConfig
from .span_gate import ServingState, SpanGate
from .status import serve_status
from .transport import Link, LinkManager, TransportConfig

log = logging.getLogger(__name__)


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
        gossip_model: tuple[str, int] | None = None,
    ) -> None:
        self.identity = identity
        self.signal = signal
        self.ledger = ledger
        self.config = config
        self.links = LinkManager(signal.send_signal, on_link=self._incoming_link, config=transport)
        # What answers the links other peers open to us (``serve``); a node that serves nothing refuses them.
        self._handler: FrameHandler | None = None
        # The model (name, layers) whose peers this node gossips the ledger with through signaling.
        self.gossip_model = gossip_model
        self.ledger_gossip = SignalingExchange(ledger, signal.send_signal) if ledger is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.spawn(self._pump_signals(), "signal-pump")
        if ledger is not None and config is not None:
            self.spawn(self._gossip_rounds(config.gossip_interval_s, config.gossip_fanout), "ledger-gossip")
        self.spawn(trim_rounds(), "heap-trim")  # freed heap back to the OS (heap.py), once per process

    @classmethod
    async def create(cls, config: NodeConfig, *, gossip_model: tuple[str, int] | None = None) -> MeshNode:
        """Load or make the identity and the ledger, connect to signaling and announce (serving nothing yet);
        the ledger is gossiped with the peers of ``gossip_model`` (name, layers), if given."""
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
        return cls(identity, signal, config.transport, ledger, config, gossip_model)

    def serve(self, handler: FrameHandler) -> None:
        """Answer the links other peers open to this node with ``handler`` (once: a node serves one span
        gate; its span changes behind it)."""
        if self._handler is not None:
            raise PeerError("this node already serves its links")
        self._handler = handler

    async def _incoming_link(self, link: Link) -> None:
        if self._handler is None:
            log.info("refusing a link from %s: this node serves nothing", link.remote_id[:8])
            await link.aclose()
            return
        self.spawn(serve_link(link, self._handler), f"serve-{link.remote_id[:8]}")

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
                    if self.ledger_gossip is not None:
                        await self.ledger_gossip.receive(incoming.sender, incoming.payload)
                else:
                    await self.links.handle_signal(incoming.sender, incoming.payload)
            except AI4AllError as exc:
                log.warning("bad signal from %s: %s", incoming.sender[:8], exc)

    async def gossip_now(self, fanout: int) -> int:
        """Open a gossip round with up to ``fanout`` random peers of the model; return how many."""
        if self.ledger_gossip is None or self.gossip_model is None:
            return 0
        model, layers = self.gossip_model
        peers = {a.peer_id for a in await self.signal.lookup(model, 0, layers, limit=64)} - {self.peer_id}
        chosen = random.sample(sorted(peers), min(fanout, len(peers)))
        for peer in chosen:
            await self.ledger_gossip.open_round(peer)
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
        # Their outcomes are theirs (a cancel, an error they logged); a cancel of this close still raises.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.links.aclose()
        await self.signal.close()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)

    async def __aenter__(self) -> MeshNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class ServedModel:
    """A further model a peer serves a span of (``PeerConfig.more_models``); span None: the least-served
    run that fits its share of the budget (``block_selection.shared_spans``)."""

    model_dir: Path
    span: Span | None = None


@dataclass(frozen=True)
class MoreModel:
    """A further model being served: its manifest, its files, its span gate and the budget it was given."""

    manifest: Manifest
    model_dir: Path
    gate: SpanGate
    budget_bytes: int


@dataclass(frozen=True)
class PeerConfig:
    """A serving peer: the node's settings plus what it serves."""

    node: NodeConfig
    model_dir: Path
    span: Span | None = None  # None: the least-served run of shards that fits memory_budget_bytes
    # further models served from the same identity, announcement and ledger, within memory_budget_bytes
    more_models: tuple[ServedModel, ...] = ()
    # server.memory_budget_bytes caps the KV caches; they get at most what the budget leaves after the weights
    server: ServerConfig = field(default_factory=ServerConfig)
    memory_budget_bytes: int = 4 * 2**30  # weights + KV room (core/memory_budget.py), for choosing a span
    status_interval_s: float = 10.0  # how often KV room is re-announced when it changed
    seed: SeedConfig = field(default_factory=SeedConfig)  # the files of model_dir seeded to others


class Peer:
    """A native peer serving a span of one model (its primary), and of any further models, over WebRTC.

    It owns its serving side from construction: a ``SpanGate`` per model over its ``SpanServer``, behind
    a ``ModelRouter`` that answers every link of the node. Pausing covers every model; moving to another
    span (the control API) concerns the primary model.
    """

    def __init__(
        self,
        config: PeerConfig,
        manifest: Manifest,
        node: MeshNode,
        gate: SpanGate,
        more: tuple[MoreModel, ...] = (),
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.node = node
        self.gate = gate
        self.more = {m.manifest.name: m for m in more}
        self.started = time.time()
        self.changing = asyncio.Lock()  # held while a settings change (a span loading) is under way
        self.throughput = 0.0  # block-tokens/s announced, from a saved benchmark or measured at start
        self.throughput_source = ""
        self.seeder = Seeder(config.seed)  # seeds model_dir's verified files (docs/chunks.md)
        # what the primary model's spans may take: the budget less the further models' shares
        self.primary_budget = config.memory_budget_bytes - sum(m.budget_bytes for m in more)
        self.router = ModelRouter({manifest.name: gate, **{m.manifest.name: m.gate for m in more}})
        # Every link is answered through the relay, which pushes outputs along routes (relay.py); CHUNK
        # frames go on to the seeder, the rest to the router, which hands each session to its model's gate.
        self.seeding = SeedingHandler(self.seeder, self.router)
        self.relay = PushRelay(self.seeding, node.peer_id, node.links)
        node.serve(self.relay)

    @property
    def gates(self) -> dict[str, SpanGate]:
        """The gate of every model this peer serves, by model name, the primary first."""
        return self.router.gates

    def served_spans(self) -> tuple[ServedSpan, ...]:
        """What this peer announces while serving: a span of each of its models."""
        return tuple(
            ServedSpan(name, gate.server.span.start, gate.server.span.end)
            for name, gate in self.gates.items()
        )

    @property
    def kv_free_tokens(self) -> int:
        """The KV room announced: the least any of its servers has, so no model is over-promised."""
        return min(gate.server.kv_free_tokens for gate in self.gates.values())

    @classmethod
    async def create(cls, config: PeerConfig) -> Peer:
        manifest = load_manifest(config.model_dir)
        dirs = [config.model_dir, *(m.model_dir for m in config.more_models)]
        manifests = [manifest, *(load_manifest(m.model_dir) for m in config.more_models)]
        spans = [config.span, *(m.span for m in config.more_models)]
        names = [m.name for m in manifests]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PeerError(f"two --model directories hold the same model {twice[0]!r}: give each once")
        if all(span is not None for span in spans):
            # explicit spans over the budget are refused before anything connects
            shared_spans(
                [(m, s, []) for m, s in zip(manifests, spans, strict=True)], config.memory_budget_bytes
            )
        node = await MeshNode.create(config.node, gossip_model=(manifest.name, manifest.num_layers))
        try:
            choices = []
            for each, span in zip(manifests, spans, strict=True):
                found = (
                    []
                    if span is not None
                    else await node.signal.lookup(each.name, 0, each.num_layers, limit=64)
                )
                choices.append((each, span, found))
            needs = shared_spans(choices, config.memory_budget_bytes)
            for each, span, need in zip(manifests, spans, needs, strict=True):
                if span is None:
                    log.info("serving the least-served span of %s that fits: %s", each.name, need.describe())
            # the primary's KV room is what the further models leave; each further model gets its own need
            room = [config.memory_budget_bytes - sum(n.total for n in needs[1:]) - needs[0].weights]
            room += [n.kv for n in needs[1:]]
            servers = []
            for each, model_dir, need, kv in zip(manifests, dirs, needs, room, strict=True):
                server_config = replace(
                    config.server, memory_budget_bytes=min(config.server.memory_budget_bytes, kv)
                )
                servers.append(
                    await asyncio.to_thread(
                        SpanServer, model_dir, each, need.span, server_config, node.ledger
                    )
                )
            server = servers[0]
            throughput, source = await asyncio.to_thread(
                announced_throughput, config.node.data_dir, manifest, server
            )
            more = tuple(
                MoreModel(each, model_dir, SpanGate(other, node.peer_id), need.total)
                for each, model_dir, other, need in zip(
                    manifests[1:], dirs[1:], servers[1:], needs[1:], strict=True
                )
            )
            peer = cls(config, manifest, node, SpanGate(server, node.peer_id), more)
            peer.throughput, peer.throughput_source = throughput, source
            record = read_record(config.model_dir)  # checked with the signed manifest (model_trust.py)
            await node.signal.update(
                serves=peer.served_spans(),
                throughput_milli=int(throughput * 1000),
                kv_free_tokens=peer.kv_free_tokens,
                records=(record,) if record is not None else (),
            )
        except BaseException:
            await node.aclose()
            raise
        node.spawn(peer._housekeeping(), "housekeeping")
        node.spawn(peer._seed(), "seed-verify")
        if config.node.data_dir is not None:
            node.spawn(serve_status(peer, config.node.data_dir), "status-socket")
        log.info(
            "peer %s serves %s at %.0f block-tokens/s",
            node.peer_id[:16],
            ", ".join(f"{s.model} blocks {s.start}-{s.end}" for s in peer.served_spans()),
            throughput,
        )
        return peer

    @property
    def server(self) -> SpanServer:
        """The span server new sessions open on."""
        return self.gate.server

    @property
    def span(self) -> Span:
        return self.server.span

    @property
    def serving(self) -> bool:
        return self.gate.state is ServingState.SERVING

    def set_serving(self, serving: bool) -> bool:
        """Take new sessions, or pause: finish the open ones, refuse new ones, on every model; True if it
        changed. ``announce`` tells signaling."""
        for more in self.more.values():
            more.gate.set_serving(serving)
        return self.gate.set_serving(serving)

    def set_memory_budget(self, budget_bytes: int) -> None:
        """The KV budget of the current server (its frozen config, replaced whole)."""
        server = self.server
        server.config = replace(server.config, memory_budget_bytes=budget_bytes)
        self.config = replace(self.config, server=server.config)

    async def load_span(self, span: Span) -> tuple[SpanServer, float]:
        """A server for ``span`` (same budget and ledger), loaded in a thread, and its throughput; it
        serves nothing until ``move_to``. A span over the memory budget is refused (``PeerError``);
        loading fails with whatever onnxruntime or the disk raise."""
        old = self.server
        need = checked_span(self.manifest, span, self.primary_budget)
        kv = min(self.config.server.memory_budget_bytes, self.primary_budget - need.weights)
        new = await asyncio.to_thread(
            SpanServer,
            self.config.model_dir,
            self.manifest,
            span,
            replace(old.config, memory_budget_bytes=kv),
            old.ledger,
        )
        throughput, self.throughput_source = await asyncio.to_thread(
            announced_throughput, self.config.node.data_dir, self.manifest, new
        )
        return new, throughput

    async def move_to(self, server: SpanServer, throughput: float) -> SpanServer:
        """Serve new sessions from ``server`` (from ``load_span``); the old one, returned, finishes its own."""
        old = self.gate.swap(server)
        self.config = replace(self.config, span=server.span)
        self.throughput = throughput
        await self.node.signal.update(throughput_milli=int(throughput * 1000))
        return old

    async def announce(self) -> None:
        """Tell signaling what this peer serves now: its span while serving, nothing while paused."""
        serves = self.served_spans() if self.serving else ()
        await self.node.signal.update(serves=serves, kv_free_tokens=self.kv_free_tokens)

    async def _housekeeping(self) -> None:
        announced = self.kv_free_tokens
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            for gate in self.gates.values():
                gate.server.evict_idle()
            free = self.kv_free_tokens
            if free != announced:
                await self.node.signal.update(kv_free_tokens=free)
                announced = free

    async def _seed(self) -> None:
        """Hash each model directory's files in a thread and seed those that are the signed ones."""
        for model_dir in (self.config.model_dir, *(m.model_dir for m in self.more.values())):
            try:
                await self.seeder.add_dir(model_dir, verify)
            except AI4AllError as exc:
                log.warning("seeding nothing of %s: %s", model_dir, exc)

    async def aclose(self) -> None:
        await self.relay.aclose()
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
    node = await MeshNode.create(config, gossip_model=(manifest.name, manifest.num_layers))
    try:
        client = await asyncio.to_thread(
            MeshClient, model_dir, manifest, node.signal, node.links, client_config, node.ledger
        )
    except BaseException:
        await node.aclose()
        raise
    return node, client

"""A serving peer as a process: serve a span of a model to the mesh until SIGINT or SIGTERM, and with
``ApiOptions`` the OpenAI-compatible API on the same node (generations route through the mesh, and
through this peer's own span in-process).

``ai4all peer`` (``peer_cli.py``) parses its flags into ``PeerOptions`` and calls ``serve``; nothing here
reads command-line arguments.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from python_peer.core.ice import IceSettings
from python_peer.core.memory_budget import gib
from python_peer.core.publisher_trust import TrustPolicy
from python_peer.core.spans import Span

from .api.app import ApiConfig, ApiServer, create_app
from .api.ledger import ApiLedger
from .api.service import MeshNodeService
from .memory_probe import probe_rounds
from .model_fetch import fetch_for_peer
from .node import NodeConfig, Peer, PeerConfig, ServedModel
from .seeding import SeedConfig
from .server import ServerConfig
from .transport import TransportConfig


@dataclass(frozen=True)
class ApiOptions:
    """Where the peer's API listens (port 0 picks a free one) and who may call it how often."""

    host: str = "127.0.0.1"
    port: int = 0
    config: ApiConfig = field(default_factory=ApiConfig)


@dataclass(frozen=True)
class PeerOptions:
    """What a serving peer runs: its signaling nodes, the model and span, its budgets, ICE, the API."""

    signal_urls: tuple[str, ...]
    model_dir: Path
    data_dir: Path | None = None
    span: Span | None = None  # None: the least-served run of shards that fits memory_budget_bytes
    more_models: tuple[ServedModel, ...] = ()  # further models, sharing memory_budget_bytes
    memory_budget_bytes: int = 4 * 2**30  # weights + KV room (core/memory_budget.py)
    max_memory_mb: float | None = None  # a cap on the KV caches in MiB; None: what the budget leaves
    gossip_interval_s: float = 10.0
    idle_timeout_s: float = 300.0
    ice: IceSettings = field(default_factory=IceSettings)
    api: ApiOptions | None = None
    # a model NAME instead of a directory: fetched from its seeders first (model_fetch.py), then served
    model_name: str | None = None
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    seed: SeedConfig = field(default_factory=SeedConfig)

    def peer_config(self) -> PeerConfig:
        """The ``Peer``'s configuration."""
        return PeerConfig(
            node=NodeConfig(
                signal_urls=self.signal_urls,
                data_dir=self.data_dir,
                gossip_interval_s=self.gossip_interval_s,
                transport=TransportConfig.from_ice(self.ice),
            ),
            model_dir=self.model_dir,
            span=self.span,
            more_models=self.more_models,
            server=ServerConfig(
                memory_budget_bytes=(
                    self.memory_budget_bytes
                    if self.max_memory_mb is None
                    else int(self.max_memory_mb * 2**20)
                ),
                idle_timeout_s=self.idle_timeout_s,
            ),
            memory_budget_bytes=self.memory_budget_bytes,
            seed=self.seed,
        )


async def start_api(
    peer: Peer, model_dirs: list[Path], options: ApiOptions
) -> tuple[MeshNodeService, ApiServer]:
    """The API for the models of ``model_dirs`` on the peer's own node, listening; the caller closes both
    (server first)."""
    ledger = ApiLedger(peer.node.ledger) if peer.node.ledger is not None else None
    service = await MeshNodeService.create(peer.node, model_dirs, peer=peer, ledger=ledger)
    server = ApiServer(create_app(service, options.config), options.host, options.port)
    try:
        await server.start()
    except BaseException:
        await service.aclose()
        raise
    return service, server


async def serve(options: PeerOptions) -> int:
    """Serve until SIGINT or SIGTERM; progress lines go to stderr (``ai4all up`` waits for them)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if options.model_name is not None:  # a NAME: fetched from its seeders first (docs/chunks.md)
        fetched = await fetch_for_peer(options, stop)
        if fetched is None:
            return 1
        options = fetched
    async with await Peer.create(options.peer_config()) as peer:
        dirs = [options.model_dir, *(m.model_dir for m in options.more_models)]
        api = await start_api(peer, dirs, options.api) if options.api is not None else None
        try:
            need = peer.manifest.memory.need(peer.span)
            print(
                f"peer {peer.node.peer_id} serves {peer.manifest.name} blocks {peer.span}: {need.describe()}; "
                f"budget is {gib(options.memory_budget_bytes)} "
                f"(KV budget {peer.server.config.memory_budget_bytes / 2**20:.1f} MiB)",
                file=sys.stderr,
                flush=True,
            )
            for name, more in peer.more.items():
                span = more.gate.server.span
                print(
                    f"peer {peer.node.peer_id} also serves {name} blocks {span}: "
                    f"{more.manifest.memory.need(span).describe()}",
                    file=sys.stderr,
                    flush=True,
                )
            if api is not None:
                print(f"api {api[1].url}", file=sys.stderr, flush=True)
            label = options.data_dir.name if options.data_dir is not None else "peer"
            probe = asyncio.create_task(probe_rounds(label))  # a diagnosis, with AI4ALL_MEMORY_PROBE only
            await stop.wait()
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            print("peer stopping", file=sys.stderr, flush=True)
        finally:
            if api is not None:
                await api[1].aclose()
                await api[0].aclose()
    return 0

"""Fixtures of the fast tier: the toy model (ONNX, no torch) and a mesh of in-memory peers over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.spans import Span
from python_peer.hop import FrameHandler
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.mesh_session import MeshSession
from python_peer.server import ServerConfig, SpanServer
from tests.fast import toy_model
from tests.support.fakes import MemoryNetwork, announcement

pytestmark = pytest.mark.timeout(60)

FAST = ClientConfig(request_timeout_s=5.0, connect_timeout_s=5.0, ban_seconds=60.0, threads=1)


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_model.build(tmp_path_factory.mktemp("toy") / "model")


@dataclass
class ToyMesh:
    """Peers serving spans of the toy model on a ``MemoryNetwork``, and clients asking them."""

    model_dir: Path
    manifest: Manifest
    network: MemoryNetwork = field(default_factory=MemoryNetwork)
    servers: dict[str, SpanServer] = field(default_factory=dict)
    clients: list[MeshClient] = field(default_factory=list)

    def peer(
        self,
        span: tuple[int, int],
        *,
        throughput: float = 1000.0,
        ledger: LedgerService | None = None,
        wrap: Callable[[str, SpanServer], FrameHandler] | None = None,
    ) -> str:
        """A peer serving ``span`` (with ``ledger``, or free) through ``wrap(peer_id, server)`` if given;
        its id."""
        identity = ledger.identity if ledger is not None else Identity.generate()
        peer_id = identity.peer_id
        server = SpanServer(
            self.model_dir, self.manifest, Span(*span), ServerConfig(threads=1), ledger, identity=identity
        )
        self.servers[peer_id] = server
        handler: FrameHandler = wrap(peer_id, server) if wrap is not None else server
        self.network.serve(
            peer_id, handler, announcement(peer_id, self.manifest.name, *span, throughput=throughput)
        )
        return peer_id

    def client(
        self,
        ledger: LedgerService | None = None,
        *,
        client_id: str | None = None,
        local: FrameHandler | None = None,
        config: ClientConfig = FAST,
    ) -> MeshClient:
        """A mesh client on the network; ``local``: the span its own node serves, reached in-process."""
        if client_id is None:
            client_id = ledger.peer_id if ledger is not None else Identity.generate().peer_id
        client = MeshClient(
            self.model_dir,
            self.manifest,
            self.network.signal_client(client_id),
            self.network.connector(client_id),
            config,
            ledger,
            local=local,
        )
        self.clients.append(client)
        return client


@pytest.fixture
async def toy_mesh(toy: Path) -> AsyncIterator[ToyMesh]:
    mesh = ToyMesh(toy, load_manifest(toy))
    try:
        yield mesh
    finally:
        for client in mesh.clients:
            await client.aclose()
        await mesh.network.aclose()


@pytest.fixture
def make_ledger() -> Iterator[Callable[..., LedgerService]]:
    """Ledgers of nodes, in memory, closed after the test; ``grant=False``: a new identity with no log."""
    made: list[LedgerService] = []

    def make(*, grant: bool = True) -> LedgerService:
        made.append(LedgerService.open(None, Identity.generate(), claim_grant=grant))
        return made[-1]

    yield make
    for one in made:
        one.close()


async def greedy(client: MeshClient, prompt: list[int], new_tokens: int) -> tuple[list[int], MeshSession]:
    """Greedy tokens after ``prompt`` through the mesh, and the (closed) session that made them."""
    session = await client.open(1, len(prompt) + new_tokens)
    try:
        ids = np.array([prompt], dtype=np.int64)
        logits = await session.step(ids, np.ones_like(ids))
        tokens: list[int] = []
        for _ in range(new_tokens):
            tokens.append(int(np.argmax(logits[0, -1])))
            if len(tokens) == new_tokens:
                break
            logits = await session.step(np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
    finally:
        await session.close()
    return tokens, session

"""What the API serves from: the node's mesh clients, tokenizers, generation slots and status.

``NodeService`` is the protocol the app is written against; ``MeshNodeService`` implements it over a
``MeshNode``: its own (``open``, for a node that only asks) or a serving peer's (``create`` with
``peer=``), in which case a route through this very peer's span runs in-process instead of over a
WebRTC link to itself. Generations run in tasks owned by the service, so a client that disconnects
mid-stream still has its mesh sessions closed cleanly, and at most ``max_generations`` run at once with
``max_waiting`` more queued; beyond that a request is refused with 429.

The ledger plugs in through ``LedgerView``: ``admit`` may raise ``PaymentRequiredError`` (402) before a
generation starts and ``balance`` answers ``GET /v1/tokens/balance``. Without a ledger the balance is a
503 ("the ledger is not enabled on this node") and nothing is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest, load_manifest
from python_peer.core.model_summary import ModelSummary
from python_peer.core.protocol import MAX_LENGTH_LIMIT
from python_peer.errors import PeerError
from python_peer.generate import Generation, SamplingParams, astream
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, Peer
from python_peer.registry_client import mesh_models
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import LinkState

from . import translate
from .errors import LedgerUnavailableError, ModelNotFoundError, RateLimitedError
from .types import (
    ApiCounters,
    ChatCompletionRequest,
    CompletionRequest,
    Coverage,
    ModelCard,
    ModelList,
    NodeStatus,
    ServedSpanStatus,
    SignalingStatus,
    SpanCoverage,
    TokenBalance,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the API's generations on this node."""

    max_generations: int = 4  # running at once
    max_waiting: int = 16  # queued for a slot; more are refused with 429
    lookup_limit: int = 64  # announcements read to compute a model's coverage


class LedgerView(Protocol):
    """What the API needs from the node's ledger."""

    async def admit(self, model: str, blocks: int, tokens: int) -> None:
        """Raise ``PaymentRequiredError`` when this node's balance does not cover ``tokens`` (the prompt
        and the most the reply may take) through ``blocks`` blocks of ``model``."""
        ...

    async def balance(self) -> TokenBalance: ...


class Job(Protocol):
    """One generation, not started until its pieces are read."""

    model: str
    result: Generation

    def pieces(self) -> AsyncIterator[str]: ...

    async def run(self) -> Generation: ...


class NodeService(Protocol):
    """Everything the app asks of the node; each method raises an ``AI4AllError`` the translator maps."""

    async def models(self) -> ModelList: ...

    async def model(self, model_id: str) -> ModelCard: ...

    async def chat(self, request: ChatCompletionRequest) -> Job: ...

    async def complete(self, request: CompletionRequest) -> Job: ...

    async def status(self) -> NodeStatus: ...

    async def balance(self) -> TokenBalance: ...


@dataclass
class _Model:
    name: str
    model_dir: Path
    manifest: Manifest
    tokenizer: ModelTokenizer
    client: MeshClient
    created: int

    @property
    def context_length(self) -> int:
        declared = self.manifest.context  # GPT-2's n_positions too
        return min(2048 if declared is None else declared, MAX_LENGTH_LIMIT)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.config.get("vocab_size") or 0)


@dataclass
class _Counters:
    generations: int = 0  # finished
    admitted: int = 0  # read by a client now: running, or waiting for a slot
    running: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class GenerationJob:
    """One admitted generation: ``pieces()`` streams its text, ``run()`` waits for all of it."""

    def __init__(
        self,
        service: MeshNodeService,
        model: _Model,
        prompt_ids: list[int],
        params: SamplingParams,
    ) -> None:
        self.service = service
        self.model = model.name
        self._entry = model
        self.prompt_ids = prompt_ids
        self.params = params
        self.result = Generation(prompt_tokens=len(prompt_ids))
        self._started = False
        self._abandoned = False  # its reader is gone: the generation stops at its next piece

    async def run(self) -> Generation:
        async for _ in self.pieces():
            pass
        return self.result

    async def pieces(self) -> AsyncGenerator[str, None]:
        """The reply's text pieces; the generation runs in a task of the service, closed on exit."""
        if self._started:
            raise PeerError("this generation has been read already")
        self._started = True
        self.service._admit()
        try:
            queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
            task = self.service._spawn(self._produce(queue), f"generate-{self.model}")
        except BaseException:
            self.service._release()
            raise
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Cancelled once, the task's own ``finally`` still closes the mesh sessions, whatever
            # cancellation reaches the reader of this generator (a client gone mid-stream). Should an
            # await below swallow that cancel, the task still stops at its next piece.
            self._abandoned = True
            task.cancel()
            self.service._release()

    async def _produce(self, queue: asyncio.Queue[str | BaseException | None]) -> None:
        counters = self.service.counters
        try:
            async with (
                self.service._slot(),
                contextlib.aclosing(
                    astream(
                        self._entry.client, self._entry.tokenizer, self.prompt_ids, self.params, self.result
                    )
                ) as pieces,
            ):
                async for piece in pieces:
                    if self._abandoned:
                        return
                    queue.put_nowait(piece)
            counters.generations += 1
            counters.prompt_tokens += self.result.prompt_tokens
            counters.completion_tokens += len(self.result.token_ids)
            queue.put_nowait(None)
        except Exception as exc:
            queue.put_nowait(exc)


class MeshNodeService:
    """The ``NodeService`` of a native node: its models, served through the mesh it is part of."""

    def __init__(
        self,
        node: MeshNode,
        models: Sequence[_Model],
        *,
        peer: Peer | None = None,
        config: ServiceConfig | None = None,
        ledger: LedgerView | None = None,
        owns_node: bool = False,
    ) -> None:
        self.node = node
        self.models_by_name = {m.name: m for m in models}
        self.peer = peer
        self.config = config or ServiceConfig()
        self.ledger = ledger
        self.counters = _Counters()
        self.started = time.time()
        self._owns_node = owns_node
        self._slots = asyncio.Semaphore(self.config.max_generations)
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def create(
        cls,
        node: MeshNode,
        model_dirs: Sequence[Path],
        *,
        peer: Peer | None = None,
        config: ServiceConfig | None = None,
        client_config: ClientConfig | None = None,
        ledger: LedgerView | None = None,
        owns_node: bool = False,
    ) -> MeshNodeService:
        """A service over ``node`` for the models exported in ``model_dirs`` (tokenizer, embed, head)."""
        models: list[_Model] = []
        try:
            for model_dir in model_dirs:
                models.append(
                    await asyncio.to_thread(_load_model, Path(model_dir), node, peer, client_config)
                )
            names = Counter(m.name for m in models)
            twice = [n for n, count in names.items() if count > 1]
            if twice:
                raise PeerError(f"two model directories hold the same model {twice[0]!r}")
        except BaseException:
            for model in models:
                await model.client.aclose()
            if owns_node:
                await node.aclose()
            raise
        return cls(node, models, peer=peer, config=config, ledger=ledger, owns_node=owns_node)

    @classmethod
    async def open(
        cls,
        node_config: NodeConfig,
        model_dirs: Sequence[Path],
        *,
        config: ServiceConfig | None = None,
        client_config: ClientConfig | None = None,
        ledger: LedgerView | None = None,
    ) -> MeshNodeService:
        """A service on a node of its own that serves nothing: a client of the mesh only."""
        node = await MeshNode.create(node_config)
        return await cls.create(
            node, model_dirs, config=config, client_config=client_config, ledger=ledger, owns_node=True
        )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        # Their outcomes are theirs (a cancel, an error they logged); a cancel of this close still raises.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self.models_by_name.values():
            await model.client.aclose()
        if self._owns_node:
            await self.node.aclose()

    async def __aenter__(self) -> MeshNodeService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- generation slots -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _admit(self) -> None:
        """Count a generation in, or refuse it (429) when enough are running and waiting already."""
        counters, config = self.counters, self.config
        if counters.admitted >= config.max_generations + config.max_waiting:
            raise RateLimitedError(
                f"{counters.running} generations are running on this node and "
                f"{counters.admitted - counters.running} are waiting; try again shortly",
                retry_after=2.0,
            )
        counters.admitted += 1

    def _release(self) -> None:
        self.counters.admitted -= 1

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        await self._slots.acquire()
        self.counters.running += 1
        try:
            yield
        finally:
            self.counters.running -= 1
            self._slots.release()

    # --- NodeService --------------------------------------------------------------------------------

    def _model(self, model_id: str) -> _Model:
        model = self.models_by_name.get(model_id)
        if model is None:
            raise self._not_found(model_id)
        return model

    def _not_found(self, model_id: str) -> ModelNotFoundError:
        known = ", ".join(sorted(self.models_by_name)) or "none"
        return ModelNotFoundError(
            f"the model {model_id!r} does not exist on this node (it chats with: {known}; a model of the "
            "mesh whose files this node lacks is listed in /v1/models with chat false)",
            param="model",
        )

    async def chat(self, request: ChatCompletionRequest) -> GenerationJob:
        model = self._model(request.model)
        ids = await asyncio.to_thread(translate.chat_prompt_ids, model.tokenizer, request.messages)
        return await self._job(model, ids, request)

    async def complete(self, request: CompletionRequest) -> GenerationJob:
        model = self._model(request.model)
        ids = await asyncio.to_thread(
            translate.completion_prompt_ids, model.tokenizer, request, model.vocab_size
        )
        return await self._job(model, ids, request)

    async def _job(
        self, model: _Model, ids: list[int], request: ChatCompletionRequest | CompletionRequest
    ) -> GenerationJob:
        params = translate.sampling_params(request, len(ids), model.context_length)
        if self.ledger is not None:
            await self.ledger.admit(model.name, model.manifest.num_layers, len(ids) + params.max_tokens)
        return GenerationJob(self, model, ids, params)

    async def coverage(self, model: _Model) -> Coverage:
        """A model of this node: every block's peers, from a lookup of its verified announcements."""
        blocks = model.manifest.num_layers
        found = await self.node.signal.lookup(model.name, 0, blocks, limit=self.config.lookup_limit)
        spans: Counter[tuple[int, int]] = Counter()
        per_block = [0] * blocks
        peers: set[str] = set()
        for announcement in found:
            for served in announcement.serves:
                if served.model != model.name:
                    continue
                start, end = max(0, served.start), min(blocks, served.end)
                if start >= end:
                    continue
                peers.add(announcement.peer_id)
                spans[(start, end)] += 1
                for block in range(start, end):
                    per_block[block] += 1
        covered = sum(1 for count in per_block if count)
        return Coverage(
            blocks=blocks,
            covered_blocks=covered,
            servable=covered == blocks,
            peers=len(peers),
            spans=[SpanCoverage(start=s, end=e, peers=n) for (s, e), n in sorted(spans.items())],
        )

    def _card(self, model: _Model, coverage: Coverage) -> ModelCard:
        return ModelCard(
            id=model.name, created=model.created, chat=bool(coverage.servable), coverage=coverage
        )

    def _mesh_card(self, summary: ModelSummary) -> ModelCard:
        """A model of the mesh this node has no files of: its announced spans, chat-able elsewhere."""
        covered: set[int] = set()
        for span in summary.spans:
            covered.update(range(span.start, span.end))
        coverage = Coverage(
            blocks=None,
            covered_blocks=len(covered),
            servable=None,
            peers=summary.peers,
            spans=[SpanCoverage(start=s.start, end=s.end, peers=s.peers) for s in summary.spans],
        )
        return ModelCard(id=summary.model, created=int(self.started), chat=False, coverage=coverage)

    async def _mesh_models(self) -> list[ModelSummary]:
        """The models signaling knows peers of; none (with a warning) when the node cannot say."""
        try:
            summaries, truncated = await mesh_models(self.node.signal)
        except AI4AllError as exc:
            log.warning("cannot list the mesh's models: %s", exc)
            return []
        if truncated:
            log.info("signaling listed only the %d models with the most peers", len(summaries))
        return summaries

    async def models(self) -> ModelList:
        """This node's models the mesh covers (chat-able when every block is), then the mesh's other
        models, most peers first."""
        cards = []
        for model in self.models_by_name.values():
            coverage = await self.coverage(model)
            if coverage.covered_blocks:
                cards.append(self._card(model, coverage))
        for summary in await self._mesh_models():
            if summary.model not in self.models_by_name:
                cards.append(self._mesh_card(summary))
        return ModelList(data=cards)

    async def model(self, model_id: str) -> ModelCard:
        model = self.models_by_name.get(model_id)
        if model is not None:
            return self._card(model, await self.coverage(model))
        for summary in await self._mesh_models():
            if summary.model == model_id:
                return self._mesh_card(summary)
        raise self._not_found(model_id)

    async def status(self) -> NodeStatus:
        serving: list[ServedSpanStatus] = []
        served_sessions = tokens_served = 0
        if self.peer is not None:
            for name, gate in self.peer.gates.items():
                server = gate.server
                served_sessions += len(server.sessions)
                tokens_served += server.tokens_served
                serving.append(
                    ServedSpanStatus(
                        model=name,
                        start=server.span.start,
                        end=server.span.end,
                        open_sessions=len(server.sessions),
                        tokens_served=server.tokens_served,
                        kv_free_tokens=server.kv_free_tokens,
                    )
                )
        signal = self.node.signal
        counters = self.counters
        return NodeStatus(
            peer_id=self.node.peer_id,
            uptime_s=round(time.time() - (self.peer.started if self.peer else self.started), 3),
            models=sorted(self.models_by_name),
            serving=serving,
            tokens_served=tokens_served,
            open_sessions=served_sessions + counters.running,
            connected_peers=sorted(
                {link.remote_id for link in self.node.links.links if link.state is LinkState.OPEN}
            ),
            signaling=SignalingStatus(
                state=signal.state.value, connected=signal.url, known=list(signal.urls)
            ),
            api=ApiCounters(
                generations=counters.generations,
                running=counters.running,
                waiting=max(0, counters.admitted - counters.running),
                prompt_tokens=counters.prompt_tokens,
                completion_tokens=counters.completion_tokens,
            ),
        )

    async def balance(self) -> TokenBalance:
        if self.ledger is None:
            raise LedgerUnavailableError("the ledger is not enabled on this node")
        return await self.ledger.balance()


def _load_model(
    model_dir: Path, node: MeshNode, peer: Peer | None, client_config: ClientConfig | None
) -> _Model:
    manifest = load_manifest(model_dir)
    # A route through this very peer's span runs in-process, through the gate its links go through.
    local = peer.gates.get(manifest.name) if peer is not None else None
    client = MeshClient(model_dir, manifest, node.signal, node.links, client_config, node.ledger, local=local)
    created = int((model_dir / "manifest.json").stat().st_mtime)
    return _Model(manifest.name, model_dir, manifest, ModelTokenizer(model_dir, manifest), client, created)


__all__ = [
    "GenerationJob",
    "Job",
    "LedgerView",
    "MeshNodeService",
    "NodeService",
    "ServiceConfig",
]

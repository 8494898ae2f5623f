"""The mesh client: routes a generation through peers, keeping the prompt and the logits local.

The client holds the tokenizer, the embed shard and the head shard; only hidden states leave it. It
finds peers through signaling, picks the cheapest route (``routing.py``), and its sessions
(``mesh_session.py``, one a generation) open a session on every hop of it at once (``route_open.py``; each
a ``route_hop.RouteHop``) and run each step down the chain: pushed from peer to peer where the hops push
(``push_client.py``, each hop's signed answer still coming back to the client), hop by hop elsewhere.
When a hop fails (its link closes, it answers with an error, or it does not answer in time) the session
bans that peer for a while, routes around it, and replays to the replacement the hidden states it had
sent to that span, which rebuilds the KV cache there; the step then goes on, and the tokens come out as
if nothing had failed. Reaching a routed peer at all is part of the hop: signaling refusing to relay the
offer (the peer or its signaling node is gone while its announcement lingers), a link that never opens,
or no answer to OPEN are hop failures too, routed around the same way, so a chat started right after a
peer's death goes through any other peer serving its span. A dead peer costs a client at most
``connect_timeout_s`` (no link) or ``open_timeout_s`` (no answer to OPEN; a dead link is noticed sooner,
by the pings of ``rpc.RpcClient.call``), and at most ``max_failovers`` peers are tried per session.

With a ledger, its ``link_ledger.ClientExchange`` writes a hold for each session in the client's own log
and pushes the log to the peer before OPEN (which names the hold: ``core/holds.py``), and countersigns
the receipt the peer proposes at CLOSE. Once that receipt is recorded, it runs an anti-entropy exchange
with the peer over the same link (at most once per peer per ``gossip_every_s``, in the background): both
sides pull the entries they lack, third parties' included, without waiting for gossip through signaling.

Every remote answer must carry its peer's signature over what was asked and returned, and sessions
are spot-checked when they close (``spot_check.py``): a peer caught lying is never paid for that
session, has evidence written against it in the client's ledger, and is routed around; peers with
evidence against them in the ledger are avoided (``core/reputation.py``).

A hop is a ``hop.HopClient``: an ``RpcClient`` over a WebRTC link, or, for the span of a peer that runs
this client itself (``local``), a ``LocalHop`` calling its ``FrameHandler`` in-process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.canonical import Announcement
from python_peer.core.errors import SignalingError
from python_peer.core.manifest import Manifest
from python_peer.core.protocol import OPEN_TIMEOUT_MS
from python_peer.core.reputation import reputations

from .batching import RowBatcher
from .errors import LinkClosedError
from .hop import HOP_FAILURES, FrameHandler, HopClient, LinkConnector, LocalHop
from .ledger_service import LedgerService
from .ledger_store import native_verify
from .link_ledger import ClientExchange, HoldTerms
from .mesh_session import MeshSession
from .route_hop import RouteHop
from .routing import BanList, Candidate, NoRouteError, choose_route, route_lifting_bans
from .rpc import RpcClient
from .runner import ShardRunner
from .spot_check import DEFAULT_POLICY, AnswerCheck, SpotCheckPolicy, SpotChecks

log = logging.getLogger(__name__)

MAX_HOPS = 64  # links (and round trips) a client keeps, to the peers it used most recently


class PeerDirectory(Protocol):
    """Where the client finds peers: ``signal_client.SignalClient``, or an in-memory directory in tests."""

    @property
    def peer_id(self) -> str: ...

    async def lookup(self, model: str, start: int, end: int, *, limit: int = 32) -> list[Announcement]: ...


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts and limits of the mesh client, in seconds."""

    request_timeout_s: float = 60.0
    connect_timeout_s: float = 15.0
    open_timeout_s: float = OPEN_TIMEOUT_MS / 1000  # a peer silent this long on OPEN is routed around
    ban_seconds: float = 60.0
    max_failovers: int = 8  # per session
    lookup_cache_s: float = 2.0  # signaling allows a connection 20 messages a second
    threads: int | None = None
    gossip_every_s: float | None = 30.0  # ledger gossip on a session link, per peer; None: never
    gossip_max_requests: int = 16  # GOSSIP requests of one exchange
    verify_answers: bool = True  # an unsigned or wrongly signed answer is a hop failure
    spot_checks: SpotCheckPolicy | None = DEFAULT_POLICY  # None: no spot checks
    push: bool = True  # push steps peer to peer where the hops allow (push_client.py); False: hop by hop
    push_grace_s: float = 2.0  # a pushed answer later than this after the previous one: sent directly
    keep_pushed: bool = True  # pushing peers keep their outputs, answering signed digests (docs/mesh.md)
    head_window_s: float = 0.05  # a head waits this long at most for the client's other sessions' heads


def head_logits(head: ShardRunner, hidden: np.ndarray) -> np.ndarray:
    """The head shard's logits for ``hidden``."""
    return head.run({names.HIDDEN_IN: hidden})[names.LOGITS]


class MeshClient:
    """Everything a user's machine needs to generate through the mesh."""

    def __init__(
        self,
        model_dir: str | Path,
        manifest: Manifest,
        signal: PeerDirectory,
        links: LinkConnector,
        config: ClientConfig | None = None,
        ledger: LedgerService | None = None,
        *,
        local: FrameHandler | None = None,
    ) -> None:
        """``local``: the span this very node serves, reached in-process instead of over a link to itself."""
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.signal = signal
        self.links = links
        self.config = config or ClientConfig()
        self.embed_runner = ShardRunner(self.model_dir, manifest.embed, threads=self.config.threads)
        self.head_runner = ShardRunner(self.model_dir, manifest.head, threads=self.config.threads)
        # Concurrent sessions' heads in one call (batching.py), waiting for those in a step: they stay in
        # step, so that their decode steps batch on every peer too (docs/mesh.md). It calls the runner, not
        # ``self.head``: a bound method kept here would make a cycle, and a closed client would keep its
        # embed and head sessions (the model's largest weights) until the cyclic collector ran.
        self.heads = RowBatcher(
            functools.partial(head_logits, self.head_runner), window_s=self.config.head_window_s
        )
        self.learned_positions = bool(manifest.config.get("learned_positions", False))
        self.bans = BanList(self.config.ban_seconds)
        self.ledger = ledger
        self.local = local
        self.exchange = (
            ClientExchange(
                ledger,
                request_timeout_s=self.config.request_timeout_s,
                gossip_every_s=self.config.gossip_every_s,
                gossip_max_requests=self.config.gossip_max_requests,
            )
            if ledger is not None
            else None
        )
        self.answer_check = (
            AnswerCheck(signal.peer_id, manifest.name, native_verify) if self.config.verify_answers else None
        )
        policy = self.config.spot_checks
        self.spot_checks = SpotChecks(policy) if policy is not None else None
        # Per peer, least recently used first, at most MAX_HOPS of each: a client that meets peer after
        # peer (or identities thrown away and re-announced) keeps links and round trips of the recent ones.
        self.rtts: OrderedDict[str, float] = OrderedDict()
        self._rpcs: OrderedDict[str, HopClient] = OrderedDict()
        self._connecting: dict[str, asyncio.Lock] = {}
        self._lookups: dict[tuple[int, int], tuple[float, list[Announcement]]] = {}
        self._suspects: set[str] = set()
        self._exclusions: set[str] = set()

    @property
    def model(self) -> str:
        return self.manifest.name

    @property
    def open_timeout_s(self) -> float:
        """How long an OPEN may go unanswered before its peer counts as failed."""
        return min(self.config.open_timeout_s, self.config.request_timeout_s)

    @property
    def gossiped(self) -> dict[str, float]:
        """Peer id -> when the last ledger exchange with it started (loop time)."""
        return self.exchange.gossiped if self.exchange is not None else {}

    async def aclose(self) -> None:
        if self.exchange is not None:
            await self.exchange.aclose()
        for rpc in list(self._rpcs.values()):
            await rpc.aclose()
        self._rpcs.clear()

    async def rpc(self, peer_id: str) -> HopClient:
        """The hop to ``peer_id``: its link, connected (and its round trip measured) on first use; in
        process for this node's own span."""
        if self.local is not None and self._own(peer_id):
            return self._local_hop(peer_id, self.local)
        lock = self._connecting.setdefault(peer_id, asyncio.Lock())
        async with lock:
            rpc = self._rpcs.get(peer_id)
            if rpc is not None and not rpc.closed:
                self._rpcs.move_to_end(peer_id)
                return rpc
            await self._make_room(peer_id)
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    link = await self.links.connect(peer_id)
            except SignalingError as exc:
                # Signaling could not relay our offer: the peer (or the node it used) is gone while its
                # announcement lingers. That is this hop failing, not the chat.
                raise LinkClosedError(
                    f"peer {peer_id[:16]} cannot be reached through signaling: {exc}"
                ) from exc
            rpc = RpcClient(link)
            self._rpcs[peer_id] = rpc
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    rtt = await link.ping()
                self._note_rtt(peer_id, rtt)
            except HOP_FAILURES as exc:
                log.debug("no round trip measured for %s: %s", peer_id[:8], exc)
            return rpc

    async def _make_room(self, peer_id: str) -> None:
        """Before a new hop to ``peer_id``: forget its closed one, and close hops to the peers least
        recently used (their links, and the connect locks no one waits on) while MAX_HOPS are kept."""
        old = self._rpcs.pop(peer_id, None)
        if old is not None:
            await old.aclose()  # closed already; releases what it still holds
        for gone in [p for p, hop in self._rpcs.items() if hop.closed]:
            del self._rpcs[gone]
        while len(self._rpcs) >= MAX_HOPS:
            gone, hop = self._rpcs.popitem(last=False)
            log.debug("closing the idle link to %s: %d links kept", gone[:8], MAX_HOPS)
            await hop.aclose()
        for gone in [p for p, lock in self._connecting.items() if p not in self._rpcs and not lock.locked()]:
            if gone != peer_id:
                del self._connecting[gone]

    def _note_rtt(self, peer_id: str, seconds: float) -> None:
        self.rtts[peer_id] = seconds
        self.rtts.move_to_end(peer_id)
        while len(self.rtts) > MAX_HOPS:
            self.rtts.popitem(last=False)

    def _local_hop(self, peer_id: str, handler: FrameHandler) -> HopClient:
        hop = self._rpcs.get(peer_id)
        if hop is None or hop.closed:
            hop = LocalHop(handler, f"api:{peer_id}")
            self._rpcs[peer_id] = hop
        self._rpcs.move_to_end(peer_id)
        self._note_rtt(peer_id, 0.0)
        return hop

    def _own(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is this node's own span, reached in process (free: no hold)."""
        return self.local is not None and peer_id == self.signal.peer_id

    async def write_holds(self, hops: list[tuple[str, bytes, int, int]], tokens: int) -> list[str | None]:
        """With a ledger, the hashes of new holds paying each of ``hops`` (peer id, session, start, end)
        for its session (``tokens`` token positions at most), written together
        (``ClientExchange.write_holds``); None for this node's own span and without a ledger."""
        hashes: list[str | None] = [None] * len(hops)
        if self.exchange is None:
            return hashes
        paid = [i for i, hop in enumerate(hops) if not self._own(hop[0])]
        terms = [HoldTerms(hops[i][0], hops[i][1], self.model, hops[i][2], hops[i][3], tokens) for i in paid]
        for i, entry in zip(paid, await self.exchange.write_holds(terms), strict=True):
            hashes[i] = entry.hash
        return hashes

    async def hold(
        self, hop: RouteHop, tokens: int, written: str | None = None
    ) -> tuple[str | None, list[dict[str, object]] | None]:
        """With a ledger, the hash of the hold paying ``hop``'s peer for its session (``tokens`` token
        positions at most): ``written`` (by ``write_holds``), else a new one, our log delivered there
        (``ClientExchange.deliver``); None for this node's own span (reached in process, free). Second:
        the entries OPEN is to carry instead of a push (``OPEN_LOG``), or None when pushed."""
        if self.exchange is None or self._own(hop.peer_id):
            return None, None
        if written is not None:
            return written, await self.exchange.deliver(hop.peer_id, hop.rpc, written, carried=True)
        return await self.exchange.hold(
            hop.peer_id,
            hop.rpc,
            hop.session,
            model=self.model,
            start=hop.start,
            end=hop.end,
            tokens=tokens,
        ), None

    def gossip_soon(self, peer_id: str, hop: HopClient) -> asyncio.Task[None] | None:
        """Start a ledger gossip exchange with ``peer_id`` in the background, unless one started less than
        ``gossip_every_s`` ago; the task (or None). Its failures are logged, never raised."""
        return self.exchange.gossip_soon(peer_id, hop) if self.exchange is not None else None

    async def gossip_settled(self) -> None:
        """Wait for the gossip exchanges under way."""
        if self.exchange is not None:
            await self.exchange.settled()

    def avoided(self, peer_id: str) -> bool:
        """Whether routing avoids ``peer_id``: this client caught it lying, or the ledger holds evidence
        against it (``suspect``: used only when no one else covers its blocks; ``excluded``: never)."""
        return self._excluded(peer_id) or peer_id in self._suspects

    def _excluded(self, peer_id: str) -> bool:
        caught = self.spot_checks is not None and peer_id in self.spot_checks.caught
        return caught or peer_id in self._exclusions

    async def _read_reputations(self) -> None:
        """Refresh the suspects and exclusions from the ledger (a pure function of its entries)."""
        if self.ledger is None:
            return
        report = await asyncio.to_thread(self.ledger.store.report)
        found = reputations(report)
        self._suspects = {p for p, r in found.items() if r.suspect}
        self._exclusions = {p for p, r in found.items() if r.excluded}

    async def candidates(self, start: int, end: int) -> list[Candidate]:
        """Peers serving blocks in ``[start, end)``, but those this client caught lying or the ledger
        excludes; lookups are cached briefly, as signaling rate-limits them."""
        return self._candidates(await self._lookup(start, end), start, end)

    async def _lookup(self, start: int, end: int) -> list[Announcement]:
        loop = asyncio.get_running_loop()
        cached = self._lookups.get((start, end))
        if cached is not None and loop.time() - cached[0] < self.config.lookup_cache_s:
            return cached[1]
        announcements = await self.signal.lookup(self.model, start, end)
        self._lookups[(start, end)] = (loop.time(), announcements)
        return announcements

    def _candidates(self, announcements: list[Announcement], start: int, end: int) -> list[Candidate]:
        found: list[Candidate] = []
        for announcement in announcements:
            if self._excluded(announcement.peer_id):
                continue
            for served in announcement.serves:
                if served.model == self.model and served.overlaps(self.model, start, end):
                    found.append(
                        Candidate(
                            announcement.peer_id,
                            served.start,
                            served.end,
                            announcement.throughput_milli / 1000.0,
                            announcement.kv_free_tokens,
                            self.rtts.get(announcement.peer_id),
                            own=self._own(announcement.peer_id),
                        )
                    )
        return found

    async def route(self, start: int, end: int, tokens: int) -> list[Candidate]:
        """The cheapest route avoiding banned peers; if only banned peers can cover the span, try them again,
        the one that failed longest ago first (a peer that failed once under load, or was restarted, may be
        fine now; a dead one fails again and counts)."""
        # The ledger's reputations and signaling's lookup at once; the exclusions apply once both are in.
        _, announcements = await asyncio.gather(self._read_reputations(), self._lookup(start, end))
        candidates = self._candidates(announcements, start, end)
        trusted = [c for c in candidates if not self.avoided(c.peer_id)]
        try:
            return choose_route(trusted, start, end, banned=self.bans, tokens_needed=tokens)
        except NoRouteError:
            pass
        try:
            return choose_route(candidates, start, end, banned=self.bans, tokens_needed=tokens)
        except NoRouteError:
            if not any(self.bans.banned(c.peer_id) for c in candidates):
                raise
            self._lookups.pop((start, end), None)
            fresh = await self.candidates(start, end)
            return route_lifting_bans(fresh, start, end, banned=self.bans, tokens_needed=tokens)

    async def open(self, batch: int, max_length: int) -> MeshSession:
        session = MeshSession(self, batch, max_length)
        await session.start()
        return session

    def embed(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {names.INPUT_IDS: ids.astype(np.int64)}
        if self.learned_positions:
            feeds[names.POSITION_IDS] = positions
        return self.embed_runner.run(feeds)[names.HIDDEN_OUT]

    def head(self, hidden: np.ndarray) -> np.ndarray:
        return head_logits(self.head_runner, hidden)

"""One generation's sessions along a route: its steps down the chain, its failovers, its close.

A ``MeshSession`` is what ``MeshClient.open`` returns. It opens a session on every hop of a route at once
(``route_open.py``; each a ``route_hop.RouteHop``), and runs each step down the chain: pushed from peer to
peer where the hops push (``push_client.py``), hop by hop elsewhere; the client's heads turn the last
hop's output into logits (``MeshClient.heads``). When a hop fails, the session bans its peer, routes
around it and replays to the replacement what that span was sent (fetching what pushing peers kept of
it, or, when that is lost, replaying the whole route from its own embeddings); the step then goes on
with the same tokens. At close it draws the hops to spot-check (``spot_check.py``), checks them after the
last token, and closes every hop, countersigning the receipts of the peers not caught lying.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from python_peer.core.errors import LedgerError
from python_peer.core.protocol import MAX_BATCH, MAX_LENGTH_LIMIT
from python_peer.core.push_route import PUSH_KEY
from python_peer.core.wire import Frame, FrameType

from .chain import position_ids_for
from .errors import MeshError
from .hop import HOP_FAILURES, LocalHop
from .push_client import push_run, pushed_step
from .route_hop import Inputs, KeptOutputError, ReplayLostError, RouteHop
from .route_open import concat_inputs, open_route
from .rpc import RpcClient

if TYPE_CHECKING:
    from .mesh_client import MeshClient

log = logging.getLogger(__name__)

INLINE_EMBED_TOKENS = 64  # embedding lookups up to this many tokens run on the event loop (~10 us)


def _check_size(batch: int, max_length: int, context: int | None) -> None:
    """A session the peers would refuse, or whose last steps they would (positions past the model's
    context), is the caller's mistake: refused here, before any hold is written or any peer is asked,
    rather than taken by the client for one peer failing after another (each banned)."""
    if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise MeshError(f"batch {batch!r} must be an integer in 1..{MAX_BATCH}")
    limit = MAX_LENGTH_LIMIT if context is None else min(context, MAX_LENGTH_LIMIT)
    if not isinstance(max_length, int) or not 1 <= max_length <= limit:
        model = "" if context is None else f"; the model's context holds {context}"
        raise MeshError(f"max_length {max_length!r} must be an integer in 1..{limit}{model}")


def _check_step(ids: np.ndarray, mask: np.ndarray, batch: int) -> None:
    """A malformed step is the caller's mistake too: refused before it is embedded or sent (a peer's
    ``bad_shape`` would read as that peer failing, banned and routed around again and again)."""
    if (
        not isinstance(ids, np.ndarray)
        or not isinstance(mask, np.ndarray)
        or ids.dtype.kind not in "iu"
        or mask.dtype.kind not in "iub"
        or ids.ndim != 2
        or ids.shape != mask.shape
        or ids.shape[0] != batch
        or ids.shape[1] == 0
    ):
        raise MeshError(
            f"ids and mask must be integer arrays of one [{batch}, seq] shape, seq >= 1; got "
            f"{getattr(ids, 'dtype', type(ids).__name__)} {list(getattr(ids, 'shape', ()))} and "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {list(getattr(mask, 'shape', ()))}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise MeshError("attention mask values must be 0 or 1")


class MeshSession:
    """One generation's sessions along a route; ``step`` returns the logits of the last new token."""

    def __init__(self, client: MeshClient, batch: int, max_length: int) -> None:
        _check_size(batch, max_length, client.manifest.context)
        self.client = client
        self.batch = batch
        self.max_length = max_length
        self.hops: list[RouteHop] = []
        self.mask = np.zeros((batch, 0), dtype=np.int64)
        self.failovers = 0
        self.last_failure = ""
        self.pushing = client.config.push  # off after a pushed answer disagreed with its predecessor
        self.keeping = client.config.keep_pushed  # pushing peers keep their outputs (push_client.py)
        self.closed = False

    @property
    def route(self) -> list[tuple[str, int, int]]:
        return [(h.peer_id, h.start, h.end) for h in self.hops]

    async def start(self) -> None:
        self.hops = await self._open_span(0, self.client.manifest.num_layers, [])

    async def _open_span(self, start: int, end: int, replay: list[Inputs]) -> list[RouteHop]:
        """Open sessions on a route over ``[start, end)``, every hop at once; replay ``replay`` (inputs to
        ``start``) through it (``route_open.py``)."""
        return await open_route(self, start, end, replay)

    async def open_hop(
        self, peer_id: str, start: int, end: int, *, session: bytes | None = None, hold: str | None = None
    ) -> RouteHop:
        """A new session of this generation on ``peer_id`` for blocks ``[start, end)``: ``session`` (a
        new id by default), paid by ``hold`` (``MeshClient.write_holds``; by default one written now)."""
        rpc = await self.client.rpc(peer_id)
        check = None if isinstance(rpc, LocalHop) else self.client.answer_check
        hop = RouteHop(peer_id, start, end, rpc, check=check)
        if session is not None:
            hop.session = session
        meta = {
            "model": self.client.model,
            "start": start,
            "end": end,
            "batch": self.batch,
            "max_length": self.max_length,
        }
        hold, carried = await self.client.hold(hop, self.batch * self.max_length, hold)
        if hold is not None:
            meta["hold"] = hold
        frame, exchange = Frame(FrameType.OPEN, hop.session, 0, meta=meta), self.client.exchange
        if hold is None or exchange is None:
            answer = await hop.rpc.call(frame, self.client.open_timeout_s)
        else:  # our log carried by OPEN where the peer takes it (``deliver``)
            answer = await exchange.open(peer_id, hop.rpc, frame, carried, self.client.open_timeout_s)
            exchange.admitted(hold)  # the next push there carries only what follows
        hop.pushes = answer.meta.get(PUSH_KEY) is True and isinstance(hop.rpc, RpcClient)
        return hop

    def note_failure(self, peer_id: str, exc: BaseException) -> None:
        self.failovers += 1
        self.last_failure = f"peer {peer_id[:16]}: {type(exc).__name__}: {exc}"
        self.client.bans.ban(peer_id)
        log.warning("peer %s failed (%s: %s); routing around it", peer_id[:16], type(exc).__name__, exc)
        if self.failovers > self.client.config.max_failovers:
            raise MeshError(
                f"gave up after {self.failovers} peer failures; last: {type(exc).__name__}: {exc}"
            ) from exc

    async def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.closed:
            raise MeshError("this session is closed")
        _check_step(ids, mask, self.batch)
        mask = mask.astype(np.int64)
        if self.mask.shape[1] + ids.shape[1] > self.max_length:
            raise MeshError(f"the session's max_length {self.max_length} would be exceeded")
        positions = position_ids_for(mask, self.mask)
        heads = self.client.heads
        if ids.shape[1] == 1:  # the client's heads wait for its sessions in a decode step
            with heads.expecting(self.batch):
                return await heads((await self._step(ids, mask, positions))[:, -1:])
        hidden = await self._step(ids, mask, positions)  # a prefill takes longer than a window: unexpected
        with heads.arriving(self.batch):  # alone, on the event loop as a decode step's head
            return await heads(hidden[:, -1:])

    async def _step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The step through the route: the last hop's output."""
        embed, inline = self.client.embed, ids.size <= INLINE_EMBED_TOKENS
        hidden = embeddings = (
            embed(ids, positions) if inline else await asyncio.to_thread(embed, ids, positions)
        )
        index = 0
        while index < len(self.hops):
            try:
                run = push_run(self, index)
                if run > 1:
                    done, hidden = await pushed_step(self, index, run, hidden, mask, positions)
                    index += done
                    continue
                hop = self.hops[index]
                try:
                    out = await hop.forward(hidden, mask, positions, self.client.config.request_timeout_s)
                except HOP_FAILURES as exc:
                    self.note_failure(hop.peer_id, exc)
                    await self.replace_hops(index, 1)
                    continue
                hop.history.append((hidden, mask, positions))
                hidden = out
                index += 1
            except ReplayLostError as exc:
                log.warning("replaying the whole route: %s", exc)
                await self._replay_route()
                index, hidden = 0, embeddings
        self.mask = np.concatenate([self.mask, mask], axis=1)
        return hidden

    async def _replay_route(self) -> None:
        """Open the whole route anew and replay to it the embeddings of the tokens before this step, which
        the first hop was sent (a failover whose own replay inputs, kept by a peer, were lost)."""
        first = await self.hops[0].fetch_history(self.client.config.request_timeout_s)  # the client's own
        for hop in self.hops:
            await self.close_hop(hop)
        past = concat_inputs(first)
        tokens = self.mask.shape[1]
        replay = [(past[0][:, :tokens], past[1][:, :tokens], past[2][:, :tokens])] if past and tokens else []
        self.hops = await self._open_span(0, self.client.manifest.num_layers, replay)

    async def replace_hops(self, index: int, count: int) -> None:
        """Close ``hops[index : index + count]`` and open their blocks on a new route, replaying to it what
        the first of them was sent (the hop that failed is banned by then, the others are not)."""
        old = self.hops[index : index + count]
        try:  # what the previous peer kept of its outputs, the replay's inputs
            history = await old[0].fetch_history(self.client.config.request_timeout_s)
        except KeptOutputError as exc:  # gone, or lying: the whole route is replayed (``_step``)
            self.note_failure(exc.peer_id, exc)
            raise ReplayLostError(str(exc)) from exc
        for hop in old:
            await self.close_hop(hop)
        replacement = await self._open_span(old[0].start, old[-1].end, history)
        self.hops[index : index + count] = replacement

    async def close_hop(self, hop: RouteHop, *, pay: bool = True) -> None:
        """Close the hop's session; unless ``pay`` is false (the peer lied in it), countersign and return
        the receipt the peer proposes for it."""
        if hop.rpc.closed:
            return
        try:
            answer = await hop.rpc.call(Frame(FrameType.CLOSE, hop.session, hop.next_step), 5.0)
            exchange = self.client.exchange
            if exchange is not None and pay:
                await exchange.settle(
                    hop.peer_id,
                    hop.rpc,
                    answer,
                    model=self.client.model,
                    start=hop.start,
                    end=hop.end,
                    tokens=hop.tokens,
                    timeout=5.0,
                )
        except (*HOP_FAILURES, LedgerError) as exc:
            log.warning("closing session on %s: %s", hop.peer_id[:8], exc)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        drawn = [self._draw(h) for h in self.hops]
        # A drawn hop's check needs what pushing peers kept: fetched before any hop closes (which frees it).
        failed = await asyncio.gather(
            *(self._fetch_kept(h, d) for h, d in zip(self.hops, drawn, strict=True))
        )
        liars = {f.peer_id for f in failed if f is not None}
        for peer_id in liars:
            self.client.bans.ban(peer_id)
        await asyncio.gather(
            *(
                self._finish_hop(h, d and f is None, h.peer_id not in liars)
                for h, d, f in zip(self.hops, drawn, failed, strict=True)
            ),
            return_exceptions=True,
        )
        if (exchange := self.client.exchange) is not None:  # the receipts, before the next OPEN there
            for hop in self.hops:
                if not hop.rpc.closed:
                    exchange.push_soon(hop.peer_id, hop.rpc)

    def _draw(self, hop: RouteHop) -> bool:
        """Whether to spot-check the hop (counting its block-tokens as used)."""
        checks = self.client.spot_checks
        if checks is None or hop.check is None or not hop.history:
            return False
        checks.stats.used_block_tokens += hop.tokens * (hop.end - hop.start)
        return checks.draw(hop.peer_id)

    async def _fetch_kept(self, hop: RouteHop, drawn: bool) -> KeptOutputError | None:
        """For a ``drawn`` hop, what pushing peers kept of its inputs and outputs fetched; or the failure,
        naming the peer that broke its promise to keep them (unpaid, banned)."""
        try:
            if drawn:
                await hop.fetch_kept(self.client.config.request_timeout_s)
        except KeptOutputError as exc:
            log.warning("%s", exc)
            return exc
        return None

    async def _finish_hop(self, hop: RouteHop, drawn: bool, pay: bool) -> None:
        """Spot-check the hop if ``drawn`` (after the last token: no token waits for it), then close it,
        paying only a peer that was not caught lying in this session (``pay``)."""
        checks = self.client.spot_checks
        if drawn and checks is not None:
            try:
                verdict = await checks.check(self, hop)
                pay = verdict.liar != hop.peer_id
            except (*HOP_FAILURES, LedgerError) as exc:
                log.warning("spot check of %s could not finish: %s", hop.peer_id[:8], exc)
        await self.close_hop(hop, pay=pay)


__all__ = ["INLINE_EMBED_TOKENS", "MeshSession"]

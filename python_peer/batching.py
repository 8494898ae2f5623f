"""Batched decode across sessions: single-token steps of batch-1 sessions that reach one span server
together run as one onnxruntime call per blocks shard, over their KV caches padded to one length.

Eight sessions decoding on a peer would otherwise make eight matrix-vector passes over the same weights
and contend for the cores; one batched pass reads the weights once (``BlocksRunner.forward_batch`` pads the
shorter caches on the left, masks the padding and splits the present caches back per session).

The rule, per span server (``DecodeBatcher``):

- A FORWARD of one new token of a batch-1 session is a *decode step*; everything else (prefill, batch > 1)
  runs alone, at once, as before.
- Decode steps queue in arrival order. A batch starts when every decoding session of the server has a
  step queued (a lone session never waits), or when ``max_batch`` steps are queued, or when no step
  arrived for ``gap_s`` (the others are not on their way), or when the oldest queued step has waited
  ``window_s``. Steps that arrive while a batch runs wait for it and form the next batch, which starts
  at once (their window is spent). Over WebRTC the steps of a client's sessions arrive a message at a
  time, each some hundreds of microseconds of SCTP and DTLS apart: a window counted from the oldest
  alone cut such a burst in two, and the halves never met again.
- A batch takes the oldest step and then the next ones, in order, while the padded cache stays within
  twice the sessions' own (``padding_fits``): a peer's KV memory is reserved per session, so padding may
  not multiply it. A step left out keeps its place and goes first into the next batch.
- A lone session's decode step (no other session of the server decoding, nothing queued or running)
  runs on the event loop itself rather than in a worker thread, while the server's last lone step took at
  most ``inline_s`` (25 ms): a thread hop there and back costs about half a millisecond on every hop of
  every token (measured on the mesh, bench/README.md), and a loop blocked that briefly delays nothing
  else much (pings, other links' frames, signaling wait at most that long). A slower shard (a big model,
  a Raspberry Pi) runs its steps in a thread as before, so the loop never stalls for long; the first lone
  step always does, and is timed.
- Latency bound: a decode step waits at most ``window_s`` plus the batch that was running when it
  arrived, then runs in its own batch; steps queued before it that do not fit one batch (more than
  ``max_batch``, or lengths too far apart) add their batches. With every session of similar length and
  no more than ``max_batch`` of them, that is ``window_s + 2 x`` one batch's time.
- One session's bad step fails only that session: each step is checked alone before it joins a batch
  (shape, finite values, session open in every shard), and if a batched call still fails, nothing was
  committed and every step of it runs again alone, so the error lands on the session that caused it.
  A session closed while its batch runs changes nothing for the others: its new cache is dropped.

``RowBatcher`` does the same for a stateless shard whose rows are independent: a mesh client stacks the
heads of its sessions into one call, waiting up to a window for those of its sessions that are in a step
(a lone session never waits, and its head runs on the event loop under the same ``inline_s`` rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import SessionError, ShardInputError
from .runner import BatchStep, BlocksRunner

log = logging.getLogger(__name__)

RunAlone = Callable[[str, np.ndarray, np.ndarray, np.ndarray], np.ndarray]

INLINE_S = 0.025  # a lone step runs on the event loop while a lone step takes at most this long (module doc)


@dataclass(frozen=True)
class BatchConfig:
    """How a span server batches decode steps; ``enabled=False`` runs every step alone, as before."""

    enabled: bool = True
    max_batch: int = 16  # decode steps in one onnxruntime call
    window_s: float = 0.02  # how long the oldest queued step may wait for others before its batch starts
    gap_s: float = 0.008  # ... or this long after the last step arrived, if sooner: no more are coming
    inline_s: float = INLINE_S  # a lone session's step runs on the loop while such steps take this at most

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch {self.max_batch} must be at least 1")
        if not 0 <= self.window_s <= 1.0:
            raise ValueError(f"window_s {self.window_s} must be within 0..1 s")
        if not 0 <= self.gap_s <= 1.0:
            raise ValueError(f"gap_s {self.gap_s} must be within 0..1 s")
        if not 0 <= self.inline_s <= 1.0:
            raise ValueError(f"inline_s {self.inline_s} must be within 0..1 s (0: never on the loop)")


async def _next_arrival(arrived: asyncio.Event, timeout: float) -> bool:
    """Wait for the next call to arrive (``arrived`` set); False if ``timeout`` seconds passed first."""
    arrived.clear()
    try:
        async with asyncio.timeout(timeout):
            await arrived.wait()
    except TimeoutError:
        return False
    return True


def padding_fits(lengths: Sequence[int]) -> bool:
    """Whether sessions of these past lengths may share a batch: the padded cache (every session at the
    longest length, plus the new token) holds at most twice the positions the sessions hold themselves,
    or 64 positions per session, whichever is more (short sessions batch freely)."""
    padded = len(lengths) * (max(lengths) + 1)
    own = sum(n + 1 for n in lengths)
    return padded <= max(2 * own, 64 * len(lengths))


@dataclass
class BatchStats:
    """What the batcher did: steps run, batches, and how many batches of each size (1 = alone)."""

    steps: int = 0
    batches: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    fallbacks: int = 0  # batched calls that failed and ran again step by step
    inline: int = 0  # lone steps run on the event loop (``inline_s``)
    longest_wait_s: float = 0.0  # the longest time a step spent queued before its batch started

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)

    def count(self, size: int, *, inline: bool = False) -> None:
        """One call of ``size`` steps (1: alone), run on the event loop when ``inline``."""
        self.steps += size
        self.batches += 1
        self.sizes[size] += 1
        self.inline += inline


@dataclass
class _Queued:
    key: str
    hidden: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    future: asyncio.Future[np.ndarray]
    since: float  # loop time at which it was queued


class DecodeBatcher:
    """Gathers the decode steps of one span server's sessions and runs them batched (module docstring)."""

    def __init__(
        self,
        runners: Sequence[BlocksRunner],
        run_alone: RunAlone,
        config: BatchConfig | None = None,
    ) -> None:
        """``runners``: the span's blocks shards in order; ``run_alone``: how the server runs one step by
        itself through all of them (it closes a session that some shards advanced and others did not)."""
        if not runners:
            raise ValueError("a batcher needs the span's blocks runners")
        self.runners = list(runners)
        self.config = config if config is not None else BatchConfig()
        self.stats = BatchStats()
        self._run_alone = run_alone
        self._hidden_size = runners[0].hidden_size
        self._queue: deque[_Queued] = deque()
        self._last_arrival = 0.0
        self._arrived = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._alone_s = math.inf  # how long the last lone step took (unknown: run it in a thread)

    @property
    def queued(self) -> int:
        """Decode steps waiting for their batch."""
        return len(self._queue)

    def is_decode_step(self, key: str, hidden: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> bool:
        """One finite new token of an open batch-1 session, shaped as the shard takes it: batchable.
        Anything else runs alone and gets the runner's own error there."""
        state = self.runners[0].sessions.get(key)
        return (
            self.config.enabled
            and state is not None
            and state.batch == 1
            and hidden.shape == (1, 1, self._hidden_size)
            and hidden.dtype == np.float32
            and mask.shape == (1, 1)
            and positions.shape == (1, 1)
            and bool(np.isfinite(hidden).all())
        )

    async def forward(
        self, key: str, hidden: np.ndarray, mask: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """Run one step of session ``key`` through the span: batched with others if it is a decode step."""
        if not self.is_decode_step(key, hidden, mask, positions):
            self.stats.count(1)
            return await asyncio.to_thread(self._run_alone, key, hidden, mask, positions)
        if self._alone_s <= self.config.inline_s and self._lone():
            self.stats.count(1, inline=True)
            return self._timed_alone(key, hidden, mask, positions)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a server may outlive a loop (tests): a fresh event for this one
            self._loop, self._arrived, self._queue = loop, asyncio.Event(), deque()
        item = _Queued(
            key,
            np.ascontiguousarray(hidden),
            mask.astype(np.int64),
            positions.astype(np.int64),
            loop.create_future(),
            loop.time(),
        )
        self._queue.append(item)
        self._last_arrival = item.since
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name="decode-batcher")
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in self._queue:  # not started: nothing ran for it
                self._queue.remove(item)
            raise

    def _lone(self) -> bool:
        """No other session decoding, no step queued, no batch running: a step now would run alone."""
        return (
            self._decoding_sessions() <= 1
            and not self._queue
            and (self._worker is None or self._worker.done())
        )

    def _timed_alone(
        self, key: str, hidden: np.ndarray, mask: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """One decode step alone, its duration kept for the ``inline_s`` rule (on the loop or in a thread)."""
        started = time.perf_counter()
        try:
            return self._run_alone(key, hidden, mask, positions)
        finally:
            self._alone_s = time.perf_counter() - started

    def _decoding_sessions(self) -> int:
        """Sessions that could send a decode step now: open, batch 1, past their prompt."""
        return sum(1 for s in list(self.runners[0].sessions.values()) if s.batch == 1 and s.length > 0)

    async def _work(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch = self._take()
                if not batch:
                    continue
                now = asyncio.get_running_loop().time()
                self.stats.longest_wait_s = max(self.stats.longest_wait_s, now - min(q.since for q in batch))
                try:
                    outcomes: list[np.ndarray | BaseException] = await asyncio.to_thread(self._run, batch)
                except Exception as exc:  # a bug here must fail these steps, not leave them waiting
                    log.exception("the decode batcher failed")
                    outcomes = [SessionError(f"internal error in the batch: {type(exc).__name__}")] * len(
                        batch
                    )
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():
                        continue  # its caller gave up (cancelled); the session's step still ran
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            # Cancelled with the loop: whoever still waits learns it, rather than hanging.
            while self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    item.future.set_exception(SessionError("the span server stopped before this step ran"))

    async def _gather(self) -> None:
        """Wait until enough steps are queued, none arrived for ``gap_s``, or the oldest's window is over."""
        loop = asyncio.get_running_loop()
        while self._queue:
            wanted = min(self.config.max_batch, max(1, self._decoding_sessions()))
            until = min(self._queue[0].since + self.config.window_s, self._last_arrival + self.config.gap_s)
            remaining = until - loop.time()
            if len(self._queue) >= wanted or remaining <= 0:
                return
            if not await _next_arrival(self._arrived, remaining):
                return

    def _take(self) -> list[_Queued]:
        """The oldest queued step and the next ones that fit with it (``max_batch``, ``padding_fits``)."""
        batch: list[_Queued] = []
        lengths: list[int] = []
        left: deque[_Queued] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue
            state = self.runners[0].sessions.get(item.key)
            length = state.length if state is not None else 0
            if len(batch) < self.config.max_batch and (not batch or padding_fits([*lengths, length])):
                batch.append(item)
                lengths.append(length)
            else:
                left.append(item)
        self._queue.extendleft(reversed(left))
        return batch

    def _run(self, batch: list[_Queued]) -> list[np.ndarray | BaseException]:
        """In a worker thread: the batch through every shard, committed only if every shard ran it; on a
        failure, every step again alone, so that each session gets its own outcome."""
        outcomes: list[np.ndarray | BaseException | None] = [None] * len(batch)
        live: list[int] = []
        for i, item in enumerate(batch):
            try:
                for runner in self.runners:
                    runner.check_decode_step(item.key, item.hidden, item.mask, item.positions)
            except (SessionError, ShardInputError) as exc:
                outcomes[i] = exc
            else:
                live.append(i)
        if len(live) > 1:
            started = time.perf_counter()
            try:
                hidden = np.concatenate([batch[i].hidden for i in live], axis=0)
                pending = []
                for runner in self.runners:
                    steps = [
                        BatchStep(batch[i].key, hidden[j : j + 1], batch[i].mask, batch[i].positions)
                        for j, i in enumerate(live)
                    ]
                    result = runner.forward_batch(steps)
                    pending.append(result)
                    hidden = result.hidden
            except Exception as exc:  # nothing is committed yet: each step again alone, below
                log.warning("a batch of %d decode steps failed (%s); running them one by one", len(live), exc)
                self.stats.fallbacks += 1
            else:
                for result in pending:
                    result.commit()
                for j, i in enumerate(live):
                    outcomes[i] = hidden[j : j + 1]
                self.stats.count(len(live))
                log.debug(
                    "batch of %d decode steps in %.1f ms", len(live), 1e3 * (time.perf_counter() - started)
                )
                live = []
        for i in live:
            item = batch[i]
            self.stats.count(1)
            try:
                outcomes[i] = self._timed_alone(item.key, item.hidden, item.mask, item.positions)
            except Exception as exc:
                outcomes[i] = exc
        return [o if o is not None else SessionError("internal: a step got no outcome") for o in outcomes]


class RowBatcher:
    """Concurrent calls of a stateless shard (a client's head) whose rows are independent, run as one call.

    A call that finds the shard idle runs at once unless callers inside ``expecting`` say more rows are on
    their way: then it waits until that many rows are queued, or ``window_s`` after the oldest queued
    call (a lone session never waits: it expects only its own row, and its call runs on the event loop while
    a call alone takes at most ``inline_s``; ``arriving`` does the same for a call no one waited for). Calls
    that arrive while one runs are stacked into the next call, up to ``max_rows`` rows. Each caller gets its
    own rows back, equal to a call alone within float rounding (a batched GEMM may sum in another order).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_rows: int = 16,
        window_s: float = 0.0,
        inline_s: float = INLINE_S,
    ) -> None:
        self._run = run
        self.max_rows = max_rows
        self.window_s = window_s
        self.inline_s = inline_s
        self._alone_s = math.inf  # how long the last call alone took (unknown: run it in a thread)
        self.expected = 0  # rows on their way: callers inside ``expecting``
        self.stats = BatchStats()
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray], float]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        if (
            self._alone_s <= self.inline_s
            and self.expected == rows.shape[0]  # a lone caller: only its own rows are on their way
            and not self._queue
            and (self._worker is None or self._worker.done())
        ):
            self.stats.count(1, inline=True)
            return self._timed(rows)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((rows, future, loop.time()))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()  # bound to this loop
            self._worker = loop.create_task(self._work(), name="row-batcher")
        return await future

    @contextlib.contextmanager
    def expecting(self, rows: int) -> Iterator[None]:
        """While inside, ``rows`` more rows are on their way: a call waits for them (``window_s`` at most).
        Leaving, they are no longer waited for (a call that waits counts again)."""
        self.expected += rows
        try:
            yield
        finally:
            self.expected -= rows
            self._arrived.set()

    @contextlib.contextmanager
    def arriving(self, rows: int) -> Iterator[None]:
        """Around a call no one waited for (a session's prompt): its ``rows`` count as on their way only
        while no others are, so that a lone caller's call runs on the event loop as a decode step's does
        (``inline_s``), while among callers that wait for each other it neither waits nor is waited for."""
        with self.expecting(rows if self.expected == 0 else 0):
            yield

    def _timed(self, rows: np.ndarray) -> np.ndarray:
        """One call alone, its duration kept for the ``inline_s`` rule (on the loop or in a thread)."""
        started = time.perf_counter()
        try:
            return self._run(rows)
        finally:
            self._alone_s = time.perf_counter() - started

    async def _gather(self) -> None:
        """Wait until the rows ``expected`` are queued, or ``window_s`` after the oldest queued call."""
        if self.window_s <= 0:
            return
        loop = asyncio.get_running_loop()
        while self._queue:
            wanted = min(self.max_rows, self.expected)
            queued = sum(r.shape[0] for r, f, _ in self._queue if not f.done())
            remaining = self._queue[0][2] + self.window_s - loop.time()
            if queued >= wanted or remaining <= 0:
                return
            if not await _next_arrival(self._arrived, remaining):
                return

    async def _work(self) -> None:
        while self._queue:
            await self._gather()
            taken: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
            count = 0
            while self._queue and (not taken or count + self._queue[0][0].shape[0] <= self.max_rows):
                rows, future, _ = self._queue.popleft()
                if not future.done():
                    taken.append((rows, future))
                    count += rows.shape[0]
            if not taken:
                continue
            self.stats.count(len(taken))
            outs: list[np.ndarray | BaseException]
            try:
                if len(taken) == 1:
                    outs = [await asyncio.to_thread(self._timed, taken[0][0])]
                else:
                    stacked = await asyncio.to_thread(
                        self._run, np.concatenate([r for r, _ in taken], axis=0)
                    )
                    bounds = np.cumsum([0] + [r.shape[0] for r, _ in taken])
                    outs = [stacked[a:b] for a, b in itertools.pairwise(bounds)]
            except Exception as exc:  # a stacked call that fails: each caller alone, for its own error
                if len(taken) == 1:
                    outs = [exc]
                else:
                    outs = []
                    for rows, _ in taken:
                        try:
                            outs.append(await asyncio.to_thread(self._run, rows))
                        except Exception as alone_exc:
                            outs.append(alone_exc)
            for (_, future), out in zip(taken, outs, strict=True):
                if future.done():
                    continue
                if isinstance(out, BaseException):
                    future.set_exception(out)
                else:
                    future.set_result(out)


__all__ = ["BatchConfig", "BatchStats", "DecodeBatcher", "RowBatcher", "padding_fits"]

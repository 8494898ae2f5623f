"""The contenders the mesh benchmark decodes with, and one greedy run of each, interleaved per repeat.

The mesh (a ``MeshClient`` session through the peers), the same shards chained in this process and the
whole model, each behind one async interface (``AsyncDecoder``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from rich.console import Console

from bench.bench_export import Decoder
from bench.mesh_processes import BenchError
from bench.mesh_ttft import TtftProbe
from python_peer.core.errors import PaymentRequiredError
from python_peer.core.wire import FrameFlags
from python_peer.errors import MeshError
from python_peer.hop import HOP_FAILURES
from python_peer.mesh_client import MeshClient
from python_peer.mesh_session import MeshSession
from python_peer.route_hop import Inputs, RouteHop
from python_peer.route_open import concat_inputs
from python_peer.routing import NoRouteError

PROMPT = "What is the capital of France?"
WARMUP_TOKENS = 4

MESH = "mesh (3 peers, loopback)"
MESH_HOP_BY_HOP = (
    "mesh, hop by hop (no push)"  # the same client and peers, each step sent to every hop in turn
)
MESH_ONE_BY_ONE = "mesh, hops opened one by one"  # the open path before route_open.py (issue 15)
MESH_BACK_COPIES = "mesh, outputs sent back"  # pushing peers answer their outputs (no keep, issue 15)
CHAIN = "local chain (same shards)"
WHOLE_OPTIMUM = "whole model (optimum graph)"
WHOLE_SHARD = "whole model (one blocks shard)"


class AsyncDecoder(Protocol):
    """One contender, async: a fresh session per ``begin``, greedy steps with ``next``, then ``end``."""

    name: str

    async def begin(self, ids: Sequence[int]) -> np.ndarray: ...

    async def next(self, token: int) -> np.ndarray: ...

    async def end(self) -> None: ...


class InProcess:
    """A ``bench_export`` decoder run in a worker thread, so the event loop (and its links) stays live."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.name = decoder.name

    async def begin(self, ids: Sequence[int]) -> np.ndarray:
        return await asyncio.to_thread(self.decoder.begin, ids)

    async def next(self, token: int) -> np.ndarray:
        return await asyncio.to_thread(self.decoder.next, token)

    async def end(self) -> None:
        await asyncio.to_thread(self.decoder.end)


class MeshDecoder:
    """One mesh session per ``begin``: embed and head here, every block on the peers."""

    def __init__(
        self,
        name: str,
        client: MeshClient,
        max_length: int,
        *,
        push: bool = True,
        keep: bool = True,
        probe: TtftProbe | None = None,
        one_by_one: bool = False,
    ) -> None:
        """``push``: steps pushed peer to peer (docs/mesh.md, "Push along the route"), or not; ``keep``:
        pushing peers keep their outputs (docs/mesh.md, "Kept outputs") or answer them; ``probe``:
        traces each session's open and first step (``mesh_ttft.py``); ``one_by_one``: the route's hops
        are opened one after another, as before ``route_open.py``."""
        self.name = name
        self.client = client
        self.max_length = max_length
        self.push = push
        self.keep = keep
        self.probe = probe
        self.one_by_one = one_by_one
        self._session: MeshSession | None = None

    async def begin(self, ids: Sequence[int]) -> np.ndarray:
        if self.probe is not None:
            self.probe.begin(self.name)
        try:
            if self.one_by_one:
                self._session = OneByOneSession(self.client, 1, self.max_length)
                await self._session.start()
            else:
                self._session = await self.client.open(1, self.max_length)
            self._session.pushing = self.push and self._session.pushing
            self._session.keeping = self.keep and self._session.keeping
            return await self._step(np.array([ids], dtype=np.int64))
        finally:
            if self.probe is not None:
                self.probe.end(self._session)

    async def next(self, token: int) -> np.ndarray:
        return await self._step(np.array([[token]], dtype=np.int64))

    async def _step(self, ids: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BenchError(f"{self.name}: step before begin")
        logits = await self._session.step(ids, np.ones_like(ids))
        last: np.ndarray = logits[0, -1]
        return last

    async def end(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OneByOneSession(MeshSession):
    """A mesh session whose route's hops are opened one after another (``MeshSession._open_span`` before
    ``route_open.py``): the old open path, as a contender."""

    async def _open_span(self, start: int, end: int, replay: list[Inputs]) -> list[RouteHop]:
        while True:
            try:
                route = await self.client.route(start, end, self.batch * self.max_length)
            except NoRouteError as exc:
                raise MeshError(str(exc)) from exc
            hops: list[RouteHop] = []
            current = route[0].peer_id
            try:
                inputs = concat_inputs(replay)
                for cand in route:
                    current = cand.peer_id
                    hop = await self.open_hop(cand.peer_id, cand.start, cand.end)
                    hops.append(hop)
                    if inputs is not None:
                        out = await hop.forward(
                            *inputs, self.client.config.request_timeout_s, FrameFlags.REPLAY
                        )
                        hop.history.append(inputs)
                        inputs = (out, inputs[1], inputs[2])
                return hops
            except PaymentRequiredError as exc:
                for hop in hops:
                    await self.close_hop(hop)
                raise MeshError(f"peer {current[:16]} refused to serve: {exc}") from exc
            except HOP_FAILURES as exc:
                for hop in hops:
                    await self.close_hop(hop)
                self.note_failure(current, exc)


@dataclass(frozen=True)
class Run:
    ttft_s: float  # session open + prompt + the first token's logits and argmax
    decode_s: float  # the decode steps after it
    tokens: list[int]


async def greedy(decoder: AsyncDecoder, prompt: Sequence[int], steps: int) -> Run:
    start = time.perf_counter()
    try:
        tokens = [int(np.argmax(await decoder.begin(prompt)))]
        first = time.perf_counter()
        for _ in range(steps):
            tokens.append(int(np.argmax(await decoder.next(tokens[-1]))))
        return Run(first - start, time.perf_counter() - first, tokens)
    finally:
        await decoder.end()


@dataclass
class Samples:
    """One contender's single-session runs across repeats."""

    ttft_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the first repeat's
    deterministic: bool = True


async def single_sessions(
    decoders: list[AsyncDecoder], prompt: list[int], steps: int, repeats: int, log: Console
) -> dict[str, Samples]:
    """Warm up, then A, B, C, A, B, C, ...: every contender once per repeat, back to back."""
    for decoder in decoders:
        await greedy(decoder, prompt, WARMUP_TOKENS)
    samples = {d.name: Samples() for d in decoders}
    for repeat in range(repeats):
        for decoder in decoders:
            run = await greedy(decoder, prompt, steps)
            s = samples[decoder.name]
            s.ttft_s.append(run.ttft_s)
            s.decode_tok_s.append(steps / run.decode_s)
            if not s.tokens:
                s.tokens = run.tokens
            elif run.tokens != s.tokens:
                s.deterministic = False
        line = ", ".join(
            f"{n}: {s.ttft_s[-1] * 1e3:.0f} ms, {s.decode_tok_s[-1]:.1f} tok/s" for n, s in samples.items()
        )
        log.log(f"single session, repeat {repeat + 1}/{repeats}: {line}")
    return samples


@dataclass
class Interleaved:
    """Two contenders' decode steps taken in turn, token by token: each step's wall time, per repeat."""

    first: list[list[float]] = field(default_factory=list)  # seconds of each step, one list per repeat
    other: list[list[float]] = field(default_factory=list)
    same_tokens: bool = True

    def ratios(self) -> list[float]:
        """Per repeat: the other's decode time over the first's (the first's tok/s over the other's)."""
        return [sum(o) / sum(f) for f, o in zip(self.first, self.other, strict=True)]

    def token_ratios(self) -> list[float]:
        """Every step's ratio, the other's time over the first's."""
        return [
            o / f for fs, os in zip(self.first, self.other, strict=True) for f, o in zip(fs, os, strict=True)
        ]


async def interleaved_decode(
    first: AsyncDecoder, other: AsyncDecoder, prompt: Sequence[int], steps: int, repeats: int, log: Console
) -> Interleaved:
    """Both contenders prefill ``prompt``, then take their decode steps in turn (the order swapped every
    step), each step timed alone: both meet the machine's load of the same few milliseconds, which
    back-to-back runs of a second or more do not."""
    result = Interleaved()
    for repeat in range(repeats):
        times: dict[int, list[float]] = {0: [], 1: []}
        decoders = (first, other)
        tokens: dict[int, list[int]] = {}
        try:
            for i, decoder in enumerate(decoders):
                tokens[i] = [int(np.argmax(await decoder.begin(prompt)))]
            for step in range(steps):
                for i in (0, 1) if step % 2 == 0 else (1, 0):
                    start = time.perf_counter()
                    logits = await decoders[i].next(tokens[i][-1])
                    times[i].append(time.perf_counter() - start)
                    tokens[i].append(int(np.argmax(logits)))
        finally:
            for decoder in decoders:
                await decoder.end()
        result.first.append(times[0])
        result.other.append(times[1])
        result.same_tokens &= tokens[0] == tokens[1]
        log.log(
            f"interleaved decode, repeat {repeat + 1}/{repeats}: {first.name} {sum(times[0]) / steps * 1e3:.1f} "
            f"ms a token, {other.name} {sum(times[1]) / steps * 1e3:.1f}"
        )
    return result

"""One hop of a generation's route: a peer serving one span in a session, and what the client sent it.

A ``RouteHop`` builds the ``FORWARD`` of its next step and checks the answer (the output's shape, and the
peer's signature over the input chain: ``spot_check.AnswerCheck``); it keeps what each step was sent
(``history``, replayed to a replacement after a failover) and returned (``outputs`` and ``answers``, for
spot checks), and the token positions sent (``tokens``, what the receipt may claim).

A peer that pushed a step's output on may have kept it instead of answering it (docs/mesh.md, "Kept
outputs"): its answer then carries the signed digest alone, the step's output is a ``KeptOutput`` (in this
hop's ``outputs`` as None, in the next hop's ``history``), and ``fetch`` gets it when the client needs it
(a step it sends the next peer itself, a replay, a spot check), checked against that digest.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.answers import INPUT_CHAIN_START, SignedAnswer, chain_input, wire_digest
from python_peer.core.errors import AI4AllError, OutOfOrderError
from python_peer.core.wire import NO_FLAGS, Frame, FrameFlags, FrameType

from .errors import PeerError
from .hop import HOP_FAILURES, HopClient
from .tensors import expect, from_wire, to_wire

if TYPE_CHECKING:
    from .spot_check import AnswerCheck


class KeptOutputError(PeerError):
    """Peer ``peer_id`` did not hand over an output it kept (docs/mesh.md, "Kept outputs"), or another."""

    def __init__(self, peer_id: str, message: str) -> None:
        super().__init__(message)
        self.peer_id = peer_id


class ReplayLostError(AI4AllError):
    """A failover cannot replay its hops: the peer before them lost or withheld the outputs it kept. Not a
    hop failure: the session replays the whole route from the client's own embeddings instead."""


@dataclass(frozen=True)
class KeptOutput:
    """Step ``step``'s output of ``hop``, which its peer kept: known by its signed digest until fetched."""

    hop: RouteHop
    step: int
    shape: tuple[int, ...]

    @property
    def digest(self) -> str:
        signed = self.hop.answers[self.step]
        assert signed is not None  # a peer's answer is kept only when signed (RouteHop.accept)
        return signed.answer.output

    async def fetch(self, timeout: float) -> np.ndarray:
        return await self.hop.fetch(self.step, self.shape, timeout)


Inputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # a step's hidden states, attention mask, position ids
Hidden = np.ndarray | KeptOutput  # a step's hidden states, as the client has them
StepInputs = tuple[Hidden, np.ndarray, np.ndarray]  # a step's inputs, as the client has them


async def resolve(inputs: StepInputs, timeout: float) -> Inputs:
    """``inputs`` with kept hidden states fetched."""
    hidden, mask, positions = inputs
    if isinstance(hidden, KeptOutput):
        hidden = await hidden.fetch(timeout)
    return hidden, mask, positions


@dataclass
class RouteHop:
    """One peer serving one span within a session, and what we sent it (for replay)."""

    peer_id: str
    start: int
    end: int
    rpc: HopClient
    session: bytes = field(default_factory=lambda: os.urandom(16))
    next_step: int = 0
    history: list[StepInputs] = field(default_factory=list)
    tokens: int = 0  # token positions sent (batch x length), what the receipt may claim
    check: AnswerCheck | None = None  # None: answers taken unsigned (this node's own span)
    chain: str = INPUT_CHAIN_START  # the input chain through the last step answered
    outputs: list[np.ndarray | None] = field(default_factory=list)  # each step's output (None: kept)
    answers: list[SignedAnswer | None] = field(default_factory=list)  # each step's signed answer
    pushes: bool = False  # the peer said at OPEN it pushes and takes pushes (relay.py)
    _fetching: dict[int, asyncio.Future[np.ndarray]] = field(default_factory=dict, repr=False)

    def request(
        self,
        hidden: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        flags: FrameFlags = NO_FLAGS,
        meta: dict[str, object] | None = None,
    ) -> Frame:
        """The FORWARD of this hop's next step."""
        tensors = (
            to_wire(names.HIDDEN_IN, hidden),
            to_wire(names.ATTENTION_MASK, mask),
            to_wire(names.POSITION_IDS, positions),
        )
        return Frame(FrameType.FORWARD, self.session, self.next_step, flags, meta=meta or {}, tensors=tensors)

    async def forward(
        self,
        hidden: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        timeout: float,
        flags: FrameFlags = NO_FLAGS,
    ) -> np.ndarray:
        frame = self.request(hidden, mask, positions, flags)
        out = self.accept((hidden, mask, positions), await self.rpc.call(frame, timeout))
        return out if isinstance(out, np.ndarray) else await out.fetch(timeout)

    def accept(self, inputs: StepInputs, answer: Frame) -> Hidden:
        """The output of ``answer`` to this hop's step of ``inputs`` (sent by us, or pushed by the previous
        peer), checked (shape, signature over the input chain); the hop moves on to its next step. A
        signed answer may carry the output's digest alone: the peer kept it (``KeptOutput``). The client
        asks that of pushing peers only, but takes it from any: a pusher may have added ``keep``."""
        hidden, mask, positions = inputs
        shape = hidden.shape
        self.tokens += shape[0] * shape[1]
        hidden_digest = (
            hidden.digest if isinstance(hidden, KeptOutput) else wire_digest(to_wire(names.HIDDEN_IN, hidden))
        )
        digests = [
            hidden_digest,
            wire_digest(to_wire(names.ATTENTION_MASK, mask)),
            wire_digest(to_wire(names.POSITION_IDS, positions)),
        ]
        chain = chain_input(self.chain, digests)
        out: Hidden
        signed: SignedAnswer | None
        if self.check is not None and not any(t.name == names.HIDDEN_OUT for t in answer.tensors):
            signed = self.check.check(self, answer, chain, shape[1], kept=True)
            out, stored = KeptOutput(self, self.next_step, shape), None
        else:
            stored = out = expect(answer, names.HIDDEN_OUT, "f", 3)
            if out.shape != shape:
                raise PeerError(
                    f"peer {self.peer_id[:16]} returned hidden states {list(out.shape)} for {list(shape)}"
                )
            signed = self.check.check(self, answer, chain, shape[1]) if self.check is not None else None
        self.chain = chain
        self.outputs.append(stored)
        self.answers.append(signed)
        self.next_step += 1
        return out

    async def fetch(self, step: int, shape: tuple[int, ...], timeout: float) -> np.ndarray:
        """Step ``step``'s output, which the peer kept (FETCH), checked against its signed digest; any
        failure is a ``KeptOutputError`` naming this peer (it signed that it kept the output). Callers
        asking for the same step at once share one FETCH."""
        out = self.outputs[step]
        if out is not None:
            return out
        fetching = self._fetching.get(step)
        if fetching is None:
            fetching = self._fetching[step] = asyncio.ensure_future(self._fetch(step, shape, timeout))
            fetching.add_done_callback(lambda _: self._fetching.pop(step, None))
        return await asyncio.shield(fetching)

    async def _fetch(self, step: int, shape: tuple[int, ...], timeout: float) -> np.ndarray:
        signed = self.answers[step]
        assert signed is not None  # kept answers are signed (accept)
        fetch = Frame(FrameType.FETCH, self.session, step)
        try:
            try:
                answer = await self.rpc.call(fetch, timeout)
            except OutOfOrderError:  # the late refusal of a step both pushed and sent here, not an answer
                answer = await self.rpc.call(fetch, timeout)
            tensors = [t for t in answer.tensors if t.name == names.HIDDEN_OUT]
            if len(tensors) != 1 or wire_digest(tensors[0]) != signed.answer.output:
                raise PeerError("it handed over something other than the output it signed")
            out = from_wire(tensors[0])
            if out.shape != shape or out.dtype.kind != "f":  # the signed digest was of a wrong tensor
                raise PeerError(f"it kept {out.dtype} {list(out.shape)} for {list(shape)}")
        except HOP_FAILURES as exc:
            raise KeptOutputError(
                self.peer_id,
                f"peer {self.peer_id[:16]} did not hand over its kept output of step {step}: {exc}",
            ) from exc
        self.outputs[step] = out
        return out

    async def fetch_history(self, timeout: float) -> list[Inputs]:
        """This hop's ``history``, the previous hop's kept outputs in it fetched (to replay it)."""
        history = list(await asyncio.gather(*(resolve(inputs, timeout) for inputs in self.history)))
        self.history[: len(history)] = history
        return history

    async def fetch_kept(self, timeout: float) -> list[np.ndarray]:
        """Every step's output, this peer's kept ones fetched, and the history's (to check the hop)."""
        await self.fetch_history(timeout)
        shapes = [inputs[0].shape for inputs in self.history]
        return list(
            await asyncio.gather(*(self.fetch(i, shapes[i], timeout) for i in range(len(self.outputs))))
        )


__all__ = [
    "Hidden",
    "Inputs",
    "KeptOutput",
    "KeptOutputError",
    "ReplayLostError",
    "RouteHop",
    "StepInputs",
    "resolve",
]

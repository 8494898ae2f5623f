"""One hop of a generation's route: a peer serving one span in a session, and what the client sent it.

A ``RouteHop`` builds the ``FORWARD`` of its next step and checks the answer (the output's shape, and the
peer's signature over the input chain: ``spot_check.AnswerCheck``); it keeps what each step was sent
(``history``, replayed to a replacement after a failover) and returned (``outputs`` and ``answers``, for
spot checks), and the token positions sent (``tokens``, what the receipt may claim).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.answers import INPUT_CHAIN_START, SignedAnswer, chain_input, wire_digest
from python_peer.core.wire import NO_FLAGS, Frame, FrameFlags, FrameType

from .errors import PeerError
from .hop import HopClient
from .tensors import expect, to_wire

if TYPE_CHECKING:
    from .spot_check import AnswerCheck


@dataclass
class RouteHop:
    """One peer serving one span within a session, and what we sent it (for replay)."""

    peer_id: str
    start: int
    end: int
    rpc: HopClient
    session: bytes = field(default_factory=lambda: os.urandom(16))
    next_step: int = 0
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    tokens: int = 0  # token positions sent (batch x length), what the receipt may claim
    check: AnswerCheck | None = None  # None: answers taken unsigned (this node's own span)
    chain: str = INPUT_CHAIN_START  # the input chain through the last step answered
    outputs: list[np.ndarray] = field(default_factory=list)  # what each step returned, for spot checks
    answers: list[SignedAnswer | None] = field(default_factory=list)  # each step's signed answer
    pushes: bool = False  # the peer said at OPEN it pushes and takes pushes (relay.py)

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
        return self.accept(frame, await self.rpc.call(frame, timeout))

    def accept(self, frame: Frame, answer: Frame) -> np.ndarray:
        """The output of ``answer`` to this hop's ``frame`` (sent by us, or pushed by the previous peer),
        checked (shape, signature over the input chain); the hop moves on to its next step."""
        hidden = expect(frame, names.HIDDEN_IN, "f", 3)
        tensors = frame.tensors
        self.tokens += hidden.shape[0] * hidden.shape[1]
        out = expect(answer, names.HIDDEN_OUT, "f", 3)
        if out.shape != hidden.shape:
            raise PeerError(
                f"peer {self.peer_id[:16]} returned hidden states {list(out.shape)} for {list(hidden.shape)}"
            )
        chain = chain_input(self.chain, [wire_digest(t) for t in tensors])
        signed = self.check.check(self, answer, chain, hidden.shape[1]) if self.check is not None else None
        self.chain = chain
        self.outputs.append(out)
        self.answers.append(signed)
        self.next_step += 1
        return out


__all__ = ["RouteHop"]

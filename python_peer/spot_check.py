"""Verifying what peers answer: signed answers on every hop, and spot checks (BOINC's adaptive replication).

Every FORWARD answer from a remote peer must carry its signature over what it was asked and what it
returned (``core/answers.py``); ``AnswerCheck`` recomputes that commitment from what the client sent and
received, and a missing, malformed or mismatching one is a hop failure (``BadAnswerError``): the client
routes around the peer like any other failure.

Spot checks: when a session closes, the client draws, for each remote hop, whether to check it, with a
probability that falls with the peer's run of passed checks (``SpotCheckPolicy.rate``: 1 for a new peer
until it passed ``warmup`` checks, then ``(warmup / (passes + 1))**2``, never below ``floor``). A checked hop's history (the inputs the client keeps for
failover replay anyway) is replayed step by step to a second peer serving the same blocks, drawn at
random among the others, so the checked peer cannot tell a check from another client. Each step's outputs
are compared within the tolerance of the shards' dtype (``TOLERANCES``). A disagreement is settled by a
third peer (or by the client's own node, when it serves the same span and no third peer does: that
verdict is the client's own and makes no evidence, having no third signature): the one whose answer
differs from the two others is the liar. The client then writes an
``evidence`` entry in its ledger (``core/evidence.py``), never countersigns the liar's receipt for that
session, and routes around the liar from then on (``SpotChecks.caught``, and the ledger's reputation:
``core/reputation.py``). Checks run after the session's last token, so they delay no token; they delay
the session's close (and its receipts) by one replay of the hop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.answers import Answer, SignedAnswer, check_answer, read_answer, wire_digest
from python_peer.core.errors import LedgerError, PaymentRequiredError
from python_peer.core.evidence import Evidence
from python_peer.core.ledger_fields import Verify
from python_peer.core.spot_policy import (
    MAX_TRACKED_PEERS,
    SPOT_CHECK_FLOOR,
    SPOT_CHECK_TOLERANCES,
    SPOT_CHECK_WARMUP,
    check_rate,
    tolerance_for,
)
from python_peer.core.wire import FrameFlags

from .errors import PeerError
from .hop import HOP_FAILURES
from .route_hop import RouteHop, resolve

if TYPE_CHECKING:
    from python_peer.core.wire import Frame

    from .mesh_session import MeshSession

log = logging.getLogger(__name__)

TOLERANCES = SPOT_CHECK_TOLERANCES  # per shard dtype, defined once in core/spot_policy.py


class BadAnswerError(PeerError):
    """A peer's answer was unsigned, or signed over something other than what it returned."""


class AnswerCheck:
    """The client's check of each answer's signature: what it expects the server to have committed to."""

    def __init__(self, client_id: str, model: str, verify: Verify) -> None:
        self.client_id = client_id
        self.model = model
        self.verify = verify

    def check(
        self, hop: RouteHop, answer: Frame, chain: str, tokens: int, *, kept: bool = False
    ) -> SignedAnswer:
        """The answer's signed commitment, or ``BadAnswerError`` (a hop failure). With ``kept`` the answer
        carries no output: its signed digest stands for the output the peer kept (``RouteHop.fetch``)."""
        signed = read_answer(answer.meta, hop.peer_id)
        if not isinstance(signed, SignedAnswer):
            raise BadAnswerError(f"{signed.code}: {signed.reason}")
        output = signed.answer.output if kept else wire_digest(answer.tensor(names.HIDDEN_OUT))
        expected = Answer(
            hop.session.hex(),
            self.model,
            hop.start,
            hop.end,
            hop.next_step,
            tokens,
            chain,
            output,
            self.client_id,
            hop.peer_id,
        )
        result = check_answer(signed, expected, self.verify)
        if not isinstance(result, SignedAnswer):
            raise BadAnswerError(f"{result.code}: {result.reason}")
        return result


@dataclass(frozen=True)
class SpotCheckPolicy:
    """How often hops are checked and how close two answers must be.

    A peer with ``passes`` checks passed in a row is checked in every session until it has passed
    ``warmup`` checks, then with probability ``max(floor, (warmup / (passes + 1))**2)``: a quarter of its
    sessions after 9 passes, one in ten after 15, and ``floor`` (5%) from 22 on. Checking a session replays it once,
    so once peers are established the checks cost about ``floor`` of the block-tokens used
    (docs/trust.md gives figures).
    """

    floor: float = SPOT_CHECK_FLOOR
    warmup: int = SPOT_CHECK_WARMUP
    tolerances: tuple[tuple[str, float], ...] = tuple(TOLERANCES.items())
    seed: int | None = None  # tests and benchmarks draw reproducibly; None: the system's randomness

    def rate(self, passes: int) -> float:
        return check_rate(passes, self.warmup, self.floor)

    def tolerance(self, dtype: str) -> float:
        return tolerance_for(dtype, dict(self.tolerances))


DEFAULT_POLICY = SpotCheckPolicy()


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(max |a|, max |b|)``; infinite when the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), 1e-6)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def agree(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Whether two outputs of the same step agree: ``max |a - b| <= tolerance * max(max |a|, max |b|)``."""
    return relative_diff(a, b) <= tolerance


@dataclass
class CheckStats:
    """What the checks of one client cost and found: block-tokens are blocks x token positions."""

    sessions_checked: int = 0
    passed: int = 0
    caught: int = 0
    inconclusive: int = 0
    unchecked: int = 0  # drawn for a check, but no other peer serves the span
    used_block_tokens: int = 0  # of the hops the client used for its own sessions
    check_block_tokens: int = 0  # replayed to checking and settling peers
    largest_agreeing_diff: float = 0.0  # the largest ``relative_diff`` of a passed check's step


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one hop: ``passed``, ``liar`` (with ``liar`` and ``evidence``),
    ``inconclusive`` or ``unchecked``."""

    outcome: str
    liar: str | None = None
    evidence: Evidence | None = None
    step: int | None = None


@dataclass
class _Replay:
    """A replay of a hop's history to another peer, step by step: its outputs and signed answers."""

    hop: RouteHop
    outputs: list[np.ndarray] = field(default_factory=list)
    answers: list[SignedAnswer | None] = field(default_factory=list)


class SpotChecks:
    """A client's spot checks: the policy, each peer's run of passed checks, the peers it caught."""

    def __init__(self, policy: SpotCheckPolicy) -> None:
        self.policy = policy
        self.rng = random.Random(policy.seed) if policy.seed is not None else random.SystemRandom()
        self.passes: OrderedDict[str, int] = OrderedDict()
        self.caught: OrderedDict[str, str] = OrderedDict()  # peer id -> why
        self.stats = CheckStats()

    def _note_pass(self, peer_id: str) -> None:
        self.passes[peer_id] = self.passes.get(peer_id, 0) + 1
        self.passes.move_to_end(peer_id)
        while len(self.passes) > MAX_TRACKED_PEERS:
            self.passes.popitem(last=False)

    def _note_liar(self, peer_id: str, why: str) -> None:
        self.passes.pop(peer_id, None)
        self.caught[peer_id] = why
        while len(self.caught) > MAX_TRACKED_PEERS:
            self.caught.popitem(last=False)

    def draw(self, peer_id: str) -> bool:
        """Whether to check ``peer_id``'s hop in this session."""
        return self.rng.random() < self.policy.rate(self.passes.get(peer_id, 0))

    async def check(self, session: MeshSession, hop: RouteHop) -> Verdict:
        """Replay ``hop``'s history to another peer and, on a disagreement, to a third; see the module."""
        client = session.client
        tolerance = self.policy.tolerance(client.manifest.dtype)
        me = client.signal.peer_id
        exclude = {hop.peer_id, me}
        same_span = [
            c for c in await client.candidates(hop.start, hop.end) if (c.start, c.end) == (hop.start, hop.end)
        ]
        others = sorted(
            {
                c.peer_id
                for c in same_span
                if c.peer_id not in exclude
                if not client.avoided(c.peer_id) and not client.bans.banned(c.peer_id)
            }
        )
        # This node's own span settles too (in process, unsigned: a verdict for this client, no evidence).
        holds_span = (
            client.local is not None and hop.peer_id != me and any(c.peer_id == me for c in same_span)
        )
        if not others:
            self.stats.unchecked += 1
            return Verdict("unchecked")
        # What a pushing peer kept rather than answered, fetched: a KeptOutputError names who broke that
        # promise (the caller does not pay it). Done before any hop of the session closes (MeshSession.close).
        outputs = await hop.fetch_kept(client.config.request_timeout_s)
        self.stats.sessions_checked += 1
        checker_id = self.rng.choice(others)
        checker = await self._replay(session, hop, checker_id, len(hop.history))
        if checker is None:
            self.stats.inconclusive += 1
            return Verdict("inconclusive")
        j = next((i for i, out in enumerate(checker.outputs) if not agree(out, outputs[i], tolerance)), None)
        if j is None:
            diffs = [relative_diff(out, outputs[i]) for i, out in enumerate(checker.outputs)]
            self.stats.largest_agreeing_diff = max([self.stats.largest_agreeing_diff, *diffs])
            self._note_pass(hop.peer_id)
            self._note_pass(checker_id)
            self.stats.passed += 1
            await session.close_hop(checker.hop)
            return Verdict("passed")
        log.warning("peer %s and peer %s disagree at step %d: settling", hop.peer_id[:8], checker_id[:8], j)
        settlers = [p for p in others if p != checker_id] or ([me] if holds_span else [])
        settler = await self._replay(session, hop, self.rng.choice(settlers), j + 1) if settlers else None
        verdict = Verdict("inconclusive")
        if settler is not None:
            verdict = self._judge(hop, outputs, checker, settler, tolerance)
        if verdict.liar is None:
            self.stats.inconclusive += 1
        else:
            self.stats.caught += 1
            self._note_liar(verdict.liar, f"lied at step {verdict.step} of a session")
            client.bans.ban(verdict.liar)
            if client.ledger is not None and verdict.evidence is not None:
                try:
                    entry = await asyncio.to_thread(
                        client.ledger.store.append, client.ledger.identity, verdict.evidence
                    )
                    log.warning("evidence against %s recorded (entry %s)", verdict.liar[:8], entry.hash[:12])
                except LedgerError as exc:  # the verdict stands for this client: unpaid, banned, avoided
                    log.error("evidence against %s could not be recorded: %s", verdict.liar[:8], exc)
        for replay in (checker, settler):
            if replay is not None:
                await session.close_hop(replay.hop, pay=replay.hop.peer_id != verdict.liar)
        return verdict

    def _judge(
        self, hop: RouteHop, outputs: list[np.ndarray], checker: _Replay, settler: _Replay, tolerance: float
    ) -> Verdict:
        """The first step where one of three peers disagrees with two that agree: that one lied."""
        runs = [
            (hop.peer_id, outputs, hop.answers),
            (checker.hop.peer_id, checker.outputs, checker.answers),
        ]
        runs.append((settler.hop.peer_id, settler.outputs, settler.answers))
        for step in range(len(settler.outputs)):
            outs = [run[1][step] for run in runs]
            for odd in range(3):
                a, b = [k for k in range(3) if k != odd]
                if agree(outs[a], outs[b], tolerance) and not (
                    agree(outs[odd], outs[a], tolerance) or agree(outs[odd], outs[b], tolerance)
                ):
                    liar, honest = runs[odd][2][step], (runs[a][2][step], runs[b][2][step])
                    evidence = None
                    if (
                        liar is not None
                        and honest[0] is not None
                        and honest[1] is not None
                        and liar.answer.output not in (honest[0].answer.output, honest[1].answer.output)
                    ):
                        evidence = Evidence(liar, (honest[0], honest[1]))
                    return Verdict("liar", runs[odd][0], evidence, step)
            if not agree(outs[0], outs[1], tolerance):
                return Verdict("inconclusive", step=step)  # three different answers: no majority
        return Verdict("inconclusive")

    async def _replay(self, session: MeshSession, hop: RouteHop, peer_id: str, steps: int) -> _Replay | None:
        """Open a session on ``peer_id`` for ``hop``'s span and replay its first ``steps`` steps one by one;
        None if the peer fails (it is banned like any failed hop)."""
        client = session.client
        opened: RouteHop | None = None
        try:
            opened = await session.open_hop(peer_id, hop.start, hop.end)
            replay = _Replay(opened)
            for kept in hop.history[:steps]:
                inputs = await resolve(kept, client.config.request_timeout_s)  # fetched by check already
                out = await opened.forward(*inputs, client.config.request_timeout_s, FrameFlags.REPLAY)
                replay.outputs.append(out)
                replay.answers.append(opened.answers[-1])
                opened.history.append(inputs)
            self.stats.check_block_tokens += opened.tokens * (hop.end - hop.start)
            return replay
        except HOP_FAILURES as exc:
            if isinstance(exc, PaymentRequiredError):  # our balance, not the peer's fault: no ban
                log.info("peer %s will not check for us: %s", peer_id[:8], exc)
            else:
                log.warning("checking peer %s failed: %s", peer_id[:8], exc)
                client.bans.ban(peer_id)
            if opened is not None:
                self.stats.check_block_tokens += opened.tokens * (hop.end - hop.start)
                await session.close_hop(opened)
            return None

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            **s.__dict__,
            "overhead": s.check_block_tokens / s.used_block_tokens if s.used_block_tokens else 0.0,
        }


__all__ = [
    "DEFAULT_POLICY",
    "TOLERANCES",
    "AnswerCheck",
    "BadAnswerError",
    "CheckStats",
    "SpotCheckPolicy",
    "SpotChecks",
    "Verdict",
    "agree",
]

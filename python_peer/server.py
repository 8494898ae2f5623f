"""Serving a span: inference sessions with per-session KV caches, bounded by a memory budget.

A ``SpanServer`` owns the blocks runners of the span this peer serves and answers frames: OPEN reserves
KV memory for a session (refused with a clear error when the budget is full), FORWARD runs new tokens
(steps must come in order, positions within the model's context and the session's ``max_length``),
CLOSE frees the session. Each FORWARD answer carries the peer's signature over the step, the chain of
inputs the session received and the output's hash (``core/answers.py``), so a wrong answer is
attributable. Idle sessions are evicted after a timeout. Sessions
are keyed by the client's peer id too, so one client cannot touch another's session.

With a ledger, OPEN is refused (``payment_required``) unless it names a hold in the client's log (pushed
before, or carried by OPEN itself: ``log``) that pays for the session and fits the client's balance with
its other open holds, CLOSE proposes the
receipt of the work done, and GOSSIP frames carry the ledger exchange (``link_ledger.ServerExchange``).
A ``SpanServer`` is a ``hop.FrameHandler``: links (``rpc.serve_link``) and in-process hops call it alike.
Decode steps of its sessions run batched together (``batching.DecodeBatcher``, docs/mesh.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.answers import (
    ANSWER_META_KEY,
    INPUT_CHAIN_START,
    Answer,
    chain_input,
    sign_answer,
    wire_digest,
)
from python_peer.core.canonical import is_peer_id
from python_peer.core.errors import LedgerError, PaymentRequiredError, WireError
from python_peer.core.ledger_exchange import OPEN_LOG, close_answer, parse_open_log
from python_peer.core.manifest import Manifest
from python_peer.core.protocol import MAX_BATCH, MAX_LENGTH_LIMIT, MAX_SESSIONS
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame

from .batching import BatchConfig, DecodeBatcher
from .errors import PeerError, SessionError, ShardInputError
from .hop import STEP_OUTPUT, Refusal
from .identity import Identity
from .ledger_service import LedgerService
from .link_ledger import HoldTerms, ServerExchange
from .runner import BlocksRunner
from .tensors import expect, to_wire

log = logging.getLogger(__name__)


TEST_LIE_ENV = "AI4ALL_TEST_LIE"  # TEST-ONLY hook (tests/test_liars.py): "zeros" makes this peer lie


def lie_for_tests() -> str | None:
    """The lying mode a test asked this process for through ``AI4ALL_TEST_LIE``, checked here only.

    A test-only hook, so a multi-process test can run a peer that returns zeros for every FORWARD (and
    signs them, like a real liar); never set it otherwise. Any other value stops the peer.
    """
    mode = os.environ.get(TEST_LIE_ENV)
    if mode is None:
        return None
    if mode != "zeros":
        raise PeerError(f"{TEST_LIE_ENV}={mode!r}: the only test lie is 'zeros'; unset it to serve honestly")
    log.warning(
        "%s=%s: this peer LIES on purpose (a test-only hook); unset it to serve honestly", TEST_LIE_ENV, mode
    )
    return mode


@dataclass(frozen=True)
class ServerConfig:
    """Limits of one span server."""

    memory_budget_bytes: int = 512 * 1024 * 1024  # for KV caches
    idle_timeout_s: float = 300.0
    max_sessions: int = MAX_SESSIONS
    threads: int | None = None
    batching: BatchConfig = field(default_factory=BatchConfig)  # decode steps of sessions batched together


@dataclass
class _Session:
    key: str
    batch: int
    max_length: int
    reserved: int
    client: str = ""
    price: int = 0  # what the client was quoted at OPEN, counted against its balance while open
    tokens: int = 0  # token positions processed (batch x length), for the receipt
    length: int = 0
    next_step: int = 0
    chain: str = INPUT_CHAIN_START  # the input chain through the last step (``core/answers.py``)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The key of its KV caches in the runners: ``key`` and which opening of it this is, so a step of a
    # session closed while the step runs never reaches the caches of the same id opened again.
    runs: str = ""


class SpanServer:
    """The blocks ``[span.start, span.end)`` of one model, served to clients over frames."""

    def __init__(
        self,
        model_dir: str | Path,
        manifest: Manifest,
        span: Span,
        config: ServerConfig,
        ledger: LedgerService | None = None,
        *,
        identity: Identity | None = None,
    ) -> None:
        """``identity`` signs answers (the ledger's by default); without either, answers go unsigned and
        clients that check signatures route around this server."""
        shards = [s for s in manifest.blocks if span.start <= s.start and s.end <= span.end]
        if (
            not shards
            or shards[0].start != span.start
            or shards[-1].end != span.end
            or any(a.end != b.start for a, b in itertools.pairwise(shards))
        ):
            available = ", ".join(str(s.span) for s in manifest.blocks)
            raise PeerError(f"span {span} is not a run of this model's block shards ({available})")
        self.model = manifest.name
        self.span = span
        self.num_layers = manifest.num_layers
        self.config = config
        self.runners = [BlocksRunner(model_dir, s, manifest, threads=config.threads) for s in shards]
        self.batcher = DecodeBatcher(self.runners, self._run, config.batching)
        cfg = manifest.config
        self.hidden_size = int(cfg["hidden_size"])
        self.context = manifest.context
        # KV bytes per token per sequence: two fp32 tensors per layer.
        self.bytes_per_token = len(span) * 2 * int(cfg["num_key_value_heads"]) * int(cfg["head_dim"]) * 4
        self.sessions: dict[str, _Session] = {}
        self._steps: set[asyncio.Future[Frame]] = set()  # steps running, their callers gone or not
        self._openings = itertools.count()
        self.tokens_served = 0
        self.ledger = ledger  # without it sessions are free
        self.exchange = ServerExchange(ledger) if ledger is not None else None
        self.identity = (
            identity if identity is not None else (ledger.identity if ledger is not None else None)
        )
        self.test_lie = lie_for_tests()

    @property
    def reserved_bytes(self) -> int:
        return sum(s.reserved for s in self.sessions.values())

    @property
    def kv_free_tokens(self) -> int:
        return max(0, (self.config.memory_budget_bytes - self.reserved_bytes) // self.bytes_per_token)

    def measure_throughput(self, steps: int = 3) -> float:
        """Block-tokens per second of one decode step, measured now; what this peer announces."""
        key = "__throughput__"
        for runner in self.runners:
            runner.open(key, 1)
        try:
            hidden = np.zeros((1, 8, self.hidden_size), dtype=np.float32)
            mask = np.ones((1, 8), dtype=np.int64)
            positions = np.arange(8, dtype=np.int64)[None]
            for runner in self.runners:
                hidden = runner.forward(key, hidden, mask, positions)
            start = time.perf_counter()
            for i in range(steps):
                h = np.zeros((1, 1, self.hidden_size), dtype=np.float32)
                for runner in self.runners:
                    h = runner.forward(key, h, mask[:, :1], np.array([[8 + i]], dtype=np.int64))
            elapsed = max(time.perf_counter() - start, 1e-6)
        finally:
            for runner in self.runners:
                runner.close(key)
        return len(self.span) * steps / elapsed

    async def handle(self, client: str, frame: Frame) -> Frame:
        """Answer one request frame; every failure becomes an ERROR frame, never an exception."""
        try:
            if frame.type is FrameType.OPEN:
                return await self._open(client, frame)
            if frame.type is FrameType.FORWARD:
                return await self._forward(client, frame)
            if frame.type is FrameType.CLOSE:
                return await self._finish(client, frame)
            if frame.type is FrameType.GOSSIP:
                return await self._ledger_request(client, frame)
            return error_frame(
                frame.session,
                frame.step,
                ErrorCode.BAD_FRAME,
                f"a server does not take {frame.type.name} frames",
            )
        except Refusal as exc:
            return error_frame(frame.session, frame.step, exc.code, str(exc))
        except PaymentRequiredError as exc:
            return error_frame(frame.session, frame.step, ErrorCode.PAYMENT_REQUIRED, str(exc))
        except LedgerError as exc:
            return error_frame(frame.session, frame.step, ErrorCode.BAD_FRAME, f"ledger: {exc}")
        except WireError as exc:
            return error_frame(frame.session, frame.step, exc.code, str(exc))
        except Exception as exc:  # a bug here must not take the peer down; the client fails over
            log.exception("internal error on %s", frame.type.name)
            return error_frame(
                frame.session, frame.step, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"
            )

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        """The span of ``client``'s open session ``session`` here and the model's layer count, or None."""
        return (self.span, self.num_layers) if self._key(client, session) in self.sessions else None

    @staticmethod
    def _key(client: str, session: bytes) -> str:
        return f"{client}:{session.hex()}"

    async def _open(self, client: str, frame: Frame) -> Frame:
        meta = frame.meta
        model, start, end = meta.get("model"), meta.get("start"), meta.get("end")
        batch, max_length = meta.get("batch"), meta.get("max_length")
        if model != self.model or (start, end) != (self.span.start, self.span.end):
            raise Refusal(
                ErrorCode.SESSION_REFUSED,
                f"this peer serves {self.model} blocks {self.span}, not {model} blocks {start}-{end}",
            )
        if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise Refusal(ErrorCode.BAD_FRAME, f"batch {batch!r} must be an integer in 1..{MAX_BATCH}")
        if not isinstance(max_length, int) or not 1 <= max_length <= MAX_LENGTH_LIMIT:
            raise Refusal(
                ErrorCode.BAD_FRAME, f"max_length {max_length!r} must be an integer in 1..{MAX_LENGTH_LIMIT}"
            )
        key = self._key(client, frame.session)
        if key in self.sessions:
            raise Refusal(ErrorCode.SESSION_REFUSED, f"session {frame.session.hex()} is already open")
        price = 0
        if self.exchange is not None and is_peer_id(client):
            # The client pays for what it may use, through a hold in its own log that pays for this session
            # and fits its balance with all its other open holds, at every peer (``core/holds.py``); its log
            # may come with OPEN, stored before the hold is checked.
            terms = HoldTerms(
                self.exchange.ledger.peer_id,
                frame.session,
                self.model,
                self.span.start,
                self.span.end,
                batch * max_length,
            )
            price = await self.exchange.admit(client, meta.get("hold"), terms, carried=parse_open_log(meta))
            if key in self.sessions:
                raise Refusal(ErrorCode.SESSION_REFUSED, f"session {frame.session.hex()} is already open")
        self.evict_idle()
        need = batch * max_length * self.bytes_per_token
        budget = self.config.memory_budget_bytes
        if len(self.sessions) >= self.config.max_sessions or self.reserved_bytes + need > budget:
            raise Refusal(
                ErrorCode.SESSION_REFUSED,
                f"KV memory budget full: {len(self.sessions)} sessions hold {self.reserved_bytes / 2**20:.2f} MiB "
                f"of {budget / 2**20:.2f} MiB and this one needs {need / 2**20:.2f} MiB; try another peer",
            )
        runs = f"{key}#{next(self._openings)}"
        for runner in self.runners:
            runner.open(runs, batch)
        self.sessions[key] = _Session(key, batch, max_length, need, client=client, price=price, runs=runs)
        log.info("opened session %s (batch %d, max length %d)", key[-8:], batch, max_length)
        return Frame(
            FrameType.RESULT,
            frame.session,
            frame.step,
            meta={"opened": True, "kv_free_tokens": self.kv_free_tokens}
            | ({OPEN_LOG: True} if self.exchange is not None else {}),
        )

    async def _forward(self, client: str, frame: Frame) -> Frame:
        key = self._key(client, frame.session)
        session = self.sessions.get(key)
        if session is None:
            raise Refusal(
                ErrorCode.UNKNOWN_SESSION,
                f"session {frame.session.hex()} is not open here (expired or never opened)",
            )
        # Once taken, a step runs to its end and is counted even if its caller goes (its link closed, or
        # the link of the peer that pushed it): blocks that ran in a worker thread extended the KV cache,
        # and a step not counted would run again on top of it, past what ``max_length`` reserved.
        step = asyncio.ensure_future(self._step(client, frame, key, session))
        self._steps.add(step)
        step.add_done_callback(self._step_done)
        return await asyncio.shield(step)

    def _step_done(self, step: asyncio.Future[Frame]) -> None:
        self._steps.discard(step)
        if not step.cancelled():
            step.exception()  # retrieved: a refusal nobody waits for any more is not logged as lost

    async def _step(self, client: str, frame: Frame, key: str, session: _Session) -> Frame:
        async with session.lock:
            if self.sessions.get(key) is not session:  # closed (and maybe opened again) while it waited
                raise Refusal(
                    ErrorCode.UNKNOWN_SESSION,
                    f"session {frame.session.hex()} was closed before step {frame.step} ran",
                )
            if frame.step != session.next_step:
                raise Refusal(
                    ErrorCode.OUT_OF_ORDER,
                    f"step {frame.step} arrived, step {session.next_step} was expected",
                )
            hidden = expect(frame, names.HIDDEN_IN, "f", 3)
            mask = expect(frame, names.ATTENTION_MASK, "i", 2)
            positions = expect(frame, names.POSITION_IDS, "i", 2)
            batch, seq = hidden.shape[0], hidden.shape[1]
            if hidden.shape[2] != self.hidden_size or batch != session.batch or seq < 1:
                raise Refusal(
                    ErrorCode.BAD_SHAPE,
                    f"hidden states {list(hidden.shape)} do not fit batch {session.batch}, hidden {self.hidden_size} "
                    "with at least one token",
                )
            if session.length + seq > session.max_length:
                raise Refusal(
                    ErrorCode.BAD_SHAPE,
                    f"{session.length} + {seq} tokens exceed the session's max_length {session.max_length}",
                )
            self._check_positions(positions, session)
            try:
                out = await self.batcher.forward(session.runs, hidden, mask, positions)
            except ShardInputError as exc:
                raise Refusal(ErrorCode.BAD_SHAPE, str(exc)) from exc
            except SessionError as exc:
                raise Refusal(ErrorCode.UNKNOWN_SESSION, str(exc)) from exc
            session.length += seq
            session.tokens += batch * seq
            session.next_step += 1
            session.last_used = time.monotonic()
            self.tokens_served += batch * seq
            result = to_wire(names.HIDDEN_OUT, np.zeros_like(out) if self.test_lie else out)
            hook = STEP_OUTPUT.get()
            if hook is not None:  # the next peer's push leaves now; the answer is signed after
                await hook(result)
            session.chain = chain_input(
                session.chain,
                [
                    wire_digest(frame.tensor(n))
                    for n in (names.HIDDEN_IN, names.ATTENTION_MASK, names.POSITION_IDS)
                ],
            )
            meta = self._answer(client, frame, session, seq, wire_digest(result))
        return Frame(FrameType.RESULT, frame.session, frame.step, meta=meta, tensors=(result,))

    def _answer(
        self, client: str, frame: Frame, session: _Session, seq: int, output: str
    ) -> dict[str, object]:
        """The RESULT metadata: this peer's signed answer, when it has an identity and the client is a peer."""
        if self.identity is None or not is_peer_id(client) or client == self.identity.peer_id:
            return {}
        answer = Answer(
            frame.session.hex(),
            self.model,
            self.span.start,
            self.span.end,
            frame.step,
            seq,
            session.chain,
            output,
            client,
            self.identity.peer_id,
        )
        return {ANSWER_META_KEY: sign_answer(answer, self.identity.sign).to_dict()}

    def _check_positions(self, positions: np.ndarray, session: _Session) -> None:
        """Positions past the model's context or the session's ``max_length`` are refused (``bad_shape``,
        like tokens past ``max_length``) before anything runs: no model was trained for them."""
        limit = session.max_length if self.context is None else min(session.max_length, self.context)
        if positions.size == 0:
            return
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= limit:
            context = "" if self.context is None else f", the model's context {self.context}"
            raise Refusal(
                ErrorCode.BAD_SHAPE,
                f"position_ids {low}..{high} are outside 0..{limit - 1} (the session's max_length "
                f"{session.max_length}{context})",
            )

    def _run(self, runs: str, hidden: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        done = 0
        try:
            for runner in self.runners:
                hidden = runner.forward(runs, hidden, mask, positions)
                done += 1
        except Exception:
            if done:  # some runners advanced and some did not: the session can no longer be trusted
                key = runs.rpartition("#")[0]
                session = self.sessions.get(key)
                if session is not None and session.runs == runs:
                    self._close(key)
            raise
        return hidden

    async def _finish(self, client: str, frame: Frame) -> Frame:
        """CLOSE: free the session and, with a ledger, propose the receipt for the work done."""
        key = self._key(client, frame.session)
        session = self.sessions.get(key)
        self._close(key)
        meta = close_answer(None, None)
        if session is not None and self.exchange is not None and is_peer_id(client):
            if session.tokens == 0:  # nothing to pay for (a failed route's open): no receipt
                self.exchange.closed_unused(client, frame.session)
            else:
                meta = await self.exchange.propose(
                    client,
                    frame.session,
                    model=self.model,
                    start=self.span.start,
                    end=self.span.end,
                    tokens=session.tokens,
                )
        return Frame(FrameType.RESULT, frame.session, frame.step, meta=meta)

    async def _ledger_request(self, client: str, frame: Frame) -> Frame:
        """GOSSIP frames on a session link: a client pushing its log, returning a countersigned receipt,
        or sending one anti-entropy message; ``ServerExchange`` answers them."""
        if self.exchange is None or not is_peer_id(client):
            raise Refusal(ErrorCode.BAD_FRAME, "this peer keeps no ledger for this client")
        meta = await self.exchange.answer(client, frame.session, frame.meta)
        return Frame(FrameType.RESULT, frame.session, frame.step, meta=meta)

    def _close(self, key: str) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            for runner in self.runners:
                runner.close(session.runs)

    def close_client(self, client: str) -> None:
        """Drop every session of a client whose link is gone."""
        for key in [k for k in self.sessions if k.startswith(f"{client}:")]:
            self._close(key)

    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        idle = [
            k
            for k, s in self.sessions.items()
            if now - s.last_used > self.config.idle_timeout_s and not s.lock.locked()
        ]
        for key in idle:
            log.info("evicting idle session %s", key[-8:])
            self._close(key)
        return len(idle)

"""The ledger exchange of a native node, one object per side, over the messages of ``core/ledger_exchange.py``.

``ClientExchange`` (a mesh client's): before each session on a peer, appends a hold for it to the
node's own log and pushes the log there, or has OPEN carry it to a peer that takes it (``open``; the
hold's hash goes in OPEN: ``core/holds.py``); countersigns
and returns the receipt a peer proposes at CLOSE, then runs an anti-entropy exchange with that peer over
the same link, in the background, at most once per peer per ``gossip_every_s`` and at most
``max_requests`` requests each time; once a generation closed, pushes each of its peers what it lacks
of the log (the receipts and the other hops' holds), in the background, so that the next OPEN there
carries only its holds.

``ServerExchange`` (a span server's): stores a client's pushed entries (or those its OPEN carries), admits a session at OPEN only on
a hold that pays for it (once: a hold replayed for a second OPEN is refused), proposes the receipt of a
closed session, records the countersigned receipt exactly once (a forged or replayed frame is refused
and the genuine one stays recordable), and answers gossip with the replies of its session with that
client.

``SignalingExchange`` (every node's): ledger gossip carried by signaling, for peers that share no link.

Ledger calls are synchronous (SQLite) and run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from python_peer.core.entries import Entry
from python_peer.core.errors import LedgerError, PaymentRequiredError
from python_peer.core.ledger_exchange import (
    OPEN_LOG,
    ExchangeError,
    PushRequest,
    ReceiptRequest,
    close_answer,
    gossip_answer,
    gossip_request,
    parse_close_answer,
    parse_gossip_answer,
    parse_push_answer,
    parse_push_held,
    parse_receipt_answer,
    parse_request,
    push_answer,
    push_request,
    receipt_answer,
    receipt_request,
)
from python_peer.core.protocol import LEDGER_SIGNAL, MAX_PENDING_RECEIPTS, PUSH_ENTRIES
from python_peer.core.receipts import Receipt
from python_peer.core.wire import ErrorCode, Frame, FrameType

from .errors import PeerError
from .hop import HOP_FAILURES, HopClient, Refusal
from .ledger_service import CHANNEL_GOSSIP, LedgerService
from .ledger_store import Quote, now_ms

log = logging.getLogger(__name__)
_V = TypeVar("_V")


@dataclass(frozen=True)
class HoldTerms:
    """What a hold pays for: ``server``'s session ``session`` over blocks ``[start, end)`` of ``model``, at
    most ``tokens`` token positions. A client writes holds from them; a serving peer checks a hold against
    them at OPEN, where ``server`` is itself (the ledger checks the hold names its own id)."""

    server: str
    session: bytes
    model: str
    start: int
    end: int
    tokens: int


MAX_GOSSIPED = 1024  # peers a client remembers its last exchange with (older than the cadence: dropped)
MAX_ADMITTED_HOLDS = 4096  # holds a server remembers having opened a session on (each opens one)


def _from_peer(peer_id: str, exc: ExchangeError) -> PeerError:
    """A malformed answer is the failure of the peer that sent it."""
    return PeerError(f"peer {peer_id[:16]} {exc}")


async def gossip_exchange(
    ledger: LedgerService, peer_id: str, hop: HopClient, *, timeout: float, max_requests: int = 16
) -> int:
    """Anti-entropy with a serving peer over its link: send our ``summary`` as a gossip request, feed each
    message of its answer to our gossip session with the peer, send what that answers as new requests,
    and stop when nothing is left to send or after ``max_requests``. Returns the number of requests sent.
    A failing link raises (``HOP_FAILURES``), a reply that is not a JSON object ``LedgerError``; other bad
    replies are dropped by the session."""
    first = await asyncio.to_thread(ledger.gossip_start, peer_id, CHANNEL_GOSSIP)
    queue = deque([first] if first is not None else [])
    sent = 0
    while queue and sent < max_requests:
        frame = Frame(FrameType.GOSSIP, os.urandom(16), 0, meta=gossip_request(queue.popleft()))
        answer = await hop.call(frame, timeout)
        sent += 1
        if not isinstance(answer.meta.get("replies"), list):
            raise _from_peer(peer_id, ExchangeError("answered a gossip request without a list of replies"))
        for reply in parse_gossip_answer(answer.meta):  # a reply that is not an object: ExchangeError
            queue.extend(await asyncio.to_thread(ledger.gossip_receive, peer_id, reply, CHANNEL_GOSSIP))
    if queue:
        log.info("ledger gossip with %s stopped after %d requests", peer_id[:8], sent)
    return sent


def _remember(table: OrderedDict[str, _V], key: str, value: _V, limit: int = MAX_GOSSIPED) -> None:
    """Set ``table[key]`` as its newest item, forgetting the oldest items beyond ``limit``: what a client
    remembers per peer or per hold, and a server per hold or session, stays bounded however many it meets."""
    table.pop(key, None)
    table[key] = value
    while len(table) > limit:
        table.popitem(last=False)


class ClientExchange:
    """A mesh client's side of the ledger exchange with the peers it uses."""

    def __init__(
        self,
        ledger: LedgerService,
        *,
        request_timeout_s: float,
        gossip_every_s: float | None = 30.0,
        gossip_max_requests: int = 16,
    ) -> None:
        self.ledger = ledger
        self.request_timeout_s = request_timeout_s
        self.gossip_every_s = gossip_every_s
        self.gossip_max_requests = gossip_max_requests
        self.gossiped: dict[str, float] = {}  # peer id -> when the last exchange with it started
        # peer id -> the seq through which it is known to hold our log (least recently learnt first)
        self.held: OrderedDict[str, int] = OrderedDict()
        self._holds: OrderedDict[str, tuple[str, int]] = OrderedDict()  # hold hash -> (peer id, seq)
        # peer ids whose last answer to OPEN said they take our log in OPEN itself (``OPEN_LOG``)
        self.takes_log: OrderedDict[str, None] = OrderedDict()
        self._writing = threading.Lock()  # one route's holds are written together (``write_holds``)
        self._tasks: set[asyncio.Task[None]] = set()

    async def push(self, peer_id: str, hop: HopClient) -> int:
        """Send our own log to ``peer_id``, which judges our balance from the entries it holds: only the
        entries after those it is known to hold (``held``: it said so answering a push, or opened a
        session on a hold of ours), else, or if it then says it does not hold them all, the grant and the
        latest entries (``LedgerService.own_entries``). Returns how many it stored."""
        entries = await self._lacking(peer_id)
        if entries == []:
            return 0
        if entries is not None:
            stored, held = await self._push(peer_id, hop, entries)
            last = int(entries[-1]["seq"])
            if held is not None and held >= last:
                return stored
            log.info("peer %s holds our log through %s, not %d: pushing the log", peer_id[:8], held, last)
        self.held.pop(peer_id, None)
        stored, _ = await self._push(peer_id, hop, await asyncio.to_thread(self.ledger.own_entries))
        return stored

    async def _lacking(self, peer_id: str) -> list[dict[str, Any]] | None:
        """The entries of ours after those ``peer_id`` is known to hold (``held``); None when not known or
        more than one push carries (``PUSH_ENTRIES``)."""
        known = self.held.get(peer_id)
        return None if known is None else await asyncio.to_thread(self.ledger.own_entries_after, known)

    async def _push(
        self, peer_id: str, hop: HopClient, entries: list[dict[str, Any]]
    ) -> tuple[int, int | None]:
        """Push ``entries``: how many the peer stored, and through which seq it says it holds our log."""
        frame = Frame(FrameType.GOSSIP, os.urandom(16), 0, meta=push_request(entries))
        answer = await hop.call(frame, self.request_timeout_s)
        held = parse_push_held(answer.meta)
        last = max((int(e["seq"]) for e in entries), default=0)
        if held is not None and held > last:
            # beyond the newest entry of ours it was sent (our head when we read it): a lie, which would
            # stop our pushes there for good; taken as unsaid
            log.info(
                "peer %s says it holds our log through %d, past our %d: ignored", peer_id[:8], held, last
            )
            held = None
        if held is not None:
            self._note_held(peer_id, held)
        try:
            return parse_push_answer(answer.meta), held
        except ExchangeError as exc:  # the push went through; what it says about it is only a count
            log.info("peer %s: %s", peer_id[:8], exc)
            return 0, held

    def admitted(self, hold: str) -> None:
        """A peer opened the session our hold ``hold`` pays for: it holds our log through that hold (a
        hold is admitted only in the client's counting chain), so later pushes there carry what follows."""
        found = self._holds.pop(hold, None)
        if found is not None:
            self._note_held(*found)

    def _note_held(self, peer_id: str, seq: int) -> None:
        _remember(self.held, peer_id, max(seq, self.held.get(peer_id, 0)))

    async def hold(
        self, peer_id: str, hop: HopClient, session: bytes, *, model: str, start: int, end: int, tokens: int
    ) -> str:
        """Before OPEN: append a hold paying ``peer_id`` for ``session`` to our own log (refused here,
        ``PaymentRequiredError``, when our open holds would exceed what we can spend), push our log so the
        peer holds it up to the hold (``deliver``), and return the hold's hash for OPEN's ``hold``; call
        ``admitted`` with it once OPEN succeeded."""
        (entry,) = await self.write_holds([HoldTerms(peer_id, session, model, start, end, tokens)])
        await self.deliver(peer_id, hop, entry.hash)
        return entry.hash

    async def write_holds(self, terms: list[HoldTerms]) -> list[Entry]:
        """Append the holds of ``terms`` to our own log, in order and together: the holds of another
        route opened at the same time are written before or after them, not between (so two chats
        that do not both fit our balance do not each get part of their holds). A hold refused
        (``PaymentRequiredError``) stops there; the ones before it stay written."""
        entries = await asyncio.to_thread(self._write_holds, terms)
        for term, entry in zip(terms, entries, strict=True):  # bounded: holds whose OPEN failed stay
            _remember(self._holds, entry.hash, (term.server, entry.seq))
        return entries

    def _write_holds(self, terms: list[HoldTerms]) -> list[Entry]:
        with self._writing:
            return [self.ledger.hold(t.server, t.session, t.model, t.start, t.end, t.tokens) for t in terms]

    async def deliver(
        self, peer_id: str, hop: HopClient, hold: str, *, carried: bool = False
    ) -> list[dict[str, Any]] | None:
        """Push our log to ``peer_id`` up to the hold ``hold`` (written by ``write_holds``). A log longer
        than one push (``PUSH_ENTRIES``: the grant and the latest entries, as many as fit a frame:
        ``LedgerService.own_entries``) reaches the peer by an anti-entropy exchange first, unless one ran
        less than ``gossip_every_s`` ago or the peer is known to hold all but the entries one push
        carries (the peer then lacks at most the few entries written since, which the push carries).

        With ``carried``, to a peer that takes our log in OPEN (``takes_log``) and is known to hold it
        up to a few entries ago, nothing is pushed: the entries it lacks are returned, for OPEN to carry
        (``OPEN_LOG``; one round trip instead of two). None: pushed (or nothing to carry)."""
        _, seq = self._holds.get(hold, (peer_id, 0))
        now = asyncio.get_running_loop().time()
        last = self.gossiped.get(peer_id)
        recent = last is not None and now - last < (self.gossip_every_s or 30.0)
        known = self.held.get(peer_id)
        lacking = await self._lacking(peer_id) if known is not None and seq - known <= PUSH_ENTRIES else None
        if lacking is not None:
            recent = True  # one push carries all it lacks
        if not recent and (seq > PUSH_ENTRIES or not await asyncio.to_thread(self.ledger.own_log_fits)):
            self._note_gossip(peer_id, now)
            await gossip_exchange(
                self.ledger,
                peer_id,
                hop,
                timeout=self.request_timeout_s,
                max_requests=self.gossip_max_requests,
            )
        if carried and peer_id in self.takes_log:
            entries = lacking if lacking is not None else await self._lacking(peer_id)  # after an exchange
            if entries is not None:
                return entries
        await self.push(peer_id, hop)
        return None

    async def open(
        self, peer_id: str, hop: HopClient, frame: Frame, carried: list[dict[str, Any]] | None, timeout: float
    ) -> Frame:
        """Send ``frame`` (an OPEN naming our hold) carrying ``carried`` (from ``deliver``) as its log, and
        return the answer, noting whether the peer takes our log in OPEN (``takes_log``). Refused for
        payment with our log carried, the peer may not hold what we thought (a crash lost it): our log is
        pushed from scratch and OPEN sent again without it, once."""
        carrying = dataclasses.replace(frame, meta={**frame.meta, OPEN_LOG: carried}) if carried else frame
        try:
            answer = await hop.call(carrying, timeout)
            if carried:  # stored, as the hold it admitted needed: the holds written after it too
                self._note_held(peer_id, max(int(e["seq"]) for e in carried))
        except PaymentRequiredError:
            if not carried:
                raise
            log.info("peer %s refused our hold with our log carried: pushing the log", peer_id[:8])
            self.held.pop(peer_id, None)
            await self.push(peer_id, hop)
            answer = await hop.call(frame, timeout)
        self.takes_log.pop(peer_id, None)
        if answer.meta.get(OPEN_LOG) is True:
            _remember(self.takes_log, peer_id, None)
        return answer

    async def settle(
        self,
        peer_id: str,
        hop: HopClient,
        closed: Frame,
        *,
        model: str,
        start: int,
        end: int,
        tokens: int,
        timeout: float,
    ) -> Receipt | None:
        """After CLOSE (answered ``closed``): countersign the receipt the peer proposes for what we sent
        it, return it on the session's link, then gossip with the peer soon. None: nothing proposed."""
        proposed = parse_close_answer(closed.meta)
        if proposed is None:
            return None
        data, server_sig = proposed
        receipt, client_sig = await asyncio.to_thread(
            self.ledger.countersign,
            data,
            server_sig,
            server=peer_id,
            session=closed.session,
            model=model,
            start=start,
            end=end,
            tokens=tokens,
        )
        meta = receipt_request(receipt.to_dict(), client_sig, server_sig)
        answer = await hop.call(Frame(FrameType.GOSSIP, closed.session, closed.step + 1, meta=meta), timeout)
        try:
            parse_receipt_answer(answer.meta)
        except ExchangeError as exc:
            log.info("peer %s: %s", peer_id[:8], exc)
        # The receipt is in both logs: a good moment to exchange the rest, off the generation's path.
        self.gossip_soon(peer_id, hop)
        return receipt

    def push_soon(self, peer_id: str, hop: HopClient) -> asyncio.Task[None] | None:
        """Push the entries of ours ``peer_id`` lacks in the background (``push``): after a generation
        closed, its receipts and the holds of its other hops, so that our next OPEN there carries only
        its own holds instead (off the next prompt's path). None, and nothing sent, when the peer is not
        known to hold our log (a session there pushes as before). Its failures are logged, never raised."""
        if peer_id not in self.held:
            return None
        return self._background(self._push_logged(peer_id, hop), f"push-{peer_id[:8]}")

    async def _push_logged(self, peer_id: str, hop: HopClient) -> None:
        try:
            await self.push(peer_id, hop)
        except (*HOP_FAILURES, LedgerError) as exc:
            log.info("pushing our log to %s failed: %s: %s", peer_id[:8], type(exc).__name__, exc)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def gossip_soon(self, peer_id: str, hop: HopClient) -> asyncio.Task[None] | None:
        """Start a ledger gossip exchange with ``peer_id`` in the background, unless one started less than
        ``gossip_every_s`` ago; the task (or None). Its failures are logged, never raised."""
        every = self.gossip_every_s
        if every is None:
            return None
        now = asyncio.get_running_loop().time()
        last = self.gossiped.get(peer_id)
        if last is not None and now - last < every:
            return None
        self._note_gossip(peer_id, now)
        return self._background(self._gossip_logged(peer_id, hop), f"gossip-{peer_id[:8]}")

    def _note_gossip(self, peer_id: str, now: float) -> None:
        """Remember when an exchange with ``peer_id`` started; times older than the cadence count as
        never (so they are dropped once ``MAX_GOSSIPED`` peers are remembered, then the oldest)."""
        self.gossiped.pop(peer_id, None)
        self.gossiped[peer_id] = now
        if len(self.gossiped) > MAX_GOSSIPED:
            every = self.gossip_every_s or 30.0
            for peer in [p for p, at in self.gossiped.items() if now - at >= every]:
                del self.gossiped[peer]
            while len(self.gossiped) > MAX_GOSSIPED:
                del self.gossiped[next(iter(self.gossiped))]

    async def settled(self) -> None:
        """Wait for the gossip exchanges and pushes under way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _gossip_logged(self, peer_id: str, hop: HopClient) -> None:
        try:
            sent = await gossip_exchange(
                self.ledger,
                peer_id,
                hop,
                timeout=self.request_timeout_s,
                max_requests=self.gossip_max_requests,
            )
            log.debug("ledger gossip with %s: %d requests", peer_id[:8], sent)
        except (*HOP_FAILURES, LedgerError) as exc:
            log.warning("ledger gossip with %s failed: %s: %s", peer_id[:8], type(exc).__name__, exc)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ServerExchange:
    """A span server's side of the ledger exchange with its clients."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        # client:session -> (the receipt proposed at CLOSE, waiting for the client's signature; the hold)
        self._receipts: dict[str, tuple[Receipt, str | None]] = {}
        self._recording: set[str] = set()  # receipts being recorded now
        # hold hash -> when it expires: each hold opens one session. Forgotten once its session's receipt
        # is recorded (the ledger then refuses it as consumed) or once it expired (refused as expired).
        self._admitted: OrderedDict[str, int] = OrderedDict()
        # client:session -> (its hold, when the hold expires), while the session is open (until CLOSE)
        self._open: OrderedDict[str, tuple[str, int]] = OrderedDict()

    @staticmethod
    def _key(client: str, session: bytes) -> str:
        return f"{client}:{session.hex()}"

    async def admit(self, client: str, hold: object, terms: HoldTerms, *, carried: list[Any] | None) -> int:
        """OPEN's payment check, in one trip to a worker thread: ``client`` must not be excluded by this
        node's reputation; its log ``carried`` by OPEN (``OPEN_LOG``) is stored as its push would be; then
        its hold ``hold`` (the entry hash OPEN names) must be in its log here, pay for exactly ``terms``
        (this peer's session), cover the price, not have opened a session before, and fit what the client
        can spend with all its open holds (``ChainStore.require_hold``). Returns the price; raises
        ``Refusal`` for an excluded client, ``PaymentRequiredError`` saying which rule failed."""
        used = isinstance(hold, str) and hold in self._admitted  # read here: the tables are the loop's
        quote = await asyncio.to_thread(self._check_open, client, hold, terms, carried, used)
        if hold in self._admitted:  # a concurrent OPEN with the same hold got here first
            raise PaymentRequiredError(f"client {client[:12]}…: its hold {str(hold)[:12]}… is already in use")
        assert isinstance(hold, str)  # _check_open refused any other
        self._forget_expired(now_ms())
        _remember(self._admitted, hold, quote.hold_expires, MAX_ADMITTED_HOLDS)
        # sessions never closed (their client vanished) are forgotten the same way
        _remember(
            self._open, self._key(client, terms.session), (hold, quote.hold_expires), MAX_ADMITTED_HOLDS
        )
        return quote.price

    def _check_open(
        self, client: str, hold: object, terms: HoldTerms, carried: list[Any] | None, used: bool
    ) -> Quote:
        """``admit``'s work in the worker thread, in its order: reputation, the carried log, the hold
        (``used``: it has opened a session here already)."""
        refusal = self.ledger.reputation(client).refusal
        if refusal is not None:  # proven to lie by several clients: this peer does not work with it
            raise Refusal(ErrorCode.SESSION_REFUSED, refusal)
        if carried:  # the push, carried by OPEN: stored before the hold is checked
            self._accept(client, carried)
        if not isinstance(hold, str):
            raise PaymentRequiredError(
                f"client {client[:12]}…: OPEN must name the hold (its entry hash) that pays for this session"
            )
        if used:
            raise PaymentRequiredError(
                f"client {client[:12]}…: its hold {hold[:12]}… has already opened a session here; "
                "each session needs a hold of its own"
            )
        return self.ledger.require_hold(
            client,
            hold,
            session=terms.session,
            model=terms.model,
            start=terms.start,
            end=terms.end,
            tokens=terms.tokens,
        )

    def _forget_expired(self, now: int) -> None:
        """Forget the oldest admitted holds while they are expired: the ledger refuses them anyway."""
        while self._admitted:
            hold, expires = next(iter(self._admitted.items()))
            if expires > now:
                return
            del self._admitted[hold]

    @property
    def remembered(self) -> tuple[int, int, int]:
        """(holds admitted, sessions open, receipts proposed) that this exchange remembers now."""
        return len(self._admitted), len(self._open), len(self._receipts)

    def hold_expired(self, client: str, session: bytes, now: int | None = None) -> bool:
        """Whether the hold that opened ``client``'s ``session`` here has expired: the session then stops,
        since the client may promise those credits elsewhere."""
        held = self._open.get(self._key(client, session))
        return held is not None and held[1] <= (now_ms() if now is None else now)

    def closed_unused(self, client: str, session: bytes) -> None:
        """``client`` closed ``session`` before it ran anything (no receipt follows): forget its hold's
        expiry. The hold stays admitted: it has opened its one session here."""
        self._open.pop(self._key(client, session), None)

    async def propose(
        self, client: str, session: bytes, *, model: str, start: int, end: int, tokens: int
    ) -> dict[str, Any]:
        """The answer to CLOSE: the receipt of ``tokens`` served to ``client``, signed, kept until the
        client returns it countersigned (at most ``MAX_PENDING_RECEIPTS`` wait, oldest dropped first)."""
        receipt, signature = await asyncio.to_thread(
            self.ledger.server_receipt, session, model, start, end, tokens, client
        )
        key = self._key(client, session)
        opened = self._open.pop(key, None)  # closed: no FORWARD follows, its hold's expiry is moot
        self._receipts[key] = (receipt, opened[0] if opened else None)
        while len(self._receipts) > MAX_PENDING_RECEIPTS:
            self._receipts.pop(next(iter(self._receipts)))
        return close_answer(receipt.to_dict(), signature)

    async def answer(self, client: str, session: bytes, meta: object) -> dict[str, Any]:
        """The answer's metadata to one ledger request of ``client``; ``LedgerError`` (``ExchangeError``
        for malformed metadata) or ``Refusal`` when it is refused."""
        request = parse_request(meta)
        if isinstance(request, PushRequest):
            stored, held = await asyncio.to_thread(self._accept, client, request.entries)
            return push_answer(stored, held)
        if isinstance(request, ReceiptRequest):
            return receipt_answer(await self._record(client, session, request))
        replies = await asyncio.to_thread(self.ledger.gossip_receive, client, request.msg, CHANNEL_GOSSIP)
        return gossip_answer(replies)

    def _accept(self, client: str, entries: object) -> tuple[int, int]:
        """Store a push; how many entries were new, and the seq through which we hold ``client``'s log."""
        stored = self.ledger.accept_entries(entries, client)
        head = self.ledger.store.head(client)
        return stored, head.seq if head is not None else 0

    async def _record(self, client: str, session: bytes, request: ReceiptRequest) -> str:
        """The countersigned receipt of a closed session: recorded once, and only if it verifies. A forged
        or badly signed frame is refused and the receipt waits on for the client's genuine one."""
        key = self._key(client, session)
        waiting = self._receipts.get(key)
        receipt = waiting[0] if waiting else None
        if receipt is None or key in self._recording or request.receipt != receipt.to_dict():
            raise Refusal(ErrorCode.BAD_FRAME, "no receipt of this session is waiting for that signature")
        self._recording.add(key)  # a second copy of the frame meanwhile cannot record it twice
        try:
            consumed = await asyncio.to_thread(self._record_and_check, receipt, request)
        finally:
            self._recording.discard(key)
        if self._receipts.get(key) is waiting:
            del self._receipts[key]
        hold = waiting[1] if waiting else None
        if consumed and hold is not None:
            self._admitted.pop(hold, None)  # our ledger refuses it from now on: "already consumed"
        return receipt.id

    def _record_and_check(self, receipt: Receipt, request: ReceiptRequest) -> bool:
        """Record the receipt; whether our ledger now counts it as consuming its session's hold."""
        self.ledger.record_receipt(receipt, request.client_sig, request.server_sig)
        return (receipt.client, receipt.server, receipt.session) in self.ledger.store.report().consumed


SendSignal = Callable[[str, dict[str, Any]], Awaitable[None]]


class SignalingExchange:
    """Ledger gossip through signaling: ``{kind: "ledger", msg}`` payloads to and from other peers."""

    def __init__(self, ledger: LedgerService, send_signal: SendSignal) -> None:
        self.ledger = ledger
        self._send = send_signal

    async def receive(self, sender: str, payload: dict[str, Any]) -> None:
        """Answer one gossip payload from ``sender`` with the replies of our session with it."""
        replies = await asyncio.to_thread(self.ledger.gossip_receive, sender, payload.get("msg"))
        for reply in replies:
            await self._send(sender, {"kind": LEDGER_SIGNAL, "msg": reply})

    async def open_round(self, peer: str) -> None:
        """Send ``peer`` the summary that opens a gossip round."""
        message = await asyncio.to_thread(self.ledger.gossip_start, peer)
        if message is not None:
            await self._send(peer, {"kind": LEDGER_SIGNAL, "msg": message})


__all__ = [
    "LEDGER_SIGNAL",
    "ClientExchange",
    "HoldTerms",
    "ServerExchange",
    "SignalingExchange",
    "gossip_exchange",
]

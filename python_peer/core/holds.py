"""Holds: what a client promises a peer before it serves, written in the client's own hash-chained log.

Standard library only; ``docs/trust.md`` ("No spending twice") gives the reasons and ``docs/ledger.md``
the bytes. Before it opens a session, a client appends a ``hold`` entry naming the session, the serving
peer, the model and blocks, the most the session may cost (``amount``) and an expiry, pushes its log to
the peer and names the hold's hash in OPEN. The peer serves only if it holds the client's log up to
that hold, the hold is for exactly this session on this peer, and every **open** hold of the client in
that log (unexpired, not yet consumed by a receipt of its session) together fits the client's
spendable balance. Promising the same credits to two peers then needs two holds in one log (the second
peer sees both and refuses) or two logs with one seq (a fork: a proof, and the client is refused
everywhere the proof reaches).

A receipt of the hold's (client, server, session) consumes it, whoever carries the receipt; its expiry
releases it. Holds move no credits: balances (``balances.py``) only count receipts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .canonical import MAX_LAYER, MAX_SAFE_INT, MODEL_RE
from .economics import DEFAULT_RULES, Rules, price
from .errors import LedgerError, PaymentRequiredError
from .ledger_fields import EntryFacts, Rejection, int_field, object_fields, peer_field
from .receipts import MAX_RECEIPT_BLOCKS, SESSION_RE

if TYPE_CHECKING:
    from .balances import LedgerReport

HOLD_TTL_MS = 600_000  # how long a client's hold lasts by default: a generation is done well within it
MAX_HOLD_MS = 3_600_000  # a hold expires at most this long after the entry that carries it
MIN_HOLD_LEFT_MS = 60_000  # a peer refuses a hold with less than this left: the session would outlive it

_HOLD_KEYS = frozenset({"kind", "session", "server", "model", "start", "end", "amount", "expires"})


@dataclass(frozen=True, slots=True)
class Hold:
    """A promise of at most ``amount`` units to ``server`` for one session over ``[start, end)`` of
    ``model``, until ``expires`` (ms). Its author is the paying client."""

    session: str
    server: str
    model: str
    start: int
    end: int
    amount: int
    expires: int
    kind: str = field(default="hold", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.session, str) or SESSION_RE.match(self.session) is None:
            raise LedgerError("hold session must be 32 lowercase hex digits (the 16-byte session id)")
        peer_field("hold server", self.server)
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise LedgerError(f"hold model {self.model!r:.80} is not a model name")
        int_field("hold start", self.start, 0, MAX_LAYER - 1)
        int_field("hold end", self.end, self.start + 1, min(MAX_LAYER, self.start + MAX_RECEIPT_BLOCKS))
        int_field("hold amount", self.amount, 1, MAX_SAFE_INT)
        int_field("hold expires", self.expires, 0, MAX_SAFE_INT)

    @property
    def key(self) -> tuple[str, str]:
        """(server, session): a receipt with these, from the hold's author, consumes the hold."""
        return (self.server, self.session)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "hold",
            "session": self.session,
            "server": self.server,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "amount": self.amount,
            "expires": self.expires,
        }

    @classmethod
    def from_dict(cls, data: object) -> Hold:
        h = object_fields("a hold body", data, _HOLD_KEYS)
        return cls(h["session"], h["server"], h["model"], h["start"], h["end"], h["amount"], h["expires"])


def check_hold(author: str, entry_time: int, hold: Hold) -> Rejection | None:
    """The rules of a hold entry that need no clock: promised to another identity, expiring after its
    entry and at most ``MAX_HOLD_MS`` later (so one hold cannot lock credits, or be used, for long)."""
    if hold.server == author:
        return Rejection("bad_hold", "a hold promises credits to another identity, not its own author")
    if not entry_time < hold.expires <= entry_time + MAX_HOLD_MS:
        return Rejection(
            "bad_hold",
            f"a hold expires after its entry and at most {MAX_HOLD_MS // 60_000} min later "
            f"(this one {hold.expires - entry_time} ms after)",
        )
    return None


@dataclass(frozen=True, slots=True)
class HeldCredits:
    """One hold in a client's counting chain, as a report sees it."""

    hash: str
    author: str
    seq: int
    hold: Hold


def open_holds(report: LedgerReport, client: str, now: int) -> list[HeldCredits]:
    """``client``'s holds that still bind credits at ``now``: unexpired and not consumed by a receipt
    (a report lists only unconsumed holds; a report made elsewhere is checked again)."""
    return [
        h
        for h in report.holds.get(client, ())
        if h.hold.expires > now and (client, *h.hold.key) not in report.consumed
    ]


def held_units(report: LedgerReport, client: str, now: int) -> int:
    """The credits ``client`` has promised and not yet paid: the sum of its open holds."""
    return sum(h.hold.amount for h in open_holds(report, client, now))


def admit_hold(
    report: LedgerReport,
    client: str,
    hold_hash: object,
    *,
    server: str,
    session: str,
    model: str,
    start: int,
    end: int,
    price: int,
    now: int,
    stored: Callable[[str], HeldCredits | None] | None = None,
) -> HeldCredits:
    """A server's check at OPEN: the hold ``hold_hash`` of ``client`` is in its counting chain here, is
    for exactly this session on this server, covers ``price``, has at least ``MIN_HOLD_LEFT_MS`` left,
    is not consumed, and the client's open holds (this one included) fit its spendable balance. Raises
    ``LedgerError`` with code ``payment_required`` and a sentence saying which rule failed.

    A report lists only the holds no receipt consumed; ``stored`` (the store's, by hash) tells a hold
    its receipt consumed, whose OPEN is refused as such, from one this peer never received."""

    def refuse(reason: str) -> LedgerError:
        return LedgerError(f"client {client[:12]}…: {reason}", code="payment_required")

    if not isinstance(hold_hash, str) or len(hold_hash) != 64:
        raise refuse("OPEN must name the hold (its entry hash) that pays for this session")
    if client in report.forks:
        raise refuse(
            f"its log is forked at seq {report.forks[client]} (two histories signed by one key): "
            "it is served nowhere"
        )
    found = next((h for h in report.holds.get(client, ()) if h.hash == hold_hash), None)
    if found is None and stored is not None:
        spent = stored(hold_hash)
        if spent is not None and spent.author == client and (client, *spent.hold.key) in report.consumed:
            raise refuse("its hold is already consumed by the receipt of that session")
    if found is None:
        raise refuse(
            f"this peer does not hold the hold {hold_hash[:12]}… in the client's log: push the log "
            "up to the hold before OPEN"
        )
    hold = found.hold
    wanted = {"server": server, "session": session, "model": model, "start": start, "end": end}
    for name, value in wanted.items():
        if getattr(hold, name) != value:
            raise refuse(f"its hold is for {name} {getattr(hold, name)!r:.40}, not {value!r:.40}")
    if (client, *hold.key) in report.consumed:
        raise refuse("its hold is already consumed by the receipt of that session")
    if hold.expires < now + MIN_HOLD_LEFT_MS:
        raise refuse(f"its hold expires in {max(0, hold.expires - now) // 1000} s, too soon for a session")
    if hold.amount < price:
        raise refuse(f"its hold of {hold.amount} units does not cover the price of {price} units")
    others = held_units(report, client, now) - hold.amount
    spendable = report.spendable(client, now)
    if others + hold.amount > spendable:
        beside = f" beside {others / 1000:.3f} credits held for its other open sessions" if others else ""
        raise refuse(
            f"balance {spendable / 1000:.3f} credits does not cover the price of {hold.amount / 1000:.3f} "
            f"credits for this request{beside}; serve blocks to earn credits"
        )
    return found


def hold_amount(blocks: int, tokens: int, rules: Rules = DEFAULT_RULES) -> int:
    """What an honest client holds before OPEN on a hop of ``blocks`` blocks for a session of ``tokens``
    token positions: the undiscounted price, so that it covers any peer's quote."""
    return price(blocks, tokens, 0, rules)


def route_hold(spans: Iterable[int], tokens: int, rules: Rules = DEFAULT_RULES) -> int:
    """What one session of ``tokens`` token positions holds along a whole route whose hops serve
    ``spans`` blocks each: ``hold_amount`` on every hop (a client that cannot hold it all fails mid-route)."""
    return sum(hold_amount(blocks, tokens, rules) for blocks in spans)


def own_hold(
    report: LedgerReport,
    author: str,
    *,
    server: str,
    session: str,
    model: str,
    start: int,
    end: int,
    tokens: int,
    now: int,
    rules: Rules = DEFAULT_RULES,
) -> Hold:
    """The hold an honest client writes before OPEN: the undiscounted price of ``tokens`` through
    ``[start, end)`` (so it covers any peer's quote), lasting ``HOLD_TTL_MS``. Refused here
    (``PaymentRequiredError``) when the author's open holds and this one would exceed what it can spend:
    every honest peer would refuse it too."""
    amount = hold_amount(end - start, tokens, rules)
    held = held_units(report, author, now)
    spendable = report.spendable(author, now)
    if held + amount > spendable:
        beside = f" beside {held / 1000:.3f} credits held for open sessions" if held else ""
        raise PaymentRequiredError(
            f"balance {spendable / 1000:.3f} credits does not cover the price of {amount / 1000:.3f} "
            f"credits for this request{beside}; serve blocks to earn credits"
        )
    return Hold(session, server, model, start, end, amount, now + HOLD_TTL_MS)


def collect_holds(
    counted: list[EntryFacts], consumed: AbstractSet[tuple[str, str, str]]
) -> dict[str, list[HeldCredits]]:
    """Author -> its holds no counted receipt consumed, in seq order, from the entries in counting
    positions (a consumed hold binds nothing: a node keeps only the open ones)."""
    holds: dict[str, list[HeldCredits]] = {}
    for entry in sorted(counted, key=lambda e: (e.author, e.seq)):
        if isinstance(entry.body, Hold) and (entry.author, *entry.body.key) not in consumed:
            holds.setdefault(entry.author, []).append(
                HeldCredits(entry.hash, entry.author, entry.seq, entry.body)
            )
    return holds


__all__ = [
    "HOLD_TTL_MS",
    "MAX_HOLD_MS",
    "MIN_HOLD_LEFT_MS",
    "HeldCredits",
    "Hold",
    "admit_hold",
    "check_hold",
    "collect_holds",
    "held_units",
    "hold_amount",
    "open_holds",
    "own_hold",
    "route_hold",
]

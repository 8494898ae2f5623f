"""Ledger fixtures as plain data: fixed identities, mined grants, co-signed receipts, hand-built logs.

Shared by the ledger tests (rules, store, properties, gossip, the memory store and the browser's
ledger): ``ids`` gives reproducible identities, ``grant`` a grant whose proof of work meets the rules,
``cosign`` a receipt both parties signed, ``Log`` an author's chain built without a store, ``plans`` and
``build`` random histories for property tests, and ``Wire`` an in-memory gossip channel.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from hypothesis import strategies as st

from python_peer.core.canonical import canonical_bytes
from python_peer.core.economics import HOUR_MS, Rules
from python_peer.core.entries import Entry, ForkProof, Grant, make_entry, next_entry
from python_peer.core.gossip import GossipConfig, GossipSession
from python_peer.core.proof_of_work import mine_grant
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.wire import Frame, FrameType, decode_frame, encode_frame
from python_peer.identity import Identity
from python_peer.ledger_store import LedgerStore

T0 = 1_700_000_000_000
NOW = T0 + 30 * 86_400_000  # "now" of every validation: a month after the first entry
RULES = Rules(grant_pow_bits=4)  # the network's economics, with a proof of work tests can afford
MODEL = "smollm2-135m"

# The golden identity: seed 00 01 .. 1f, and a grant nonce meeting the real 22-bit difficulty.
GOLDEN = Identity.from_seed(bytes(range(32)))
GOLDEN_NONCE = 614645

_NONCES: dict[str, int] = {}


def ids(n: int, offset: int = 0) -> list[Identity]:
    """``n`` fixed identities (seeds 1.., never the golden one), so runs are reproducible."""
    return [Identity.from_seed(hashlib.sha256(b"ledger-test-%d" % (i + offset)).digest()) for i in range(n)]


def grant(identity: Identity, rules: Rules = RULES) -> Grant:
    """A grant whose proof of work meets ``rules`` (mined once per identity and difficulty)."""
    key = f"{identity.peer_id}:{rules.grant_pow_bits}"
    if key not in _NONCES:
        nonce = mine_grant(identity.peer_id, rules.grant_pow_bits)
        assert nonce is not None
        _NONCES[key] = nonce
    return Grant(_NONCES[key])


def cosign(
    client: Identity,
    server: Identity,
    *,
    tokens: int = 100,
    start: int = 0,
    end: int = 10,
    time: int = T0 + 60_000,
    session: str | None = None,
    model: str = MODEL,
) -> ReceiptBody:
    """A receipt both parties signed over the same bytes, as the mesh produces at a session's end."""
    receipt = Receipt(
        session or os.urandom(16).hex(), model, start, end, tokens, client.peer_id, server.peer_id, time
    )
    message = receipt.signing_bytes()
    return ReceiptBody(receipt, client.sign(message), server.sign(message))


class Log:
    """An author's chain built by hand (bypassing any store), for feeding the pure rules."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.entries: list[Entry] = []

    def add(self, body: Any, time: int | None = None) -> Entry:
        head = self.entries[-1] if self.entries else None
        when = head.time + 1000 if head else T0
        if isinstance(body, ReceiptBody):  # carried after the session closed, as the mesh does
            when = max(when, body.receipt.time)
        when = time if time is not None else when
        entry = next_entry(self.identity.peer_id, head, when, body, self.identity.sign)
        self.entries.append(entry)
        return entry


# --- random histories (hypothesis) ---------------------------------------------------------------------

PEOPLE = ids(5, 1000)
SESSIONS = [f"{i:032x}" for i in range(3)]

Action = tuple[int, str, int, int, int, int, int, int]


def plans(min_size: int = 1, max_size: int = 30) -> st.SearchStrategy[list[Action]]:
    """Random histories of PEOPLE: who acts, how, with whom, on which blocks, when, in which session."""
    return st.lists(
        st.tuples(
            st.integers(0, len(PEOPLE) - 1),  # who acts
            st.sampled_from(["grant", "serve", "serve", "serve", "carry", "fork", "proof"]),
            st.integers(0, len(PEOPLE) - 1),  # the other party
            st.integers(0, 3),  # first block
            st.integers(1, 3),  # blocks
            st.integers(1, 2000),  # tokens
            st.integers(0, 2 * HOUR_MS),  # time since the previous action
            st.integers(0, len(SESSIONS) - 1),  # session (repeats make cumulative receipts)
        ),
        min_size=min_size,
        max_size=max_size,
    )


def build(plan: list[Action]) -> list[Entry]:
    """Entries of five identities following ``plan``: grants (some twice), receipts (some carried by both
    parties, some cumulative), forks (a second entry at a seq already written) and fork proofs."""
    logs = [Log(p) for p in PEOPLE]
    extra: list[Entry] = []
    forks: list[tuple[Entry, Entry]] = []
    last: ReceiptBody | None = None
    now = T0
    for who, kind, other, start, blocks, tokens, step, session in plan:
        now += step
        log = logs[who]
        if kind == "grant":
            log.add(grant(log.identity), time=max(now, log.entries[-1].time if log.entries else now))
        elif kind == "serve" and other != who:
            last = cosign(
                PEOPLE[other],
                PEOPLE[who],
                tokens=tokens,
                start=start,
                end=start + blocks,
                time=now,
                session=SESSIONS[session],
            )
            log.add(last)
        elif (
            kind == "carry"
            and last is not None
            and log.identity.peer_id in (last.receipt.client, last.receipt.server)
        ):
            log.add(last)
        elif kind == "fork" and log.entries and not isinstance(log.entries[-1].body, ForkProof):
            head = log.entries[-1]
            partner = PEOPLE[(who + 1) % len(PEOPLE)]
            body = cosign(partner, log.identity, tokens=tokens, time=head.time, session=SESSIONS[session])
            twin = make_entry(head.author, head.seq, head.prev, head.time, body, log.identity.sign)
            if twin.hash != head.hash:
                extra.append(twin)
                forks.append((head, twin))
        elif kind == "proof" and forks:
            log.add(ForkProof.of(*forks[other % len(forks)]))
    return [e for log in logs for e in log.entries] + extra


# --- gossip over an in-memory channel ------------------------------------------------------------------


class GossipNode(Protocol):
    """What ``Wire.round`` needs of a node: its gossip configuration and a session per neighbour."""

    config: GossipConfig

    def session(self, peer: int) -> GossipSession: ...


class Wire:
    """The in-memory channel: every message is framed, decoded, measured and delivered in order."""

    def __init__(self) -> None:
        self.messages = 0
        self.largest = 0
        self.kinds: dict[str, int] = {}

    def carry(self, message: dict[str, Any], budget: int) -> dict[str, Any]:
        size = len(canonical_bytes(message))
        assert size <= budget, f"{message['type']} of {size} bytes is over the budget of {budget}"
        frame = decode_frame(encode_frame(Frame(FrameType.GOSSIP, meta=message)))
        self.messages += 1
        self.largest = max(self.largest, size)
        self.kinds[message["type"]] = self.kinds.get(message["type"], 0) + 1
        return frame.meta

    def round(self, nodes: Sequence[GossipNode], i: int, j: int, now: int) -> None:
        """One anti-entropy round opened by ``i`` toward ``j``, run until neither has anything to say."""
        opening = nodes[i].session(j).start(now, force=True)
        queue: deque[tuple[int, int, dict[str, Any]]] = deque([(i, j, opening)] if opening else [])
        for _ in range(10_000):
            if not queue:
                return
            src, dst, message = queue.popleft()
            received = (
                nodes[dst].session(src).receive(self.carry(message, nodes[src].config.max_message_bytes), now)
            )
            assert received.problem is None, received.problem
            queue.extend((dst, src, reply) for reply in received.replies)
        raise AssertionError("a gossip round did not end")


def funded(client: Identity, rules: Rules = RULES, *, extra: bool = False) -> tuple[Log, list[Entry]]:
    """``client``'s log holding its grant, so that its receipts are paid (a client spends only what it
    holds); with ``extra``, the client also earned 2,400 units at T0 + 500 serving 10 blocks x 40 tokens
    to a payer that has a grant. Returns the log (to go on with) and every entry to feed."""
    log = Log(client)
    entries = [log.add(grant(client, rules))]
    if extra:
        payer = Identity.from_seed(hashlib.sha256(b"payer-of-" + client.peer_id.encode()).digest())
        entries.append(Log(payer).add(grant(payer, rules)))
        # another model, so that it shares no block's rarity with the test's own receipts
        entries.append(log.add(cosign(payer, client, tokens=40, time=T0 + 500, model="other-model")))
    return log, entries


def store_with(*entries: Entry, rules: Rules = RULES) -> LedgerStore:
    store = LedgerStore.open(None, rules=rules)
    for outcome in store.insert_many(list(entries), NOW):
        assert outcome.ok, outcome
    return store


def whole_report(report: Any) -> tuple[Any, ...]:
    """Everything a balances report says, reasons included: what a store's kept balances must reproduce."""
    return (
        report.accounts,
        report.ignored,
        report.forks,
        report.counted,
        report.settled,
        report.holds,
        report.consumed,
        report.accusations,
        (len(report.counted), len(report.ignored)),  # a view's len is its own code, not its iteration
    )

"""``ChainStore``: the decisions of a ledger store, shared by SQLite (native) and memory (browser) stores.

Standard library only. What a store holds, which entries it accepts (through the validators of
``rules.py``), fork evidence, the checks an honest writer makes before signing its own entries, and
quotes against a client's balance.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .balances import LedgerReport
from .economics import Rules, can_pay, price
from .entries import Body, Entry, ForkProof, Grant, next_entry
from .errors import LedgerError, PaymentRequiredError
from .holds import HeldCredits, Hold, admit_hold, own_hold
from .ledger_fields import Rejection, Verify
from .proof_of_work import mine_grant
from .receipts import ReceiptBody
from .rules import Link, check_entry, check_fork_proof, check_link


@dataclass(frozen=True)
class Outcome:
    """What a store did with one offered entry or fork proof.

    ``stored``: new and counted in the chain; ``duplicate``: already held; ``fork``: it conflicts with a
    held entry of the same author and seq, and the two are now kept as fork evidence; ``rejected``:
    refused, ``rejection`` says why, and nothing changed.
    """

    hash: str
    status: str
    rejection: Rejection | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


class Signer(Protocol):
    """What appending needs from an identity: ``python_peer.identity.Identity`` is one."""

    @property
    def peer_id(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


@dataclass(frozen=True)
class Quote:
    """A client's balance as this node sees it, against the price of one request. ``pending``: the part of
    the balance that a request now cannot spend (this hour's and this day's bonuses, credited at their
    end, after a receipt dated now would be settled)."""

    client: str
    balance: int
    price: int
    standing: int
    outstanding: int = 0
    pending: int = 0
    hold_expires: int = 0  # with a hold (``require_hold``): when it expires, ms

    @property
    def refusal(self) -> str | None:
        """Why the request must be refused (a sentence naming balance and price), or None."""
        return can_pay(self.balance, self.price, self.outstanding, self.pending)


class ChainStore(ABC):
    """The decisions of a ledger store, over rows that a subclass keeps (SQLite natively, dicts in a browser).

    Holds each author's linked chain from seq 1 (every entry checked by ``check_entry`` and ``check_link``)
    and, per forked author, the two entries with the smallest hashes among those seen at the lowest
    forked seq. Learning a fork at seq ``f`` deletes that author's chain from ``f`` on and refuses later
    entries, so what a store holds is a function of the entries it was offered, whatever their order.

    Every public write runs in ``_transaction()``: stored whole or not at all. Subclasses provide the
    row primitives below, the transaction, ``_lock`` (a re-entrant lock) and the reads.
    """

    rules: Rules
    verify: Verify
    _lock: AbstractContextManager[Any]

    # --- primitives -----------------------------------------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Everything written inside is kept, or none of it when the block raises."""

    @abstractmethod
    def _holds(self, entry_hash: str) -> bool:
        """Whether a chain entry or an evidence entry has this hash."""

    @abstractmethod
    def _fork_seq(self, author: str) -> int | None: ...

    @abstractmethod
    def _link(self, author: str, seq: int) -> Link | None:
        """The (seq, hash, time) of the chain entry ``seq`` of ``author``, if held."""

    @abstractmethod
    def _row(self, author: str, seq: int) -> Entry | None: ...

    @abstractmethod
    def _evidence_of(self, author: str) -> list[Entry]: ...

    @abstractmethod
    def _write_entry(self, entry: Entry) -> None:
        """Add a checked entry to its author's chain."""

    @abstractmethod
    def _set_evidence(self, author: str, seq: int, entries: Sequence[Entry]) -> None:
        """Replace the evidence held against ``author`` by ``entries`` (all at ``seq``)."""

    @abstractmethod
    def _drop_chain(self, author: str, from_seq: int) -> None:
        """Delete ``author``'s chain entries from ``from_seq`` on."""

    @abstractmethod
    def _has_grant(self, author: str) -> bool: ...

    @abstractmethod
    def _has_receipt(self, author: str, receipt_id: str) -> bool:
        """Whether ``author``'s chain carries the receipt ``receipt_id``."""

    @abstractmethod
    def _published(self, author: str) -> set[str]:
        """The authors whose fork ``author``'s chain already carries a proof of."""

    # --- reads ----------------------------------------------------------------------------------------

    @abstractmethod
    def head(self, author: str) -> Entry | None:
        """The last entry of ``author``'s chain held here."""

    @abstractmethod
    def heads(self) -> dict[str, tuple[int, str]]:
        """Author -> (seq, hash) of the last entry held in each chain: what gossip compares."""

    @abstractmethod
    def hash_at(self, author: str, seq: int) -> str | None: ...

    @abstractmethod
    def locate(self, entry_hash: str) -> tuple[str, int] | None:
        """A chain entry's (author, seq), by its hash."""

    def stored_hold(self, entry_hash: str) -> HeldCredits | None:
        """The hold entry ``entry_hash`` of a chain held here, consumed or not (a report lists only
        the open ones)."""
        with self._lock:
            found = self.locate(entry_hash)
            entry = None if found is None else self._row(*found)
        if entry is None or not isinstance(entry.body, Hold):
            return None
        return HeldCredits(entry.hash, entry.author, entry.seq, entry.body)

    @abstractmethod
    def entries_from(self, author: str, from_seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``author`` from ``from_seq`` on, in order."""

    @abstractmethod
    def forks(self) -> dict[str, int]:
        """Author -> the lowest seq at which two entries of that author are known."""

    @abstractmethod
    def fork_proof(self, author: str) -> ForkProof | None:
        """The evidence against ``author``, as a fork proof, if it forked."""

    @abstractmethod
    def entries(self) -> Iterator[Entry]:
        """Every chain entry, by author then seq."""

    @abstractmethod
    def report(self) -> LedgerReport:
        """``compute`` over every chain and evidence entry held."""

    # --- deciding -------------------------------------------------------------------------------------

    def _record_fork(self, author: str, seq: int, variants: Sequence[Entry]) -> bool:
        """Keep the two smallest-hash entries at the lowest forked seq; drop the chain from there on."""
        current = self._fork_seq(author)
        if current is not None and seq > current:
            return False
        known: dict[str, Entry] = {v.hash: v for v in variants if v.author == author and v.seq == seq}
        if current == seq:
            for entry in self._evidence_of(author):
                known[entry.hash] = entry
        held = self._row(author, seq)
        if held is not None:
            known[held.hash] = held
        if len(known) < 2:
            return False
        self._set_evidence(author, seq, [known[h] for h in sorted(known)[:2]])
        self._drop_chain(author, seq)
        return current != seq

    def _offer(self, entry: Entry, now: int) -> Outcome:
        """Decide one entry inside an open transaction; checks run before anything is written."""
        if self._holds(entry.hash):
            return Outcome(entry.hash, "duplicate")
        fork = self._fork_seq(entry.author)
        if fork is not None and entry.seq > fork:
            body = entry.body  # its author's entry does not count, but the evidence it carries is still proof
            if isinstance(body, ForkProof) and check_fork_proof(body, self.verify) is None:
                self._record_fork(body.author, body.seq, [body.a, body.b])
            return Outcome(entry.hash, "rejected", Rejection("forked", f"author forked at seq {fork}"))
        rejection = check_entry(entry, self.verify, now, self.rules)
        if rejection is not None:
            return Outcome(entry.hash, "rejected", rejection)
        if fork == entry.seq:  # one more variant at the fork, kept if among the two smallest hashes
            self._record_fork(entry.author, entry.seq, [entry])
            return Outcome(entry.hash, "fork", Rejection("forked", f"author forked at seq {fork}"))
        held = self._link(entry.author, entry.seq)
        if held is not None:
            self._record_fork(entry.author, entry.seq, [entry])
            return Outcome(
                entry.hash, "fork", Rejection("forked", f"a second entry {entry.seq} of its author")
            )
        rejection = check_link(self._link(entry.author, entry.seq - 1) if entry.seq > 1 else None, entry)
        if rejection is not None:
            return Outcome(entry.hash, "rejected", rejection)
        self._write_entry(entry)
        if isinstance(entry.body, ForkProof):
            self._record_fork(entry.body.author, entry.body.seq, [entry.body.a, entry.body.b])
        return Outcome(entry.hash, "stored")

    def _own_rejection(self, author: str, body: Body, pending: Sequence[Entry]) -> Rejection | None:
        """What an honest writer refuses to sign: a second grant, a receipt its log already carries."""
        if isinstance(body, Grant) and (
            self._has_grant(author) or any(isinstance(e.body, Grant) for e in pending)
        ):
            return Rejection("grant_claimed", "this identity has already claimed its starter grant")
        if isinstance(body, ReceiptBody):
            rid = body.receipt.id
            if self._has_receipt(author, rid) or any(
                isinstance(e.body, ReceiptBody) and e.body.receipt.id == rid for e in pending
            ):
                return Rejection("duplicate_receipt", f"receipt {rid[:12]}… is already in this log")
        return None

    # --- inserting others' entries --------------------------------------------------------------------

    def insert(self, entry: Entry, now: int | None = None) -> Outcome:
        """Offer one entry from another node; see ``Outcome`` for what can happen."""
        return self.insert_many([entry], now)[0]

    def insert_many(self, entries: Sequence[Entry], now: int | None = None) -> list[Outcome]:
        """Offer a batch (in seq order per author, as gossip sends them) in one transaction."""
        clock = wall_clock_ms() if now is None else now
        with self._transaction():
            return [self._offer(entry, clock) for entry in entries]

    def add_fork_proofs(self, proofs: Sequence[ForkProof], now: int | None = None) -> list[Outcome]:
        """Record fork evidence received outside any log (gossip's ``proofs``); one transaction."""
        del now  # evidence is timeless: a fork is proven whenever its entries were dated
        outcomes = []
        with self._transaction():
            for proof in proofs:
                tag = proof.a.hash
                rejection = check_fork_proof(proof, self.verify)
                if rejection is not None:
                    outcomes.append(Outcome(tag, "rejected", rejection))
                elif self._record_fork(proof.author, proof.seq, [proof.a, proof.b]):
                    outcomes.append(Outcome(tag, "fork"))
                else:
                    outcomes.append(Outcome(tag, "duplicate"))
        return outcomes

    # --- own entries ----------------------------------------------------------------------------------

    def append(self, identity: Signer, body: Body, now: int | None = None) -> Entry:
        """Sign ``body`` as the next entry of ``identity``'s log and store it durably."""
        return self.append_many(identity, [body], now)[0]

    def append_many(self, identity: Signer, bodies: Sequence[Body], now: int | None = None) -> list[Entry]:
        """Append several bodies in one transaction: all of them are stored, or none."""
        clock = wall_clock_ms() if now is None else now
        author = identity.peer_id
        written: list[Entry] = []
        with self._transaction():
            if (fork := self._fork_seq(author)) is not None:
                raise LedgerError(
                    f"this identity's log is forked at seq {fork} (the key was used by two writers): "
                    "use a new identity",
                    code="forked",
                )
            head = self.head(author)
            for body in bodies:
                rejection = self._own_rejection(author, body, written)
                if rejection is not None:
                    raise rejection.error()
                entry = next_entry(author, head, clock, body, identity.sign)
                outcome = self._offer(entry, clock)
                if outcome.status != "stored":
                    raise (outcome.rejection or Rejection("store", f"entry was {outcome.status}")).error()
                written.append(entry)
                head = entry
        return written

    def append_receipt(self, identity: Signer, body: ReceiptBody, now: int | None = None) -> Entry:
        """Record a co-signed receipt in ``identity``'s log (it must be the receipt's client or server)."""
        return self.append(identity, body, now)

    def claim_grant(self, identity: Signer, now: int | None = None, nonce: int | None = None) -> Entry:
        """Mine the proof of work (unless ``nonce`` is given) and append the starter grant.

        Mining takes about 2**grant_pow_bits hashes (seconds under the default rules): call it in a thread.
        """
        if nonce is None:
            nonce = mine_grant(identity.peer_id, self.rules.grant_pow_bits)
            if nonce is None:
                raise LedgerError("no proof of work found for the starter grant", code="bad_pow")
        return self.append(identity, Grant(nonce), now)

    def append_hold(
        self,
        identity: Signer,
        *,
        server: str,
        session: str,
        model: str,
        start: int,
        end: int,
        tokens: int,
        now: int | None = None,
    ) -> Entry:
        """Append the hold an honest client writes before OPEN (``holds.own_hold``), checked against
        its open holds under the store's lock, so two holds written at once each see the other."""
        clock = wall_clock_ms() if now is None else now
        with self._lock:
            body = own_hold(
                self.report(),
                identity.peer_id,
                server=server,
                session=session,
                model=model,
                start=start,
                end=end,
                tokens=tokens,
                now=clock,
                rules=self.rules,
            )
            return self.append(identity, body, clock)

    def unpublished_fork_proofs(self, author: str, limit: int = 8) -> list[ForkProof]:
        """Proofs of the known forks (of others) that ``author``'s log does not carry yet."""
        with self._lock:
            published = self._published(author)
            return [
                proof
                for forked in sorted(self.forks())
                if forked not in published and forked != author
                if (proof := self.fork_proof(forked)) is not None
            ][:limit]

    def publish_fork_proofs(self, identity: Signer, now: int | None = None, limit: int = 8) -> list[Entry]:
        """Append a ``fork_proof`` entry for each known fork this identity has not yet published."""
        proofs = self.unpublished_fork_proofs(identity.peer_id, limit)
        return self.append_many(identity, proofs, now) if proofs else []

    # --- balances and spending ------------------------------------------------------------------------

    def balances(self) -> dict[str, int]:
        return self.report().balances

    def balance(self, peer_id: str) -> int:
        return self.report().balance(peer_id)

    def quote(
        self, client: str, blocks: int, tokens: int, outstanding: int = 0, now: int | None = None
    ) -> Quote:
        """The price of ``tokens`` through ``blocks`` blocks for ``client``, its balance here, and the part of
        it a request now cannot spend: this hour's and this day's bonuses, credited only at their end (a
        receipt dated now would be settled before them and paid only in part)."""
        report = self.report()
        standing = report.standing(client)
        cost = price(blocks, tokens, standing, self.rules)
        balance = report.balance(client)
        spendable = report.spendable(client, wall_clock_ms() if now is None else now)
        return Quote(client, balance, cost, standing, outstanding, balance - spendable)

    def require_payment(self, client: str, blocks: int, tokens: int, outstanding: int = 0) -> Quote:
        """``quote``, raising ``PaymentRequiredError`` (code ``payment_required``) if the balance falls short."""
        quote = self.quote(client, blocks, tokens, outstanding)
        if quote.refusal is not None:
            raise PaymentRequiredError(f"client {client[:12]}…: {quote.refusal}")
        return quote

    def require_hold(
        self,
        client: str,
        hold: object,
        *,
        server: str,
        session: str,
        model: str,
        start: int,
        end: int,
        tokens: int,
        now: int | None = None,
    ) -> Quote:
        """A server's check at OPEN (``holds.admit_hold``): ``client``'s hold ``hold`` (an entry hash) is
        held here, pays for exactly this session and covers its price, and all the client's open holds
        fit what it can spend. Raises ``PaymentRequiredError`` naming the rule that failed."""
        clock = wall_clock_ms() if now is None else now
        report = self.report()
        standing = report.standing(client)
        cost = price(end - start, tokens, standing, self.rules)
        try:
            held = admit_hold(
                report,
                client,
                hold,
                server=server,
                session=session,
                model=model,
                start=start,
                end=end,
                price=cost,
                now=clock,
                stored=self.stored_hold,
            )
        except LedgerError as exc:
            raise PaymentRequiredError(str(exc)) from None
        balance = report.balance(client)
        pending = balance - report.spendable(client, clock)
        return Quote(client, balance, cost, standing, 0, pending, held.hold.expires)


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch: the ledger's time."""
    return time.time_ns() // 1_000_000

"""The ledger of a running node: its store, its identity, receipts at the end of sessions, gossip.

Everything here is synchronous and thread-safe (the store serialises itself); async callers go through
``asyncio.to_thread``. A serving peer uses it to refuse clients that cannot pay and to co-sign receipts;
a client uses it to push its own log to the peers it is about to use (so they can see its balance) and
to countersign receipts; every node gossips with others through signaling.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from python_peer.core.economics import network_rules
from python_peer.core.entries import Entry, parse_entry
from python_peer.core.errors import LedgerError
from python_peer.core.gossip import GossipConfig, GossipSession
from python_peer.core.ledger_exchange import fit_push, push_bytes
from python_peer.core.protocol import (
    CHANNEL_GOSSIP_BYTES,
    PUSH_BYTES,
    PUSH_ENTRIES,
    SIGNALING_GOSSIP_BYTES,
)
from python_peer.core.receipts import Receipt, ReceiptBody, receipt_to_countersign
from python_peer.core.reputation import Reputation, reputation

from .identity import Identity
from .ledger_store import LEDGER_FILE, LedgerStore, Quote, now_ms

log = logging.getLogger(__name__)

MAX_GOSSIP_PEERS = 256  # gossip sessions kept, one per neighbour
# Signal payloads hold 32 KiB of JSON; gossip through signaling stays under that.
SIGNALING_GOSSIP = GossipConfig(max_message_bytes=SIGNALING_GOSSIP_BYTES)
# On a session link a GOSSIP frame's metadata holds 64 KiB: a message plus its envelope stays under that.
CHANNEL_GOSSIP = GossipConfig(max_message_bytes=CHANNEL_GOSSIP_BYTES)


class LedgerService:
    """One node's ledger: the store plus the node's identity."""

    def __init__(self, store: LedgerStore, identity: Identity) -> None:
        self.store = store
        self.identity = identity
        self._gossip: dict[str, GossipSession] = {}
        self._gossip_lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path | None, identity: Identity, *, claim_grant: bool = True) -> LedgerService:
        """Open the node's store (in memory without a data dir) and claim the starter grant once."""
        path = data_dir / LEDGER_FILE if data_dir is not None else None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        store = LedgerStore.open(path, rules=network_rules())
        service = cls(store, identity)
        if claim_grant and store.head(identity.peer_id) is None:
            log.info("claiming the starter grant (proof of work, %d bits)", store.rules.grant_pow_bits)
            store.claim_grant(identity)
        return service

    def close(self) -> None:
        self.store.close()

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def balance(self, peer_id: str | None = None) -> int:
        return self.store.balance(peer_id or self.peer_id)

    # --- before a session: the client's log, the price -------------------------------------------------

    def own_entries(self, limit: int = PUSH_ENTRIES) -> list[dict[str, Any]]:
        """The first entry (the grant) and the latest ``limit - 1`` of this node's log, as JSON, as many
        of the latest as fit one push's frame (``PUSH_BYTES``): fork proofs, which gossip can make this
        node write by the dozen, are ten times a receipt's size."""
        head = self.store.head(self.peer_id)
        if head is None:
            return []
        first = self.store.entries_from(self.peer_id, 1, 1)
        recent = self.store.entries_from(self.peer_id, max(2, head.seq - limit + 2), limit - 1)
        return [e.to_dict() for e in fit_push(first, recent)]

    def own_entries_after(self, seq: int, limit: int = PUSH_ENTRIES) -> list[dict[str, Any]] | None:
        """This node's entries after ``seq``, as JSON, oldest first; None if more than ``limit`` or more
        than one push's frame holds (``PUSH_BYTES``)."""
        head = self.store.head(self.peer_id)
        last = head.seq if head is not None else 0
        if last - seq > limit:
            return None
        entries = self.store.entries_from(self.peer_id, seq + 1, last - seq)
        if push_bytes(entries) > PUSH_BYTES:
            return None
        return [e.to_dict() for e in entries]

    def own_log_fits(self) -> bool:
        """Whether one push (``own_entries``) carries this node's whole log, from the grant on."""
        entries = self.own_entries()
        return not entries or int(entries[-1]["seq"]) == len(entries)

    def accept_entries(self, entries: object, sender: str | None = None) -> int:
        """Store valid entries a client pushed; return how many were new. Invalid ones are skipped.
        Other nodes' entries are stored without waiting for the disk (``LedgerStore.lazily``): a push
        precedes every OPEN, and a crash losing one costs only a gossip exchange later. With ``sender``
        (the neighbour that pushed them), they are taken from its gossip entry budget first: a push over
        it is refused whole (``LedgerError``, ``rate_limited``), as a gossip message would be dropped."""
        if not isinstance(entries, list) or len(entries) > PUSH_ENTRIES:
            raise LedgerError(f"a push carries a list of at most {PUSH_ENTRIES} entries")
        if sender is not None:
            self._session(sender, CHANNEL_GOSSIP).admit_entries(len(entries), now_ms())
        parsed = [p for p in (parse_entry(e) for e in entries) if isinstance(p, Entry)]
        own = any(e.author == self.peer_id for e in parsed)
        with contextlib.nullcontext() if own else self.store.lazily():
            outcomes = self.store.insert_many(parsed)
        return sum(1 for o in outcomes if o.status == "stored")

    def reputation(self, peer_id: str) -> Reputation:
        """``peer_id``'s reputation from the evidence this node holds (``core/reputation.py``)."""
        return reputation(self.store.report(), peer_id)

    def require_payment(self, client: str, blocks: int, tokens: int, outstanding: int = 0) -> Quote:
        """Raise ``PaymentRequiredError`` (balance and price in the message) unless ``client`` can pay."""
        return self.store.require_payment(client, blocks, tokens, outstanding)

    def hold(self, server: str, session: bytes, model: str, start: int, end: int, tokens: int) -> Entry:
        """The client's side before OPEN: append the hold for ``session`` on ``server``
        (``ChainStore.append_hold``; ``PaymentRequiredError`` when it would not fit our balance)."""
        return self.store.append_hold(
            self.identity,
            server=server,
            session=session.hex(),
            model=model,
            start=start,
            end=end,
            tokens=tokens,
        )

    def require_hold(
        self, client: str, hold: object, *, session: bytes, model: str, start: int, end: int, tokens: int
    ) -> Quote:
        """The server's check at OPEN (``ChainStore.require_hold``) for a session on this node."""
        return self.store.require_hold(
            client,
            hold,
            server=self.peer_id,
            session=session.hex(),
            model=model,
            start=start,
            end=end,
            tokens=tokens,
        )

    # --- after a session: the receipt ------------------------------------------------------------------

    def server_receipt(
        self, session: bytes, model: str, start: int, end: int, tokens: int, client: str
    ) -> tuple[Receipt, str]:
        """The receipt a serving peer proposes for a closed session, with its signature."""
        receipt = Receipt(session.hex(), model, start, end, tokens, client, self.peer_id, now_ms())
        return receipt, self.identity.sign(receipt.signing_bytes())

    def countersign(
        self,
        data: object,
        server_sig: object,
        *,
        server: str,
        session: bytes,
        model: str,
        start: int,
        end: int,
        tokens: int,
    ) -> tuple[Receipt, str]:
        """The client's side: check the proposed receipt against what it sent, sign it, keep it."""
        receipt = receipt_to_countersign(
            data,
            server_sig,
            client=self.peer_id,
            server=server,
            session=session.hex(),
            model=model,
            start=start,
            end=end,
            tokens=tokens,
            now_ms=now_ms(),
        )
        assert isinstance(server_sig, str)  # checked by receipt_to_countersign
        client_sig = self.identity.sign(receipt.signing_bytes())
        self.store.append_receipt(self.identity, ReceiptBody(receipt, client_sig, server_sig))
        return receipt, client_sig

    def record_receipt(self, receipt: Receipt, client_sig: str, server_sig: str) -> None:
        """The server's side: the co-signed receipt enters its log (verified, once)."""
        self.store.append_receipt(self.identity, ReceiptBody(receipt, client_sig, server_sig))

    # --- gossip ----------------------------------------------------------------------------------------

    def _session(self, peer: str, config: GossipConfig) -> GossipSession:
        """The one session with ``peer`` (its rate limits cover every transport), at ``config``'s budget."""
        with self._gossip_lock:
            session = self._gossip.get(peer)
            if session is None:
                if len(self._gossip) >= MAX_GOSSIP_PEERS:
                    self._gossip.pop(next(iter(self._gossip)))
                session = self._gossip[peer] = GossipSession(self.store, config, peer=peer)
            elif session.config != config:
                session.config = config
            return session

    def gossip_start(self, peer: str, config: GossipConfig = SIGNALING_GOSSIP) -> dict[str, Any] | None:
        """A ``summary`` opening a round with ``peer``; ``config``: SIGNALING_GOSSIP or CHANNEL_GOSSIP."""
        return self._session(peer, config).start(now_ms(), force=True)

    def gossip_receive(
        self, peer: str, message: object, config: GossipConfig = SIGNALING_GOSSIP
    ) -> list[dict[str, Any]]:
        """The replies to one message from ``peer`` (none when it is dropped: malformed, too big, too many)."""
        if not isinstance(message, dict):
            raise LedgerError("a gossip message must be a JSON object")
        received = self._session(peer, config).receive(message, now_ms())
        if received.problem:
            log.info("gossip from %s dropped: %s", peer[:8], received.problem)
        if received.forks:
            self.store.publish_fork_proofs(self.identity)
        return received.replies

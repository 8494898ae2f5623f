"""What the browser's ``web/src/ledger/ledger.js`` calls under Pyodide: a ``MemoryStore`` behind JSON calls.

Standard library only. JavaScript calls ``call(method, args_json)`` and gets JSON back, either
``{"ok": result}`` or ``{"error": {"code", "message"}}``; no Python object crosses the boundary.

Every call that takes entries comes in two steps, because WebCrypto answers with a promise that Python
cannot wait on: ``claims`` lists the signatures to check, and the call itself gets the good ones as
``verified``; signing runs the other way, prepared then performed (``browser_signing.py``). Every write
is held open and its changes go back as ``journal``: the caller writes them to IndexedDB, then calls
``commit`` (or ``rollback`` if the write failed), so an own entry is on disk before anyone sees it and
memory never holds what the disk lacks (``browser_persistence.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .browser_persistence import (
    MAX_REPLAY_FUTURE_MS,
    decode_raw,
    journal_json,
    raw_list,
    refuse_damaged_own_log,
    replay,
)
from .browser_signing import (
    CaptureSigner,
    PresignedSigner,
    check_push,
    claims_for,
    claims_json,
    held_claims,
    signing_operation,
    verified_claims,
)
from .chain_store import wall_clock_ms
from .economics import DEFAULT_RULES, Rules
from .entries import Entry, parse_entry
from .errors import AI4AllError, LedgerError
from .evidence import Evidence, check_evidence
from .gossip import GossipConfig, GossipSession
from .ledger_exchange import fit_push
from .memory_store import MemoryStore
from .proof_of_work import mine_grant
from .protocol import CHANNEL_GOSSIP_BYTES, PUSH_ENTRIES, SIGNALING_GOSSIP_BYTES
from .receipts import Receipt, receipt_to_countersign
from .reputation import reputation, reputations
from .signature_claims import Claim, KnownSignatures

__all__ = ["PUSH_ENTRIES", "BrowserLedgerCore", "call_on"]

MAX_GOSSIP_PEERS = 256

Json = Any


class BrowserLedgerCore:
    """One browser node's ledger: the store, its peer id, gossip sessions; every method takes and returns JSON."""

    def __init__(self, peer_id: str, pow_bits: int) -> None:
        self.peer_id = peer_id
        self.rules = (
            Rules(grant_pow_bits=pow_bits) if pow_bits != DEFAULT_RULES.grant_pow_bits else DEFAULT_RULES
        )
        self.known = KnownSignatures()
        self.store = MemoryStore(rules=self.rules, verify=self.known)
        self._gossip: dict[str, GossipSession] = {}

    # --- the held write -------------------------------------------------------------------------------

    def _write(self, claims: list[Claim], work: Callable[[], Json]) -> dict[str, Any]:
        """Run ``work`` in a held transaction, with ``claims`` as the good signatures; the journal goes back to JS."""
        self.known.clear()
        self.known.add(claims)
        self.store.hold()
        try:
            result = work()
        except BaseException:
            self.store.rollback()
            raise
        finally:
            self.known.clear()
        journal = journal_json(self.store.journal)
        if not journal:
            self.store.commit()
        return {"result": result, "journal": journal}

    def commit(self) -> int:
        """The journal is on disk: keep the writes. Returns how many changes were kept."""
        return len(self.store.commit())

    def rollback(self) -> None:
        """The journal could not be written: forget the writes."""
        self.store.rollback()

    # --- claims ---------------------------------------------------------------------------------------

    def claims(self, kind: str, payload: object) -> list[list[str]]:
        """The signatures JavaScript must check before ``kind`` (push, gossip, raw, receipt) with ``payload``."""
        return claims_for(kind, payload)

    def evidence_claims(self, evidence: object) -> list[list[str]]:
        """The signatures JavaScript must check before appending ``evidence`` (an ``evidence`` body this
        node's spot checks settled): the three signed answers'. A body that is malformed, or that every
        node would reject (``check_evidence``, signatures aside), is refused here with its reason."""
        body = Evidence.from_dict(evidence)
        rejection = check_evidence(self.peer_id, body, lambda _peer, _message, _signature: True)
        if rejection is not None:
            raise LedgerError(f"{rejection.code}: {rejection.reason}", code="bad_evidence")
        answers = [body.liar, *body.honest]
        return claims_json([(a.answer.server, a.answer.signing_bytes(), a.signature) for a in answers])

    # --- replay ---------------------------------------------------------------------------------------

    def load(self, entries: object, evidence: object, verified: object) -> dict[str, Any]:
        """Replay the browser's own copy (canonical JSON strings): chains in seq order, then evidence.

        Returns what did not load (``dropped``: [hash or null, code, reason, raw]) so the caller can
        remove it from disk. An own entry that does not load is an error (``corrupt``): signing its seq
        again could fork this identity's log.
        """
        raws, evidence_raws = raw_list(entries), raw_list(evidence)
        self.known.clear()
        self.known.add(verified_claims(verified))
        try:
            dropped = replay(self.store, raws, evidence_raws)
        finally:
            self.known.clear()
        refuse_damaged_own_log(self.store, self.peer_id, dropped)
        return {"entries": len(self.store), "dropped": dropped}

    def own_head(self) -> int:
        """The seq of this node's last entry here (0 for none): where catching up with other tabs starts."""
        head = self.store.head(self.peer_id)
        return head.seq if head else 0

    def catch_up(self, raws: object, verified: object) -> dict[str, Any]:
        """Own entries another tab of this browser stored (canonical JSON), in seq order."""
        entries = [e for e in (decode_raw(r) for r in raw_list(raws)) if isinstance(e, Entry)]
        entries.sort(key=lambda e: e.seq)
        return self._write(
            verified_claims(verified),
            lambda: sum(o.status == "stored" for o in self.store.insert_many(entries, MAX_REPLAY_FUTURE_MS)),
        )

    # --- others' entries ------------------------------------------------------------------------------

    def admit_push(self, sender: str, count: int) -> int:
        """The first step of a push from the neighbour ``sender`` (a GOSSIP ``push``, or the ``log`` its
        OPEN carries), before any of its ``count`` entries is checked: they are taken from ``sender``'s
        gossip entry budget (``LedgerService.accept_entries``), and a push over it is refused whole
        (``rate_limited``), as a gossip message would be dropped. Returns ``count``."""
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= PUSH_ENTRIES:
            raise LedgerError(f"a push carries a list of at most {PUSH_ENTRIES} entries")
        self._session(sender, CHANNEL_GOSSIP_BYTES).admit_entries(count, wall_clock_ms())
        return count

    def accept_entries(self, entries: object, verified: object) -> dict[str, Any]:
        """``LedgerService.accept_entries``: store valid pushed entries; ``result`` is how many were new.
        A neighbour's push is first admitted against its entry budget (``admit_push``)."""
        check_push(entries)
        assert isinstance(entries, list)

        def work() -> dict[str, Any]:
            parsed: list[Entry] = []
            refused: list[list[Any]] = []
            for data in entries:
                p = parse_entry(data)
                if isinstance(p, Entry):
                    parsed.append(p)
                else:
                    refused.append([None, p.code, p.reason])
            outcomes = self.store.insert_many(parsed)
            for outcome in outcomes:
                if outcome.status == "rejected" and outcome.rejection is not None:
                    refused.append([outcome.hash, outcome.rejection.code, outcome.rejection.reason])
            return {"stored": sum(1 for o in outcomes if o.status == "stored"), "refused": refused}

        return self._write(verified_claims(verified), work)

    # --- gossip ---------------------------------------------------------------------------------------

    def _session(self, peer: str, max_message_bytes: int | None) -> GossipSession:
        if not isinstance(peer, str) or not peer or len(peer) > 256:
            raise LedgerError("a gossip peer is a non-empty string")
        session = self._gossip.get(peer)
        budget = SIGNALING_GOSSIP_BYTES if max_message_bytes is None else max_message_bytes
        if session is None:
            if len(self._gossip) >= MAX_GOSSIP_PEERS:
                self._gossip.pop(next(iter(self._gossip)))
            session = self._gossip[peer] = GossipSession(
                self.store, GossipConfig(max_message_bytes=budget), peer
            )
        elif session.config.max_message_bytes != budget:
            session.config = GossipConfig(max_message_bytes=budget)
        return session

    def gossip_start(self, peer: str, max_message_bytes: int | None = None) -> Json:
        return self._session(peer, max_message_bytes).start(wall_clock_ms(), force=True)

    def gossip_receive(
        self, peer: str, message: object, verified: object, max_message_bytes: int | None = None
    ) -> dict[str, Any]:
        """One gossip message from ``peer``: replies, what was learned, and why a message was dropped."""
        session = self._session(peer, max_message_bytes)

        def work() -> dict[str, Any]:
            received = session.receive(message, wall_clock_ms())
            return {
                "replies": received.replies,
                "stored": received.stored,
                "forks": received.forks,
                "problem": received.problem,
                "rejected": [[h, r.code, r.reason] for h, r in received.rejected],
                "publish": bool(self.store.unpublished_fork_proofs(self.peer_id))
                if received.forks
                else False,
            }

        return self._write(verified_claims(verified), work)

    # --- own entries ----------------------------------------------------------------------------------

    def prepare(self, op: str, args: dict[str, Any], verified: object) -> dict[str, Any]:
        """Dry-run a signing ``op`` (grant, receipt, fork_proofs, append): what it signs, at which time.

        Nothing is kept. JavaScript signs ``messages`` with the node's key and calls ``perform``.
        """
        args = {**args, "now": args.get("now") or wall_clock_ms()}
        run = signing_operation(self.store, op, args)
        self.known.clear()
        self.known.add([*verified_claims(verified), *held_claims(self.store, self.peer_id, op)])
        capture = CaptureSigner(self.peer_id, self.known)
        self.store.hold()
        try:
            run(capture)
        finally:
            self.store.rollback()
            self.known.clear()
        return {"now": args["now"], "messages": [m.decode("utf-8") for m in capture.messages]}

    def perform(
        self, op: str, args: dict[str, Any], messages: list[str], signatures: list[str], verified: object
    ) -> dict[str, Any]:
        """Run ``op`` again with the signatures of ``prepare``'s messages; ``result`` is the new entries.

        ``verified`` must hold the new signatures as well (checked like any other): an entry whose
        signature does not verify is never kept, even an own one.
        """
        run = signing_operation(self.store, op, args)
        encoded = [m.encode("utf-8") for m in messages]
        signer = PresignedSigner(self.peer_id, encoded, list(signatures))
        # the new signatures too: JS checks them
        claims = [*verified_claims(verified), *held_claims(self.store, self.peer_id, op)]

        def work() -> list[dict[str, Any]]:
            entries = run(signer)
            if signer.used != len(signer.pairs):
                raise LedgerError("the ledger changed between preparing and signing an entry", code="store")
            return [e.to_dict() for e in entries]

        return self._write(claims, work)

    def mine(self, start: int, limit: int) -> int | None:
        """A grant nonce for this node within ``[start, start + limit)`` under the network's bits, or None."""
        return mine_grant(self.peer_id, self.rules.grant_pow_bits, start, limit)

    def receipt_message(self, receipt: object) -> str:
        """The bytes both parties sign for ``receipt`` (validated), as text."""
        return Receipt.from_dict(receipt).signing_bytes().decode("utf-8")

    def server_receipt(
        self, session: str, model: str, start: int, end: int, tokens: int, client: str
    ) -> dict[str, Any]:
        """``LedgerService.server_receipt``: the receipt to propose at CLOSE (JavaScript signs ``message``)."""
        receipt = Receipt(session, model, start, end, tokens, client, self.peer_id, wall_clock_ms())
        return {"receipt": receipt.to_dict(), "message": receipt.signing_bytes().decode("utf-8")}

    def check_terms(
        self,
        receipt: object,
        server_sig: object,
        server: str,
        session: str,
        model: str,
        start: int,
        end: int,
        tokens: int,
    ) -> dict[str, Any]:
        """The client's check before countersigning (``LedgerService.countersign``); ``message`` to sign."""
        parsed = receipt_to_countersign(
            receipt,
            server_sig,
            client=self.peer_id,
            server=server,
            session=session,
            model=model,
            start=start,
            end=end,
            tokens=tokens,
            now_ms=wall_clock_ms(),
        )
        return {"receipt": parsed.to_dict(), "message": parsed.signing_bytes().decode("utf-8")}

    # --- reads ----------------------------------------------------------------------------------------

    def own_entries(self, limit: int = PUSH_ENTRIES) -> list[dict[str, Any]]:
        """``LedgerService.own_entries``: the first entry and the latest ``limit - 1``, as many of the
        latest as fit one push's frame (``PUSH_BYTES``): fork proofs, which gossip can make this node
        write by the dozen, are ten times a receipt's size."""
        head = self.store.head(self.peer_id)
        if head is None:
            return []
        first = self.store.entries_from(self.peer_id, 1, 1)
        recent = self.store.entries_from(self.peer_id, max(2, head.seq - limit + 2), limit - 1)
        return [e.to_dict() for e in fit_push(first, recent)]

    def balance(self, peer_id: str | None = None) -> int:
        return self.store.balance(peer_id or self.peer_id)

    def account(self, peer_id: str | None = None) -> dict[str, Any]:
        """The breakdown the API's balance endpoint shows (``ApiLedger``), in units."""
        account = self.store.report().accounts.get(peer_id or self.peer_id)
        if account is None:
            return {"balance": 0, "granted": 0, "earned": 0, "bonuses": 0, "spent": 0, "forked_at": None}
        return {
            "balance": account.balance,
            "granted": account.granted,
            "earned": account.earned,
            "bonuses": account.rarity_bonus + account.uptime_bonus,
            "spent": account.spent,
            "forked_at": account.forked_at,
        }

    def require_hold(
        self,
        client: str,
        hold: object,
        server: str,
        session: str,
        model: str,
        start: int,
        end: int,
        tokens: int,
    ) -> dict[str, Any]:
        """``ChainStore.require_hold``: a browser span server's check at OPEN (``holds.admit_hold``)."""
        quote = self.store.require_hold(
            client, hold, server=server, session=session, model=model, start=start, end=end, tokens=tokens
        )
        return {"client": quote.client, "price": quote.price, "hold_expires": quote.hold_expires}

    def entry_hash(self, entry: object) -> str:
        """The hash of an entry (what OPEN's ``hold`` names, the next entry's ``prev``)."""
        return Entry.from_dict(entry).hash

    def require_payment(self, client: str, blocks: int, tokens: int, outstanding: int = 0) -> dict[str, Any]:
        quote = self.store.require_payment(client, blocks, tokens, outstanding)
        return {
            "client": quote.client,
            "balance": quote.balance,
            "price": quote.price,
            "standing": quote.standing,
        }

    def log(self, peer_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """``peer_id``'s latest ``limit`` entries, newest first."""
        author = peer_id or self.peer_id
        head = self.store.head(author)
        if head is None or limit <= 0:
            return []
        entries = self.store.entries_from(author, max(1, head.seq - limit + 1), limit)
        return [e.to_dict() for e in reversed(entries)]

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self.store),
            "authors": len(self.store.heads()),
            "peerId": self.peer_id,
            "balance": self.balance(),
            "forks": len(self.store.forks()),
        }

    def heads(self) -> dict[str, list[Any]]:
        return {a: list(h) for a, h in self.store.heads().items()}

    def forks(self) -> dict[str, int]:
        return self.store.forks()

    def fork_proof(self, author: str) -> dict[str, Any] | None:
        proof = self.store.fork_proof(author)
        return proof.to_dict() if proof else None

    def balances(self) -> dict[str, int]:
        return self.store.balances()

    def reputations(self) -> dict[str, str]:
        """Peer id -> ``suspect`` or ``excluded``, for every peer with evidence against it (routing reads it)."""
        return {peer: found.level for peer, found in reputations(self.store.report()).items()}

    def reputation(self, peer_id: str) -> dict[str, Any]:
        """``peer_id``'s reputation from the evidence held (``reputation.py``): level, authors, sessions,
        and ``refusal``: why a serving peer refuses it a session (None unless excluded)."""
        found = reputation(self.store.report(), peer_id)
        return {
            "level": found.level,
            "refusal": found.refusal,
            "authors": sorted(found.authors),
            "sessions": sorted([client, session] for client, session in found.sessions),
        }


_METHODS = frozenset(
    [
        "commit",
        "rollback",
        "own_head",
        "catch_up",
        "claims",
        "load",
        "admit_push",
        "accept_entries",
        "gossip_start",
        "gossip_receive",
        "prepare",
        "perform",
        "mine",
        "receipt_message",
        "server_receipt",
        "check_terms",
        "own_entries",
        "balance",
        "account",
        "require_payment",
        "require_hold",
        "entry_hash",
        "log",
        "stats",
        "heads",
        "forks",
        "fork_proof",
        "balances",
        "reputation",
        "reputations",
        "evidence_claims",
    ]
)


def call_on(ledger: BrowserLedgerCore, method: str, args_json: str) -> str:
    """``ledger.method(**args)``; ``{"ok": result}`` or ``{"error": {code, message, type}}``, as JSON."""
    try:
        if method not in _METHODS:
            raise LedgerError(f"unknown ledger method {method!r:.40}")
        args = json.loads(args_json)
        if not isinstance(args, dict):
            raise LedgerError("ledger call arguments must be a JSON object")
        result = getattr(ledger, method)(**args)
        return json.dumps({"ok": result}, separators=(",", ":"))
    except AI4AllError as exc:
        code = getattr(exc, "code", "malformed")
        return json.dumps({"error": {"code": str(code), "message": str(exc), "type": type(exc).__name__}})
    except (TypeError, ValueError, KeyError, RecursionError) as exc:
        return json.dumps(
            {"error": {"code": "malformed", "message": f"{method}: {exc}", "type": "LedgerError"}}
        )

"""What the browser's ``web/src/ledger/ledger.js`` calls under Pyodide: a ``MemoryStore`` behind JSON calls.

Standard library only. JavaScript calls ``call(method, args_json)`` and gets JSON back, either
``{"ok": result}`` or ``{"error": {"code", "message"}}``; no Python object crosses the boundary.

Python under Pyodide cannot wait on a promise, and WebCrypto's Ed25519 answers with one. So every call
that takes entries comes in two steps: ``claims`` lists the signatures the entries' acceptance needs
(``core.signature_claims``), JavaScript checks them with WebCrypto, and the call itself gets the
good ones as ``verified``; the store's ``verify`` is a ``KnownSignatures`` of exactly those (anything
else is a bad signature). Signing is the same in reverse: an operation that signs (a grant, a receipt,
fork proofs) runs once with a signer that records what it would sign, then rolls back; JavaScript
signs those messages with the node's key; the operation runs again with the signatures.

Every write is held open (``MemoryStore.hold``) and its changes are returned as ``journal``: the
caller writes them to IndexedDB, then calls ``commit`` (or ``rollback`` if the write failed), so an own
entry is on disk before anyone sees it and memory never holds what the disk lacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .chain_store import wall_clock_ms
from .economics import DEFAULT_RULES, Rules
from .entries import Body, Entry, ForkProof, Grant, parse_body, parse_entry
from .errors import AI4AllError, CanonicalError, LedgerError
from .gossip import GossipConfig, GossipSession
from .memory_store import Change, DropChain, MemoryStore, Put, SetEvidence
from .proof_of_work import mine_grant
from .protocol import PUSH_ENTRIES, SIGNALING_GOSSIP_BYTES
from .receipts import Receipt, ReceiptBody, receipt_to_countersign
from .signature_claims import Claim, KnownSignatures, signature_claims

__all__ = ["PUSH_ENTRIES", "BrowserLedgerCore", "call_on"]

MAX_GOSSIP_PEERS = 256
MAX_REPLAY_FUTURE_MS = 2**53 - 1  # replaying the browser's own copy: entries were dated-checked on arrival

Json = Any


def _claims_json(claims: list[Claim]) -> list[list[str]]:
    """Claims for JavaScript: messages are ASCII (every string of an entry is), sent as text."""
    out: dict[tuple[str, bytes, str], None] = {}
    for claim in claims:
        out.setdefault(claim, None)
    return [[peer, message.decode("utf-8"), sig] for peer, message, sig in out]


def _verified(data: object) -> list[Claim]:
    if not isinstance(data, list):
        raise LedgerError("verified must be a list of [peer_id, message, signature]")
    claims: list[Claim] = []
    for item in data:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise LedgerError("a verified claim is [peer_id, message, signature]")
        claims.append((item[0], item[1].encode("utf-8"), item[2]))
    return claims


def _journal_json(changes: list[Change]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for change in changes:
        if isinstance(change, Put):
            e = change.entry
            out.append(["put", e.author, e.seq, e.hash, e.encoded.decode("utf-8")])
        elif isinstance(change, DropChain):
            out.append(["drop", change.author, change.from_seq])
        elif isinstance(change, SetEvidence):
            pairs = [[e.hash, e.encoded.decode("utf-8")] for e in change.entries]
            out.append(["evidence", change.author, change.seq, pairs])
    return out


def _entries_of(message: object) -> tuple[list[Entry], list[ForkProof]]:
    """The entries and proofs a gossip ``entries`` message carries (malformed ones left out)."""
    if not isinstance(message, dict) or message.get("type") != "entries":
        return [], []
    entries: list[Entry] = []
    proofs: list[ForkProof] = []
    raw_entries, raw_proofs = message.get("entries"), message.get("proofs")
    for data in raw_entries if isinstance(raw_entries, list) else []:
        parsed = parse_entry(data)
        if isinstance(parsed, Entry):
            entries.append(parsed)
    for data in raw_proofs if isinstance(raw_proofs, list) else []:
        try:
            if isinstance(data, dict) and set(data) == {"a", "b"}:
                a = Entry.from_dict(data["a"], nested=True)
                b = Entry.from_dict(data["b"], nested=True)
                proofs.append(ForkProof(a, b))
        except (LedgerError, CanonicalError, RecursionError):
            continue
    return entries, proofs


class _CaptureSigner:
    """Records what an operation would sign, answering with a placeholder it also vouches for."""

    def __init__(self, peer_id: str, known: KnownSignatures) -> None:
        self.peer_id = peer_id
        self.known = known
        self.messages: list[bytes] = []

    def sign(self, message: bytes) -> str:
        placeholder = f"{len(self.messages):0128x}"
        self.messages.append(bytes(message))
        self.known.add([(self.peer_id, message, placeholder)])
        return placeholder


class _PresignedSigner:
    """Answers with the signatures JavaScript made for exactly these messages, in order."""

    def __init__(self, peer_id: str, messages: list[bytes], signatures: list[str]) -> None:
        self.peer_id = peer_id
        self.pairs = list(zip(messages, signatures, strict=True))
        self.used = 0

    def sign(self, message: bytes) -> str:
        if self.used >= len(self.pairs) or self.pairs[self.used][0] != message:
            raise LedgerError("the ledger changed between preparing and signing an entry", code="store")
        signature = self.pairs[self.used][1]
        self.used += 1
        return signature


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
        journal = _journal_json(self.store.journal)
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
        if kind == "push":
            self._check_push(payload)
            assert isinstance(payload, list)
            return self.claims("entries", payload)
        if kind == "entries":
            listed = payload if isinstance(payload, list) else []
            parsed = [p for p in (parse_entry(e) for e in listed) if isinstance(p, Entry)]
            return _claims_json([c for e in parsed for c in signature_claims(e)])
        if kind == "gossip":
            entries, proofs = _entries_of(payload)
            items: list[Entry | ForkProof] = [*proofs, *entries]
            return _claims_json([c for item in items for c in signature_claims(item)])
        if kind == "raw":
            parsed = [e for e in (self._decode(r) for r in self._raw_list(payload)) if isinstance(e, Entry)]
            return _claims_json([c for e in parsed for c in signature_claims(e)])
        if kind == "receipt":
            body = ReceiptBody.from_dict(payload)
            message = body.receipt.signing_bytes()
            r = body.receipt
            return _claims_json([(r.client, message, body.client_sig), (r.server, message, body.server_sig)])
        raise LedgerError(f"no claims for {kind!r:.40}")

    @staticmethod
    def _raw_list(payload: object) -> list[str]:
        if not isinstance(payload, list) or not all(isinstance(r, str) for r in payload):
            raise LedgerError("raw entries must be a list of canonical JSON strings")
        return payload

    @staticmethod
    def _decode(raw: str) -> Entry | LedgerError:
        try:
            return Entry.decode(raw.encode("utf-8"))
        except (LedgerError, CanonicalError, RecursionError, UnicodeError) as exc:
            return exc if isinstance(exc, LedgerError) else LedgerError(str(exc))

    # --- replay ---------------------------------------------------------------------------------------

    def load(self, entries: object, evidence: object, verified: object) -> dict[str, Any]:
        """Replay the browser's own copy (canonical JSON strings): chains in seq order, then evidence.

        Returns what did not load (``dropped``: [hash or null, code, reason, raw]) so the caller can
        remove it from disk. An own entry that does not load is an error (``corrupt``): signing its seq
        again could fork this identity's log.
        """
        raws, evidence_raws = self._raw_list(entries), self._raw_list(evidence)
        self.known.clear()
        self.known.add(_verified(verified))
        dropped: list[list[Any]] = []
        parsed: list[tuple[Entry, str]] = []
        for raw in raws:
            entry = self._decode(raw)
            if isinstance(entry, Entry):
                parsed.append((entry, raw))
            else:
                dropped.append([None, entry.code, str(entry), raw])
        parsed.sort(key=lambda pair: (pair[0].author, pair[0].seq, pair[0].hash))
        proofs: list[ForkProof] = []
        by_author: dict[str, list[Entry]] = {}
        for raw in evidence_raws:
            entry = self._decode(raw)
            if isinstance(entry, Entry):
                by_author.setdefault(entry.author, []).append(entry)
            else:
                dropped.append([None, entry.code, str(entry), raw])
        for variants in by_author.values():
            variants.sort(key=lambda e: (e.seq, e.hash))
            if (
                len(variants) >= 2
                and variants[0].seq == variants[1].seq
                and variants[0].hash != variants[1].hash
            ):
                proofs.append(ForkProof.of(variants[0], variants[1]))
        try:
            outcomes = self.store.insert_many([e for e, _ in parsed], MAX_REPLAY_FUTURE_MS)
            proof_outcomes = self.store.add_fork_proofs(proofs) if proofs else []
        finally:
            self.known.clear()
        for (entry, raw), outcome in zip(parsed, outcomes, strict=True):
            if outcome.status == "rejected" and outcome.rejection is not None:
                dropped.append([entry.hash, outcome.rejection.code, outcome.rejection.reason, raw])
        for proof, outcome in zip(proofs, proof_outcomes, strict=True):
            if outcome.status == "rejected" and outcome.rejection is not None:
                for e in (proof.a, proof.b):
                    dropped.append(
                        [e.hash, outcome.rejection.code, outcome.rejection.reason, e.encoded.decode()]
                    )
        chain, kept = self.store.hashes()
        held = chain | kept
        for variants in by_author.values():  # evidence no longer needed (a lower fork was found)
            for e in variants:
                if e.hash not in held and not any(d[0] == e.hash for d in dropped):
                    dropped.append(
                        [e.hash, "superseded", "evidence of a fork at a higher seq", e.encoded.decode()]
                    )
        for entry, raw in parsed:  # chain rows that a fork dropped after they were stored
            if entry.hash not in held and not any(d[0] == entry.hash for d in dropped):
                dropped.append([entry.hash, "forked", "its author forked at or below this seq", raw])
        fork = self.store.forks().get(self.peer_id)
        own = [d for d in dropped if self._author_seq(d[3])[0] == self.peer_id]
        own = [d for d in own if fork is None or not self._at_or_after(d[3], fork)]
        if own:
            code, reason = own[0][1], own[0][2]
            raise LedgerError(
                f"this browser's copy of its own log is damaged ({code}: {reason}); signing again could "
                "fork its log: clear this site's data to start over with a new identity",
                code="corrupt",
            )
        return {"entries": len(self.store), "dropped": dropped}

    def _at_or_after(self, raw: str, seq: int) -> bool:
        claimed = self._author_seq(raw)[1]
        return isinstance(claimed, int) and claimed >= seq

    @staticmethod
    def _author_seq(raw: str) -> tuple[object, object]:
        """The author and seq a stored row claims, even when it no longer parses as an entry."""
        try:
            data = json.loads(raw)
        except ValueError:
            return None, None
        return (data.get("author"), data.get("seq")) if isinstance(data, dict) else (None, None)

    def own_head(self) -> int:
        """The seq of this node's last entry here (0 for none): where catching up with other tabs starts."""
        head = self.store.head(self.peer_id)
        return head.seq if head else 0

    def catch_up(self, raws: object, verified: object) -> dict[str, Any]:
        """Own entries another tab of this browser stored (canonical JSON), in seq order."""
        entries = [e for e in (self._decode(r) for r in self._raw_list(raws)) if isinstance(e, Entry)]
        entries.sort(key=lambda e: e.seq)
        return self._write(
            _verified(verified),
            lambda: sum(o.status == "stored" for o in self.store.insert_many(entries, MAX_REPLAY_FUTURE_MS)),
        )

    # --- others' entries ------------------------------------------------------------------------------

    @staticmethod
    def _check_push(entries: object) -> None:
        if not isinstance(entries, list) or len(entries) > PUSH_ENTRIES:
            raise LedgerError(f"a push carries a list of at most {PUSH_ENTRIES} entries")

    def accept_entries(self, entries: object, verified: object) -> dict[str, Any]:
        """``LedgerService.accept_entries``: store valid pushed entries; ``result`` is how many were new."""
        self._check_push(entries)
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

        return self._write(_verified(verified), work)

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

        return self._write(_verified(verified), work)

    # --- own entries ----------------------------------------------------------------------------------

    def _op(self, op: str, args: dict[str, Any]) -> Callable[[Any], list[Entry]]:
        if op == "grant":
            nonce = args.get("nonce")
            if isinstance(nonce, bool) or not isinstance(nonce, int):
                raise LedgerError("a grant needs its nonce")
            grant = Grant(nonce)
            return lambda signer: [self.store.append(signer, grant, args["now"])]
        if op == "receipt":
            body = ReceiptBody.from_dict(args.get("body"))
            return lambda signer: [self.store.append_receipt(signer, body, args["now"])]
        if op == "fork_proofs":
            return lambda signer: self.store.publish_fork_proofs(signer, args["now"])
        if op == "append":
            bodies: list[Body] = [parse_body(b) for b in args.get("bodies") or []]
            return lambda signer: self.store.append_many(signer, bodies, args["now"])
        raise LedgerError(f"unknown ledger operation {op!r:.40}")

    def prepare(self, op: str, args: dict[str, Any], verified: object) -> dict[str, Any]:
        """Dry-run a signing ``op`` (grant, receipt, fork_proofs, append): what it signs, at which time.

        Nothing is kept. JavaScript signs ``messages`` with the node's key and calls ``perform``.
        """
        args = {**args, "now": args.get("now") or wall_clock_ms()}
        run = self._op(op, args)
        self.known.clear()
        self.known.add([*_verified(verified), *self._held_claims(op)])
        capture = _CaptureSigner(self.peer_id, self.known)
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
        run = self._op(op, args)
        encoded = [m.encode("utf-8") for m in messages]
        signer = _PresignedSigner(self.peer_id, encoded, list(signatures))
        claims = [*_verified(verified), *self._held_claims(op)]  # the new signatures too: JS checks them

        def work() -> list[dict[str, Any]]:
            entries = run(signer)
            if signer.used != len(signer.pairs):
                raise LedgerError("the ledger changed between preparing and signing an entry", code="store")
            return [e.to_dict() for e in entries]

        return self._write(claims, work)

    def _held_claims(self, op: str) -> list[Claim]:
        """Signatures of what ``op`` copies from the store itself (checked when it arrived)."""
        if op != "fork_proofs":
            return []
        return [c for p in self.store.unpublished_fork_proofs(self.peer_id) for c in signature_claims(p)]

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
        """``LedgerService.own_entries``: the first entry and the latest ``limit - 1``."""
        head = self.store.head(self.peer_id)
        if head is None:
            return []
        first = self.store.entries_from(self.peer_id, 1, 1)
        recent = self.store.entries_from(self.peer_id, max(2, head.seq - limit + 2), limit - 1)
        return [e.to_dict() for e in [*first, *recent]]

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


_METHODS = frozenset(
    {
        "commit",
        "rollback",
        "own_head",
        "catch_up",
        "claims",
        "load",
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
        "log",
        "stats",
        "heads",
        "forks",
        "fork_proof",
        "balances",
    }
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

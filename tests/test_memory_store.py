"""The in-memory ledger store (``core/memory_store.py``), the browser's facade over it, and signature claims.

``MemoryStore`` must hold exactly what ``LedgerStore`` (SQLite) holds when offered the same entries:
same outcomes, heads, forks, evidence and balances, over the attacks of ``test_ledger.py`` and random
plans of ``test_ledger_properties.py``; gossip between the two kinds converges. Its journal, replayed
on a fresh "disk", reproduces the store; a rolled-back write leaves nothing behind.
``signature_claims`` lists every signature a check asks about: a ``verify`` that knows only the claims
that really verify accepts exactly what the real one accepts. ``browser_ledger`` (what the browser
calls under Pyodide) is driven here with pynacl standing in for WebCrypto.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_peer.core import browser_ledger
from python_peer.core.balances import compute
from python_peer.core.chain_store import ChainStore
from python_peer.core.economics import DEFAULT_RULES, Rules
from python_peer.core.entries import Entry, ForkProof, Grant, next_entry
from python_peer.core.errors import LedgerError
from python_peer.core.gossip import GossipConfig, GossipSession
from python_peer.core.ledger_fields import MAX_FUTURE_MS
from python_peer.core.memory_store import DropChain, MemoryStore, Put, SetEvidence
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.rules import check_body, check_fork_proof
from python_peer.core.signature_claims import Claim, KnownSignatures, signature_claims
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import LedgerStore, native_verify
from tests.support.ledger import (
    GOLDEN,
    GOLDEN_NONCE,
    NOW,
    RULES,
    T0,
    Log,
    Wire,
    build,
    cosign,
    funded,
    grant,
    ids,
    plans,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def memory(rules: Rules = RULES) -> MemoryStore:
    return MemoryStore(rules=rules, verify=native_verify)


def state(store: Any) -> tuple[Any, ...]:
    report = store.report()
    return (
        *store.hashes(),
        store.forks(),
        store.heads(),
        [e.hash for e in store.evidence()],
        [e.hash for e in store.entries()],
        report.balances,
        {h: r.code for h, r in report.ignored.items()},
        len(store),
    )


class Twin:
    """A SQLite store and a memory store fed the same calls; every outcome and state must agree."""

    def __init__(self, rules: Rules = RULES) -> None:
        self.sql = LedgerStore.open(None, rules=rules)
        self.mem = memory(rules)

    def both(self, method: str, *args: Any) -> Any:
        results: list[tuple[Any, ...]] = []
        for store in (self.sql, self.mem):
            try:
                results.append(("ok", getattr(store, method)(*args)))
            except LedgerError as exc:
                results.append(("error", exc.code, str(exc)))
        assert results[0] == results[1], (method, results)
        assert state(self.sql) == state(self.mem)
        return results[0]

    def insert(self, entry: Entry, now: int = NOW) -> Any:
        return self.both("insert", entry, now)[1]


# --- the same outcomes as the SQLite store ---------------------------------------------------------------


def test_the_attacks_of_test_ledger_end_the_same_in_both_stores() -> None:
    twin = Twin()
    client, server = ids(2, 5000)
    c, s = Log(client), Log(server)
    for entry in (c.add(grant(client)), s.add(grant(server)), s.add(cosign(client, server))):
        assert twin.insert(entry).status == "stored"
    mallory = ids(1, 5010)[0]
    head = s.entries[-1]
    forged = next_entry(server.peer_id, head, T0 + 100_000, cosign(client, server), mallory.sign)
    one_party = dataclasses.replace(cosign(client, server), client_sig=cosign(client, server).server_sig)
    body = cosign(client, server, tokens=100)
    inflated = dataclasses.replace(body.receipt, tokens=10_000)
    third_party = Log(mallory).add(cosign(client, server))
    cases = [
        (forged, "bad_signature"),
        (next_entry(server.peer_id, head, T0 + 100_000, one_party, server.sign), "bad_signature"),
        (
            next_entry(
                server.peer_id,
                head,
                T0 + 100_000,
                ReceiptBody(inflated, body.client_sig, server.sign(inflated.signing_bytes())),
                server.sign,
            ),
            "bad_signature",
        ),
        (third_party, "bad_receipt"),
        (
            next_entry(server.peer_id, head, NOW + MAX_FUTURE_MS + 1, cosign(client, server), server.sign),
            "future",
        ),
        (Log(mallory).add(Grant(0)), None),  # 4 bits: nonce 0 may or may not pass; both must agree
    ]
    gap = Log(server)
    gap.entries = list(s.entries)
    gap.add(cosign(client, server, tokens=3))
    cases.append((gap.add(cosign(client, server, tokens=4)), "gap"))
    for entry, code in cases:
        outcome = twin.insert(entry)
        if code is not None:
            assert outcome.status == "rejected" and outcome.rejection.code == code
    # the same receipt appended twice by an honest writer; a second grant
    counted = next(e.body for e in s.entries if isinstance(e.body, ReceiptBody))
    assert twin.both("append", server, counted, NOW)[1] == "duplicate_receipt"
    assert twin.both("claim_grant", server, NOW)[1] == "grant_claimed"
    # a fork: neither branch counts, later entries are refused, the proof convinces a naive store
    branch = Log(server)
    branch.entries = list(s.entries)
    honest = s.add(cosign(client, server, tokens=1000))
    other = branch.add(cosign(client, server, tokens=2000))
    assert twin.insert(honest).status == "stored"
    assert twin.insert(other).status == "fork"
    assert twin.sql.forks() == {server.peer_id: 3}
    assert twin.insert(s.add(cosign(client, server, tokens=5))).rejection.code == "forked"
    assert twin.both("append", server, cosign(client, server), NOW)[1] == "forked"  # an own fork
    witness = ids(1, 5020)[0]
    published = twin.both("publish_fork_proofs", witness, NOW)[1]
    assert len(published) == 1 and isinstance(published[0].body, ForkProof)
    assert twin.both("publish_fork_proofs", witness, NOW)[1] == []
    naive = Twin()
    for entry in (c.entries[0], *s.entries[:2], honest, published[0]):
        assert naive.insert(entry).ok
    assert naive.mem.forks() == {server.peer_id: 3}
    assert naive.mem.balances() == twin.mem.balances()
    # quotes and refusals name the same numbers
    assert twin.both("quote", client.peer_id, 10, 100)[1] == twin.sql.quote(client.peer_id, 10, 100)
    with pytest.raises(Exception, match="does not cover the price") as refused:
        twin.mem.require_payment(client.peer_id, 30, 100_000)
    assert getattr(refused.value, "code", None) == "payment_required"


def test_the_network_rules_refuse_grants_without_work_in_both_stores() -> None:
    twin = Twin(DEFAULT_RULES)
    for sybil in ids(10, 5100):
        assert twin.insert(Log(sybil).add(Grant(0))).rejection.code == "bad_pow"
    assert twin.insert(Log(GOLDEN).add(Grant(GOLDEN_NONCE), time=T0)).status == "stored"


def test_the_cap_and_cumulative_receipts_end_the_same_in_both_stores() -> None:
    rules = Rules(grant_pow_bits=4, balance_cap=300_000, uptime_bonus=0)
    twin = Twin(rules)
    client, server = ids(2, 5150)
    s = Log(server)
    c, paid = funded(client, rules, extra=True)  # the client can pay both receipts below in full
    for entry in paid:
        twin.insert(entry)
    twin.insert(s.add(grant(server, rules)))
    twin.insert(s.add(cosign(client, server, tokens=1000, time=T0 + 1000)))
    twin.insert(s.add(cosign(client, server, tokens=1000, time=T0 + 2000)))
    assert twin.mem.report().accounts[server.peer_id].clipped == 60_000
    session = "ab" * 16
    for tokens in (10, 30, 20):  # a client signing as the session goes: the most tokens count
        twin.insert(
            c.add(cosign(server, client, tokens=tokens, end=1, time=T0 + 3000 + tokens, session=session))
        )
    assert twin.mem.balance(client.peer_id) == twin.sql.balance(client.peer_id)


@SETTINGS
@given(plan=plans(5, 40), data=st.data())
def test_random_plans_end_the_same_in_both_stores(plan: list[Any], data: st.DataObject) -> None:
    entries = build(plan)
    order = data.draw(st.permutations(entries))
    size = data.draw(st.integers(1, 8))
    twin = Twin()
    for i in range(0, len(order), size):
        twin.both("insert_many", order[i : i + size], NOW)
    proofs = [p for author in twin.sql.forks() if (p := twin.sql.fork_proof(author)) is not None]
    twin.both("add_fork_proofs", proofs, NOW)
    held = [*twin.mem.entries(), *twin.mem.evidence()]
    assert twin.mem.balances() == compute(held, rules=RULES).balances


@SETTINGS
@given(plan=plans(8, 30), data=st.data())
def test_merging_across_kinds_is_commutative(plan: list[Any], data: st.DataObject) -> None:
    entries = build(plan)
    sides = data.draw(st.lists(st.sampled_from("ABX"), min_size=len(entries), max_size=len(entries)))
    part_a = sorted(
        (e for e, x in zip(entries, sides, strict=True) if x in "AX"), key=lambda e: (e.seq, e.hash)
    )
    part_b = sorted(
        (e for e, x in zip(entries, sides, strict=True) if x in "BX"), key=lambda e: (e.seq, e.hash)
    )
    sql_a, mem_b = LedgerStore.open(None, rules=RULES), memory()
    sql_a.insert_many(part_a, NOW)
    mem_b.insert_many(part_b, NOW)
    mem_a, sql_b = memory(), LedgerStore.open(None, rules=RULES)
    mem_a.insert_many(part_a, NOW)
    sql_b.insert_many(part_b, NOW)
    sql_a.merge(mem_b, NOW)  # SQLite takes the memory store's entries ...
    mem_b.merge(sql_b, NOW)  # ... and the other way round (mem_b already holds B)
    mem_b.merge(mem_a, NOW)
    assert state(sql_a)[:7] == state(mem_b)[:7]


# --- transactions and the journal -----------------------------------------------------------------------


def apply(disk: dict[str, dict[Any, str]], changes: list[Any]) -> None:
    """What IndexedDB does with a journal (web/src/storage/db.js writeJournal)."""
    for change in changes:
        if isinstance(change, Put):
            disk["entries"][(change.entry.author, change.entry.seq)] = change.entry.hash
        elif isinstance(change, DropChain):
            for key in [k for k in disk["entries"] if k[0] == change.author and k[1] >= change.from_seq]:
                del disk["entries"][key]
        elif isinstance(change, SetEvidence):
            for key in [k for k, v in disk["evidence"].items() if v == change.author]:
                del disk["evidence"][key]
            for e in change.entries:
                disk["evidence"][e.hash] = change.author


@SETTINGS
@given(plan=plans(5, 30), data=st.data())
def test_the_journal_rebuilds_the_store_and_rollback_undoes_everything(
    plan: list[Any], data: st.DataObject
) -> None:
    entries = build(plan)
    order = data.draw(st.permutations(entries))
    store = memory()
    disk: dict[str, dict[Any, str]] = {"entries": {}, "evidence": {}}
    for i in range(0, len(order), 4):
        batch = order[i : i + 4]
        before = state(store)
        store.hold()
        store.insert_many(batch, NOW)
        if data.draw(st.booleans()):  # the disk write failed
            store.rollback()
            assert state(store) == before
            assert store.journal == []
        else:
            apply(disk, store.commit())
        chain, evidence = store.hashes()
        assert set(disk["entries"].values()) == chain and set(disk["evidence"]) == evidence


def test_a_failure_mid_batch_keeps_nothing_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = ids(2, 5200)
    store = memory()
    store.claim_grant(server, T0)
    before = state(store)
    real = store._write_entry
    calls = {"n": 0}

    def failing(entry: Entry) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(entry)

    monkeypatch.setattr(store, "_write_entry", failing)
    bodies = [cosign(client, server, tokens=i + 1) for i in range(5)]
    with pytest.raises(OSError, match="disk full"):
        store.append_many(server, bodies, T0 + 100_000)
    assert state(store) == before
    monkeypatch.setattr(store, "_write_entry", real)
    assert len(store.append_many(server, bodies, T0 + 100_000)) == 5
    store.check()
    with pytest.raises(LedgerError, match="no held transaction"):
        store.commit()
    store.hold()
    with pytest.raises(LedgerError, match="already open"):
        store.hold()
    store.rollback()


# --- gossip between the two kinds -----------------------------------------------------------------------


class Peer:
    """A node for ``Wire.round``: either kind of store, one gossip session per neighbour."""

    def __init__(self, store: ChainStore, config: GossipConfig | None = None) -> None:
        self.store = store
        self.config = config or GossipConfig()
        self.sessions: dict[int, GossipSession] = {}

    def session(self, peer: int) -> GossipSession:
        if peer not in self.sessions:
            self.sessions[peer] = GossipSession(self.store, self.config, peer=str(peer))
        return self.sessions[peer]


def test_gossip_between_memory_and_sqlite_stores_converges() -> None:
    rng = random.Random(6)
    people = ids(6, 5300)
    logs = [Log(p) for p in people]
    nodes = [
        Peer(memory()),
        Peer(LedgerStore.open(None, rules=RULES)),
        Peer(memory(), GossipConfig(max_message_bytes=28 * 1024)),
        Peer(LedgerStore.open(None, rules=RULES)),
    ]
    for i, log in enumerate(logs):
        nodes[i % 4].store.insert_many([log.add(grant(log.identity))], NOW)
    for step in range(120):
        i = rng.randrange(6)
        entry = logs[i].add(cosign(people[(i + 1) % 6], people[i], tokens=step + 1))
        nodes[rng.randrange(4)].store.insert_many(logs[i].entries, NOW)
        del entry
    cheat = logs[0]
    twin = Log(cheat.identity)
    twin.entries = cheat.entries[:5]
    nodes[1].store.insert_many([twin.add(cosign(people[1], cheat.identity, tokens=999))], NOW)
    wire = Wire()
    for n in range(40):
        i, j = rng.sample(range(4), 2)
        wire.round(nodes, i, j, NOW + n * 10_000)
    for n in range(4):  # a ring to finish
        for i in range(4):
            wire.round(nodes, i, (i + 1) % 4, NOW + (50 + n) * 10_000)
    first = state(nodes[0].store)[:7]
    assert all(state(n.store)[:7] == first for n in nodes[1:])
    assert nodes[0].store.forks() == {cheat.identity.peer_id: 6}


# --- signature claims -----------------------------------------------------------------------------------


def corrupt(signature: str) -> str:
    return ("1" if signature[0] == "0" else "0") + signature[1:]


def variants(entries: list[Entry]) -> list[Entry]:
    """Each entry, and copies with each signature it carries altered."""
    out: list[Entry] = []
    for e in entries:
        out.append(e)
        out.append(dataclasses.replace(e, signature=corrupt(e.signature)))
        if isinstance(e.body, ReceiptBody):
            out.append(
                dataclasses.replace(
                    e, body=dataclasses.replace(e.body, client_sig=corrupt(e.body.client_sig))
                )
            )
            out.append(
                dataclasses.replace(
                    e, body=dataclasses.replace(e.body, server_sig=corrupt(e.body.server_sig))
                )
            )
        if isinstance(e.body, ForkProof):
            a = dataclasses.replace(e.body.a, signature=corrupt(e.body.a.signature))
            if a.hash == e.body.a.hash:
                out.append(dataclasses.replace(e, body=ForkProof(a, e.body.b)))
    return out


@SETTINGS
@given(plan=plans(3, 25))
def test_claims_cover_every_verify_call_and_known_signatures_match_the_real_check(plan: list[Any]) -> None:
    for entry in variants(build(plan)):
        asked: list[Claim] = []

        def recording(peer: str, message: bytes, signature: str, asked: list[Claim] = asked) -> bool:
            asked.append((peer, message, signature))
            return native_verify(peer, message, signature)

        real = check_body(entry, recording, RULES)
        claims = signature_claims(entry)
        assert set(asked) <= set(claims)
        good = KnownSignatures(c for c in claims if native_verify(*c))
        assert check_body(entry, good, RULES) == real
        assert check_body(entry, KnownSignatures(), RULES) is not None  # unknown claims never pass
        if isinstance(entry.body, ForkProof):
            proof_claims = signature_claims(entry.body)
            assert check_fork_proof(
                entry.body, KnownSignatures(c for c in proof_claims if native_verify(*c))
            ) == (check_fork_proof(entry.body, native_verify))


def test_a_forged_signature_is_not_a_known_claim() -> None:
    client, server = ids(2, 5400)
    entry = Log(server).add(cosign(client, server))
    honest = KnownSignatures(signature_claims(entry))
    assert check_body(entry, honest, RULES) is None
    forged = dataclasses.replace(entry, signature=corrupt(entry.signature))
    rejection = check_body(forged, honest, RULES)
    assert rejection is not None and rejection.code == "bad_signature"
    unknown = check_body(entry, KnownSignatures(), RULES)  # an unknown claim is False
    assert unknown is not None and unknown.code == "bad_signature"
    assert len(honest) == 3
    honest.clear()
    assert len(honest) == 0


# --- the facade the browser calls -----------------------------------------------------------------------


class FakeBrowser:
    """What ``web/src/ledger/ledger.js`` does around ``browser_ledger``, with pynacl instead of WebCrypto."""

    def __init__(self, identity: Identity | None = None, bits: int = 4) -> None:
        self.identity = identity or Identity.generate()
        self.core = browser_ledger.BrowserLedgerCore(self.identity.peer_id, bits)
        self.disk: dict[str, dict[Any, str]] = {"entries": {}, "evidence": {}}
        self.fail_disk = False

    def call(self, method: str, **args: Any) -> Any:
        out = json.loads(browser_ledger.call_on(self.core, method, json.dumps(args)))
        if "error" in out:
            raise LedgerError(out["error"]["message"], code=out["error"]["code"])
        return out["ok"]

    def verified(self, kind: str, payload: Any) -> list[list[str]]:
        claims = self.call("claims", kind=kind, payload=payload)
        return [c for c in claims if native_verify(c[0], c[1].encode(), c[2])]

    def persist(self, held: dict[str, Any]) -> Any:
        if not held["journal"]:
            return held["result"]
        if self.fail_disk:
            self.call("rollback")
            raise LedgerError("disk full", code="store")
        for change in held["journal"]:
            if change[0] == "put":
                self.disk["entries"][(change[1], change[2])] = change[4]
            elif change[0] == "drop":
                for key in [k for k in self.disk["entries"] if k[0] == change[1] and k[1] >= change[2]]:
                    del self.disk["entries"][key]
            else:
                for key in [
                    k for k, v in self.disk["evidence"].items() if json.loads(v)["author"] == change[1]
                ]:
                    del self.disk["evidence"][key]
                for h, raw in change[3]:
                    self.disk["evidence"][h] = raw
        self.call("commit")
        return held["result"]

    def sign(self, op: str, args: dict[str, Any], verified: list[list[str]] | None = None) -> Any:
        prepared = self.call("prepare", op=op, args=args, verified=verified or [])
        signatures = [self.identity.sign(m.encode()) for m in prepared["messages"]]
        own = [
            [self.identity.peer_id, m, sig] for m, sig in zip(prepared["messages"], signatures, strict=True)
        ]
        held = self.call(
            "perform",
            op=op,
            args={**args, "now": prepared["now"]},
            messages=prepared["messages"],
            signatures=signatures,
            verified=[*(verified or []), *own],
        )
        return self.persist(held)

    def grant(self) -> Any:
        start = 0
        while (nonce := self.call("mine", start=start, limit=1000)) is None:
            start += 1000
        return self.sign("grant", {"nonce": nonce})

    def accept(self, entries: Any) -> Any:
        return self.persist(
            self.call("accept_entries", entries=entries, verified=self.verified("push", entries))
        )

    def gossip(self, peer: str, message: Any) -> list[Any]:
        held = self.call(
            "gossip_receive", peer=peer, message=message, verified=self.verified("gossip", message)
        )
        received = self.persist(held)
        if received["publish"]:
            self.sign("fork_proofs", {})
        return list(received["replies"])

    def reopen(self) -> FakeBrowser:
        again = FakeBrowser(self.identity)
        again.disk = self.disk
        raws = list(self.disk["entries"].values())
        evidence = list(self.disk["evidence"].values())
        verified = again.verified("raw", raws + evidence)
        loaded = again.call("load", entries=raws, evidence=evidence, verified=verified)
        assert loaded["dropped"] == []
        return again


def test_the_facade_signs_in_two_steps_and_native_stores_accept_its_entries() -> None:
    browser = FakeBrowser()
    native = LedgerStore.open(None, rules=RULES)
    client = Identity.generate()
    (grant_entry,) = browser.grant()
    assert native.insert(Entry.from_dict(grant_entry)).status == "stored"
    with pytest.raises(LedgerError) as twice:
        browser.grant()
    assert twice.value.code == "grant_claimed"
    proposed = browser.call(
        "server_receipt",
        session=os.urandom(16).hex(),
        model="m",
        start=0,
        end=4,
        tokens=20,
        client=client.peer_id,
    )
    server_sig = browser.identity.sign(proposed["message"].encode())
    receipt = Receipt.from_dict(proposed["receipt"])
    assert receipt.signing_bytes() == proposed["message"].encode()
    body = ReceiptBody(receipt, client.sign(receipt.signing_bytes()), server_sig).to_dict()
    (entry,) = browser.sign("receipt", {"body": body}, browser.verified("receipt", body))
    assert native.insert(Entry.from_dict(entry)).status == "stored"
    assert browser.call("balances") == native.balances()
    # a receipt whose client signature was not checked (or is forged) is refused, nothing kept
    other = ReceiptBody(
        dataclasses.replace(receipt, session=os.urandom(16).hex()), corrupt(body["client_sig"]), server_sig
    )
    with pytest.raises(LedgerError) as forged:
        browser.sign("receipt", {"body": other.to_dict()}, browser.verified("receipt", other.to_dict()))
    assert forged.value.code == "bad_signature"
    # a signature that does not verify, or signatures for other bytes than prepared, keep nothing
    before = browser.call("stats")
    extra = cosign(client, browser.identity).to_dict()
    checked = browser.verified("receipt", extra)
    prepared = browser.call("prepare", op="append", args={"bodies": [extra]}, verified=checked)
    (message,) = prepared["messages"]
    args = {"bodies": [extra], "now": prepared["now"]}
    bad = [browser.identity.peer_id, message, "00" * 64]
    with pytest.raises(LedgerError) as unsigned:
        browser.call(
            "perform", op="append", args=args, messages=[message], signatures=["00" * 64], verified=checked
        )
    assert unsigned.value.code == "bad_signature"
    with pytest.raises(LedgerError) as changed:
        browser.call(
            "perform",
            op="append",
            args={**args, "bodies": []},
            messages=[message],
            signatures=["00" * 64],
            verified=[bad],
        )
    assert changed.value.code == "store" and "changed between preparing and signing" in str(changed.value)
    assert browser.call("stats") == before
    # a disk that fails rolls the write back
    before = browser.call("stats")
    browser.fail_disk = True
    pushed = Log(client).add(grant(client)).to_dict()
    with pytest.raises(LedgerError, match="disk full"):
        browser.accept([pushed])
    assert browser.call("stats") == before
    browser.fail_disk = False
    assert browser.accept([pushed])["stored"] == 1
    # replaying the disk gives the same ledger
    again = browser.reopen()
    for method in ("stats", "balances", "heads", "forks"):
        assert again.call(method) == browser.call(method)


def test_the_facade_refuses_bad_pushes_and_maps_errors() -> None:
    browser = FakeBrowser()
    browser.grant()
    pushes: list[Any] = [{"entries": []}, "x", [{}] * 65]
    for bad in pushes:
        with pytest.raises(LedgerError, match="at most 64 entries"):
            browser.call("claims", kind="push", payload=bad)
        with pytest.raises(LedgerError, match="at most 64 entries"):
            browser.call("accept_entries", entries=bad, verified=[])
    writer = Identity.generate()
    entry = Log(writer).add(grant(writer)).to_dict()
    held = browser.call("accept_entries", entries=[entry], verified=[])  # its signature was not checked
    assert held["result"]["stored"] == 0 and held["result"]["refused"][0][1] == "bad_signature"
    assert held["journal"] == []
    with pytest.raises(LedgerError) as poor:
        browser.call("require_payment", client=writer.peer_id, blocks=10, tokens=100)
    assert poor.value.code == "payment_required" and "does not cover the price" in str(poor.value)
    with pytest.raises(LedgerError, match="unknown ledger method"):
        browser.call("__init__")
    with pytest.raises(LedgerError) as wrong:
        browser.call("balance", nonsense=1)
    assert wrong.value.code == "malformed"
    assert json.loads(browser_ledger.call_on(browser.core, "stats", "[1]"))["error"]["code"] == "malformed"


def test_facade_gossip_finds_a_fork_publishes_it_and_replays_it() -> None:
    browser = FakeBrowser()
    browser.grant()
    native = Peer(LedgerStore.open(None, rules=RULES))
    cheat, client = ids(2, 5500)
    log = Log(cheat)
    shared = [log.add(grant(cheat)), log.add(cosign(client, cheat, tokens=5))]
    branch_a = [log.add(cosign(client, cheat, tokens=n)) for n in (6, 7)]
    other = Log(cheat)
    other.entries = list(shared)
    branch_b = [other.add(cosign(client, cheat, tokens=n)) for n in (60, 70)]
    browser.accept([e.to_dict() for e in shared + branch_a])
    native.store.insert_many(shared + branch_b, NOW)
    for _ in range(2):
        queue: deque[tuple[str, Any]] = deque([("native", browser.call("gossip_start", peer="n"))])
        while queue:
            to, message = queue.popleft()
            if to == "native":
                received = native.session(0).receive(message, browser_ledger.wall_clock_ms())
                queue.extend(("browser", r) for r in received.replies)
            else:
                queue.extend(("native", r) for r in browser.gossip("n", message))
    assert browser.call("forks") == {cheat.peer_id: 3} == native.store.forks()
    assert browser.call("balances") == native.store.balances()
    own = browser.call("log")
    assert own[0]["body"]["kind"] == "fork_proof"
    again = browser.reopen()
    assert again.call("forks") == {cheat.peer_id: 3}
    assert again.call("balances") == browser.call("balances")


def test_replay_drops_bad_rows_of_others_and_refuses_a_damaged_own_log() -> None:
    browser = FakeBrowser()
    browser.grant()
    writer = Identity.generate()
    w = Log(writer)
    browser.accept([w.add(grant(writer)).to_dict(), w.add(cosign(browser.identity, writer)).to_dict()])
    key = (writer.peer_id, 2)
    data = json.loads(browser.disk["entries"][key])
    data["body"]["receipt"]["tokens"] += 1  # altered on disk
    browser.disk["entries"][key] = json.dumps(data, sort_keys=True, separators=(",", ":"))
    fresh = FakeBrowser(browser.identity)
    raws = list(browser.disk["entries"].values())
    loaded = fresh.call("load", entries=raws, evidence=[], verified=fresh.verified("raw", raws))
    assert [d[1] for d in loaded["dropped"]] == ["bad_signature"]
    assert loaded["entries"] == 2
    own = (browser.identity.peer_id, 1)
    browser.disk["entries"][own] = browser.disk["entries"][own].replace('"seq":1', '"seq":1 ')
    fresh = FakeBrowser(browser.identity)
    raws = list(browser.disk["entries"].values())
    with pytest.raises(LedgerError) as damaged:
        fresh.call("load", entries=raws, evidence=[], verified=fresh.verified("raw", raws))
    assert damaged.value.code == "corrupt" and "new identity" in str(damaged.value)


def test_a_second_tab_catches_up_before_signing() -> None:
    first = FakeBrowser()
    first.grant()
    second = first.reopen()  # another tab: the same identity and disk
    client = Identity.generate()
    body = cosign(client, first.identity).to_dict()
    first.sign("receipt", {"body": body}, first.verified("receipt", body))
    assert second.call("own_head") == 1
    newer = [
        raw
        for (author, seq), raw in sorted(first.disk["entries"].items())
        if author == first.identity.peer_id and seq > 1
    ]
    held = second.call("catch_up", raws=newer, verified=second.verified("raw", newer))
    assert held["result"] == 1 and second.persist(held) == 1
    other = cosign(client, first.identity).to_dict()
    (entry,) = second.sign("receipt", {"body": other}, second.verified("receipt", other))
    assert entry["seq"] == 3 and second.call("forks") == {}


def test_the_facade_writes_and_admits_holds_like_the_native_peer() -> None:
    """The browser writes its hold in two steps like any own entry, a native store accepts it, and a
    browser server admits holds by the same rule (``holds.admit_hold``): one within the balance, not a
    second of the same credits."""
    browser = FakeBrowser()
    browser.grant()
    server = Identity.generate().peer_id
    terms = {"server": server, "session": "ab" * 16, "model": "m", "start": 0, "end": 4, "tokens": 4975}
    (entry,) = browser.sign("hold", {"terms": terms})  # 1000 + 4 x 4975 x 10 = 200 000: the whole grant
    assert entry["body"]["amount"] == 200_000 and entry["body"]["kind"] == "hold"
    hold_hash = browser.call("entry_hash", entry=entry)
    native = LedgerStore.open(None, rules=RULES)
    native.insert_many([Entry.from_dict(e) for e in browser.call("own_entries")])
    assert native.head(browser.identity.peer_id).hash == hold_hash  # type: ignore[union-attr]
    with pytest.raises(LedgerError) as beyond:
        browser.sign("hold", {"terms": {**terms, "session": "cd" * 16}})
    assert beyond.value.code == "payment_required"
    # a browser serving as ``server`` admits the native client's hold, once its log is pushed
    client = LedgerService.open(None, Identity.generate())
    serving = FakeBrowser(Identity.generate())
    terms = {**terms, "server": serving.identity.peer_id, "tokens": 100}
    hold = client.hold(serving.identity.peer_id, bytes.fromhex("ab" * 16), "m", 0, 4, 100)
    serving.accept(client.own_entries())
    check = {"client": client.peer_id, "hold": hold.hash, **{k: v for k, v in terms.items() if k != "tokens"}}
    quote = serving.call("require_hold", **check, tokens=100)
    assert quote["price"] == 1000 + 4 * 100 * 10 and quote["hold_expires"] == hold.body.expires  # type: ignore[union-attr]
    with pytest.raises(LedgerError) as elsewhere:
        serving.call("require_hold", **{**check, "session": "cd" * 16}, tokens=100)
    assert elsewhere.value.code == "payment_required"
    client.close()

"""The browser's ledger (``web/src/ledger/ledger.js``) in Chromium, against the native one.

``BrowserLedger`` runs ``python_peer/core`` under Pyodide (the files are served under
``/py/python_peer/core/`` as a signaling node serves them), signs and verifies with WebCrypto and keeps
everything in IndexedDB. Checked here: the grant is mined and kept across a page reload (same peer id,
log and balance); entries made natively are accepted and bad ones refused with reasons, storing
nothing; receipts are co-signed in both directions with a native ``LedgerService`` and both sides
compute the same balances as ``core.balances.compute``; gossip relayed by the test converges; a native
author's fork is detected in the browser, published, and survives a reload; the shard cache serves
from IndexedDB without a request and replaces a corrupt copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser

from python_peer.core.balances import compute
from python_peer.core.economics import DEFAULT_RULES, STARTER_GRANT
from python_peer.core.entries import Entry, ForkProof, make_entry, next_entry
from python_peer.core.evidence import Evidence
from python_peer.core.proof_of_work import mine_grant, pow_bits
from python_peer.core.receipts import Receipt
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import LedgerStore, native_verify
from tests.support.browser import Harness, script
from tests.support.ledger import RULES, Log, cosign, grant, ids
from tests.support.static_server import HARNESS_PATH, MOUNTS, ROOT, WebServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CORE_PREFIX = "/py/python_peer/core/"
SHARD_PREFIX = "/ledger-test-shards/"
MODEL = "tiny-llama"

SETUP_JS = script("ledger_js/setup")

OPEN_JS = script("ledger_js/open")

CALL_JS = script("ledger_js/call")

ROWS_JS = script("ledger_js/rows")


class JsError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error['name']} ({error['code']}): {error['message']}")
        self.name, self.code, self.message = error["name"], error["code"], error["message"]


class JsLedger:
    """A ``BrowserLedger`` in the page, called by name."""

    def __init__(self, page: Harness, name: str, bits: int = 4, claim_grant: bool = True) -> None:
        self.page, self.name = page, name
        opened = page.page.evaluate(OPEN_JS, {"name": name, "bits": bits, "claimGrant": claim_grant})
        self.peer_id: str = opened["peerId"]
        self.timings: dict[str, float] = {**opened["timings"], "openMs": opened["openMs"]}

    def __call__(self, method: str, *args: Any) -> Any:
        out = self.page.page.evaluate(CALL_JS, {"name": self.name, "method": method, "args": list(args)})
        if "error" in out:
            raise JsError(out["error"])
        return out["ok"]

    def rows(self) -> dict[str, int]:
        return dict(self.page.page.evaluate(ROWS_JS, self.name))

    def entries(self, author: str | None = None) -> list[Entry]:
        return [Entry.from_dict(e) for e in reversed(self("log", author or self.peer_id, 100_000))]


@pytest.fixture(scope="module")
def page(harness: Harness) -> Iterator[Harness]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, CORE_PREFIX, ROOT / "python_peer" / "core")
        assert harness.page.evaluate(SETUP_JS)
        yield harness


def fresh_name(tag: str) -> str:
    return f"ledger-test-{tag}-{os.urandom(4).hex()}"


def reload(page: Harness) -> None:
    page.page.reload()
    assert page.page.evaluate(SETUP_JS)


def relay(js: JsLedger, native: LedgerService, *, max_bytes: int | None = None, rounds: int = 200) -> int:
    """Gossip between the page and a native service until neither side has anything to say; messages sent."""
    options = {} if max_bytes is None else {"maxMessageBytes": max_bytes}
    queue: list[tuple[str, dict[str, Any]]] = []
    first = js("gossipStart", native.peer_id, options)
    if first is not None:
        queue.append(("native", first))
    opening = native.gossip_start(js.peer_id)
    if opening is not None:
        queue.append(("js", opening))
    sent = 0
    while queue:
        sent += 1
        assert sent <= rounds, "gossip did not settle"
        to, message = queue.pop(0)
        if to == "native":
            queue.extend(("js", reply) for reply in native.gossip_receive(js.peer_id, message))
        else:
            queue.extend(("native", reply) for reply in js("gossipReceive", native.peer_id, message, options))
    return sent


def balances_of(entries: list[Entry]) -> dict[str, int]:
    return compute(entries, rules=RULES, verify=native_verify).balances


# --- identity, grant, persistence ---------------------------------------------------------------------


def test_grant_identity_and_log_survive_a_reload(page: Harness) -> None:
    name = fresh_name("reload")
    ledger = JsLedger(page, name)
    assert ledger("balance") == STARTER_GRANT
    (grant_entry,) = ledger.entries()
    assert grant_entry.kind == "grant" and grant_entry.seq == 1
    assert balances_of([grant_entry]) == {ledger.peer_id: STARTER_GRANT}  # valid under the native rules
    assert ledger("account") == {
        "balance": STARTER_GRANT,
        "granted": STARTER_GRANT,
        "earned": 0,
        "bonuses": 0,
        "spent": 0,
        "forked_at": None,
    }
    assert ledger.rows() == {"entries": 1, "evidence": 0}
    page.note(
        f"grant mined in {ledger.timings['grantMs']:.0f} ms, Pyodide in {ledger.timings['loadMs']:.0f} ms"
    )

    reload(page)
    again = JsLedger(page, name)
    assert again.peer_id == ledger.peer_id
    assert again("ownEntries") == [grant_entry.to_dict()]
    assert again("balance") == STARTER_GRANT
    assert again.timings["grantMs"] == 0  # nothing mined the second time
    assert again("stats") == {
        "entries": 1,
        "authors": 1,
        "peerId": ledger.peer_id,
        "balance": STARTER_GRANT,
        "forks": 0,
    }
    again("close")
    with pytest.raises(JsError) as closed:
        again("balance")
    assert closed.value.code == "closed"


POW_JS = script("ledger_js/pow")


def test_js_proof_of_work_matches_python_and_a_22_bit_grant_is_accepted_natively(page: Harness) -> None:
    authors = [p.peer_id for p in ids(3, 9000)]
    cases = [(a, n) for a in authors for n in (0, 7, 99_999, 123_456, 1_234_567, 10**15 + 3, 2**53 - 1)]
    mines = [(authors[0], 10, 0), (authors[1], 12, 999_000), (authors[2], 8, 10**15 - 50)]
    got = page.page.evaluate(POW_JS, {"cases": [list(c) for c in cases], "mines": [list(m) for m in mines]})
    assert got["bits"] == [pow_bits(a, n) for a, n in cases]
    assert got["mined"] == [mine_grant(a, b, start, 1 << 20) for a, b, start in mines]

    ledger = JsLedger(page, fresh_name("pow22"), bits=DEFAULT_RULES.grant_pow_bits)
    (grant_entry,) = ledger.entries()
    native = LedgerStore.open(None)  # the network's rules: 22 bits
    assert native.insert(grant_entry).status == "stored"
    assert native.balance(ledger.peer_id) == STARTER_GRANT
    page.note(f"22-bit grant mined in {ledger.timings['grantMs']:.0f} ms")
    print(f"\n22-bit grant mined in the page in {ledger.timings['grantMs']:.0f} ms")


# --- entries made natively ----------------------------------------------------------------------------


def test_native_entries_accepted_and_bad_ones_refused_with_reasons(page: Harness) -> None:
    ledger = JsLedger(page, fresh_name("push"))
    client, server = ids(2, 9100)
    c, s = Log(client), Log(server)
    good = [c.add(grant(client)), s.add(grant(server)), s.add(cosign(client, server, tokens=100))]
    assert ledger("acceptEntries", [e.to_dict() for e in good]) == 3
    assert ledger("acceptEntries", [e.to_dict() for e in good]) == 0  # duplicates
    before = {"rows": ledger.rows(), "balances": ledger("balances"), "heads": ledger("heads")}
    assert before["rows"]["entries"] == 4
    assert before["balances"] == balances_of([*good, *ledger.entries()])

    mallory = ids(1, 9200)[0]
    forged = next_entry(
        server.peer_id, s.entries[-1], s.entries[-1].time + 1000, cosign(client, server), mallory.sign
    )
    elsewhere = Log(ids(1, 9300)[0]).add(grant(ids(1, 9300)[0])).hash
    head = s.entries[-1]
    bad_link = make_entry(
        server.peer_id, head.seq + 1, elsewhere, head.time + 1000, cosign(client, server), server.sign
    )
    oversized = {**s.entries[-1].to_dict(), "padding": "x" * 200_000}
    detail = ledger("offerEntries", [forged.to_dict(), bad_link.to_dict(), oversized, {"author": 5}, None])
    assert detail["stored"] == 0
    codes = sorted(code for _, code, _ in detail["refused"])
    assert codes == ["bad_link", "bad_signature", "malformed", "malformed", "malformed"]
    reasons = {code: reason for _, code, reason in detail["refused"]}
    assert "is not signed by its author" in reasons["bad_signature"]
    assert "prev is not the hash of entry" in reasons["bad_link"]

    not_pushes: list[Any] = [{"entries": []}, "x", [good[0].to_dict()] * 65]
    for not_a_push in not_pushes:
        with pytest.raises(JsError) as refused:
            ledger("acceptEntries", not_a_push)
        assert (
            refused.value.code == "malformed"
            and "a push carries a list of at most 64 entries" in refused.value.message
        )
    after = {"rows": ledger.rows(), "balances": ledger("balances"), "heads": ledger("heads")}
    assert after == before  # nothing stored, in memory or on disk


# --- receipts with native peers -----------------------------------------------------------------------


def test_receipts_cosigned_with_a_native_peer_both_ways(page: Harness) -> None:
    ledger = JsLedger(page, fresh_name("receipts"))
    native = LedgerService.open(None, Identity.generate())
    try:
        # the browser serves, the native peer is the client
        session = os.urandom(16)
        proposed = ledger(
            "serverReceipt",
            {
                "session": session.hex(),
                "model": MODEL,
                "start": 0,
                "end": 2,
                "tokens": 50,
                "client": native.peer_id,
            },
        )
        receipt, client_sig = native.countersign(
            proposed["receipt"],
            proposed["serverSig"],
            server=ledger.peer_id,
            session=session,
            model=MODEL,
            start=0,
            end=2,
            tokens=50,
        )
        entry = Entry.from_dict(ledger("recordReceipt", receipt.to_dict(), client_sig, proposed["serverSig"]))
        assert entry.author == ledger.peer_id and entry.seq == 2
        with pytest.raises(JsError) as twice:
            ledger("recordReceipt", receipt.to_dict(), client_sig, proposed["serverSig"])
        assert twice.value.code == "duplicate_receipt"
        third = ledger(
            "serverReceipt",
            {
                "session": os.urandom(16).hex(),
                "model": MODEL,
                "start": 0,
                "end": 1,
                "tokens": 5,
                "client": native.peer_id,
            },
        )
        with pytest.raises(JsError) as forged:  # a client signature that is not the client's
            ledger("recordReceipt", third["receipt"], third["serverSig"], third["serverSig"])
        assert (
            forged.value.code == "bad_signature"
            and "signature does not match this receipt" in forged.value.message
        )
        assert ledger.rows()["entries"] == 2

        # the native peer serves, the browser is the client
        session2 = os.urandom(16)
        offer, server_sig = native.server_receipt(session2, MODEL, 2, 4, 30, ledger.peer_id)
        terms = {
            "server": native.peer_id,
            "session": session2.hex(),
            "model": MODEL,
            "start": 2,
            "end": 4,
            "tokens": 30,
        }
        with pytest.raises(JsError) as greedy:  # the browser counted fewer tokens than the server claims
            ledger("countersign", offer.to_dict(), server_sig, {**terms, "tokens": 29})
        assert greedy.value.code == "bad_receipt" and "claims 30 tokens" in greedy.value.message
        with pytest.raises(JsError) as bad_server_sig:
            ledger("countersign", offer.to_dict(), "00" * 64, terms)
        assert bad_server_sig.value.code == "bad_signature"
        signed = ledger("countersign", offer.to_dict(), server_sig, terms)
        assert signed["receipt"] == offer.to_dict()
        native.record_receipt(Receipt.from_dict(signed["receipt"]), signed["clientSig"], server_sig)

        # both push their logs to each other; everyone computes the same balances
        assert ledger("acceptEntries", native.own_entries()) == 3
        assert native.accept_entries(ledger("ownEntries")) == 3
        everything = [*ledger.entries(), *ledger.entries(native.peer_id)]
        assert len(everything) == 6
        expected = balances_of(everything)
        assert ledger("balances") == expected == native.store.balances()
        assert ledger("balance") == STARTER_GRANT + 2 * 50 * 6 + 2 * 50 * 2 - (1000 + 2 * 30 * 10) + 0
        assert ledger.rows()["entries"] == 6

        # a client that cannot pay is refused with both numbers
        with pytest.raises(JsError) as poor:
            ledger("requirePayment", native.peer_id, 30, 10_000)
        assert poor.value.name == "PaymentRequiredError" and poor.value.code == "payment_required"
        assert "does not cover the price of 3001.000 credits" in poor.value.message
        quote = ledger("requirePayment", native.peer_id, 2, 10)
        assert quote["balance"] == expected[native.peer_id] and quote["price"] == 1200
    finally:
        native.close()


def test_two_tabs_of_one_browser_never_fork_its_log(page: Harness) -> None:
    name = fresh_name("tabs")
    first = JsLedger(page, name)
    other_tab = page.context.new_page()
    try:
        other_tab.goto(page.page.url)
        assert other_tab.evaluate(SETUP_JS)
        second = JsLedger(Harness(other_tab, page.context), name)  # same database, same identity
        assert second.peer_id == first.peer_id and second("ownEntries") == first("ownEntries")
        native = LedgerService.open(None, Identity.generate())
        try:
            for tab, tokens in ((first, 11), (second, 12), (first, 13)):
                proposed = tab(
                    "serverReceipt",
                    {
                        "session": os.urandom(16).hex(),
                        "model": MODEL,
                        "start": 0,
                        "end": 1,
                        "tokens": tokens,
                        "client": native.peer_id,
                    },
                )
                session = bytes.fromhex(proposed["receipt"]["session"])
                receipt, client_sig = native.countersign(
                    proposed["receipt"],
                    proposed["serverSig"],
                    server=first.peer_id,
                    session=session,
                    model=MODEL,
                    start=0,
                    end=1,
                    tokens=tokens,
                )
                tab("recordReceipt", receipt.to_dict(), client_sig, proposed["serverSig"])
        finally:
            native.close()
        # each tab signed after taking in what the other wrote: one chain, seqs 1..4, no fork
        log = second.entries()
        assert [e.seq for e in log] == [1, 2, 3, 4] and log[-1].body.receipt.tokens == 13  # type: ignore[union-attr]
        assert first("forks") == second("forks") == {}
        assert first.rows()["entries"] == 4
        assert balances_of(log)[first.peer_id] == second("balance") == first("balance")
    finally:
        other_tab.close()


# --- gossip -------------------------------------------------------------------------------------------


def test_gossip_with_a_native_service_converges(page: Harness) -> None:
    ledger = JsLedger(page, fresh_name("gossip"))
    native = LedgerService.open(None, Identity.generate())
    try:
        people = ids(6, 9400)
        logs = [Log(p) for p in people]
        for log in logs:
            log.add(grant(log.identity))
        for i in range(40):
            who, other = logs[i % 6], people[(i + 1) % 6]
            who.add(cosign(other, who.identity, tokens=10 + i))
        held = [e for log in logs for e in log.entries]
        native.store.insert_many(held[: len(held) // 2])
        assert ledger("acceptEntries", [e.to_dict() for e in held[len(held) // 2 :][:64]]) > 0
        sent = relay(ledger, native)
        assert ledger("heads") == {a: list(h) for a, h in native.store.heads().items()}
        assert ledger("forks") == native.store.forks() == {}
        assert ledger("balances") == native.store.balances()
        assert ledger.rows()["entries"] == len(native.store)
        page.note(f"gossip converged in {sent} messages, {len(native.store)} entries")
        assert relay(ledger, native) <= 2  # nothing left to pull: a summary each way, no reply
        # bad messages are dropped whole and never answered; nothing changes
        before = {k: ledger(k) for k in ("heads", "stats")}
        writer = ids(1, 9450)[0]
        fresh = Log(writer).add(grant(writer)).to_dict()
        oversized = {
            "type": "entries",
            "v": 1,
            "entries": [fresh],
            "proofs": [],
            "more": False,
            "pad": "x" * 70_000,
        }
        for bad in (
            {"type": "gimme", "v": 1},
            {"type": "entries", "v": 1, "entries": [fresh], "proofs": [], "more": 1},
            oversized,
        ):
            assert ledger("gossipReceive", native.peer_id, bad) == []
        with pytest.raises(JsError) as not_object:
            ledger("gossipReceive", native.peer_id, ["summary"])
        assert not_object.value.code == "malformed" and "must be a JSON object" in not_object.value.message
        assert {k: ledger(k) for k in ("heads", "stats")} == before
        # over a data channel's budget too
        extra = Log(ids(1, 9500)[0])
        extra.add(grant(extra.identity))
        native.store.insert_many(extra.entries)
        relay(ledger, native, max_bytes=60 * 1024)
        assert ledger("heads") == {a: list(h) for a, h in native.store.heads().items()}
    finally:
        native.close()


def test_a_native_authors_fork_is_found_published_and_kept(page: Harness) -> None:
    name = fresh_name("fork")
    ledger = JsLedger(page, name)
    native = LedgerService.open(None, Identity.generate())
    try:
        cheat, client = ids(2, 9600)
        log = Log(cheat)
        shared = [log.add(grant(cheat)), log.add(cosign(client, cheat, tokens=5))]
        branch_a = [log.add(cosign(client, cheat, tokens=n)) for n in (6, 7)]
        other = Log(cheat)
        other.entries = list(shared)
        branch_b = [other.add(cosign(client, cheat, tokens=n)) for n in (60, 70)]
        assert ledger("acceptEntries", [e.to_dict() for e in shared + branch_a]) == 4
        native.store.insert_many(shared + branch_b)
        relay(ledger, native)
        relay(ledger, native)
        assert ledger("forks") == {cheat.peer_id: 3} == native.store.forks()
        assert ledger("balances") == native.store.balances()
        assert ledger("account", cheat.peer_id)["forked_at"] == 3
        proofs = [e.body for e in ledger.entries() if isinstance(e.body, ForkProof)]
        assert len(proofs) == 1 and proofs[0].author == cheat.peer_id  # published in the browser's log
        assert ledger.rows()["evidence"] == 2
        # a later entry of the cheat is refused
        later = branch_a[-1]
        nxt = next_entry(cheat.peer_id, later, later.time + 1, cosign(client, cheat, tokens=9), cheat.sign)
        detail = ledger("offerEntries", [nxt.to_dict()])
        assert detail["stored"] == 0 and detail["refused"][0][1] == "forked"

        state = {k: ledger(k) for k in ("forks", "balances", "heads", "stats")}
        reload(page)
        again = JsLedger(page, name)
        assert {k: again(k) for k in ("forks", "balances", "heads", "stats")} == state
    finally:
        native.close()


FAIL_DISK_JS = script("ledger_js/fail_disk")


def test_a_failed_disk_write_keeps_nothing_in_memory(page: Harness) -> None:
    ledger = JsLedger(page, fresh_name("disk"))
    writer = ids(1, 9800)[0]
    entry = Log(writer).add(grant(writer)).to_dict()
    before = {k: ledger(k) for k in ("stats", "heads", "balances")}
    page.page.evaluate(FAIL_DISK_JS, ledger.name)
    with pytest.raises(JsError) as failed:
        ledger("acceptEntries", [entry])
    assert failed.value.code == "store" and "ledger not changed" in failed.value.message
    proposed = ledger(  # proposing a receipt writes nothing, so it still works
        "serverReceipt",
        {"session": "00" * 16, "model": MODEL, "start": 0, "end": 1, "tokens": 1, "client": writer.peer_id},
    )
    assert proposed["receipt"]["server"] == ledger.peer_id
    client_sig = writer.sign(Receipt.from_dict(proposed["receipt"]).signing_bytes())
    with pytest.raises(JsError) as own_write:  # an own entry that cannot reach the disk is not kept either
        ledger("recordReceipt", proposed["receipt"], client_sig, proposed["serverSig"])
    assert own_write.value.code == "store" and "ledger not changed" in own_write.value.message
    assert {k: ledger(k) for k in ("stats", "heads", "balances")} == before


# --- load time with a thousand entries ----------------------------------------------------------------


def test_a_thousand_entries_replay_on_open(page: Harness) -> None:
    name = fresh_name("thousand")
    ledger = JsLedger(page, name)
    native = LedgerService.open(None, Identity.generate())
    try:
        people = ids(10, 9700)
        logs = [Log(p) for p in people]
        for log in logs:
            log.add(grant(log.identity))
        for i in range(990):
            who = logs[i % 10]
            who.add(cosign(people[(i + 3) % 10], who.identity, tokens=1 + i % 50, session=f"{i:032x}"))
        native.store.insert_many([e for log in logs for e in log.entries])
        started = time.perf_counter()
        relay(ledger, native, max_bytes=60 * 1024)
        gossip_s = time.perf_counter() - started
        assert ledger("stats")["entries"] == len(native.store) == 1002  # 1000, and each side's grant
        expected = ledger("balances")
        assert expected == native.store.balances()

        reload(page)
        again = JsLedger(page, name)
        assert again("balances") == expected and again("stats")["entries"] == 1002
        page.note(
            f"1002 entries: gossip in {gossip_s:.1f} s, open (Pyodide {again.timings['loadMs']:.0f} ms,"
            f" replay {again.timings['replayMs']:.0f} ms)"
        )
        print(f"\nopen with 1002 entries: {again.timings}; gossip of 1000 entries {gossip_s:.1f} s")
    finally:
        native.close()


# --- the shard cache ----------------------------------------------------------------------------------

SHARD_JS = script("ledger_js/shard")

CORRUPT_JS = script("ledger_js/corrupt")


@pytest.fixture
def shard_dir(tmp_path: Any) -> Iterator[tuple[str, str, int]]:
    data = os.urandom(300_000)
    (tmp_path / "blocks.onnx").write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, SHARD_PREFIX, tmp_path)
        yield SHARD_PREFIX + "blocks.onnx", hashlib.sha256(data).hexdigest(), len(data)


def test_shard_cache_serves_without_a_request_and_replaces_a_corrupt_copy(
    page: Harness, web_server: WebServer, shard_dir: tuple[str, str, int]
) -> None:
    url, sha256, size = shard_dir
    args = {"url": url, "sha256": sha256, "bytes": size, "dbName": fresh_name("shards")}

    def downloads() -> int:
        return sum(1 for path, _ in web_server.requests if path == url)

    first = page.page.evaluate(SHARD_JS, args)
    assert first == {"size": size, "progress": [size, size], "cached": [[sha256, size]]}
    assert downloads() == 1
    assert page.page.evaluate(SHARD_JS, args)["size"] == size
    assert downloads() == 1  # served from IndexedDB
    page.page.evaluate(CORRUPT_JS, args)
    assert page.page.evaluate(SHARD_JS, args)["cached"] == [[sha256, size]]
    assert downloads() == 2  # the corrupt copy was dropped and downloaded again
    assert page.take_errors() == []  # the corrupt copy is a warning, and no test left a page error


QUOTA_JS = script("ledger_js/quota")


def test_a_full_disk_still_serves_the_shard_with_a_clear_warning(
    browser: Browser, web_server: WebServer, shard_dir: tuple[str, str, int]
) -> None:
    url, sha256, size = shard_dir
    context = browser.new_context()  # storage of its own: the quota applies from the first write
    try:
        tab = context.new_page()
        tab.goto(web_server.url_for(HARNESS_PATH))
        assert tab.evaluate(SETUP_JS)
        cdp = context.new_cdp_session(tab)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": web_server.url, "quotaSize": 50_000})
        got = tab.evaluate(
            QUOTA_JS, {"url": url, "sha256": sha256, "bytes": size, "dbName": fresh_name("quota")}
        )
    finally:
        context.close()
    assert got["size"] == size and got["cached"] == 0
    assert (
        len(got["warnings"]) == 1 and "storage for this site is full (quota exceeded)" in got["warnings"][0]
    )
    assert got["putError"]["name"] == "StorageError" and got["putError"]["code"] == "quota"


# --- evidence -------------------------------------------------------------------------------------------


def test_evidence_runs_the_same_rules_under_pyodide(page: Harness) -> None:
    """The golden evidence entry is stored and makes its liar suspect; each forged one is refused with the
    code Python gives it (``tests/vectors/ledger/evidence.json``)."""
    vectors = json.loads(
        (ROOT / "tests" / "vectors" / "ledger" / "evidence.json").read_text(encoding="utf-8")
    )
    ledger = JsLedger(page, fresh_name("evidence"))
    forged = [case["entry"] for case in vectors["forged"]]
    detail = ledger("offerEntries", forged)
    assert detail["stored"] == 0
    assert [code for _, code, _ in detail["refused"]] == [case["rejection"] for case in vectors["forged"]]
    valid = Entry.from_dict(vectors["evidence"]["entry"])
    assert isinstance(valid.body, Evidence)
    assert ledger("reputation", valid.body.accused)["level"] == "good"
    assert ledger("offerEntries", [valid.to_dict()])["stored"] == 1
    found = ledger("reputation", valid.body.accused)
    assert found == {
        "level": "suspect",
        "refusal": None,  # one author: suspect, not refused
        "authors": [valid.author],
        "sessions": [[valid.author, valid.body.session]],
    }

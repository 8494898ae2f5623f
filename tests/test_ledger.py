"""Ledger rules: entry bytes (golden), validators and their reasons, balances, and every attack.

Each attack asserts the rejection's code and reason and that no balance changed. The helpers it shares
with the other ledger test files live in ``tests/support/ledger.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import pytest

from python_peer.core import economics
from python_peer.core.balances import compute
from python_peer.core.canonical import canonical_bytes
from python_peer.core.economics import DEFAULT_RULES, Rules, can_pay, format_units, price
from python_peer.core.entries import (
    GENESIS,
    MAX_FORK_PROOF_BYTES,
    Entry,
    ForkProof,
    Grant,
    make_entry,
    next_entry,
    parse_entry,
)
from python_peer.core.errors import LedgerError, PaymentRequiredError
from python_peer.core.ledger_fields import MAX_FUTURE_MS, Rejection
from python_peer.core.proof_of_work import pow_bits
from python_peer.core.receipts import Receipt, ReceiptBody, check_receipt_terms
from python_peer.core.rules import check_body, check_entry, check_link
from python_peer.identity import Identity
from python_peer.ledger_store import LedgerStore, native_verify
from tests.support.ledger import (
    GOLDEN,
    GOLDEN_NONCE,
    MODEL,
    NOW,
    RULES,
    T0,
    Log,
    cosign,
    funded,
    grant,
    ids,
    store_with,
)

GOLDEN_GRANT_HASH = "8ae95e7c38567a93d3f8f00c88a186c11e134dc06a17bc49ded354c53454756a"
GOLDEN_GRANT_BYTES = (
    b'{"author":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",'
    b'"body":{"kind":"grant","nonce":614645},'
    b'"prev":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,'
    b'"signature":"46fc0ff7992bc44d95de98b19831bdf4b43d3b76376a09e8c4de4658c7405773'
    b'ecaf0007315aab922fe2fbbc1a931547bbda6ad0e10df59c26b2726d2e1fce06","time":1700000000000}'
)
GOLDEN_RECEIPT_ID = "3d03df9d101111b565669a34fc88e0219c3ab37a48337960bb802ffeab68ef03"
GOLDEN_RECEIPT_ENTRY_HASH = "001a8b23f25616a54b3e77e7e68d63bf0d6a87cb95d6374111a9eb4af9e593e6"


def report_of(entries: Iterable[Entry], rules: Rules = RULES) -> Any:
    return compute(list(entries), rules=rules, verify=native_verify)


# --- entry bytes ----------------------------------------------------------------------------------------


def test_golden_grant_entry_bytes_and_hash() -> None:
    entry = make_entry(GOLDEN.peer_id, 1, GENESIS, T0, Grant(GOLDEN_NONCE), GOLDEN.sign)
    assert entry.encoded == GOLDEN_GRANT_BYTES
    assert entry.hash == GOLDEN_GRANT_HASH
    assert (
        entry.hash
        == hashlib.sha256(b"ai4all/ledger/entry/v1\n" + canonical_bytes(entry.signed_dict())).hexdigest()
    )
    assert Entry.decode(GOLDEN_GRANT_BYTES) == entry
    assert pow_bits(GOLDEN.peer_id, GOLDEN_NONCE) >= DEFAULT_RULES.grant_pow_bits
    assert check_entry(entry, native_verify, NOW, DEFAULT_RULES) is None


def test_golden_receipt_id_and_entry_hash() -> None:
    client = Identity.from_seed(bytes(range(32, 64)))
    receipt = Receipt(
        "00112233445566778899aabbccddeeff", MODEL, 0, 10, 128, client.peer_id, GOLDEN.peer_id, T0 + 60_000
    )
    assert receipt.signing_bytes().startswith(b'ai4all/ledger/receipt/v1\n{"client":"29acbae1')
    assert receipt.id == GOLDEN_RECEIPT_ID
    body = ReceiptBody(receipt, client.sign(receipt.signing_bytes()), GOLDEN.sign(receipt.signing_bytes()))
    entry = make_entry(GOLDEN.peer_id, 2, GOLDEN_GRANT_HASH, T0 + 61_000, body, GOLDEN.sign)
    assert entry.hash == GOLDEN_RECEIPT_ENTRY_HASH
    assert Entry.decode(entry.encoded) == entry


def test_non_canonical_bytes_are_refused() -> None:
    spaced = json.dumps(json.loads(GOLDEN_GRANT_BYTES), indent=1).encode()
    with pytest.raises(LedgerError, match="not the canonical JSON"):
        Entry.decode(spaced)
    with pytest.raises(LedgerError, match="over"):
        Entry.decode(b" " * (MAX_FORK_PROOF_BYTES + 1))
    with pytest.raises(LedgerError, match="not UTF-8 JSON"):
        Entry.decode(b"\xff{")


def _mutations() -> list[tuple[str, Any]]:
    good = json.loads(GOLDEN_GRANT_BYTES)

    def edit(**changes: Any) -> dict[str, Any]:
        return {**good, **changes}

    receipt = cosign(*ids(2)).to_dict()
    return [
        ("missing field", {k: v for k, v in good.items() if k != "prev"}),
        ("unknown field", edit(extra="x" * 100_000)),
        ("bool seq", edit(seq=True)),
        ("float time", edit(time=1.5)),
        ("string seq", edit(seq="1")),
        ("seq 0", edit(seq=0)),
        ("seq 1 with a real prev", edit(prev="ab" * 32)),
        ("seq 2 with genesis prev", edit(seq=2)),
        ("uppercase author", edit(author=good["author"].upper())),
        ("short signature", edit(signature="ab" * 10)),
        ("unknown kind", edit(body={"kind": "mint", "amount": 10**9})),
        ("grant with extra field", edit(body={"kind": "grant", "nonce": 1, "amount": 5})),
        ("negative nonce", edit(body={"kind": "grant", "nonce": -1})),
        ("body not an object", edit(body=[1, 2])),
        (
            "receipt: client is server",
            edit(body={**receipt, "receipt": {**receipt["receipt"], "client": receipt["receipt"]["server"]}}),
        ),
        ("receipt: zero tokens", edit(body={**receipt, "receipt": {**receipt["receipt"], "tokens": 0}})),
        ("receipt: empty span", edit(body={**receipt, "receipt": {**receipt["receipt"], "end": 0}})),
        ("receipt: bad session", edit(body={**receipt, "receipt": {**receipt["receipt"], "session": "xyz"}})),
        ("receipt: bad model", edit(body={**receipt, "receipt": {**receipt["receipt"], "model": "a b"}})),
        ("nested fork proof", edit(body={"kind": "fork_proof", "a": good, "b": good})),
        ("not an object", "entry"),
    ]


@pytest.mark.parametrize(("case", "data"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_entries_are_rejected_with_a_reason(case: str, data: Any) -> None:
    result = parse_entry(data)
    assert isinstance(result, Rejection), case
    assert result.code == "malformed" and result.reason.startswith("malformed entry: ")


# --- validators -----------------------------------------------------------------------------------------


def test_check_link_names_gaps_bad_links_and_time_going_back() -> None:
    log = Log(ids(1)[0])
    first, second = log.add(grant(log.identity)), log.add(cosign(ids(1, 5)[0], log.identity))
    assert check_link(None, first) is None
    assert check_link(first, second) is None
    rejection = check_link(None, second)
    assert rejection is not None and rejection.code == "gap" and "before entry 1" in rejection.reason
    stranger = Log(log.identity)
    other_first = stranger.add(grant(log.identity), time=T0 + 5)
    rejection = check_link(other_first, second)
    assert rejection is not None and rejection.code == "bad_link"
    backwards = make_entry(
        log.identity.peer_id, 2, first.hash, T0 - 1, cosign(ids(1, 5)[0], log.identity), log.identity.sign
    )
    rejection = check_link(first, backwards)
    assert rejection is not None and rejection.code == "bad_time"


def test_check_receipt_terms_before_cosigning() -> None:
    client, server = ids(2)
    body = cosign(client, server, tokens=100)
    r = body.receipt
    terms = {
        "client": client.peer_id,
        "server": server.peer_id,
        "session": r.session,
        "model": MODEL,
        "start": 0,
        "end": 10,
        "tokens": 100,
        "now_ms": r.time,
    }
    assert check_receipt_terms(r, **terms) is None  # type: ignore[arg-type]
    inflated = check_receipt_terms(r, **{**terms, "tokens": 99})  # type: ignore[arg-type]
    assert inflated is not None and "claims 100 tokens, this side counted 99" in inflated.reason
    late = check_receipt_terms(r, **{**terms, "now_ms": r.time + 10 * MAX_FUTURE_MS})  # type: ignore[arg-type]
    assert late is not None and "off this node's clock" in late.reason


# --- balances -------------------------------------------------------------------------------------------


def test_grant_receipt_and_price_arithmetic() -> None:
    client, server = ids(2)
    c, s = Log(client), Log(server)
    entries = [c.add(grant(client)), s.add(grant(server)), s.add(cosign(client, server, tokens=500, end=10))]
    report = report_of(entries)
    cost = RULES.base_fee + 10 * 500 * RULES.cost_per_block_token
    earned = 10 * 500 * RULES.earn_per_block_token
    rarity = 10 * 500 * RULES.rarity_bonus[0]  # the only server of these blocks that day
    assert report.balance(client.peer_id) == RULES.starter_grant - cost == 149_000
    assert report.balance(server.peer_id) == RULES.starter_grant + earned + rarity == 240_000
    account = report.accounts[server.peer_id]
    assert (account.earned, account.rarity_bonus, account.served_block_tokens) == (30_000, 10_000, 5000)
    assert report.ignored == {}


def test_rarity_bonus_falls_as_more_peers_serve_a_block() -> None:
    client, s1, s2, s3 = ids(4)
    logs = [Log(s) for s in (s1, s2, s3)]
    _, paid = funded(client)
    entries = [*paid, logs[0].add(cosign(client, s1, start=0, end=4))]
    one = report_of(entries).accounts[s1.peer_id].rarity_bonus
    entries.append(logs[1].add(cosign(client, s2, start=2, end=6)))
    two = report_of(entries).accounts[s1.peer_id].rarity_bonus
    entries.append(logs[2].add(cosign(client, s3, start=0, end=3)))
    three = report_of(entries).accounts[s1.peer_id].rarity_bonus
    # s1 serves blocks 0-3 x 100 tokens: alone, 2 units per block-token; shared by two, 1; by three, 0
    assert one == 4 * 100 * 2
    assert two == (2 * 2 + 2 * 1) * 100
    assert three == (1 + 1 + 0 + 1) * 100  # blocks 0, 1, 3: two servers each; block 2: three
    # ... and the next day, every block is rare again
    next_day = report_of([*paid, Log(s1).add(cosign(client, s1, start=0, end=4, time=T0 + 86_400_000))])
    assert next_day.accounts[s1.peer_id].rarity_bonus == one


def test_uptime_bonus_needs_enough_work_in_the_hour() -> None:
    client, server = ids(2)
    rich = dataclasses.replace(RULES, starter_grant=400_000)  # three hours of 101 credits each are paid
    _, paid = funded(client, rich)
    log = Log(server)
    small = [log.add(cosign(client, server, tokens=10, time=T0 + i * 60_000)) for i in range(3)]  # 300 bt
    assert report_of([*paid, *small], rich).accounts[server.peer_id].uptime_bonus == 0
    busy = Log(server)
    hours = [
        busy.add(cosign(client, server, tokens=1000, time=T0 + h * 3_600_000 + 1)) for h in range(3)
    ]  # 10k bt each
    assert report_of([*paid, *hours], rich).accounts[server.peer_id].uptime_bonus == 3 * RULES.uptime_bonus


def test_discount_for_high_contributors_uses_standing_before_the_request() -> None:
    client, server, other = ids(3)
    # the client first serves 1M block-tokens to someone else, who can pay for them
    rich = dataclasses.replace(RULES, starter_grant=20_000_000)
    _, paid = funded(other, rich)
    c, granted = funded(client, rich)
    earlier = [*paid, *granted, c.add(cosign(other, client, tokens=100_000, end=10, time=T0 + 1))]
    request = Log(server).add(cosign(client, server, tokens=1000, end=10, time=T0 + 10_000))
    report = report_of([*earlier, request], rich)
    discounted = price(10, 1000, 1_000_000, RULES)
    assert discounted < price(10, 1000, 0, RULES)
    assert report.accounts[client.peer_id].spent == discounted
    # a request dated before the serving gets no discount: standing counts only earlier receipts
    before = Log(server).add(cosign(client, server, tokens=1000, end=10, time=T0))
    assert report_of([*earlier, before], rich).accounts[client.peer_id].spent == price(10, 1000, 0, RULES)


def test_cumulative_receipts_for_one_session_span_count_once() -> None:
    client, server = ids(2)
    session = os.urandom(16).hex()
    log = Log(server)
    first = log.add(cosign(client, server, tokens=100, session=session))
    second = log.add(cosign(client, server, tokens=300, session=session, time=T0 + 120_000))
    report = report_of([*funded(client)[1], first, second])
    assert report.accounts[server.peer_id].served_block_tokens == 3000
    assert report.ignored[first.hash].code == "superseded"


def test_second_grant_counts_nothing() -> None:
    author = ids(1)[0]
    log = Log(author)
    first = log.add(grant(author))
    again = log.add(Grant(grant(author).nonce))
    report = report_of([first, again])
    assert report.balance(author.peer_id) == RULES.starter_grant
    assert report.ignored[again.hash] == Rejection("grant_claimed", "grant already claimed at seq 1")


def test_inactive_identities_keep_their_tokens() -> None:
    author = ids(1)[0]
    early = Log(author).add(grant(author), time=T0)
    client, server = ids(2, 10)
    years_later = Log(server).add(cosign(client, server, time=T0 + 3 * 365 * 86_400_000))
    assert report_of([early, years_later]).balance(author.peer_id) == RULES.starter_grant


# --- economics ------------------------------------------------------------------------------------------


def test_price_grows_with_size_and_rules_refuse_self_dealing_constants() -> None:
    assert price(10, 100) < price(10, 200) < price(20, 200)
    assert price(0, 0) == economics.BASE_FEE
    assert price(10, 100, 10_000_000) == economics.BASE_FEE + 10 * 100 * 10 * 800 // 1000
    with pytest.raises(LedgerError, match="collud"):
        Rules(earn_per_block_token=9)
    with pytest.raises(LedgerError, match="uptime"):
        Rules(uptime_bonus=economics.BASE_FEE + 1)
    with pytest.raises(LedgerError, match="non-negative"):
        Rules(starter_grant=-1)
    with pytest.raises(LedgerError):
        price(-1, 5)


def test_format_units_and_can_pay_message() -> None:
    assert format_units(149_000) == "149.000"
    assert format_units(-1500) == "-1.500"
    assert format_units(7) == "0.007"
    assert can_pay(100_000, 50_000) is None
    message = can_pay(10_000, 51_000)
    assert (
        message is not None and "balance 10.000 credits" in message and "price of 51.000 credits" in message
    )
    assert can_pay(60_000, 51_000, outstanding=20_000) is not None


def test_require_payment_refuses_with_balance_and_price() -> None:
    client, server = ids(2)
    store = store_with(Log(client).add(grant(client)))
    quote = store.require_payment(client.peer_id, 10, 1000)
    assert quote.balance == RULES.starter_grant and quote.price == price(10, 1000, 0, RULES)
    with pytest.raises(PaymentRequiredError) as caught:
        store.require_payment(client.peer_id, 30, 1000)
    assert caught.value.code == "payment_required"
    assert "balance 200.000 credits" in str(caught.value) and "price of 301.000 credits" in str(caught.value)
    with pytest.raises(PaymentRequiredError, match=r"balance 0\.000"):
        store.require_payment(server.peer_id, 1, 1)


# --- attacks: each rejected with a reason, no balance changed -------------------------------------------


def _attack(store: LedgerStore, entry: Entry, code: str, reason: str) -> None:
    before = store.balances()
    outcome = store.insert(entry, NOW)
    assert outcome.status == "rejected" and outcome.rejection is not None, outcome
    assert outcome.rejection.code == code
    assert reason in outcome.rejection.reason
    assert store.balances() == before
    assert store.hash_at(entry.author, entry.seq) != entry.hash


@pytest.fixture
def market() -> tuple[LedgerStore, Identity, Identity, Log, Log]:
    """A store where a client and a server each hold a grant and one session was served."""
    client, server = ids(2, 100)
    c, s = Log(client), Log(server)
    store = store_with(c.add(grant(client)), s.add(grant(server)), s.add(cosign(client, server)))
    return store, client, server, c, s


def test_attack_forged_signature(market: Any) -> None:
    store, client, server, _, s = market
    mallory = ids(1, 200)[0]
    forged = next_entry(server.peer_id, s.entries[-1], T0 + 100_000, cosign(client, server), mallory.sign)
    _attack(store, forged, "bad_signature", "is not signed by its author")


def test_attack_receipt_signed_by_one_party_only(market: Any) -> None:
    store, client, server, _, s = market
    body = cosign(client, server)
    own_sig_twice = dataclasses.replace(body, client_sig=body.server_sig)
    entry = s.add(own_sig_twice)
    _attack(store, entry, "bad_signature", f"client {client.peer_id[:12]}…'s signature does not match")


def test_attack_server_claims_more_tokens_than_the_client_signed(market: Any) -> None:
    store, client, server, _, s = market
    body = cosign(client, server, tokens=100)
    inflated = dataclasses.replace(body.receipt, tokens=10_000)
    entry = s.add(ReceiptBody(inflated, body.client_sig, server.sign(inflated.signing_bytes())))
    _attack(store, entry, "bad_signature", "altered tokens, session or span?")


def test_attack_receipt_replayed_under_a_new_session(market: Any) -> None:
    store, _, server, _, s = market
    old = next(e.body for e in s.entries if isinstance(e.body, ReceiptBody))
    replay = dataclasses.replace(old.receipt, session=os.urandom(16).hex())
    entry = s.add(ReceiptBody(replay, old.client_sig, server.sign(replay.signing_bytes())))
    _attack(store, entry, "bad_signature", "signature does not match this receipt")


def test_attack_same_receipt_submitted_twice(market: Any) -> None:
    store, _, server, c, s = market
    counted = next(e.body for e in s.entries if isinstance(e.body, ReceiptBody))
    before = store.balances()
    # an honest store refuses to put it in the same log again ...
    with pytest.raises(LedgerError, match="already in this log") as caught:
        store.append(server, counted, NOW)
    assert caught.value.code == "duplicate_receipt"
    # ... a hand-made second copy is a valid chain entry but counts nothing, nor does the client's copy
    again, client_copy = s.add(counted), c.add(counted)
    assert store.insert(again, NOW).status == "stored"
    assert store.insert(client_copy, NOW).status == "stored"
    assert store.balances() == before
    ignored = store.report().ignored
    carriers = [s.entries[1].hash, again.hash, client_copy.hash]
    assert sorted(ignored[h].code for h in carriers if h in ignored) == ["duplicate_receipt"] * 2


def test_attack_receipt_carried_by_a_third_party(market: Any) -> None:
    store, client, server, _, _ = market
    mallory = ids(1, 300)[0]
    entry = Log(mallory).add(cosign(client, server))
    _attack(store, entry, "bad_receipt", "carried only in its client's or its server's log")


def test_attack_fork(market: Any) -> None:
    store, client, server, c, s = market
    before = store.balances()
    branch = Log(server)
    branch.entries = s.entries[:2]
    honest = s.add(cosign(client, server, tokens=1000))
    other = branch.add(cosign(client, server, tokens=2000))  # same seq 3, different content
    assert store.insert(honest, NOW).status == "stored"
    outcome = store.insert(other, NOW)
    assert outcome.status == "fork" and outcome.rejection is not None and outcome.rejection.code == "forked"
    assert store.forks() == {server.peer_id: 3}
    assert store.balances() == before  # neither branch counts
    later = s.add(cosign(client, server, tokens=5))
    _attack(store, later, "forked", "author forked at seq 3")
    assert store.report().accounts[server.peer_id].forked_at == 3
    # the proof is published in an honest log and convinces a store that saw only one branch
    witness = ids(1, 400)[0]
    (published,) = store.publish_fork_proofs(witness, NOW)
    assert isinstance(published.body, ForkProof) and published.body.seq == 3
    assert store.publish_fork_proofs(witness, NOW) == []  # once per fork
    naive = store_with(c.entries[0], *s.entries[:2], honest)
    assert naive.insert(published, NOW).status == "stored"
    assert naive.forks() == {server.peer_id: 3}
    assert naive.balances() == store.balances()


def test_attack_flood_of_identities_without_proof_of_work() -> None:
    store = LedgerStore.open(None)  # the network's rules: 22 bits
    sybils = ids(40, 500)
    weak = [Log(i).add(Grant(0)) for i in sybils]
    assert all(pow_bits(i.peer_id, 0) < 22 for i in sybils)
    for entry in weak:
        _attack(store, entry, "bad_pow", "leading zero bits, the rules need 22")
    assert store.balances() == {} and len(store) == 0
    # the golden identity paid for its proof of work
    assert store.insert(Log(GOLDEN).add(Grant(GOLDEN_NONCE), time=T0), NOW).status == "stored"
    assert store.balances() == {GOLDEN.peer_id: DEFAULT_RULES.starter_grant}


def test_attack_accrual_over_the_cap() -> None:
    rules = Rules(grant_pow_bits=4, balance_cap=300_000, uptime_bonus=0)
    client, server = ids(2, 600)
    s = Log(server)
    c, paid = funded(client, rules, extra=True)  # 202,400 units: both receipts below are paid in full
    store = store_with(*paid, s.add(grant(server, rules)), rules=rules)
    store.insert(s.add(cosign(client, server, tokens=1000, time=T0 + 1000)), NOW)  # +80,000 -> 280,000
    assert store.balance(server.peer_id) == 280_000
    store.insert(s.add(cosign(client, server, tokens=1000, time=T0 + 2000)), NOW)  # +80,000 -> capped
    account = store.report().accounts[server.peer_id]
    assert account.balance == rules.balance_cap
    assert account.clipped == 60_000
    # spending (the next day: the day's rarity bonus is credited at its end) brings it under the cap again
    store.insert(c.add(cosign(server, client, tokens=1, end=1, time=T0 + 86_400_000)), NOW)
    assert store.balance(server.peer_id) == rules.balance_cap - price(1, 1, 20_000, rules)


def test_attack_entries_dated_far_in_the_future(market: Any) -> None:
    store, client, server, _, s = market
    ahead = next_entry(
        server.peer_id, s.entries[-1], NOW + MAX_FUTURE_MS + 1, cosign(client, server), server.sign
    )
    _attack(store, ahead, "future", "ahead of this node's clock")
    receipt_ahead = next_entry(
        server.peer_id, s.entries[-1], NOW, cosign(client, server, time=NOW + MAX_FUTURE_MS + 1), server.sign
    )
    _attack(store, receipt_ahead, "future", "receipt is dated too far ahead")
    within = next_entry(
        server.peer_id, s.entries[-1], NOW + MAX_FUTURE_MS, cosign(client, server), server.sign
    )
    assert store.insert(within, NOW).status == "stored"


def test_attack_oversized_and_malformed_entries(market: Any) -> None:
    store, _, _, _, s = market
    before = store.balances()
    huge = {**s.entries[-1].to_dict(), "padding": "x" * 200_000}
    cases: list[Any] = [huge, {"author": 5}, None, [], {**s.entries[-1].to_dict(), "seq": -1}]
    for data in cases:
        rejection = parse_entry(data)
        assert isinstance(rejection, Rejection) and rejection.code == "malformed"
    with pytest.raises(LedgerError) as caught:
        Entry.decode(canonical_bytes(huge))
    assert caught.value.code == "too_large"
    assert store.balances() == before


def test_pure_rules_drop_bad_entries_with_reasons(market: Any) -> None:
    _, client, server, c, s = market
    mallory = ids(1, 700)[0]
    forged = next_entry(server.peer_id, s.entries[-1], T0 + 100_000, cosign(client, server), mallory.sign)
    report = compute([*c.entries, *s.entries, forged], rules=RULES, verify=native_verify)
    assert report.ignored[forged.hash].code == "bad_signature"
    assert report.balances == compute([*c.entries, *s.entries], rules=RULES).balances
    assert check_body(forged, native_verify, RULES) == report.ignored[forged.hash]


def test_a_verify_callback_that_raises_counts_as_a_bad_signature(market: Any) -> None:
    _, _, _, _, s = market

    def broken(peer_id: str, message: bytes, signature: str) -> bool:
        raise RuntimeError("WebCrypto is not ready")

    rejection = check_entry(s.entries[0], broken, NOW, RULES)
    assert rejection is not None and rejection.code == "bad_signature"

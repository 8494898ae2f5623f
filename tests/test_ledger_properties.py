"""Properties of the ledger (Hypothesis): balances depend on the set of entries only, merging stores is
commutative and idempotent, self-dealing never mints credits, no balance passes the cap, and random
input never raises anything but our typed errors."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from python_peer.core.balances import compute
from python_peer.core.canonical import canonical_bytes
from python_peer.core.economics import Rules
from python_peer.core.entries import Entry, Grant, parse_entry
from python_peer.core.errors import CanonicalError, LedgerError
from python_peer.ledger_store import LedgerStore, native_verify
from tests.support.ledger import (
    NOW,
    PEOPLE,
    RULES,
    Action,
    Log,
    build,
    grant,
    plans,
    whole_report,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STORE_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


actions = plans()


def summary(report: Any) -> tuple[Any, ...]:
    ignored = {h: r.code for h, r in report.ignored.items()}
    return (report.balances, report.forks, report.counted, ignored, report.settled)


@SETTINGS
@given(plan=actions, data=st.data())
def test_balances_depend_on_the_set_of_entries_only(plan: list[Action], data: st.DataObject) -> None:
    entries = build(plan)
    reference = compute(entries, rules=RULES)
    shuffled = data.draw(st.permutations(entries))
    repeats = data.draw(st.lists(st.sampled_from(entries), max_size=10)) if entries else []
    assert summary(compute([*shuffled, *repeats], rules=RULES)) == summary(reference)
    assert summary(compute(shuffled, rules=RULES, verify=native_verify)) == summary(reference)


@SETTINGS
@given(plan=actions)
def test_self_dealing_never_mints_credits_and_the_cap_holds(plan: list[Action]) -> None:
    entries = build(plan)
    report = compute(entries, rules=RULES)
    granted = sum(a.granted for a in report.accounts.values())
    assert sum(report.balances.values()) <= granted  # every receipt burns at least what it pays out
    assert all(b >= 0 for b in report.balances.values())  # a client spends what it holds, never debt
    no_grants = compute([e for e in entries if not isinstance(e.body, Grant)], rules=RULES)
    assert sum(no_grants.balances.values()) <= 0
    # no credit from nothing: without a grant nobody can pay, so no receipt credits or earns a bonus
    assert all(b == 0 for b in no_grants.balances.values())
    assert all(s.status == "none" for s in no_grants.settled.values())
    assert not any(
        a.rarity_bonus or a.uptime_bonus or a.served_block_tokens for a in no_grants.accounts.values()
    )
    for s in report.settled.values():  # a server gets at most what its client paid beyond the fee
        assert s.paid <= s.price and s.earned + s.rarity_bonus <= max(0, s.paid - s.base_fee)
    capped = Rules(grant_pow_bits=RULES.grant_pow_bits, balance_cap=210_000)
    assert all(b <= 210_000 for b in compute(entries, rules=capped).balances.values())


@SETTINGS
@given(plan=actions)
def test_no_coalition_ends_with_more_than_its_grants_and_what_outsiders_paid_it(plan: list[Action]) -> None:
    """docs/trust.md: receipts inside a coalition never gain it anything, bonuses included."""
    entries = build(plan)
    poor = Rules(
        grant_pow_bits=RULES.grant_pow_bits, starter_grant=20_000
    )  # many receipts paid in part or not at all
    for report in (compute(entries, rules=RULES), compute(entries, rules=poor)):
        _coalitions_hold_no_more_than_they_got(report)


def _coalitions_hold_no_more_than_they_got(report: Any) -> None:
    for mask in range(1, 1 << len(PEOPLE)):
        coalition = {p.peer_id for i, p in enumerate(PEOPLE) if mask >> i & 1}
        held = sum(report.balance(p) for p in coalition)
        granted = sum(a.granted for p, a in report.accounts.items() if p in coalition)
        paid_in = sum(
            s.paid for s in report.settled.values() if s.server in coalition and s.client not in coalition
        )
        paid_out = sum(
            s.paid for s in report.settled.values() if s.client in coalition and s.server not in coalition
        )
        assert held <= granted + paid_in - paid_out


def _store(entries: list[Entry]) -> LedgerStore:
    store = LedgerStore.open(None, rules=RULES)
    store.insert_many(sorted(entries, key=lambda e: (e.seq, e.hash)), NOW)  # gaps are refused, forks recorded
    return store


def _state(store: LedgerStore) -> tuple[Any, ...]:
    return (*store.hashes(), store.forks(), store.balances())


@STORE_SETTINGS
@given(plan=plans(12, 40), data=st.data())
def test_merging_stores_is_commutative_and_idempotent(plan: list[Action], data: st.DataObject) -> None:
    entries = build(plan)
    sides = data.draw(st.lists(st.sampled_from("ABX"), min_size=len(entries), max_size=len(entries)))
    part_a = [e for e, side in zip(entries, sides, strict=True) if side in "AX"]
    part_b = [e for e, side in zip(entries, sides, strict=True) if side in "BX"]
    a, b = _store(part_a), _store(part_b)
    b_copy = _store([])
    b_copy.merge(b, NOW)
    a.merge(b, NOW)
    b.merge(_store(part_a), NOW)
    assert _state(a) == _state(b)  # A + B == B + A
    event(f"forked authors: {len(a.forks())}, entries held: {'>10' if len(a) > 10 else '<=10'}")
    once = _state(a)
    result = a.merge(b_copy, NOW)
    assert result.stored == 0 and _state(a) == once  # (A + B) + B == A + B
    a.merge(a, NOW)
    assert _state(a) == once  # A + A == A
    # and a store holding everything the two held computes the pure function's balances
    assert a.balances() == compute([*a.entries(), *a.evidence()], rules=RULES).balances


@SETTINGS
@given(plan=actions)
def test_a_store_agrees_with_the_pure_rules_on_what_it_accepted(plan: list[Action]) -> None:
    entries = build(plan)
    store = _store(entries)
    assert all(e.encoded == canonical_bytes(e.to_dict()) for e in entries)  # the fast encoder is canonical
    held = [*store.entries(), *store.evidence()]
    assert store.balances() == compute(held, rules=RULES).balances
    assert store.forks() == compute(held, rules=RULES).forks


@STORE_SETTINGS
@given(plan=plans(8, 40), data=st.data())
def test_balances_kept_on_every_write_equal_a_recompute_over_the_rows(
    plan: list[Action], data: st.DataObject
) -> None:
    """The store keeps its balance inputs up to date as it writes (rows, forks that drop a chain's tail,
    fork evidence replaced): after every batch, its report is the one computed afresh from the rows."""
    entries = sorted(build(plan), key=lambda e: (e.seq, e.hash))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), max_size=6)))
    store = LedgerStore.open(None, rules=RULES)
    store.report()  # from now on the store updates what it keeps instead of reading the rows again
    for lo, hi in zip([0, *cuts], [*cuts, len(entries)], strict=True):
        store.insert_many(entries[lo:hi], NOW)
        held = [*store.entries(), *store.evidence()]
        assert whole_report(store.report()) == whole_report(compute(held, rules=RULES))
    event(f"forked authors: {len(store.forks())}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70) | st.floats(allow_nan=True),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)


@SETTINGS
@given(data=json_values, mutate=st.sampled_from(["author", "seq", "prev", "time", "body", "signature", None]))
def test_random_input_only_raises_typed_errors(data: Any, mutate: str | None) -> None:
    base = Log(PEOPLE[0]).add(grant(PEOPLE[0])).to_dict()
    candidate = data if mutate is None else {**base, mutate: data}
    result = parse_entry(candidate)
    assert isinstance(result, Entry) or result.code in ("malformed", "too_large")
    with contextlib.suppress(LedgerError, CanonicalError):
        Entry.decode(repr(data).encode())

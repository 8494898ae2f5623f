"""The day's rarity bonus as the sweep applies it, against the rule written out receipt by receipt.

``Sweep`` computes a day's bonus per block span and credits each server the sum of its receipts'
shares, remembering the last day's coverage for the next report (``rarity.DayRarity``). The oracle
here is the rule of ``compute``'s docstring taken literally: per block, the rate for the number of
distinct servers whose paying receipts that day cover it; each paying receipt's server credited its
share of that, one receipt at a time, every credit capped at the balance cap.
"""

from __future__ import annotations

import dataclasses
import random

from python_peer.core.balances import Account, Sweep, bonus_items, receipt_item
from python_peer.core.economics import DAY_MS, DEFAULT_RULES, Rules
from python_peer.core.receipts import Receipt
from python_peer.core.sweep_journal import SweepJournal

MODEL = "smollm2-135m"
DAY0 = 20_000 * DAY_MS
SERVERS = [f"{i:02x}" * 32 for i in range(1, 5)]
CLIENTS = [f"{i:02x}" * 32 for i in range(0xA1, 0xA4)]


def _receipt(rng: random.Random, n: int, day: int = 0) -> Receipt:
    start = rng.randrange(0, 28)
    return Receipt(
        f"{n:032x}", MODEL, start, rng.randrange(start + 1, 31), rng.randrange(1, 400),
        rng.choice(CLIENTS), rng.choice(SERVERS), DAY0 + day * DAY_MS + 1000 * n,
    )  # fmt: skip


def _accounts(rules: Rules, balances: dict[str, int]) -> dict[str, Account]:
    return {peer: Account(peer, balance=units) for peer, units in balances.items()}


def _oracle(rules: Rules, balances: dict[str, int], receipts: list[Receipt]) -> Sweep:
    """The receipts and hours swept in order; each day's bonus credited one receipt at a time."""
    sweep = Sweep(rules, _accounts(rules, balances))
    items = [receipt_item(r) for r in receipts] + bonus_items(receipts)
    for item in sorted(items, key=lambda i: i[:3]):
        if item[1] != 3:
            sweep.step(item)
            continue
        at, what = item[0], item[3]
        assert isinstance(what, tuple)
        paying = [r for r in sweep.days[what] if sweep.settled[r.id].counts]
        for r in paying:
            servers = [
                len({o.server for o in paying if o.start <= block < o.end}) for block in range(r.start, r.end)
            ]
            total = sum(rules.rarity_rate(count) for count in servers) * r.tokens
            bonus = sweep.settled[r.id].share(total)
            sweep.rarity_bonuses[r.id] = bonus
            sweep.account(r.server).rarity_bonus += bonus
            sweep.defer(r.server, at, bonus)
    return sweep


def _swept(rules: Rules, balances: dict[str, int], receipts: list[Receipt]) -> Sweep:
    sweep = Sweep(rules, _accounts(rules, balances))
    items = [receipt_item(r) for r in receipts] + bonus_items(receipts)
    for item in sorted(items, key=lambda i: i[:3]):
        sweep.step(item)
    return sweep


def _same(a: Sweep, b: Sweep) -> None:
    assert a.accounts == b.accounts
    assert a.settled == b.settled


def test_rarity_matches_the_rule_near_the_cap_and_with_partial_payments() -> None:
    rng = random.Random(7)
    rules = dataclasses.replace(DEFAULT_RULES, balance_cap=400_000)
    # a server a few credits under the cap (its bonuses clipped), a client that runs out (partial payments)
    balances = {
        SERVERS[0]: 399_990,
        SERVERS[1]: 0,
        CLIENTS[0]: 60_000,
        CLIENTS[1]: 3_000_000,
        CLIENTS[2]: 900,
    }
    receipts = [_receipt(rng, n, day=n % 2) for n in range(120)]
    oracle = _oracle(rules, balances, receipts)
    assert any(a.clipped for a in oracle.accounts.values())
    assert any(s.status == "partial" for s in oracle.settled.values())
    assert any(s.rarity_bonus for s in oracle.settled.values())
    _same(_swept(rules, balances, receipts), oracle)


def test_a_report_each_receipt_reuses_the_day_and_still_matches() -> None:
    """As a running report does: the receipts swept one by one on one sweep, the day's bonus applied on a
    copy after each, its coverage growing (a new server or span) or not (the same ones again)."""
    rng = random.Random(11)
    rules = DEFAULT_RULES
    balances = {peer: 200_000 for peer in [*SERVERS, *CLIENTS]}
    sweep = Sweep(rules, _accounts(rules, balances))
    receipts: list[Receipt] = []
    for n in range(60):
        r = _receipt(rng, n)
        if n >= 30:  # from here on, spans and servers already seen: the coverage stays, the rates are reused
            seen = receipts[rng.randrange(len(receipts))]
            r = dataclasses.replace(r, start=seen.start, end=seen.end, server=seen.server)
        receipts.append(r)
        sweep.step(receipt_item(r))
        report = sweep.copy()
        for item in sorted(bonus_items(receipts), key=lambda i: i[:3]):
            report.step(item)
        _same(report, _oracle(rules, balances, receipts))


def _day_report(sweep: Sweep, receipts: list[Receipt]) -> Sweep:
    """A report's sweep: a copy of ``sweep`` with the day items of ``receipts`` applied."""
    copy = sweep.copy()
    for item in sorted((i for i in bonus_items(receipts) if i[1] == 3), key=lambda i: i[:3]):
        copy.step(item)
    return copy


def _sweep_late(journal: SweepJournal, late: Receipt) -> None:
    """``late`` swept in its place: the steps after it taken back and swept again with it."""
    for item in sorted([receipt_item(late), *journal.rewind(receipt_item(late)[:3])], key=lambda i: i[:3]):
        journal.step(item)


def test_a_receipt_swept_again_with_another_payment_gets_a_fresh_settlement() -> None:
    """A late receipt taken back into place (``SweepJournal``) changes what a later receipt's client could
    pay; the day's bonus then keeps nothing of the settlement it wrote for the earlier payment, even when
    the bonus itself is the same (here zero: no rarity rate)."""

    rng = random.Random(3)
    rules = dataclasses.replace(DEFAULT_RULES, rarity_bonus=(0,))
    balances = {peer: 0 for peer in SERVERS} | {CLIENTS[0]: 28_000}
    first = dataclasses.replace(
        _receipt(rng, 10), client=CLIENTS[0], start=0, end=5, tokens=100, server=SERVERS[0]
    )  # 6,000 units
    late = dataclasses.replace(
        _receipt(rng, 5), client=CLIENTS[0], start=0, end=3, tokens=800, server=SERVERS[1]
    )  # 25,000 units
    sweep = Sweep(rules, _accounts(rules, balances))
    journal = SweepJournal(sweep)
    journal.step(receipt_item(first))

    assert _day_report(sweep, [first]).settled[first.id].status == "full"
    _sweep_late(journal, late)
    again = _day_report(sweep, [first, late])
    assert again.settled[first.id].status == "partial"
    assert again.settled == _oracle(rules, balances, [first, late]).settled


def test_a_receipt_swept_again_in_the_same_place_of_its_day_is_settled_again() -> None:
    """The late receipt is another model's, so the earlier one is swept again at the same place of its own
    model's day (taken back, then appended again) with a smaller payment: its bonus follows the new
    payment. Rarity rates of 0 and 2 units make the bonus differ."""

    rng = random.Random(5)
    rules = dataclasses.replace(DEFAULT_RULES, rarity_bonus=(2,))
    balances = {peer: 0 for peer in SERVERS} | {CLIENTS[0]: 28_000}
    first = dataclasses.replace(
        _receipt(rng, 10), client=CLIENTS[0], start=0, end=5, tokens=100, server=SERVERS[0]
    )
    late = dataclasses.replace(
        _receipt(rng, 5),
        client=CLIENTS[0],
        start=0,
        end=3,
        tokens=800,
        server=SERVERS[1],
        model="other-model",
    )
    sweep = Sweep(rules, _accounts(rules, balances))
    journal = SweepJournal(sweep)
    journal.step(receipt_item(first))

    alone = _day_report(sweep, [first]).settled[first.id]
    assert alone.status == "full" and alone.rarity_bonus == 5 * 100 * 2
    _sweep_late(journal, late)
    again = _day_report(sweep, [first, late])
    assert again.settled[first.id].status == "partial"
    assert again.settled[first.id].rarity_bonus < alone.rarity_bonus
    _same(again, _oracle(rules, balances, [first, late]))


def test_a_day_already_ended_takes_back_the_bonus_of_a_receipt_that_no_longer_pays() -> None:
    """The day's end was swept (its bonuses written) when a late receipt of that day comes and leaves the
    client too little for the earlier one to pay beyond the base fee: the end is taken back with the
    receipt and swept again, and the earlier receipt keeps no bonus (the journal restores the bonuses a
    day's end wrote, as it restores settlements)."""

    rng = random.Random(9)
    rules = dataclasses.replace(DEFAULT_RULES, rarity_bonus=(2,))
    first = dataclasses.replace(
        _receipt(rng, 10), client=CLIENTS[0], start=0, end=5, tokens=100, server=SERVERS[0]
    )
    late = dataclasses.replace(
        _receipt(rng, 5), client=CLIENTS[0], start=0, end=3, tokens=800, server=SERVERS[1]
    )
    late_price = _swept(rules, {CLIENTS[0]: 10**9}, [late]).settled[late.id].price
    balances = {peer: 0 for peer in SERVERS} | {CLIENTS[0]: late_price + rules.base_fee}
    sweep = Sweep(rules, _accounts(rules, balances))
    journal = SweepJournal(sweep)
    for item in sorted([receipt_item(first), *bonus_items([first])], key=lambda i: i[:3]):
        journal.step(item)  # the day's end swept on the kept sweep, not on a report's copy
    assert sweep.settled[first.id].rarity_bonus == 5 * 100 * 2

    _sweep_late(journal, late)
    assert sweep.settled[first.id].status == "none" and sweep.settled[first.id].rarity_bonus == 0
    _same(sweep, _oracle(rules, balances, [first, late]))

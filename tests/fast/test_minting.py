"""No credit from nothing (issue 11, point 1), in process: the minting attack of the issue, fed to a node's
ledger through its signaling gossip path, credits nothing and changes no honest peer's balance or bonus;
a colluding pair with one grant moves at most that grant."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from python_peer.core.balances import LedgerReport, compute
from python_peer.core.entries import GENESIS, make_entry
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.link_ledger import SignalingExchange
from tests.support.ledger import RULES, T0, Log, cosign, funded, ids, store_with

MODEL = "smollm2-135m"
HUGE = 1 << 24  # token positions: the most a receipt may claim


def minted_entry(client: Identity, server: Identity, when: int) -> tuple[Receipt, Any]:
    """The attack: two fresh identities co-sign 2**24 tokens through 30 blocks; the server logs it at seq 1."""
    receipt = Receipt(os.urandom(16).hex(), MODEL, 0, 30, HUGE, client.peer_id, server.peer_id, when)
    body = ReceiptBody(receipt, client.sign(receipt.signing_bytes()), server.sign(receipt.signing_bytes()))
    return receipt, make_entry(server.peer_id, 1, GENESIS, when, body, server.sign)


def honest_view(report: LedgerReport, peers: list[str]) -> dict[str, tuple[int, ...]]:
    return {
        p: (a.balance, a.earned, a.rarity_bonus, a.uptime_bonus, a.spent, a.served_block_tokens)
        for p in peers
        if (a := report.accounts.get(p)) is not None
    }


async def test_a_receipt_between_identities_with_nothing_credits_nothing(
    make_ledger: Callable[..., LedgerService],
) -> None:
    peer, honest = make_ledger(), make_ledger()
    now = int(time.time() * 1000) + 1  # after both grants
    peer.accept_entries(honest.own_entries())  # the honest client's grant
    # honest work first: the honest client pays the peer for 10 blocks x 1000 tokens (rarity, uptime)
    peer.store.append_receipt(peer.identity, cosign(honest.identity, peer.identity, tokens=1000, time=now))
    everyone = [peer.peer_id, honest.peer_id]
    before = peer.store.report()
    assert before.accounts[peer.peer_id].rarity_bonus > 0 and before.accounts[peer.peer_id].uptime_bonus > 0

    client, server = Identity.generate(), Identity.generate()
    receipt, entry = minted_entry(client, server, now + 1000)
    sent: list[tuple[str, dict[str, Any]]] = []

    async def send(to: str, payload: dict[str, Any]) -> None:
        sent.append((to, payload))

    message = {"type": "entries", "v": 1, "entries": [entry.to_dict()], "proofs": [], "more": False}
    await SignalingExchange(peer, send).receive(server.peer_id, {"kind": "ledger", "msg": message})

    head = peer.store.head(server.peer_id)
    assert head is not None and head.hash == entry.hash  # stored: a valid entry, it just pays nothing
    after = peer.store.report()
    assert after.balance(server.peer_id) == 0 and after.balance(client.peer_id) == 0
    settled = after.settled[receipt.id]
    assert (settled.status, settled.paid, settled.earned, settled.block_tokens) == ("none", 0, 0, 0)
    assert after.standing(server.peer_id) == 0
    assert honest_view(after, everyone) == honest_view(before, everyone)


def test_a_colluding_pair_moves_at_most_the_grant_it_has() -> None:
    payer, minter, honest, peer = ids(4, 7100)
    _, paid = funded(payer)
    _, honest_paid = funded(honest)
    honest_work = Log(peer).add(cosign(honest, peer, tokens=1000, time=T0 + 30_000))
    base = [*paid, *honest_paid, honest_work]
    before = compute(base, rules=RULES)
    # the payer, with 200 credits, co-signs 2**24 tokens through 30 blocks for its partner
    r = cosign(payer, minter, tokens=HUGE, start=0, end=30, time=T0 + 60_000)
    report = compute([*base, Log(minter).add(r)], rules=RULES)
    settled = report.settled[r.receipt.id]
    assert settled.status == "partial" and settled.paid == RULES.starter_grant < settled.price
    assert report.balance(payer.peer_id) == 0  # all it had, never a debt
    pair = report.balance(payer.peer_id) + report.balance(minter.peer_id)
    assert 0 < pair <= RULES.starter_grant - RULES.base_fee  # credits moved (and some burnt), none appeared
    assert report.accounts[minter.peer_id].served_block_tokens == settled.block_tokens < 30 * HUGE
    # the honest peer keeps its earnings; its rarity may fall only because real, paid work shares its blocks
    assert report.accounts[peer.peer_id].earned == before.accounts[peer.peer_id].earned
    # the same receipt between two identities with no grant at all: nothing anywhere
    bare = compute(
        [honest_work, *honest_paid, Log(minter).add(cosign(ids(1, 7200)[0], minter, tokens=HUGE, end=30))]
    )
    assert bare.balance(minter.peer_id) == 0
    assert bare.accounts[peer.peer_id].rarity_bonus == before.accounts[peer.peer_id].rarity_bonus
    assert bare.accounts[peer.peer_id].uptime_bonus == before.accounts[peer.peer_id].uptime_bonus
    assert bare.accounts[peer.peer_id].balance == before.accounts[peer.peer_id].balance


def test_spending_stops_at_the_balance_and_a_partial_payment_pays_in_proportion() -> None:
    client, server = ids(2, 7300)
    log, paid = funded(client)
    s = Log(server)
    # 200,000 units: 101,000 paid in full, then 99,000 of the next 101,000 (98,000 of its 100,000 of work)
    first = s.add(cosign(client, server, tokens=1000, time=T0 + 1000))
    second = s.add(cosign(client, server, tokens=1000, time=T0 + 2000))
    third = s.add(cosign(client, server, tokens=1000, time=T0 + 3000))
    report = compute([*paid, first, second, third], rules=RULES)
    full, partial, nothing = (report.settled[e.body.receipt.id] for e in (first, second, third))  # type: ignore[union-attr]
    assert (full.status, full.paid, full.earned, full.block_tokens) == ("full", 101_000, 60_000, 10_000)
    assert (partial.status, partial.paid, partial.earned, partial.block_tokens) == (
        "partial",
        99_000,
        60_000 * 98 // 100,
        10_000 * 98 // 100,
    )
    assert (nothing.status, nothing.paid, nothing.earned) == ("none", 0, 0)
    assert report.balance(client.peer_id) == 0
    assert report.accounts[client.peer_id].spent == RULES.starter_grant
    # rarity is paid in the same proportion; the hour's 19,800 paid block-tokens earn the uptime bonus
    assert report.accounts[server.peer_id].rarity_bonus == 2 * (10_000 + 9_800)
    assert report.accounts[server.peer_id].uptime_bonus == RULES.uptime_bonus
    assert log.entries  # the client's grant is in its own log


def test_the_bonuses_of_this_hour_and_day_are_spendable_only_once_credited() -> None:
    client, server = ids(2, 7400)
    _, paid = funded(client)
    work = Log(server).add(cosign(client, server, tokens=1000, time=T0 + 1000))  # 10,000 bt: uptime too
    report = compute([*paid, work], rules=RULES)
    account = report.accounts[server.peer_id]
    bonuses = account.rarity_bonus + account.uptime_bonus
    assert bonuses == 2 * 10_000 + RULES.uptime_bonus and account.balance == 60_000 + bonuses
    assert report.spendable(server.peer_id, T0 + 2000) == 60_000  # a receipt now settles before both
    hour_end, day_end = T0 - T0 % 3_600_000 + 3_600_000, T0 - T0 % 86_400_000 + 86_400_000
    assert report.spendable(server.peer_id, hour_end) == 60_000 + RULES.uptime_bonus
    assert report.spendable(server.peer_id, day_end) == account.balance
    assert report.spendable(client.peer_id, T0 + 2000) == report.balance(client.peer_id)
    # the payment check counts only what a request now can spend, and says why
    store = store_with(*paid, work)
    try:
        quote = store.quote(server.peer_id, 10, 595, now=T0 + 2000)  # price 60,500 > 60,000 spendable
        assert (quote.balance, quote.pending, quote.price) == (account.balance, bonuses, 60_500)
        assert quote.refusal is not None and "21.000 of bonuses credited only at the end" in quote.refusal
        assert store.quote(server.peer_id, 10, 595, now=day_end).refusal is None
    finally:
        store.close()

"""A client flooding a peer with pushes (GOSSIP ``{kind: "push"}`` frames, or OPEN's ``log``) is held to the
per-neighbour entry budget that gossip messages already obey (``docs/ledger.md``, "Gossip"): each pushed
entry costs the peer signature checks and a row, and a link carries any number of push frames."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from python_peer import ledger_service
from python_peer.core import ledger_exchange as lx
from python_peer.core.errors import LedgerError
from python_peer.core.gossip import GossipConfig
from python_peer.core.holds import Hold
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import now_ms
from python_peer.link_ledger import HoldTerms, ServerExchange
from tests.support.ledger import MODEL, Log

NOW = now_ms()  # the entries' time (checked against the wall clock) and the budgets' frozen clock


def _holds(author: Identity, server: str, count: int) -> list[dict[str, object]]:
    """``count`` valid entries of ``author``'s log (holds cost no proof of work), in seq order."""
    log = Log(author)
    for _ in range(count):
        log.add(Hold(os.urandom(16).hex(), server, MODEL, 0, 1, 1_010, NOW + 600_000), time=NOW)
    return [e.to_dict() for e in log.entries]


async def test_pushes_beyond_the_entry_budget_are_refused_until_it_refills(
    make_ledger: Callable[..., LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [NOW]
    monkeypatch.setattr(ledger_service, "now_ms", lambda: clock[0])
    peer = make_ledger(grant=False)
    exchange = ServerExchange(peer)
    flooder = Identity.generate()
    budget = int(GossipConfig().entry_burst)
    entries = _holds(flooder, peer.peer_id, budget + 2 * 64)
    session = os.urandom(16)

    stored, refused = 0, 0
    for i in range(0, len(entries), 64):
        try:
            answer = await exchange.answer(flooder.peer_id, session, lx.push_request(entries[i : i + 64]))
        except LedgerError as exc:
            assert "rate_limited" in str(exc)
            refused += 1
            break
        stored += lx.parse_push_answer(answer)
    assert stored <= budget and refused == 1  # the flood stopped at the budget, nothing past it stored
    assert len(peer.store) == stored

    clock[0] += 1_000  # a second later the budget has refilled by a second's entries
    answer = await exchange.answer(flooder.peer_id, session, lx.push_request(entries[stored : stored + 64]))
    assert lx.parse_push_answer(answer) == 64


async def test_a_log_carried_by_open_counts_against_the_same_budget(
    make_ledger: Callable[..., LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_service, "now_ms", lambda: NOW)
    peer = make_ledger(grant=False)
    exchange = ServerExchange(peer)
    flooder = Identity.generate()
    budget = int(GossipConfig().entry_burst)
    entries = _holds(flooder, peer.peer_id, budget + 64)
    for i in range(0, budget, 64):  # the whole budget spent by pushes
        await exchange.answer(
            flooder.peer_id, os.urandom(16), lx.push_request(entries[i : min(i + 64, budget)])
        )
    terms = HoldTerms(peer.peer_id, os.urandom(16), MODEL, 0, 1, 8)
    with pytest.raises(LedgerError, match="rate_limited"):  # before the hold OPEN names is looked at
        await exchange.admit(flooder.peer_id, "0" * 64, terms, carried=entries[budget:])
    assert len(peer.store) == budget

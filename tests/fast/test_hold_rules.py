"""The rules of a hold (``core/holds.py``, ``core/rules.py``) as pure functions of signed entries.

Forged, self-addressed and long-lived holds are refused by every node; a server admits a hold only for
its own session, within the client's spendable balance beside its other open holds, while unexpired and
unconsumed; a receipt consumes it and expiry releases it; a hold past a fork does not count; the golden
hold entry is the bytes in ``tests/vectors/ledger/hold_entry.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from python_peer.core.balances import compute
from python_peer.core.economics import price
from python_peer.core.entries import Entry, make_entry
from python_peer.core.errors import LedgerError
from python_peer.core.holds import (
    MAX_HOLD_MS,
    MIN_HOLD_LEFT_MS,
    HeldCredits,
    Hold,
    admit_hold,
    held_units,
    open_holds,
)
from python_peer.core.rules import check_body, check_entry
from python_peer.ledger_store import native_verify
from tests.support.holds import hold_vector
from tests.support.ledger import RULES, T0, Log, cosign, grant, ids

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "ledger" / "hold_entry.json"
CLIENT, SERVER, OTHER = ids(3, 500)
SESSION = "ab" * 16
MODEL = "smollm2-135m"


def _hold(
    server: str = SERVER.peer_id, *, amount: int = 50_000, expires: int = T0 + 10 * 60_000, **kw: Any
) -> Hold:
    fields: dict[str, Any] = {"session": SESSION, "model": MODEL, "start": 0, "end": 10, **kw}
    return Hold(fields["session"], server, fields["model"], fields["start"], fields["end"], amount, expires)


def _admit(
    entries: list[Entry], hold: Entry, *, now: int = T0 + 60_000, price_: int = 10_000, **kw: Any
) -> None:
    report = compute(entries, rules=RULES)
    wanted: dict[str, Any] = {
        "server": SERVER.peer_id,
        "session": SESSION,
        "model": MODEL,
        "start": 0,
        "end": 10,
    }
    wanted.update(kw)
    written = {
        e.hash: HeldCredits(e.hash, e.author, e.seq, e.body) for e in entries if isinstance(e.body, Hold)
    }
    admit_hold(report, CLIENT.peer_id, hold.hash, price=price_, now=now, stored=written.get, **wanted)


def test_the_golden_hold_entry_is_the_vector_on_disk() -> None:
    vector = json.loads(VECTOR.read_text())
    assert vector == hold_vector()
    entry = Entry.from_dict(vector["entry"])
    assert entry.hash == vector["hash"] and entry.signing_bytes.decode() == vector["signing_bytes"]
    assert check_body(entry, native_verify) is None
    assert isinstance(entry.body, Hold) and entry.body.to_dict() == vector["entry"]["body"]


def test_a_forged_hold_signature_is_refused() -> None:
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    genuine = log.add(_hold())
    forged = make_entry(CLIENT.peer_id, 2, genuine.prev, genuine.time, _hold(amount=1), OTHER.sign)
    rejection = check_entry(forged, native_verify, T0, RULES)
    assert rejection is not None and rejection.code == "bad_signature"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_hold(CLIENT.peer_id), "to another identity"),
        (_hold(expires=T0 + 1000), "expires after its entry"),
        (_hold(expires=T0 + 1000 + MAX_HOLD_MS + 1), "at most 60 min later"),
    ],
)
def test_a_hold_to_oneself_or_expiring_out_of_bounds_is_refused(body: Hold, reason: str) -> None:
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    entry = log.add(body)  # dated T0 + 1000
    rejection = check_body(entry, native_verify, RULES)
    assert rejection is not None and rejection.code == "bad_hold" and reason in rejection.reason


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"amount": 0}, "hold amount"),
        ({"amount": True}, "hold amount"),
        ({"session": "AB" * 16}, "hold session"),
        ({"end": 0}, "hold end"),
        ({"extra": 1}, "a hold body"),
    ],
)
def test_a_malformed_hold_body_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        Hold.from_dict({**_hold().to_dict(), **data})


def test_a_hold_beyond_the_balance_is_refused_and_one_within_it_admitted() -> None:
    log = Log(CLIENT)
    entries = [log.add(grant(CLIENT))]  # 200 credits
    big = log.add(_hold(amount=200_001))
    with pytest.raises(LedgerError, match=r"balance 200\.000 credits does not cover the price of 200\.001"):
        _admit([*entries, big], big)
    fits = Log(CLIENT)
    fits.add(grant(CLIENT))
    whole = fits.add(_hold(amount=200_000))
    _admit(fits.entries, whole)
    # a second hold of the same credits, in the same log, is refused, wherever it is shown
    second = fits.add(_hold(OTHER.peer_id, amount=1000))
    with pytest.raises(LedgerError, match=r"beside 200\.000 credits held"):
        _admit(fits.entries, second, server=OTHER.peer_id, price_=1000)


def test_a_hold_is_admitted_only_for_its_own_session_span_and_server() -> None:
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    hold = log.add(_hold())
    for wrong, match in (
        ({"server": OTHER.peer_id}, "for server"),
        ({"session": "cd" * 16}, "for session"),
        ({"model": "other"}, "for model"),
        ({"start": 1}, "for start"),
        ({"end": 9}, "for end"),
    ):
        with pytest.raises(LedgerError, match=match):
            _admit(log.entries, hold, **wrong)
    with pytest.raises(LedgerError, match="does not cover the price"):
        _admit(log.entries, hold, price_=50_001)
    with pytest.raises(LedgerError, match="must name the hold"):
        admit_hold(
            compute(log.entries, rules=RULES),
            CLIENT.peer_id,
            None,
            server=SERVER.peer_id,
            session=SESSION,
            model=MODEL,
            start=0,
            end=10,
            price=1,
            now=T0,
        )


def test_an_expired_hold_is_refused_and_releases_its_credits() -> None:
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    hold = log.add(_hold(amount=200_000, expires=T0 + 5 * 60_000))
    report = compute(log.entries, rules=RULES)
    assert held_units(report, CLIENT.peer_id, T0 + 5 * 60_000 - 1) == 200_000
    assert open_holds(report, CLIENT.peer_id, T0 + 5 * 60_000) == []
    with pytest.raises(LedgerError, match="too soon for a session"):
        _admit(log.entries, hold, now=T0 + 5 * 60_000 - MIN_HOLD_LEFT_MS + 1)
    with pytest.raises(LedgerError, match="expires in 0 s"):
        _admit(log.entries, hold, now=T0 + 6 * 60_000)
    # released: a new hold of the same credits fits
    later = log.add(_hold(OTHER.peer_id, amount=200_000, expires=T0 + 20 * 60_000), time=T0 + 6 * 60_000)
    _admit(log.entries, later, server=OTHER.peer_id, now=T0 + 6 * 60_000)


def test_a_receipt_of_its_session_consumes_a_hold_whoever_carries_it() -> None:
    log, server_log = Log(CLIENT), Log(SERVER)
    log.add(grant(CLIENT))
    hold = log.add(_hold(amount=150_000))
    body = cosign(CLIENT, SERVER, tokens=100, session=SESSION, time=T0 + 120_000)
    carried = server_log.add(body, time=T0 + 120_000)  # only in the server's log: the client withholds it
    report = compute([*log.entries, carried], rules=RULES)
    assert held_units(report, CLIENT.peer_id, T0 + 130_000) == 0
    cost = price(10, 100, 0, RULES)
    assert report.balance(CLIENT.peer_id) == 200_000 - cost
    assert report.holds.get(CLIENT.peer_id, []) == []  # a report lists the open holds only
    with pytest.raises(LedgerError, match="already consumed"):
        _admit([*log.entries, carried], hold, now=T0 + 130_000)
    with pytest.raises(LedgerError, match="does not hold the hold"):  # nothing to read it from
        admit_hold(
            report, CLIENT.peer_id, hold.hash, server=SERVER.peer_id, session=SESSION, model=MODEL,
            start=0, end=10, price=cost, now=T0 + 130_000,
        )  # fmt: skip
    # another session's receipt with the same server does not consume it
    other = server_log.add(cosign(CLIENT, SERVER, tokens=100, session="cd" * 16, time=T0 + 125_000))
    report = compute([*log.entries, other], rules=RULES)
    assert held_units(report, CLIENT.peer_id, T0 + 130_000) == 150_000


def test_holds_past_a_fork_do_not_count_and_a_forked_client_is_refused() -> None:
    log, twin = Log(CLIENT), Log(CLIENT)
    first = log.add(grant(CLIENT))
    twin.entries.append(first)
    a = log.add(_hold(amount=200_000))
    b = twin.add(_hold(OTHER.peer_id, amount=200_000))
    assert (a.seq, b.seq) == (2, 2)
    report = compute([first, a, b], rules=RULES)
    assert report.forks == {CLIENT.peer_id: 2}
    assert report.holds.get(CLIENT.peer_id, []) == []
    with pytest.raises(LedgerError, match="forked at seq 2"):
        _admit([first, a, b], a)


def test_holds_move_no_credits() -> None:
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    log.add(_hold(amount=199_000))
    report = compute(log.entries, rules=RULES)
    assert report.balance(CLIENT.peer_id) == 200_000 and report.balance(SERVER.peer_id) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(1_000, 120_000), st.integers(2, 20), st.integers(0, 6)),
        min_size=1,
        max_size=12,
    )
)
def test_what_peers_admit_never_exceeds_the_balance_at_any_instant(
    plan: list[tuple[int, int, int, int]],
) -> None:
    """One log, holds for three peers in random amounts, lifetimes and pauses; each peer sees the log up
    to the hold it is asked to admit (as a push gives it). At every instant, the holds admitted and still
    open promise no more than the client's balance."""
    servers = [SERVER.peer_id, OTHER.peer_id, ids(1, 900)[0].peer_id]
    log = Log(CLIENT)
    log.add(grant(CLIENT))
    when = T0 + 1000
    admitted: list[tuple[int, int, int]] = []  # (admitted at, expires, amount)
    for i, (server, amount, minutes, pause) in enumerate(plan):
        when += pause * 60_000
        session = f"{i:032x}"
        body = Hold(session, servers[server], MODEL, 0, 10, amount, when + minutes * 60_000)
        entry = log.add(body, time=when)
        report = compute(log.entries, rules=RULES)
        try:
            admit_hold(
                report,
                CLIENT.peer_id,
                entry.hash,
                server=servers[server],
                session=session,
                model=MODEL,
                start=0,
                end=10,
                price=amount,
                now=when,
            )
        except LedgerError:
            continue
        admitted.append((when, body.expires, amount))
    for instant, _, _ in admitted:
        promised = sum(amount for at, until, amount in admitted if at <= instant < until)
        assert promised <= RULES.starter_grant

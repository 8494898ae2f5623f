"""The running report (``core/running.py``): a store's balances extended entry by entry are exactly
``compute`` over what it holds, after every single write, in SQLite and in memory.

The histories are what a mesh writes (grants, a hold per session, the receipt carried by its client and
its server, in the order they were written) and what an adversary can send instead: receipts dated
before the latest one counted, a receipt superseding another of the same session span, copies of one
receipt arriving in any order, forks and fork proofs, and sessions across hour and day ends (bonuses).
Each case checks that the fast path was really taken where it applies, so a running report that always
fell back to ``compute`` would fail here too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_peer.core import sweep_journal
from python_peer.core.balances import compute
from python_peer.core.economics import DAY_MS, HOUR_MS
from python_peer.core.entries import Entry, ForkProof, make_entry
from python_peer.core.errors import LedgerError
from python_peer.core.holds import Hold
from python_peer.core.memory_store import MemoryStore
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.sweep_journal import JOURNAL_STEPS
from python_peer.ledger_store import LedgerStore, native_verify
from tests.support.ledger import (
    MODEL,
    NOW,
    PEOPLE,
    RULES,
    T0,
    Action,
    Log,
    build,
    cosign,
    grant,
    ids,
    plans,
    whole_report,
)

Store = Callable[[], LedgerStore | MemoryStore]
STORES: dict[str, Store] = {
    "sqlite": lambda: LedgerStore.open(None, rules=RULES),
    "memory": lambda: MemoryStore(rules=RULES, verify=native_verify),
}


def _mesh_history(seed: int, steps: int, *, disorder: float = 0.0) -> list[Entry]:
    """Entries of PEOPLE chatting as the mesh does, in the order the entries were written.

    Each step a client holds, then the server and (usually) the client carry the receipt; sessions are
    sometimes closed again with more tokens (a superseding receipt), time runs over hour and day ends,
    and with ``disorder`` some receipts are dated before the latest one."""
    rng = random.Random(seed)
    logs = [Log(p) for p in PEOPLE]
    written: list[Entry] = []
    now = T0 + 3_000_000  # a few minutes before an hour's end
    for log in logs:
        written.append(log.add(grant(log.identity), time=T0))
    sessions: list[tuple[int, int, str, int, int]] = []
    for _ in range(steps):
        now += rng.choice([1_000, 30_000, 600_000, HOUR_MS // 2])
        client, server = rng.sample(range(len(logs)), 2)
        start = rng.randrange(0, 3)
        end = start + rng.randrange(1, 4)
        when = now - rng.randrange(1, 3 * HOUR_MS) if rng.random() < disorder else now
        if sessions and rng.random() < 0.1:  # the same session span closed again, with more tokens
            client, server, session, start, end = rng.choice(sessions)
        else:
            session = f"{rng.getrandbits(128):032x}"
            sessions.append((client, server, session, start, end))
            hold = Hold(session, PEOPLE[server].peer_id, MODEL, start, end, 50_000, when + 600_000)
            written.append(logs[client].add(hold, time=max(when, _head_time(logs[client]))))
        body = cosign(
            PEOPLE[client],
            PEOPLE[server],
            tokens=rng.randrange(1, 3000),
            start=start,
            end=end,
            time=when,
            session=session,
        )
        carriers = [server, client] if rng.random() < 0.5 else [client, server]
        if rng.random() < 0.15:
            carriers = carriers[:1]  # the other side died before writing its copy
        for who in carriers:
            written.append(logs[who].add(body, time=max(when, _head_time(logs[who]))))
    return written


def _head_time(log: Log) -> int:
    return log.entries[-1].time if log.entries else T0


def _replay(make: Store, entries: list[Entry]) -> LedgerStore | MemoryStore:
    """Insert ``entries`` one write at a time; after each, the report equals ``compute`` over the store."""
    store = make()
    store.report()
    for entry in entries:
        store.insert_many([entry], NOW)
        held = [*store.entries(), *store.evidence()]
        assert whole_report(store.report()) == whole_report(compute(held, rules=RULES)), entry.hash
    return store


@pytest.mark.parametrize("kind", sorted(STORES))
def test_a_mesh_history_is_extended_entry_by_entry_and_equals_compute(kind: str) -> None:
    entries = _mesh_history(1, 120)
    store = _replay(STORES[kind], entries)
    running = store._running
    # grants and superseding receipts recompute; holds, receipts and their second copies extend
    assert running.extensions > 3 * running.full_runs, (running.extensions, running.full_runs)
    days = {e.body.receipt.time // DAY_MS for e in entries if hasattr(e.body, "receipt")}
    assert len(days) > 1  # the history crossed a day's end: rarity bonuses were applied and passed
    report = store.report()
    assert any(a.uptime_bonus for a in report.accounts.values())
    assert any(s.rarity_bonus for s in report.settled.values())


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("seed", [2, 3])
def test_receipts_dated_before_the_latest_one_still_give_compute_s_report(
    kind: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a peer dates receipts into the past (or gossip brings old ones late), so the sweep's
    order is not the order of arrival. A late receipt is swept in its place, the steps after it taken
    back and swept again (``sweep_journal.py``), unless it is older than every step the journal keeps:
    then the store recomputes. The report never differs, whatever the journal keeps."""
    history = _mesh_history(seed, 80, disorder=0.3)
    runs = {}
    for steps in (JOURNAL_STEPS, 6, 0):
        monkeypatch.setattr(sweep_journal, "JOURNAL_STEPS", steps)
        runs[steps] = _replay(STORES[kind], history)._running.full_runs
    assert runs[0] >= runs[6] >= runs[JOURNAL_STEPS], runs  # a short journal reaches back less far
    assert runs[0] > runs[JOURNAL_STEPS], runs  # the late receipts: recomputed only without a journal


@pytest.mark.parametrize("kind", sorted(STORES))
def test_copies_of_one_receipt_in_any_order_and_a_fork_give_compute_s_report(kind: str) -> None:
    """Copies of one receipt arriving in either order change only which copy is ignored; a fork (two
    entries at one seq) and its proof fall back to ``compute`` and later entries extend again."""
    entries = _mesh_history(4, 40)
    rng = random.Random(4)
    shuffled = sorted(entries, key=lambda e: (e.seq, rng.random()))  # each chain in order, interleaved
    store = _replay(STORES[kind], shuffled)
    a, b = PEOPLE[0], PEOPLE[1]
    head = store.head(a.peer_id)
    assert head is not None
    twin_body = cosign(b, a, tokens=7, time=head.time, session="f" * 32)
    twin = make_entry(head.author, head.seq, head.prev, head.time, twin_body, a.sign)
    store.insert_many([twin], NOW)
    held = [*store.entries(), *store.evidence()]
    assert whole_report(store.report()) == whole_report(compute(held, rules=RULES))
    assert a.peer_id in store.report().forks
    proof = Log(PEOPLE[2])
    proof.entries = list(store.entries_from(PEOPLE[2].peer_id, 1, 10_000))
    store.insert_many([proof.add(ForkProof.of(head, twin), time=NOW - 1000)], NOW)
    held = [*store.entries(), *store.evidence()]
    assert whole_report(store.report()) == whole_report(compute(held, rules=RULES))


@pytest.mark.parametrize("kind", sorted(STORES))
def test_newcomers_grants_extend_the_report_wherever_their_time_falls(kind: str) -> None:
    """A new identity's first entry, its grant, only credits its own account: it extends the running
    report, dated after the last receipt swept (it waits for its turn) or before it (credited at once),
    and a newcomer's first sessions extend as before. So does a receipt naming an identity whose grant
    has not come yet (gossip brings a client's log after its server's), and then that grant, dated
    after the receipt or before it (the receipt's step is taken back and swept again, now paid), and a
    later receipt dated before both; every report equals ``compute``."""
    entries = _mesh_history(5, 30)
    store = _replay(STORES[kind], entries)
    last = max(e.body.receipt.time for e in entries if hasattr(e.body, "receipt"))
    newcomers = [Log(p) for p in ids(5, 5000)]
    late, early, chatty, named, payer = newcomers
    runs = store._running.full_runs
    _replay_onto(store, [late.add(grant(late.identity), time=last + 60_000)])
    _replay_onto(store, [early.add(grant(early.identity), time=last - HOUR_MS)])
    _replay_onto(store, [chatty.add(grant(chatty.identity), time=last + 1_000)])
    body = cosign(chatty.identity, PEOPLE[0], tokens=50, time=last + 2_000, session="e" * 32)
    _replay_onto(store, [chatty.add(body, time=last + 2_000)])
    assert store._running.full_runs == runs  # three grants and a receipt: no compute
    assert {late.identity.peer_id, early.identity.peer_id} <= set(store.report().accounts)
    assert store.report().balance(late.identity.peer_id) == RULES.starter_grant
    # ``named`` served a session whose only carrier is its client's entry: it has an account already
    paid = cosign(PEOPLE[1], named.identity, tokens=40, time=last + 3_000, session="d" * 32)
    client = Log(PEOPLE[1])
    client.entries = list(store.entries_from(PEOPLE[1].peer_id, 1, 10_000))
    _replay_onto(store, [client.add(paid, time=last + 3_000)])
    _replay_onto(store, [named.add(grant(named.identity), time=last + 4_000)])
    assert store.report().accounts[named.identity.peer_id].granted == RULES.starter_grant
    # ``payer``'s receipt (its server's copy) comes before its grant, which is dated before the receipt
    spent = cosign(payer.identity, PEOPLE[2], tokens=60, time=last + 6_000, session="c" * 32)
    server = Log(PEOPLE[2])
    server.entries = list(store.entries_from(PEOPLE[2].peer_id, 1, 10_000))
    _replay_onto(store, [server.add(spent, time=last + 6_000)])
    assert store.report().settled[spent.receipt.id].paid == 0  # no grant yet: it had nothing to pay with
    _replay_onto(store, [payer.add(grant(payer.identity), time=last + 5_000)])
    assert store.report().settled[spent.receipt.id].status == "full"
    # a receipt dated before both: the grant's and the receipt's steps are taken back and swept again
    early_receipt = cosign(PEOPLE[3], PEOPLE[4], tokens=30, time=last + 4_500, session="b" * 32)
    other = Log(PEOPLE[4])
    other.entries = list(store.entries_from(PEOPLE[4].peer_id, 1, 10_000))
    _replay_onto(store, [other.add(early_receipt, time=last + 6_500)])
    assert store._running.full_runs == runs


@pytest.mark.parametrize("kind", sorted(STORES))
def test_a_reports_counted_entries_stay_those_of_its_time(kind: str) -> None:
    """A running report's ``counted`` is read from the store (``CountedHashes``), not copied for each
    report: an older report still answers for its own time after later writes; read after its store
    is closed, it (and ``ignored``'s duplicate receipts) says so instead of answering."""
    entries = _mesh_history(7, 12)
    store = _replay(STORES[kind], entries[:-6])
    before = store.report()
    then = frozenset(before.counted)
    assert len(then) == len(before.counted) > 0 and then <= {e.hash for e in entries}
    store = _replay_rest(store, entries[-6:])
    assert set(before.counted) == then and not any(e.hash in before.counted for e in entries[-6:])
    assert all(e.hash in store.report().counted for e in entries[-6:])
    if isinstance(store, LedgerStore):
        store.close()
        with pytest.raises(LedgerError, match="is closed"):
            _ = entries[0].hash in before.counted
        with pytest.raises(LedgerError, match="is closed"):
            _ = dict(before.ignored)


@pytest.mark.parametrize("kind", sorted(STORES))
def test_a_session_id_reused_by_another_pair_and_a_reports_consumed_sessions(kind: str) -> None:
    """The running state keeps each counted receipt under its session id alone (``CountedSessions``).
    The attack: a liar pair signs a receipt under a session id another pair's receipt already counts
    for; both count and both sessions are consumed, as ``compute`` says, and neither hides the other.
    An older report's ``consumed`` (``ConsumedSessions``, read from the state) stays that of its time."""
    entries = _mesh_history(8, 12)
    store = _replay(STORES[kind], entries)
    before = store.report()
    then = frozenset(before.consumed)
    assert then and then == {(r.client, r.server, r.session) for r in _receipts(entries)}
    taken = _receipts(entries)[0]
    client, server = [p for p in PEOPLE if p.peer_id not in (taken.client, taken.server)][:2]
    reused = cosign(client, server, tokens=5, time=NOW - 1_000, session=taken.session)
    for who in (server, client):
        log = Log(who)
        log.entries = list(store.entries_from(who.peer_id, 1, 10_000))
        assert store.insert_many([log.add(reused, time=NOW - 1_000)], NOW)[0].status == "stored"
        held = [*store.entries(), *store.evidence()]
        assert whole_report(store.report()) == whole_report(compute(held, rules=RULES))
    after = store.report()
    liar_key = (client.peer_id, server.peer_id, taken.session)
    assert liar_key in after.consumed and (taken.client, taken.server, taken.session) in after.consumed
    assert liar_key not in before.consumed and frozenset(before.consumed) == then
    assert store._running.extensions > 0 and len(store._running.sessions) == len(then) + 1


def _receipts(entries: list[Entry]) -> list[Receipt]:
    return [e.body.receipt for e in entries if isinstance(e.body, ReceiptBody)]


def _replay_rest(store: LedgerStore | MemoryStore, entries: list[Entry]) -> LedgerStore | MemoryStore:
    for entry in entries:
        assert store.insert_many([entry], NOW)[0].status == "stored"
        store.report()
    return store


def _replay_onto(store: LedgerStore | MemoryStore, entries: list[Entry]) -> None:
    for entry in entries:
        assert store.insert_many([entry], NOW)[0].status == "stored"
        held = [*store.entries(), *store.evidence()]
        assert whole_report(store.report()) == whole_report(compute(held, rules=RULES)), entry.hash


STORE_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@STORE_SETTINGS
@given(plan=plans(8, 40))
def test_random_histories_written_one_entry_at_a_time_equal_compute(plan: list[Action]) -> None:
    """``build``'s random histories (grants twice, cumulative receipts, carried copies, forks, proofs),
    each entry its own write, in the order of its author's chain and time."""
    entries = sorted(build(plan), key=lambda e: (e.time, e.seq, e.hash))
    _replay(STORES["sqlite"], entries)


@STORE_SETTINGS
@given(seed=st.integers(0, 10_000), disorder=st.sampled_from([0.0, 0.05, 0.5]))
def test_random_mesh_histories_equal_compute_in_memory(seed: int, disorder: float) -> None:
    _replay(STORES["memory"], _mesh_history(seed, 30, disorder=disorder))

"""The SQLite ledger: atomic batches, reopening, a writer killed with SIGKILL mid-batch, corruption
found on open, threads, and the ``ai4all ledger`` commands."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from python_peer.core.balances import Fact, compute
from python_peer.core.economics import DAY_MS, format_units
from python_peer.core.entries import Entry, Grant
from python_peer.core.errors import LedgerError
from python_peer.core.receipts import ReceiptBody
from python_peer.identity import IDENTITY_FILE, Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from tests.support.ledger import GOLDEN, GOLDEN_NONCE, NOW, RULES, T0, Log, cosign, grant, ids, whole_report
from tests.support.procs import ROOT, run_cli

# A starter-grant nonce for ids(1, 870)[0] that meets the network's real 22-bit difficulty.
CLIENT_870_NONCE = 816030


def test_append_reopen_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    client, server = ids(2, 800)
    with LedgerStore.open(path, rules=RULES) as store:
        store.claim_grant(server, T0)
        first = store.append_receipt(server, cosign(client, server, time=T0 + 1000), T0 + 2000)
        second = store.append_receipt(server, cosign(client, server, time=T0 + 3000), T0 + 4000)
        heads, balances = store.heads(), store.balances()
    assert heads == {server.peer_id: (3, second.hash)}
    assert second.prev == first.hash and second.seq == 3
    with LedgerStore.open(path, rules=RULES) as again:
        assert again.heads() == heads and again.balances() == balances
        assert [e.hash for e in again.entries_from(server.peer_id, 2, 10)] == [first.hash, second.hash]
        assert again.entries_from(server.peer_id, 4, 10) == []
        again.check(full=True)
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_invalid_entry_in_a_batch_is_refused_alone(tmp_path: Path) -> None:
    client, server = ids(2, 810)
    log = Log(server)
    good = [log.add(grant(server)), log.add(cosign(client, server))]
    forged = Log(server)
    forged.entries = list(good)
    bad = forged.add(cosign(client, server, tokens=7))
    bad = type(bad)(bad.author, bad.seq, bad.prev, bad.time, bad.body, client.sign(bad.signing_bytes))
    after_bad = log.add(cosign(client, server, tokens=9))
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES)
    outcomes = store.insert_many([*good, bad, after_bad], NOW)
    assert [o.status for o in outcomes] == ["stored", "stored", "rejected", "stored"]
    assert outcomes[2].rejection is not None and outcomes[2].rejection.code == "bad_signature"
    assert len(store) == 3


def test_a_failure_mid_batch_stores_nothing_of_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server = ids(2, 820)
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES)
    store.claim_grant(server, T0)
    before = store.hashes()
    real = store._write_entry
    calls = {"n": 0}

    def failing(entry: Entry) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real(entry)

    monkeypatch.setattr(store, "_write_entry", failing)
    bodies = [cosign(client, server, tokens=i + 1) for i in range(5)]
    with pytest.raises(LedgerError, match="disk I/O error") as caught:
        store.append_many(server, bodies, T0 + 100_000)
    assert caught.value.code == "store"
    assert store.hashes() == before and len(store) == 1
    monkeypatch.setattr(store, "_write_entry", real)
    assert len(store.append_many(server, bodies, T0 + 100_000)) == 5


_WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from python_peer.core.economics import Rules
    from python_peer.core.receipts import Receipt, ReceiptBody
    from python_peer.identity import Identity
    from python_peer.ledger_store import LedgerStore

    path, batch_size, t0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    server = Identity.from_seed(hashlib.sha256(b"writer-server").digest())
    client = Identity.from_seed(hashlib.sha256(b"writer-client").digest())
    store = LedgerStore.open(path, rules=Rules(grant_pow_bits=4))
    n = len(store)
    print(f"ready {n}", flush=True)
    while True:
        bodies = []
        for i in range(batch_size):
            r = Receipt(f"{n + i:032x}", "m", 0, 4, 10, client.peer_id, server.peer_id, t0 + n + i)
            bodies.append(ReceiptBody(r, client.sign(r.signing_bytes()), server.sign(r.signing_bytes())))
        print(f"begin {n}", flush=True)
        store.append_many(server, bodies, t0 + n + batch_size)
        n += batch_size
    """
)


def test_a_writer_killed_mid_batch_leaves_an_intact_chain(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    batch = 200
    rng = random.Random(7)
    mid_batch = 0
    for _ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(batch), str(T0)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert writer.stdout is not None
            ready = writer.stdout.readline()
            assert ready.startswith("ready"), ready
            begun = []
            for _ in range(rng.randint(1, 3)):
                begun.append(int(writer.stdout.readline().split()[1]))
            time.sleep(rng.uniform(0.0, 0.04))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        with LedgerStore.open(path, rules=RULES) as store:  # the quick chain check runs on open
            store.check(full=True)
            held = len(store)
            assert held % batch == 0, f"{held} entries: a batch was stored in part"
            assert held in (begun[-1], begun[-1] + batch)
            mid_batch += held == begun[-1]
            head = store.head(store.entries_from(next(iter(store.heads())), 1, 1)[0].author)
            assert head is not None and head.seq == held
    assert mid_batch >= 1, "no kill landed inside a batch: make the batches bigger"


def test_others_entries_are_stored_lazily_and_own_entries_wait_for_the_disk(tmp_path: Path) -> None:
    """A client's push (``LedgerService.accept_entries``) commits without fsync (``synchronous=NORMAL``);
    a push carrying an entry of this node's own, and this node's own appends, commit with it (FULL); the
    setting comes back after a failed write too."""
    client, server = ids(2, 890)
    pushed = Log(client)
    pushed.add(grant(client))
    pushed.add(cosign(client, server))
    with LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES) as store:
        service = LedgerService(store, server)
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        assert service.accept_entries([e.to_dict() for e in pushed.entries]) == 2
        assert statements[0] == "PRAGMA synchronous=NORMAL" and statements[-1] == "PRAGMA synchronous=FULL"
        assert "COMMIT" in statements

        statements.clear()
        own = store.claim_grant(server, T0)
        assert not any("synchronous" in s for s in statements)
        statements.clear()
        assert service.accept_entries([own.to_dict(), pushed.entries[0].to_dict()]) == 0
        assert "COMMIT" in statements and not any("synchronous" in s for s in statements)

        with pytest.raises(RuntimeError), store.lazily():
            store.insert(pushed.add(cosign(client, server)), NOW)
            raise RuntimeError("a failure inside the block")
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        assert len(store) == 4  # what committed inside the block stays: it is a setting, not a transaction


def test_entries_stored_lazily_survive_the_process_killed(tmp_path: Path) -> None:
    """Lazily stored entries are committed, only not synced: a killed process (not a machine) keeps them."""
    path = tmp_path / LEDGER_FILE
    writer = subprocess.Popen(
        [sys.executable, "-c", _LAZY_WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line.startswith("stored"), line
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    with LedgerStore.open(path, rules=RULES) as store:
        store.check(full=True)
        assert len(store) == int(line.split()[1]) == 2


_LAZY_WRITER = textwrap.dedent(
    """
    import sys, time
    from python_peer.ledger_store import LedgerStore
    from tests.support.ledger import RULES, Log, cosign, grant, ids
    client, server = ids(2, 891)
    log = Log(client)
    log.add(grant(client))
    log.add(cosign(client, server))
    store = LedgerStore.open(sys.argv[1], rules=RULES)
    with store.lazily():
        stored = store.insert_many(log.entries)
    print("stored", sum(o.status == "stored" for o in stored), flush=True)
    time.sleep(60)
    """
)


def test_a_broken_chain_is_found_on_open(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    client, server = ids(2, 830)
    with LedgerStore.open(path, rules=RULES) as store:
        store.claim_grant(server, T0)
        store.append_many(server, [cosign(client, server, tokens=n) for n in (1, 2, 3)], T0 + 100_000)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE entries SET raw = CAST(REPLACE(CAST(raw AS TEXT), '\"tokens\":2', '\"tokens\":9') AS BLOB)"
        )
    with LedgerStore.open(path, rules=RULES) as store:  # columns still link: only the full check sees it
        with pytest.raises(LedgerError, match="holds another entry") as caught:
            store.check(full=True)
        assert caught.value.code == "corrupt"
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE seq = 2")
    with pytest.raises(LedgerError, match="does not extend entry 2") as caught:
        LedgerStore.open(path, rules=RULES)
    assert caught.value.code == "corrupt"
    with pytest.raises(LedgerError, match="no ledger at"):
        LedgerStore.open(tmp_path / "absent.sqlite3", create=False)


def test_an_own_fork_is_refused_and_never_extended(tmp_path: Path) -> None:
    client, server = ids(2, 840)
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES)
    first = store.claim_grant(server, T0)
    store.append(server, cosign(client, server), T0 + 70_000)
    other = Log(server)
    other.entries = [first]
    assert store.insert(other.add(cosign(client, server, tokens=3)), NOW).status == "fork"
    with pytest.raises(LedgerError, match="log is forked at seq 2") as caught:
        store.append(server, cosign(client, server), NOW)
    assert caught.value.code == "forked"


def _recomputed(store: LedgerStore) -> tuple[Any, ...]:
    """The report computed afresh from the rows the store holds now."""
    return whole_report(compute([*store.entries(), *store.evidence()], rules=RULES))


def test_balances_kept_in_memory_follow_a_fork_that_drops_a_chains_tail(tmp_path: Path) -> None:
    """A fork learned at seq 2 of a 4-entry chain drops entries 2-4 from the store: the balances kept in
    memory forget them too (the tail's receipts no longer pay), as a recompute from the rows does."""
    client, server = ids(2, 850)
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES)
    store.claim_grant(client, T0)
    log = Log(server)
    chain = [log.add(grant(server)), *(log.add(cosign(client, server, tokens=50 + i)) for i in range(3))]
    assert [o.status for o in store.insert_many(chain, NOW)] == ["stored"] * 4
    paid = store.report()
    assert paid.accounts[client.peer_id].receipts_paid == 3
    twin = Log(server)
    twin.entries = chain[:1]
    assert store.insert(twin.add(cosign(client, server, tokens=7)), NOW).status == "fork"
    after = store.report()
    assert whole_report(after) == _recomputed(store)
    assert after.forks == {server.peer_id: 2}
    assert after.accounts[client.peer_id].receipts_paid == 0 and after.balance(client.peer_id) > paid.balance(
        client.peer_id
    )


def test_no_fact_of_an_entry_outlives_its_report_but_the_heads(tmp_path: Path) -> None:
    """Memory per entry: the store keeps no copy of its ledger in memory, only the running report's
    state, whose facts are its authors' heads (one each), whether the report was extended by writes or
    rebuilt from the rows (on open); the balances are unchanged."""
    client, server = ids(2, 870)
    path = tmp_path / LEDGER_FILE
    store = LedgerStore.open(path, rules=RULES)
    store.claim_grant(client, T0)
    store.claim_grant(server, T0)
    store.report()  # the running report is built, then extended by the writes below
    for i in range(20):
        store.append(server, cosign(client, server, tokens=i + 1, time=T0 + 1_000 + i), NOW)
        store.report()
    reopened = LedgerStore.open(path, rules=RULES)
    for kept in (store, reopened):
        assert whole_report(kept.report()) == _recomputed(kept)
        gc.collect()
        mine = {client.peer_id, server.peer_id}
        alive = [o for o in gc.get_objects() if isinstance(o, Fact) and o.author in mine]
        heads = [kept.head(p.peer_id) for p in (client, server)]
        assert {fact.hash for fact in alive} >= {head.hash for head in heads if head is not None}
        assert len(alive) <= 2 * 2  # each store's two heads
    assert len(store) == 22
    store.close()
    reopened.close()


def test_a_report_rebuilt_from_the_rows_keeps_a_fresh_copy_of_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a full compute the store keeps a copy of the running state made after everything the
    compute parsed was freed (``RunningReport._compact``: the kept objects are not left scattered among
    the dropped ones): none of its receipts is one the rows were parsed into, the day's rarity still
    refers to the sweep's own receipts (it compares them by identity), and the next writes extend it."""
    client, server = ids(2, 880)
    path = tmp_path / LEDGER_FILE
    with LedgerStore.open(path, rules=RULES) as store:
        store.claim_grant(client, T0)
        store.claim_grant(server, T0)
        for i in range(6):  # three on the grants' day, three on the next (its rarity is not swept yet)
            time = T0 + 1_000 + i + (i // 3) * DAY_MS
            store.append(server, cosign(client, server, tokens=i + 1, time=time), NOW)
    reopened = LedgerStore.open(path, rules=RULES)
    reopened._running.compact_from = 1  # a ledger this small is not copied otherwise (``COMPACT_FROM``)
    parsed: list[object] = []
    read_rows = reopened._facts

    def facts() -> Any:
        for fact in read_rows():
            parsed.append(fact.body)
            yield fact

    monkeypatch.setattr(reopened, "_facts", facts)
    assert whole_report(reopened.report()) == _recomputed(reopened)
    running = reopened._running
    assert running.full_runs == 1 and len(running.sessions) == 6
    kept = list(running.sessions.receipts())
    assert not {id(body) for body in parsed} & {id(r) for r in kept}
    assert [r for swept in running.sweep.days.values() for r in swept] == sorted(kept, key=lambda r: r.time)
    for day, swept in running.sweep.days.items():  # the first day's rarity was swept before the copy
        memo = running.sweep.rarity[day]
        assert len(memo.receipts) == 3 and all(a is b for a, b in zip(memo.receipts, swept, strict=True))
    reopened.append(server, cosign(client, server, tokens=9, time=T0 + 2_000), NOW)  # late, on the first day
    assert whole_report(reopened.report()) == _recomputed(reopened)
    assert running.full_runs == 1
    reopened.close()


def test_closing_a_store_drops_its_running_state_and_its_reports_keep_their_figures(tmp_path: Path) -> None:
    """The running state goes with ``close``, not when the store object does (a process opening a new
    identity's store next builds it where the old one was); a report made before keeps its balances, and
    a report asked after is refused."""
    client, server = ids(2, 881)
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES)
    store.claim_grant(client, T0)
    store.claim_grant(server, T0)
    store.append(server, cosign(client, server, tokens=5, time=T0 + 1_000), NOW)
    report = store.report()
    balances = dict(report.balances)
    state = weakref.ref(store._running.sweep)
    store.close()
    assert state() is None  # freed at once, though the store object is still referenced here
    assert report.balances == balances and balances[server.peer_id] > 0
    with pytest.raises((LedgerError, sqlite3.ProgrammingError)):
        store.report()


def test_balances_kept_in_memory_see_another_connections_writes_and_survive_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes may share a ledger file (the CLI beside a running peer): a write by the other
    connection is seen by the next report; a batch that fails mid-way leaves the report as it was."""
    client, server = ids(2, 860)
    path = tmp_path / LEDGER_FILE
    first, second = LedgerStore.open(path, rules=RULES), LedgerStore.open(path, rules=RULES)
    first.claim_grant(client, T0)
    first.claim_grant(server, T0)
    before = first.report()
    second.append(server, cosign(client, server), T0 + 70_000)
    assert whole_report(first.report()) == _recomputed(first) != whole_report(before)
    assert first.report().accounts[client.peer_id].receipts_paid == 1

    real = first._write_entry
    calls = {"n": 0}

    def failing(entry: Entry) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("disk I/O error")
        real(entry)

    kept = whole_report(first.report())
    monkeypatch.setattr(first, "_write_entry", failing)
    bodies = [cosign(client, server, tokens=i + 1, time=T0 + 80_000) for i in range(3)]
    with pytest.raises(LedgerError, match="disk I/O error"):
        first.append_many(server, bodies, T0 + 90_000)
    assert whole_report(first.report()) == kept == _recomputed(first)
    monkeypatch.setattr(first, "_write_entry", real)
    first.append_many(server, bodies[1:], T0 + 90_000)  # other entries at the seqs the failed batch used
    first.append(server, bodies[0], T0 + 90_000)
    assert whole_report(first.report()) == _recomputed(first) == whole_report(second.report())
    assert first.report().accounts[client.peer_id].receipts_paid == 4
    first.close()
    second.close()


async def test_threads_share_one_store(tmp_path: Path) -> None:
    store = LedgerStore.open(tmp_path / LEDGER_FILE, rules=RULES, durable=False)
    writers = ids(4, 850)
    client = ids(1, 860)[0]

    def work(me: Identity) -> None:
        store.claim_grant(me, T0)
        for i in range(10):
            store.append_receipt(me, cosign(client, me, tokens=i + 1), T0 + 100_000)
            store.balances()

    await asyncio.gather(*(asyncio.to_thread(work, w) for w in writers))
    assert len(store) == 4 * 11
    assert all(store.heads()[w.peer_id][0] == 11 for w in writers)
    store.check(full=True)


# --- the command line -----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> tuple[Path, Identity]:
    """A node's data directory: the golden identity, its grant (real difficulty) and one served span,
    paid by a client from its own grant (a client spends only what it holds)."""
    GOLDEN.save(tmp_path / IDENTITY_FILE)
    client = ids(1, 870)[0]
    with LedgerStore.open(tmp_path / LEDGER_FILE) as store:
        store.insert(Log(GOLDEN).add(Grant(GOLDEN_NONCE), time=T0), NOW)
        store.insert(Log(client).add(Grant(CLIENT_870_NONCE), time=T0), NOW)
        body: ReceiptBody = cosign(client, GOLDEN, tokens=500, time=T0 + 60_000)
        store.append_receipt(GOLDEN, body, T0 + 61_000)
    return tmp_path, client


def test_cli_balance_prints_the_balance_alone(data_dir: tuple[Path, Identity]) -> None:
    directory, client = data_dir
    with LedgerStore.open(directory / LEDGER_FILE) as store:
        mine, theirs = store.balance(GOLDEN.peer_id), store.balance(client.peer_id)
    assert mine == 240_000
    done = run_cli(["ledger", "balance", "--data-dir", str(directory)], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{format_units(mine)}\n" == "240.000\n"
    done = run_cli(
        ["ledger", "balance", client.peer_id[:10], "--data-dir", str(directory), "--units"], timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{theirs}\n" == "149000\n"  # its grant less the receipt's price


def test_cli_show_and_errors(
    data_dir: tuple[Path, Identity], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory, _ = data_dir
    done = run_cli(["ledger", "show", "--data-dir", str(directory)], timeout=60, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for text in (
        "starter grant",
        "served smollm2-135m [0, 10) x 500 tok",
        "rarity bonus",
        "240.000",
        "full:",
    ):
        assert text in done.stdout
    empty = tmp_path_factory.mktemp("empty")
    done = run_cli(["ledger", "balance", "--data-dir", str(empty)], timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert "no ledger at" in done.stderr
    done = run_cli(["ledger", "balance", "ffff", "--data-dir", str(directory)], timeout=60)
    assert done.returncode == 1 and "neither a peer id nor a prefix" in done.stderr
    assert os.path.exists(directory / IDENTITY_FILE)

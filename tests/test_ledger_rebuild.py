"""A big ledger's running state rebuilt in a child process (``python_peer/ledger_rebuild.py``): the same
report as a compute over the rows, kept and extended by the node, and every way the child can fail
leaves the rebuild to the node with the same report."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from python_peer import ledger_store
from python_peer.core.balances import compute
from python_peer.core.economics import DAY_MS
from python_peer.core.errors import LedgerError
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from tests.support.ledger import NOW, RULES, T0, cosign, ids, whole_report


def _recomputed(store: LedgerStore) -> tuple[Any, ...]:
    return whole_report(compute([*store.entries(), *store.evidence()], rules=RULES))


def _written(path: Path, seed: int, receipts: list[tuple[int, int]]) -> Path:
    """A ledger at ``path``: two grants, then the server's copies of receipts of (tokens, time)."""
    client, server = ids(2, seed)
    with LedgerStore.open(path, rules=RULES) as store:
        store.claim_grant(client, T0)
        store.claim_grant(server, T0)
        for tokens, time in receipts:
            store.append(server, cosign(client, server, tokens=tokens, time=time), NOW)
    return path


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger of 8 entries over two days (its second day's rarity not swept yet), which the store
    rebuilds apart (``REBUILD_APART_FROM`` lowered: a real one takes 2,000 entries)."""
    monkeypatch.setattr(ledger_store, "REBUILD_APART_FROM", 1)
    receipts = [(i + 1, T0 + 1_000 + i + (i // 3) * DAY_MS) for i in range(6)]
    return _written(tmp_path / LEDGER_FILE, 890, receipts)


class _Spy:
    """Counts the children started and the rows the node parsed itself."""

    def __init__(self, store: LedgerStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.children = 0
        self.parsed = 0
        real_apart, real_facts = ledger_store.rebuild_apart, store._facts

        def apart(path: str, rules: Any) -> bytes:
            self.children += 1
            return real_apart(path, rules)

        def facts() -> Any:
            for fact in real_facts():
                self.parsed += 1
                yield fact

        monkeypatch.setattr(ledger_store, "rebuild_apart", apart)
        monkeypatch.setattr(store, "_facts", facts)


def test_a_child_rebuilds_the_state_which_the_node_keeps_and_extends(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server = ids(2, 890)
    store = LedgerStore.open(ledger, rules=RULES)
    spy = _Spy(store, monkeypatch)
    assert whole_report(store.report()) == _recomputed(store)
    assert spy.children == 1 and spy.parsed == 0  # the node read no row: the child did
    running = store._running
    assert running.full_runs == 1 and len(running.sessions) == 6
    kept = sorted(running.sessions.receipts(), key=lambda r: r.time)
    assert [r for swept in running.sweep.days.values() for r in swept] == kept
    for day, swept in running.sweep.days.items():  # the rarity compares receipts by identity
        memo = running.sweep.rarity[day]
        assert all(a is b for a, b in zip(memo.receipts, swept, strict=True))
    store.append(server, cosign(client, server, tokens=9, time=T0 + 2_000), NOW)  # late, on the first day
    assert whole_report(store.report()) == _recomputed(store)
    assert running.full_runs == 1 and spy.children == 1  # extended here, not rebuilt
    store.close()


def test_a_thawed_sweep_shares_its_payments_ints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pickle writes every int in full: a sweep read back from the child held a price, a paid and a fee
    object per receipt (34,222 extra ints, ~0.9 MiB, on a 31,376-entry ledger); equal figures are one
    object again, as in the sweep that froze them."""
    monkeypatch.setattr(ledger_store, "REBUILD_APART_FROM", 1)
    path = _written(tmp_path / LEDGER_FILE, 891, [(300, T0 + 1_000 + i) for i in range(4)])
    store = LedgerStore.open(path, rules=RULES)
    try:
        assert whole_report(store.report()) == _recomputed(store)
        running = store._running
        assert running.full_runs == 1
        payments = list(running.sweep.settlements.values())
        assert len(payments) == 4 and len({p.price for p in payments}) == 1 and payments[0].price > 256
        assert len({id(p.price) for p in payments}) == 1
        assert len({id(p.base_fee) for p in payments}) == 1
        assert all(p.paid is p.price for p in payments)  # each paid in full
    finally:
        store.close()


def test_small_ledgers_in_memory_and_rebuilds_inside_a_transaction_stay_in_the_node(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_store, "REBUILD_APART_FROM", 100)
    store = LedgerStore.open(ledger, rules=RULES)
    spy = _Spy(store, monkeypatch)
    assert whole_report(store.report()) == _recomputed(store)
    assert spy.children == 0 and spy.parsed == 8
    store.close()
    monkeypatch.setattr(ledger_store, "REBUILD_APART_FROM", 1)
    memory = LedgerStore.open(None, rules=RULES)
    client = ids(1, 891)[0]
    memory.claim_grant(client, T0)
    spy = _Spy(memory, monkeypatch)
    memory.report()
    assert spy.children == 0 and spy.parsed == 1
    store = LedgerStore.open(ledger, rules=RULES)
    spy = _Spy(store, monkeypatch)
    with store._transaction():  # the child would not see what the transaction wrote
        store.report()
    assert spy.children == 0 and spy.parsed == 8
    store.close()


@pytest.mark.parametrize(
    "child",
    [
        "import sys; sys.stderr.write('boom: out of memory'); sys.exit(3)",  # fails
        "import sys; sys.stdout.write('not a state')",  # says it succeeded, with garbage
        "import pickle, sys; sys.stdout.buffer.write(pickle.dumps({{'sweep': 1}}))",  # a pickle, not a state
        # a pickle that runs a command when read: refused by the reader's list of types
        "import os, pickle, sys\n"
        "class Run:\n"
        "    def __reduce__(self): return (os.system, ('touch {mark}',))\n"
        "sys.stdout.buffer.write(pickle.dumps({{'sweep': Run()}}))",
        "import time; time.sleep(30)",  # hangs past the timeout
    ],
    ids=["fails", "garbage", "foreign-pickle", "code-pickle", "hangs"],
)
def test_a_child_that_fails_leaves_the_rebuild_to_the_node(
    ledger: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, child: str
) -> None:
    mark = ledger.parent / "ran"
    code = child.format(mark=mark)
    monkeypatch.setattr(ledger_store, "rebuild_command", lambda path: [sys.executable, "-c", code])
    monkeypatch.setattr(ledger_store, "REBUILD_TIMEOUT_S", 2.0)
    store = LedgerStore.open(ledger, rules=RULES)
    with caplog.at_level(logging.WARNING, logger="python_peer.ledger_store"):
        report = store.report()
    assert whole_report(report) == _recomputed(store)
    assert store._running.full_runs == 1 and store._running.report is report
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "rebuilding in this process" in warnings[0]
    assert not mark.exists()
    if "boom" in child:
        assert "status 3: boom: out of memory" in warnings[0]
    store.close()


def test_the_child_s_command_line_refuses_bad_input(ledger: Path, tmp_path: Path) -> None:
    def child(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "python_peer.ledger_rebuild", *args]
        return subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)

    assert child().returncode == 2
    wrong = child(str(ledger), stdin=pickle.dumps({"not": "rules"}))
    assert wrong.returncode == 1 and b"expected the rules on stdin, got dict" in wrong.stderr
    missing = child(str(tmp_path / "nowhere.sqlite3"), stdin=pickle.dumps(RULES))
    assert missing.returncode == 1 and b"cannot open the ledger" in missing.stderr
    odd = tmp_path / "a dir?with#marks" / LEDGER_FILE  # a path that is not a URI as it stands
    odd.parent.mkdir()
    odd.write_bytes(ledger.read_bytes())
    for path in (ledger, odd):
        good = child(str(path), stdin=pickle.dumps(RULES))
        assert good.returncode == 0 and good.stdout


def test_rebuild_apart_reports_a_failing_child_as_a_ledger_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="ended with status 1: ledger_rebuild: cannot open") as caught:
        ledger_store.rebuild_apart(str(tmp_path / "nowhere.sqlite3"), RULES)
    assert caught.value.code == "store"

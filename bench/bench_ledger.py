"""The ledger's costs: entries verified and applied per second, balances over N entries, and how long
ten peers take to converge by gossip.

It signs a synthetic ledger (servers earning co-signed receipts from clients, one grant each), then:

- **verify**: ``check_entry`` alone (three Ed25519 checks per receipt entry, pynacl);
- **apply**: ``LedgerStore.insert_many`` in gossip-sized batches (256 entries, one transaction each):
  verify + chain link + SQLite write, durable (``synchronous=FULL``) and not;
- **balances**: ``core.balances.compute`` over N parsed entries, and ``LedgerStore.report`` (read + parse +
  compute) on a cold cache;
- **gossip**: ten peers each holding only their own log, full mesh, rounds of the real messages over
  an in-memory channel (canonical JSON measured, no network) until every store holds the same entries;
- **writes in arrival order**: entries written one at a time, the report after each, as a node learns
  them by gossip: each reaches it some seconds after it was dated, so receipts arrive out of their
  sweep order. With the sweep journal (``core/sweep_journal.py``: a late receipt swept in its place)
  against without it (``JOURNAL_STEPS`` 0: a full ``compute`` for each), side by side;
- **reopens**: the N-entry ledger reopened again and again in one process (``bench/ledger_reopen.py``),
  its running state rebuilt in that process against by a child (``python_peer/ledger_rebuild.py``):
  the resident set after each reopen, the process's CPU and the wall time per reopen, a fresh process
  per contender.

    python -m bench.bench_ledger [--entries N] [--gossip-entries M] [--arrival-entries K] [--repeats R]
                                 [--reopens T]

Tables on stdout, then one JSON line with every figure (``... | tail -1``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from python_peer.core import sweep_journal
from python_peer.core.balances import compute
from python_peer.core.canonical import canonical_bytes
from python_peer.core.economics import Rules
from python_peer.core.entries import Entry, Grant, next_entry
from python_peer.core.gossip import GossipSession
from python_peer.core.proof_of_work import mine_grant
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.rules import check_entry
from python_peer.identity import Identity
from python_peer.ledger_store import LedgerStore, native_verify

T0 = 1_700_000_000_000
RULES = Rules(grant_pow_bits=8)  # the benchmark measures checking, not mining
BATCH = 256


def identity(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def signed_receipt(
    session: str, client: Identity, server: Identity, start: int, tokens: int, when: int
) -> ReceiptBody:
    """A receipt for blocks ``[start, start + 10)`` of the default model, signed by both sides."""
    r = Receipt(session, "smollm2-135m", start, start + 10, tokens, client.peer_id, server.peer_id, when)
    return ReceiptBody(r, client.sign(r.signing_bytes()), server.sign(r.signing_bytes()))


def synthetic_logs(n_entries: int, servers: int, seed: int = 1) -> list[list[Entry]]:
    """``servers`` logs holding ``n_entries`` in all: a grant, then receipts from random clients."""
    rng = random.Random(seed)
    clients = [identity(f"client-{i}") for i in range(20)]
    logs: list[list[Entry]] = []
    per_log = max(2, n_entries // servers)
    for s in range(servers):
        me = identity(f"server-{s}")
        nonce = mine_grant(me.peer_id, RULES.grant_pow_bits)
        head = next_entry(me.peer_id, None, T0, Grant(nonce or 0), me.sign)
        log = [head]
        for i in range(per_log - 1):
            client = rng.choice(clients)
            start = rng.choice((0, 10, 20))
            when = T0 + (i + 1) * 30_000
            body = signed_receipt(f"{s:016x}{i:016x}", client, me, start, rng.randint(10, 2000), when)
            head = next_entry(me.peer_id, head, when, body, me.sign)
            log.append(head)
        logs.append(log)
    return logs


def arrival_history(n_entries: int, seed: int = 3) -> list[Entry]:
    """Twenty clients' grants, then ten servers' receipts (one every ~30 s each, the server's copy),
    ordered as a node hears them: each entry ``time`` + 0..60 s, after its author's previous one."""
    rng = random.Random(seed)
    clients = [identity(f"arrival-client-{i}") for i in range(20)]
    servers = [identity(f"arrival-server-{i}") for i in range(10)]
    heads: dict[str, Entry | None] = {}
    timed_entries: list[tuple[float, int, Entry]] = []

    def write(me: Identity, when: int, body: Any) -> None:
        head = next_entry(me.peer_id, heads.get(me.peer_id), when, body, me.sign)
        heads[me.peer_id] = head
        timed_entries.append((when + rng.uniform(0, 60_000), head.seq, head))

    for me in [*clients, *servers]:
        write(me, T0, Grant(mine_grant(me.peer_id, RULES.grant_pow_bits) or 0))
    for i in range(n_entries - len(timed_entries)):
        me = servers[i % len(servers)]
        client = rng.choice(clients)
        when = T0 + 1_000 + (i // len(servers)) * 30_000 + rng.randrange(30_000)
        start = rng.choice((0, 10, 20))
        write(me, when, signed_receipt(f"{i:032x}", client, me, start, rng.randint(10, 2000), when))
    arrived: dict[str, float] = {}
    ordered = []
    for at, _, entry in sorted(timed_entries, key=lambda t: (t[2].author, t[1])):
        at = max(at, arrived.get(entry.author, 0.0))  # an author's entries arrive in its chain's order
        arrived[entry.author] = at
        ordered.append((at, entry))
    return [entry for _, entry in sorted(ordered, key=lambda t: t[0])]


def write_in_arrival_order(entries: list[Entry], directory: Path, journal_steps: int) -> dict[str, Any]:
    """Each entry its own write, the report after each; the seconds, and how often ``compute`` ran."""
    saved = sweep_journal.JOURNAL_STEPS
    sweep_journal.JOURNAL_STEPS = journal_steps
    try:
        store = LedgerStore.open(
            directory / f"arrival-{time.monotonic_ns()}.sqlite3", rules=RULES, durable=False
        )
        now = T0 + 10**9
        start = time.perf_counter()
        for entry in entries:
            store.insert_many([entry], now)
            store.report()
        seconds = time.perf_counter() - start
        balances = store.report().balances
        full_runs = store._running.full_runs
        store.close()
    finally:
        sweep_journal.JOURNAL_STEPS = saved
    return {"seconds": seconds, "full_computes": full_runs, "balances": balances}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``fn`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def apply_all(entries: list[Entry], directory: Path, durable: bool) -> LedgerStore:
    path = directory / f"apply-{durable}-{time.monotonic_ns()}.sqlite3"
    store = LedgerStore.open(path, rules=RULES, durable=durable)
    now = T0 + 10**9
    for i in range(0, len(entries), BATCH):
        store.insert_many(entries[i : i + BATCH], now)
    return store


def gossip_converge(logs: list[list[Entry]], directory: Path) -> dict[str, Any]:
    """Ten stores, each with only its own log; full-mesh rounds until all hold the same entries."""
    stores = []
    for i, log in enumerate(logs):
        store = LedgerStore.open(directory / f"gossip-{i}-{time.monotonic_ns()}.sqlite3", rules=RULES)
        store.insert_many(log, T0 + 10**9)
        stores.append(store)
    sessions = {(a, b): GossipSession(stores[a], peer=str(b)) for a in range(10) for b in range(10) if a != b}
    messages = 0
    wire_bytes = 0
    rounds = 0
    now = T0 + 10**9
    start = time.perf_counter()
    while len({s.hashes() for s in stores}) > 1:
        rounds += 1
        pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
        random.Random(rounds).shuffle(pairs)
        for a, b in pairs:
            opening = sessions[(a, b)].start(now, force=True)
            queue: deque[tuple[int, int, dict[str, Any]]] = deque([(a, b, opening)] if opening else [])
            while queue:
                src, dst, message = queue.popleft()
                messages += 1
                wire_bytes += len(canonical_bytes(message))
                received = sessions[(dst, src)].receive(json.loads(json.dumps(message)), now)
                queue.extend((dst, src, reply) for reply in received.replies)
            now += 1000
    elapsed = time.perf_counter() - start
    balances = {json.dumps(s.balances(), sort_keys=True) for s in stores}
    for store in stores:
        store.close()
    return {
        "seconds": elapsed,
        "rounds": rounds,
        "messages": messages,
        "megabytes": wire_bytes / 1e6,
        "entries": sum(len(log) for log in logs),
        "identical_balances": len(balances) == 1,
    }


def reopened(path: Path, times: int, console: Console) -> dict[str, Any]:
    """``bench.ledger_reopen`` on ``path`` for each contender, each in a fresh process."""
    figures: dict[str, Any] = {}
    for where in ("here", "apart"):
        console.print(f"reopening the ledger {times} times, the state rebuilt {where} ...")
        command = [sys.executable, "-m", "bench.ledger_reopen", str(path), where, str(times)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench.ledger_reopen {where} failed: {done.stderr[-2000:]}")
        figures[where] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entries", type=int, default=10_000, help="entries in the verify/apply/balances runs"
    )
    parser.add_argument(
        "--gossip-entries", type=int, default=2_000, help="entries in all for the 10-peer run"
    )
    parser.add_argument(
        "--arrival-entries", type=int, default=3_000, help="entries written one at a time in arrival order"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median shown)")
    parser.add_argument(
        "--reopens", type=int, default=10, help="times the ledger is reopened in one process (0: skip)"
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True)

    console.print(f"signing a synthetic ledger of {args.entries} entries ...")
    logs = synthetic_logs(args.entries, servers=20)
    entries = [e for log in logs for e in log]
    n = len(entries)
    now = T0 + 10**9

    verify_s, _ = timed(lambda: [check_entry(e, native_verify, now, RULES) for e in entries], args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        directory = Path(tmp)
        apply_fast_s, store = timed(lambda: apply_all(entries, directory, durable=False), args.repeats)
        apply_durable_s, durable_store = timed(
            lambda: apply_all(entries, directory, durable=True), args.repeats
        )
        durable_store.close()
        sizes = sorted({min(1000, n), min(10_000, n), n})
        compute_s: dict[int, float] = {}
        for size in sizes:
            compute_s[size], _ = timed(functools.partial(compute, entries[:size], rules=RULES), args.repeats)

        def cold_report() -> Any:  # a node starting: a fresh connection reads and parses every row
            fresh = LedgerStore.open(store.path, rules=RULES, durable=False)
            try:
                return fresh.report()
            finally:
                fresh.close()

        report_s, report = timed(cold_report, args.repeats)
        cached_s, _ = timed(store.report, args.repeats)
        store.close()
        reopens = reopened(Path(store.path), args.reopens, console) if args.reopens else {}
        console.print(f"gossip: 10 peers, {args.gossip_entries} entries in all ...")
        gossip = gossip_converge(synthetic_logs(args.gossip_entries, servers=10, seed=2), directory)
        console.print(f"writes in arrival order: {args.arrival_entries} entries, journal on and off ...")
        history = arrival_history(args.arrival_entries)
        runs: dict[str, list[dict[str, Any]]] = {"journal": [], "no_journal": []}
        for _ in range(args.repeats):  # alternated, so both see the same machine
            runs["journal"].append(write_in_arrival_order(history, directory, sweep_journal.JOURNAL_STEPS))
            runs["no_journal"].append(write_in_arrival_order(history, directory, 0))
        if len({str(sorted(r["balances"].items())) for rs in runs.values() for r in rs}) != 1:
            raise SystemExit("the two ways of writing gave different balances: a bug")
        arrival: dict[str, Any] = {
            name: {
                "seconds": statistics.median(r["seconds"] for r in rs),
                "full_computes": rs[0]["full_computes"],
            }
            for name, rs in runs.items()
        }
        arrival["entries"] = len(history)
        arrival["speedup"] = arrival["no_journal"]["seconds"] / arrival["journal"]["seconds"]

    figures = {
        "entries": n,
        "verify_entries_per_s": n / verify_s,
        "apply_entries_per_s": n / apply_fast_s,
        "apply_durable_entries_per_s": n / apply_durable_s,
        "compute_ms": {str(k): v * 1000 for k, v in compute_s.items()},
        "report_cold_ms": report_s * 1000,
        "report_cached_ms": cached_s * 1000,
        "accounts": len(report.accounts),
        "gossip_10_peers": gossip,
        "arrival_order": arrival,
        "reopens": reopens,
    }
    out = Console()
    table = Table(title=f"ledger: {n} entries (receipts co-signed, 3 Ed25519 checks each)")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("verify (check_entry)", f"{figures['verify_entries_per_s']:,.0f} entries/s")
    table.add_row("verify + apply, SQLite NORMAL", f"{figures['apply_entries_per_s']:,.0f} entries/s")
    table.add_row(
        "verify + apply, SQLite FULL (durable)", f"{figures['apply_durable_entries_per_s']:,.0f} entries/s"
    )
    for size, seconds in compute_s.items():
        table.add_row(f"balances: compute over {size:,} entries", f"{seconds * 1000:,.1f} ms")
    table.add_row(f"balances: store.report, cold ({n:,})", f"{report_s * 1000:,.1f} ms")
    table.add_row("balances: store.report, cached", f"{cached_s * 1000:,.3f} ms")
    out.print(table)
    g = Table(title="gossip: 10 peers, full mesh, each starting with only its own log")
    g.add_column("what")
    g.add_column("figure", justify="right")
    g.add_row("entries in all", f"{gossip['entries']:,}")
    g.add_row("time to converge", f"{gossip['seconds']:.2f} s")
    g.add_row("rounds (45 pairs each)", str(gossip["rounds"]))
    g.add_row("messages / MB of JSON", f"{gossip['messages']:,} / {gossip['megabytes']:.1f}")
    g.add_row("identical balances", str(gossip["identical_balances"]))
    out.print(g)
    a = Table(title=f"writes in arrival order: {arrival['entries']:,} entries, one write and one report each")
    a.add_column("")
    a.add_column("time", justify="right")
    a.add_column("full computes", justify="right")
    for name, label in (("journal", "late receipts swept in place"), ("no_journal", "a compute for each")):
        a.add_row(label, f"{arrival[name]['seconds']:.2f} s", str(arrival[name]["full_computes"]))
    a.add_row("ratio (a compute for each / swept in place)", f"{arrival['speedup']:.1f}x", "")
    out.print(a)
    if reopens:
        r = Table(title=f"the ledger reopened {args.reopens} times in one process (a fresh process each)")
        r.add_column("running state rebuilt")
        for column in ("RSS after 1st", "after last", "growth", "node CPU per reopen", "wall per reopen"):
            r.add_column(column, justify="right")
        for where, label in (("here", "in the node"), ("apart", "by a child (ledger_rebuild)")):
            run = reopens[where]
            first, last = run["rss_mib"][0], run["rss_mib"][-1]
            r.add_row(
                label,
                f"{first:.1f} MiB",
                f"{last:.1f} MiB",
                f"{last - first:+.1f} MiB",
                f"{run['cpu_s']:.2f} s",
                f"{run['wall_s']:.2f} s",
            )
        out.print(r)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

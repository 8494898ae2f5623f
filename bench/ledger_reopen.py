"""One ledger reopened again and again in one process: the node's resident memory and CPU per reopen,
with the running state rebuilt in the node or by a child (``python_peer/ledger_rebuild.py``).

    python -m bench.ledger_reopen PATH {here,apart} TIMES

Each time, as a chaos user replacing its identity does: the previous store closed, a fresh copy of
PATH opened (``LedgerStore.open``) and its report made (a full rebuild); then a collection and
``malloc_trim``, and the resident set read. Prints one JSON object: ``rss_mib`` after each reopen,
the process's CPU seconds and the wall seconds per reopen (medians), CPython's arenas at the end.
``bench_ledger`` runs it once per contender, each in a fresh process, so neither inherits the other's
heap; the rules are ``bench_ledger.RULES`` (the ledger it signed).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_ledger import RULES
from python_peer import heap, ledger_store, memory_probe
from python_peer.ledger_store import LedgerStore


def reopen(source: Path, apart: bool, times: int) -> dict[str, object]:
    if not apart:
        ledger_store.REBUILD_APART_FROM = sys.maxsize  # every rebuild in this process, as before
    rss: list[float] = []
    cpu: list[float] = []
    wall: list[float] = []
    store: LedgerStore | None = None
    with tempfile.TemporaryDirectory(prefix="ledger-reopen-") as tmp:
        for i in range(times):
            if store is not None:
                store.close()
                store = None
            path = Path(tmp) / f"ledger{i}.sqlite3"
            shutil.copyfile(source, path)
            began, began_cpu = time.perf_counter(), time.process_time()
            store = LedgerStore.open(path, rules=RULES, durable=False)
            store.report()
            wall.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
            gc.collect()
            heap.trim()
            rss.append(round(memory_probe.rss() / 2**20, 2))
        if store is not None:
            store.close()
    return {
        "rss_mib": rss,
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "arenas": memory_probe.obmalloc()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("where", choices=("here", "apart"))
    parser.add_argument("times", type=int)
    args = parser.parse_args(argv)
    heap.settle_allocator()  # as ``ai4all`` does first
    print(json.dumps(reopen(args.path, args.where == "apart", args.times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freed heap goes back to the OS (``python_peer.heap``): what a long-lived node does every few seconds."""

from __future__ import annotations

import asyncio
import sys

import pytest

from python_peer import heap


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return kib / 1024


glibc = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and heap.can_trim()), reason="malloc_trim is glibc's"
)


@glibc
def test_a_fragmented_heap_is_given_back() -> None:
    # 64 MiB in 2 KiB chunks (malloc's, not Python's small-object arenas), then every chunk freed but one
    # in 64: each free run is walled in by a live chunk, so free() alone returns none of it to the OS
    chunks = [bytes(2048) for _ in range(32 * 1024)]
    kept = chunks[::64]
    del chunks
    before = rss_mib()
    assert heap.trim()
    after = rss_mib()
    assert before - after > 32, f"RSS {before:.1f} -> {after:.1f} MiB"
    assert len(kept) == 512


@glibc
def test_a_process_trims_once_per_interval_however_many_nodes_ask() -> None:
    heap.trim()
    chunks = [bytes(2048) for _ in range(4096)]
    kept = chunks[::64]
    del chunks
    assert not heap.trim_if_due(60.0)  # trimmed less than a minute ago: nothing is done
    assert heap.trim_if_due(0.0)  # due: the freed chunks go back
    assert len(kept) == 64


async def test_trim_rounds_run_until_cancelled() -> None:
    task = asyncio.create_task(heap.trim_rounds(0.01))
    await asyncio.sleep(0.05)
    if not heap.can_trim():  # nothing to call: it returned at once
        assert task.done() and task.exception() is None
        return
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

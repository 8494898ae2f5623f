"""Freed heap goes back to the OS (``python_peer.heap``): what a long-lived node does every few seconds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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


LARGE_BLOCKS = """
import sys
from python_peer import heap
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
if sys.argv[1] == "settled":
    assert heap.settle_allocator()
first = bytearray(b"x" * (1 << 20))
del first  # a mapped 1 MiB block freed: glibc alone would now carve blocks up to 1 MiB from the heap
large, small = [], []
for _ in range(256):
    large.append(bytearray(b"x" * (200 * 1024)))  # 50 MiB of transient buffers (frames, tensors)
    small.append(bytearray(b"y" * 2048))  # long-lived, allocated between them
peak = rss()
del large
print(peak - rss())
"""


def _run(script: str, mode: str, env: dict[str, str] | None = None) -> str:
    """``script``'s output, run in a fresh interpreter with ``mode`` ("settled" or "glibc default")."""
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, cwd=root, env=env
    )
    return done.stdout


def _in_both_modes(script: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return {mode: _run(script, mode, env) for mode in ("settled", "glibc default")}


@glibc
def test_with_the_threshold_fixed_freed_large_buffers_leave_at_once() -> None:
    given_back = {mode: float(out) for mode, out in _in_both_modes(LARGE_BLOCKS).items()}
    assert given_back["settled"] > 45, given_back  # of 50 MiB, without any trim
    assert given_back["settled"] > given_back["glibc default"], given_back


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


THREAD_ARENAS = """
import ctypes, os, sys, tempfile, threading
from python_peer import heap
if sys.argv[1] == "settled":
    assert heap.settle_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
start, kept = threading.Barrier(8), []
def work():
    start.wait()
    kept.append([bytes(2048) for _ in range(512)])  # malloc's chunks (over Python's small-object size)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


@glibc
def test_threads_share_at_most_max_arenas() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    arenas = {mode: int(out) for mode, out in _in_both_modes(THREAD_ARENAS, env).items()}
    assert arenas["settled"] <= heap.MAX_ARENAS, arenas
    assert arenas["glibc default"] > heap.MAX_ARENAS, arenas  # eight threads, an arena each
    # an operator's MALLOC_ARENA_MAX is glibc's own setting, read at start: settling leaves it
    wider = _run(THREAD_ARENAS, "settled", {**env, "MALLOC_ARENA_MAX": "6"})
    assert heap.MAX_ARENAS < int(wider) <= 6, wider

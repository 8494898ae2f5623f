"""Giving freed heap back to the operating system, periodically, in a long-lived process.

A node keeps running for days while it parses frames, ledger entries and reports of every size. glibc's
``malloc`` keeps the memory those free in its arenas, and a chunk that is free but surrounded by live
ones is never returned: the resident set grows while the memory in use does not (measured in the chaos
run, ``bench/README.md``: in the process of the native clients two thirds of three minutes' growth was
free heap). ``malloc_trim(0)`` hands every whole free page of every arena back to the kernel
(``madvise(MADV_DONTNEED)``) without moving anything. ``trim_rounds`` calls it every ``interval`` seconds
on glibc (each ``MeshNode`` runs one; a process with several nodes trims once per interval); elsewhere
(musl, macOS, Pyodide) there is nothing to call and it returns at once.

It first fixes glibc's mmap threshold at its default, 128 KiB (``settle_allocator``): glibc raises the
threshold each time a large block is freed (up to 32 MiB), after which the large transient buffers of a
node (frames, tensors, JSON of gossip) are carved from the heap between long-lived objects instead of
being mapped apart and unmapped when freed. It also caps glibc's arenas at ``MAX_ARENAS``: by default
every new thread (``asyncio.to_thread``'s workers, which parse and write the ledger; onnxruntime's) gets an
arena of its own, up to eight per core, and each keeps its own free chunks, so the same churn fragments
several heaps instead of one (measured in the chaos run, ``bench/README.md``). Arenas made before the
cap stay; a node settles when it starts (``MeshNode``; ``ai4all peer`` before it loads anything).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 10.0  # a trim of a few hundred MiB of heap takes a few milliseconds

_lock = threading.Lock()
# monotonic time of this process's last trim: one per interval, however many nodes it runs
_last_trim = float("-inf")


MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed: larger blocks are mapped apart
MAX_ARENAS = 2  # glibc's arenas: the main heap and one that threads share (MALLOC_ARENA_MAX overrides)
_M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers (malloc.h)
_M_ARENA_MAX = -8


def _load_glibc() -> tuple[Callable[[int], int], Callable[[int, int], int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return trim, mallopt


_glibc = _load_glibc()
_malloc_trim = _glibc[0] if _glibc is not None else None
_settled = False


def settle_allocator() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` and cap its arenas at ``MAX_ARENAS`` unless the
    environment sets ``MALLOC_ARENA_MAX`` (glibc's own setting, read at start), once per process; True if
    they are set."""
    global _settled
    if _glibc is None:
        return False
    with _lock:
        if not _settled:
            mallopt = _glibc[1]
            arenas = "MALLOC_ARENA_MAX" in os.environ or bool(mallopt(_M_ARENA_MAX, MAX_ARENAS))
            _settled = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and arenas
        return _settled


def can_trim() -> bool:
    """Whether this process's allocator can give freed heap back (glibc)."""
    return _malloc_trim is not None


def trim() -> bool:
    """Give every whole free page of the allocator's arenas back to the OS now; True if any was."""
    global _last_trim
    if _malloc_trim is None:
        return False
    with _lock:
        _last_trim = time.monotonic()
        return bool(_malloc_trim(0))


def trim_if_due(interval: float) -> bool:
    """``trim`` unless this process trimmed less than ``interval`` seconds ago."""
    if time.monotonic() - _last_trim < interval:
        return False
    return trim()


async def trim_rounds(interval: float = TRIM_INTERVAL_S) -> None:
    """Trim every ``interval`` seconds until cancelled (returns at once where there is nothing to call)."""
    if _malloc_trim is None:
        return
    settle_allocator()
    while True:
        await asyncio.sleep(interval)
        began = time.perf_counter()
        released = trim_if_due(interval * 0.9)
        log.debug("heap trim: %s in %.1f ms", released, (time.perf_counter() - began) * 1000)

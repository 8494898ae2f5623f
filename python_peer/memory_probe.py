"""Where a process's memory goes during a benchmark: a diagnosis, off by default.

With ``AI4ALL_MEMORY_PROBE=DIR`` a process that calls ``Probe.from_env`` (the chaos run's own process, from
the start of its load; every ``ai4all peer``, from when it serves: ``probe_rounds``) traces Python's
allocations (``tracemalloc``, 10 frames) and at each sample appends to ``DIR/<label>-<pid>.txt`` the resident set,
Python's allocated blocks, glibc's in-use and free heap (``mallinfo2``), the live objects by type that
changed most since the first sample, and the 25 source lines whose live allocations grew most. Tracing
slows the process and costs memory of its own: a run with the probe on measures where growth goes,
not how much there is.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

PROBE_ENV = "AI4ALL_MEMORY_PROBE"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> tuple[int, int] | None:
    """(bytes in use, bytes free) of glibc's heap, or None elsewhere."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return int(info.uordblks), int(info.fordblks)


def _rss() -> int:
    """This process's resident set in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _types() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects())


class Probe:
    """Samples of this process's memory while a run is under way (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()
        tracemalloc.start(10)
        self.first = tracemalloc.take_snapshot()
        self.types0 = _types()
        self._write(f"probe of pid {os.getpid()} started\n")

    @classmethod
    def from_env(cls, label: str) -> Probe | None:
        """A probe writing to ``$AI4ALL_MEMORY_PROBE/<label>-<pid>.txt``, or None when the variable is unset."""
        folder = os.environ.get(PROBE_ENV)
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        return cls(Path(folder) / f"{label}-{os.getpid()}.txt")

    def _write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text)

    def sample(self, note: str = "") -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ]
        )
        rss = _rss()
        heap = _mallinfo()
        traced, _ = tracemalloc.get_traced_memory()
        lines = [
            f"\n== {time.monotonic() - self.t0:.0f} s {note}: rss {rss / 2**20:.1f} MiB, traced {traced / 2**20:.1f} MiB, "
            f"blocks {sys.getallocatedblocks()}, heap in use/free "
            + (f"{heap[0] / 2**20:.1f}/{heap[1] / 2**20:.1f} MiB" if heap else "-")
        ]
        types = _types()
        delta = Counter({k: types[k] - self.types0.get(k, 0) for k in types})
        lines.append("objects: " + ", ".join(f"{k} {v:+d}" for k, v in delta.most_common(15)))
        for group in ("filename", "lineno"):
            lines.append(f"by {group}:")
            for stat in snap.compare_to(self.first, group)[:20]:
                frame = stat.traceback[-1]
                where = f"{frame.filename.rsplit('/', 2)[-2:]}:{frame.lineno}"
                lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  {where}")
        lines.append("by traceback (innermost 6 frames):")
        for stat in snap.compare_to(self.first, "traceback")[:12]:
            frames = " <- ".join(
                f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[::-1][:6]
            )
            lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  {frames}")
        self._write("\n".join(lines) + "\n")

    def stop(self) -> None:
        self.sample("end")
        tracemalloc.stop()


async def probe_rounds(label: str, every_s: float = 60.0) -> None:
    """Sample this process every ``every_s`` seconds until cancelled, if ``AI4ALL_MEMORY_PROBE`` is set."""
    probe = Probe.from_env(label)
    if probe is None:
        return
    try:
        while True:
            await asyncio.sleep(every_s)
            probe.sample()  # blocks the loop for the snapshot: a diagnosis, not a measurement of speed
    finally:
        probe.stop()

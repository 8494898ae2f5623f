"""Where a process's memory goes during a benchmark: a diagnosis, off by default.

With ``AI4ALL_MEMORY_PROBE=DIR`` a process that calls ``Probe.from_env`` (the chaos run's own process, from
the start of its load; every ``ai4all peer``, from when it serves: ``probe_rounds``) traces Python's
allocations (``tracemalloc``, 10 frames; ``AI4ALL_MEMORY_PROBE_FRAMES=0``: none) and at each sample appends to
``DIR/<label>-<pid>.txt`` the resident set, Python's allocated blocks, glibc's in-use and free heap and its
blocks mapped apart (``mallinfo2``), CPython's small-object arenas and the free space in them, the live
objects by type that changed most since the first sample, every object of 128 KiB or more (a table
glibc maps apart: type, length, size), and (traced) the source lines whose live
allocations grew most. Tracing slows the process and costs memory of its own: a run with the probe on
measures where growth goes, not how much there is.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from .heap import MMAP_THRESHOLD

PROBE_ENV = "AI4ALL_MEMORY_PROBE"
FRAMES_ENV = "AI4ALL_MEMORY_PROBE_FRAMES"
TRACE_FRAMES = 10


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


def _mallinfo() -> tuple[int, int, int] | None:
    """(bytes in use, bytes free) of glibc's heap and the bytes of its blocks mapped apart (128 KiB and
    more), or None elsewhere."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return int(info.uordblks), int(info.fordblks), int(info.hblkhd)


def rss() -> int:
    """This process's resident set in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def obmalloc() -> tuple[int, int, int]:
    """CPython's small-object allocator: its arenas (1 MiB each, returned to the system only when empty),
    the bytes in live blocks, and the free bytes it keeps in them (``sys._debugmallocstats``, which
    prints to the C stderr: read back from a temporary file)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    found = dict.fromkeys(
        ("arenas allocated current", "bytes in allocated blocks", "bytes in available blocks"), 0
    )
    unused = 0
    for line in text.splitlines():
        for name in found:
            if line.startswith(f"# {name}"):
                found[name] = int(line.rsplit("=", 1)[1].replace(",", ""))
        if "unused pools" in line:
            unused = int(line.rsplit("=", 1)[1].replace(",", ""))
    arenas, used, free = found.values()
    return arenas, used, free + unused


def _arenas() -> str:
    arenas, used, free = obmalloc()
    return f"{arenas} arenas: {used / 2**20:.1f} MiB in blocks, {free / 2**20:.1f} MiB free in them"


def _big_containers(objects: list[object]) -> list[str]:
    """The objects of ``MMAP_THRESHOLD`` bytes or more (a dict's, list's or set's table, a big string or array is
    one block that glibc maps apart), biggest first: type, length, KiB, and a dict's first key and value
    types. ``objects`` are those the collector tracks; the untracked ones they refer to (a dict of only
    strings and ints, bytes, arrays) are looked at too."""
    found = []
    seen: set[int] = set()
    for obj in itertools.chain(
        objects, (r for o in objects for r in gc.get_referents(o) if not gc.is_tracked(r))
    ):
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            size = sys.getsizeof(obj)
        except TypeError:
            continue
        if size >= MMAP_THRESHOLD:
            what = type(obj).__name__
            if isinstance(obj, dict) and obj:
                key, value = next(iter(obj.items()))
                what += f"[{type(key).__name__}: {type(value).__name__}]"
            length = len(obj) if hasattr(obj, "__len__") else 0
            found.append((size, f"{what} x{length} {size // 1024} KiB"))
    return [text for _, text in sorted(found, reverse=True)]


def _types() -> Counter[str]:
    """Live objects tracked by the collector, by type name. The list of every object holds a reference to
    each, and a tuple another thread is still building from a generator must have no other: that thread
    then fails (``SystemError: ... tupleobject.c ... bad argument``, seen in a chaos user unpickling its
    ledger state while the probe sampled). The count runs with the interpreter's switch interval raised,
    so that another thread takes over only if it was already asking (no failure left in 120 samples
    against a thread unpickling dataclasses, one in 40 before)."""
    return _census(big=False)[0]


def _census(big: bool = True) -> tuple[Counter[str], list[str]]:
    """``_types`` and (``big``) ``_big_containers``, counted while other threads wait (``_types``)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(_HOLD_S)
    try:
        objects = gc.get_objects()
        by_type = Counter(map(type, objects))
        found = _big_containers(objects) if big else []
        del objects
    finally:
        sys.setswitchinterval(interval)
    return Counter({kind.__name__: count for kind, count in by_type.items()}), found


_HOLD_S = 30.0  # longer than counting every object takes


class Probe:
    """Samples of this process's memory while a run is under way (see the module's docstring)."""

    def __init__(self, path: Path, frames: int = TRACE_FRAMES) -> None:
        self.path = path
        self.t0 = time.monotonic()
        self.first: tracemalloc.Snapshot | None = None
        if frames:
            tracemalloc.start(frames)
            self.first = tracemalloc.take_snapshot()
        self.types0 = _types()
        self._write(f"probe of pid {os.getpid()} started\n")

    @classmethod
    def from_env(cls, label: str) -> Probe | None:
        """A probe writing to ``$AI4ALL_MEMORY_PROBE/<label>-<pid>.txt``, or None when the variable is unset;
        ``AI4ALL_MEMORY_PROBE_FRAMES`` frames traced (0: no tracing, the other figures only)."""
        folder = os.environ.get(PROBE_ENV)
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        frames = int(os.environ.get(FRAMES_ENV, TRACE_FRAMES))
        return cls(Path(folder) / f"{label}-{os.getpid()}.txt", frames)

    def _write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text)

    def sample(self, note: str = "") -> None:
        gc.collect()
        heap = _mallinfo()
        traced = tracemalloc.get_traced_memory()[0] if self.first is not None else 0
        lines = [
            f"\n== {time.monotonic() - self.t0:.0f} s {note}: rss {rss() / 2**20:.1f} MiB, "
            f"traced {traced / 2**20:.1f} MiB, blocks {sys.getallocatedblocks()}, heap in use/free "
            + (
                f"{heap[0] / 2**20:.1f}/{heap[1] / 2**20:.1f} MiB, mapped apart {heap[2] / 2**20:.1f} MiB"
                if heap
                else "-"
            )
            + f"; {_arenas()}"
        ]
        types, big = _census()
        delta = Counter({k: types[k] - self.types0.get(k, 0) for k in types})
        lines.append("objects: " + ", ".join(f"{k} {v:+d}" for k, v in delta.most_common(15)))
        lines.append(f"containers of {MMAP_THRESHOLD // 1024} KiB and more: " + (", ".join(big) or "none"))
        if self.first is not None:
            lines += self._traced()
        self._write("\n".join(lines) + "\n")

    def _traced(self) -> list[str]:
        assert self.first is not None
        snap = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ]
        )
        lines = []
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
        return lines

    def stop(self) -> None:
        self.sample("end")
        tracemalloc.stop()


async def probe_rounds(label: str, every_s: float = 60.0) -> None:
    """Sample this process now and every ``every_s`` seconds until cancelled, if ``AI4ALL_MEMORY_PROBE`` is
    set (the first sample is the one the others' object counts are compared with)."""
    probe = Probe.from_env(label)
    if probe is None:
        return
    try:
        while True:
            probe.sample()  # blocks the loop for the snapshot: a diagnosis, not a measurement of speed
            await asyncio.sleep(every_s)
    finally:
        probe.stop()

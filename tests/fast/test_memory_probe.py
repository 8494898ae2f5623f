"""The opt-in memory probe of benchmarks (``python_peer.memory_probe``): off unless its variable is set."""

from __future__ import annotations

import asyncio
import os
import re
import tracemalloc
from pathlib import Path

import pytest

from python_peer.memory_probe import FRAMES_ENV, PROBE_ENV, Probe, probe_rounds


def test_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROBE_ENV, raising=False)
    assert Probe.from_env("peer") is None

    async def rounds() -> None:
        async with asyncio.timeout(1.0):
            await probe_rounds("peer", every_s=0.01)  # returns at once

    asyncio.run(rounds())
    assert not tracemalloc.is_tracing()


def test_samples_what_grew_into_one_file_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PROBE_ENV, str(tmp_path / "probe"))
    probe = Probe.from_env("peer-0-2-2")
    assert probe is not None
    try:
        kept = [bytes(1000 + i % 7) for i in range(3000)]  # ~3 MiB allocated on this line after the start
        probe.sample("one")
    finally:
        probe.stop()
    assert not tracemalloc.is_tracing()
    text = (tmp_path / "probe" / f"peer-0-2-2-{os.getpid()}.txt").read_text()
    assert f"probe of pid {os.getpid()} started" in text
    assert "== " in text and " one: rss " in text and " end: rss " in text
    grown = [line for line in text.splitlines() if "test_memory_probe.py" in line and "KiB" in line]
    assert grown and float(grown[0].split()[0]) > 2000, text  # the kept bytes, in KiB, by line
    assert len(kept) == 3000


def test_without_tracing_it_still_samples_the_heap_and_the_arenas(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PROBE_ENV, str(tmp_path / "probe"))
    monkeypatch.setenv(FRAMES_ENV, "0")
    probe = Probe.from_env("user0")
    assert probe is not None and not tracemalloc.is_tracing()
    kept = [bytes(100 + i % 7) for i in range(30_000)]  # ~3.5 MiB of small objects: in CPython's arenas
    probe.sample("one")
    probe.stop()
    text = (tmp_path / "probe" / f"user0-{os.getpid()}.txt").read_text()
    [line] = [line for line in text.splitlines() if " one: rss " in line]
    arenas, in_blocks = re.search(
        r"; (\d+) arenas: ([\d.]+) MiB in blocks, [\d.]+ MiB free in them", line
    ).groups()  # type: ignore[union-attr]
    assert int(arenas) >= 4 and float(in_blocks) >= 3.5, line
    assert "by lineno" not in text  # nothing traced
    assert len(kept) == 30_000


def test_it_lists_the_big_tables_tracked_or_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A dict of strings to ints is not tracked by the collector; it is found through what refers to it."""
    monkeypatch.setenv(PROBE_ENV, str(tmp_path / "probe"))
    monkeypatch.setenv(FRAMES_ENV, "0")
    probe = Probe.from_env("user1")
    assert probe is not None
    held = {"untracked": {f"r{i}": i for i in range(20_000)}, "tracked": [[i] for i in range(20_000)]}
    small = {f"s{i}": i for i in range(100)}
    probe.sample("one")
    probe.stop()
    text = (tmp_path / "probe" / f"user1-{os.getpid()}.txt").read_text()
    sample = text.split(" one: rss ")[1].split("\n== ")[0]
    [line] = [line for line in sample.splitlines() if line.startswith("containers of")]
    assert re.search(r"dict\[str: int\] x20000 \d+ KiB", line), line
    assert re.search(r"list x20000 \d+ KiB", line), line
    assert "x100 " not in line  # too small to list
    assert len(held) == 2 and len(small) == 100

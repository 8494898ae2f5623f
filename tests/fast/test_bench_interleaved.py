"""``bench.mesh_contenders.interleaved_decode``: two contenders' decode steps in turn, each timed alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from rich.console import Console

from bench.mesh_contenders import interleaved_decode

VOCAB = 16


class Fake:
    """A decoder whose next token is the last plus ``stride`` (mod the vocabulary), each step ``delay_s`` long."""

    def __init__(self, name: str, delay_s: float, stride: int, calls: list[str]) -> None:
        self.name, self.delay_s, self.stride, self.calls = name, delay_s, stride, calls
        self.open = False

    def _logits(self, token: int) -> np.ndarray:
        logits = np.zeros(VOCAB, dtype=np.float32)
        logits[(token + self.stride) % VOCAB] = 1.0
        return logits

    async def begin(self, ids: Sequence[int]) -> np.ndarray:
        self.open = True
        return self._logits(ids[-1])

    async def next(self, token: int) -> np.ndarray:
        assert self.open
        self.calls.append(self.name)
        await asyncio.sleep(self.delay_s)
        return self._logits(token)

    async def end(self) -> None:
        self.open = False


async def test_steps_alternate_and_are_timed_apart() -> None:
    calls: list[str] = []
    slow, fast = Fake("slow", 0.02, 1, calls), Fake("fast", 0.005, 1, calls)
    result = await interleaved_decode(slow, fast, [3], 6, 2, Console(quiet=True))
    # The order swaps every step, so neither always runs right after the other.
    assert calls[:4] == ["slow", "fast", "fast", "slow"] and len(calls) == 24
    assert [len(t) for t in result.first] == [len(t) for t in result.other] == [6, 6]
    assert result.same_tokens and not slow.open and not fast.open
    # The ratio is the other's time over the first's: the slow one's tok/s over the fast one's (~0.25).
    assert all(0.1 < r < 0.5 for r in result.ratios()), result.ratios()
    assert 0.1 < float(np.median(result.token_ratios())) < 0.5


async def test_different_tokens_are_reported() -> None:
    calls: list[str] = []
    result = await interleaved_decode(
        Fake("a", 0, 1, calls), Fake("b", 0, 2, calls), [3], 3, 1, Console(quiet=True)
    )
    assert not result.same_tokens


async def test_a_failing_step_ends_both_sessions() -> None:
    calls: list[str] = []
    good = Fake("good", 0, 1, calls)

    class Broken(Fake):
        async def next(self, token: int) -> np.ndarray:
            raise RuntimeError("peer gone")

    broken = Broken("broken", 0, 1, calls)
    with pytest.raises(RuntimeError, match="peer gone"):
        await interleaved_decode(good, broken, [3], 3, 1, Console(quiet=True))
    assert not good.open and not broken.open

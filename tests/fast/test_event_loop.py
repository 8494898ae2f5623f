"""The event loop a native process runs on (``python_peer/event_loop.py``): uvloop by default, asyncio's
own when uvloop is missing or ``AI4ALL_EVENT_LOOP=asyncio`` asks for it, a clear error for anything else."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect

import pytest

from python_peer import event_loop
from python_peer.errors import PeerError


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return event_loop.running_loop()


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert importlib.util.find_spec("uvloop") is not None  # a dependency of the peer extra on Linux
    assert event_loop.chosen_loop() == "uvloop"
    assert event_loop.run(_loop_module()) == "uvloop"


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, value)
    assert event_loop.run(_loop_module()) == "asyncio"


def test_asyncio_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else find_spec(name, *a)
    )
    assert event_loop.chosen_loop() == "asyncio"
    assert event_loop.run(_loop_module()) == "asyncio"


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    ran = []

    async def main() -> None:
        ran.append(True)

    coroutine = main()
    with pytest.raises(PeerError, match=r"AI4ALL_EVENT_LOOP='trio'.*uvloop, asyncio"):
        event_loop.run(coroutine)
    assert ran == []
    # closed: no "coroutine was never awaited" on top of the error
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_an_exception_comes_out_as_from_asyncio_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("from inside")

    with pytest.raises(ValueError, match="from inside"):
        event_loop.run(fails())

"""Waiting for background work: poll a condition until it holds, never sleep a fixed time and hope.

``wait_for`` polls from a plain thread (subprocesses, HTTP, another thread's loop); ``wait_for_async``
polls from a coroutine, yielding to the event loop between checks so the work it waits for can run.
Both return the condition's first truthy value, or raise ``AssertionError`` naming what never
happened (with ``describe()``'s view of the state, when given, for the failure message).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_INTERVAL = 0.02


def _failure(what: str, timeout: float, describe: Callable[[], object] | None) -> AssertionError:
    detail = f": {describe()}" if describe is not None else ""
    return AssertionError(f"{what} did not happen within {timeout:g} s{detail}")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    *,
    what: str = "the condition",
    interval: float = DEFAULT_INTERVAL,
    describe: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, describe)
        time.sleep(interval)


@overload
async def wait_for_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float,
    *,
    what: str = ...,
    interval: float = ...,
    describe: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def wait_for_async(
    condition: Callable[[], T | None],
    timeout: float,
    *,
    what: str = ...,
    interval: float = ...,
    describe: Callable[[], object] | None = ...,
) -> T: ...


async def wait_for_async(
    condition: Callable[[], Any],
    timeout: float,
    *,
    what: str = "the condition",
    interval: float = DEFAULT_INTERVAL,
    describe: Callable[[], object] | None = None,
) -> Any:
    """``wait_for`` in a coroutine: ``condition`` may be sync or async; the loop runs between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, describe)
        await asyncio.sleep(interval)

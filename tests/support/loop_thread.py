"""An asyncio program beside Playwright's sync API: one coroutine in a daemon thread of its own.

Playwright's sync API keeps an event loop in the test's thread, so a native client or peer driven by
asyncio runs in another thread; ``result`` hands its return value (or its exception) back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """``asyncio.run`` of one coroutine in a daemon thread; ``result`` waits for it."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.future: Future[Any] = Future()

        def main() -> None:
            try:
                self.future.set_result(asyncio.run(coro))
            except BaseException as exc:  # handed to the test thread
                self.future.set_exception(exc)

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> Any:
        try:
            return self.future.result(timeout)
        finally:
            self.thread.join(1)

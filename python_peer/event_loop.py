"""The event loop a native process runs on: uvloop where it is installed, asyncio's own otherwise.

A mesh peer (and a client) handles every datagram of its WebRTC links on its event loop: aiortc's SCTP
and DTLS are Python, and each datagram takes a few trips through the loop (a socket read, the ICE queue,
the DTLS and SCTP tasks, the link's queue, the request's task). uvloop runs the same asyncio program on
libuv with less CPU per callback, socket read and timer, which is CPU off every hop of every token
(bench/README.md, "Measured: uvloop"). It is a dependency of the ``peer`` extra on Linux and macOS; where it
is missing (Windows), or with ``AI4ALL_EVENT_LOOP=asyncio``, the process runs on asyncio's loop, which
behaves the same, only slower. Signaling nodes stay on asyncio's loop: their traffic is a few small
messages per session, and they share only the core with peers (``tests/test_layering.py``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import PeerError

EVENT_LOOP_ENV = "AI4ALL_EVENT_LOOP"
LOOPS = ("uvloop", "asyncio")

T = TypeVar("T")


def chosen_loop() -> str:
    """``"uvloop"`` or ``"asyncio"``: what ``$AI4ALL_EVENT_LOOP`` asks for (default uvloop), uvloop only
    where it is installed."""
    wanted = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or "uvloop"
    if wanted not in LOOPS:
        raise PeerError(f"{EVENT_LOOP_ENV}={wanted!r}: it must be one of {', '.join(LOOPS)}")
    if wanted == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return wanted


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new uvloop loop's factory, or None for asyncio's default loop (``asyncio.Runner``'s argument)."""
    if chosen_loop() == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def running_loop() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop running the caller (``ai4all status`` reports it)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop (``chosen_loop``)."""
    try:
        factory = loop_factory()
    except PeerError:
        main.close()  # never awaited: no "coroutine was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


__all__ = ["EVENT_LOOP_ENV", "LOOPS", "chosen_loop", "loop_factory", "run", "running_loop"]

"""Request/response over links: the client side matches answers to requests, the server side answers.

``RpcClient`` is the ``hop.HopClient`` of a remote hop; ``serve_link`` feeds a link's requests to a
``hop.FrameHandler``.

One session's requests are sequential (the client awaits each answer before the next step), so an
answer is matched to its request by ``(session, step)``. Many sessions share a link concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from python_peer.core.protocol import PROBE_EVERY_MS, PROBE_MISSES, PROBE_TIMEOUT_MS
from python_peer.core.wire import Frame, FrameType, raise_for_error

from .errors import LinkClosedError
from .hop import FrameHandler, FrameLink, LinkHandler

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 32  # per link, on the serving side
PROBE_EVERY_S = PROBE_EVERY_MS / 1000
PROBE_TIMEOUT_S = PROBE_TIMEOUT_MS / 1000


class RpcClient:
    """Calls over one link we opened; answers without a waiting request are dropped and logged."""

    def __init__(self, link: FrameLink) -> None:
        self.link = link
        self._pending: dict[tuple[bytes, int], asyncio.Future[Frame]] = {}
        self._closed: Exception | None = None
        self._reader = asyncio.create_task(self._read(), name=f"rpc-read-{link.remote_id[:8]}")

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, frame: Frame, timeout: float, *, probe_every: float = PROBE_EVERY_S) -> Frame:
        """Send ``frame`` and return its answer; a remote ERROR frame raises its typed RemoteError.

        While waiting, the link is pinged every ``probe_every`` seconds: a peer that died without closing
        its connection is noticed within about two probes instead of the tens of seconds ICE takes,
        while a live peer busy with a long prefill keeps answering pings (they never wait for compute).
        ``timeout`` bounds the whole call, so a live peer that never answers is given up on too.
        """
        future = self.expect(frame.session, frame.step)
        try:
            await self.link.send(frame)
            answer = await self.wait(future, timeout, frame.type.name, probe_every=probe_every)
        finally:
            self.forget(frame.session, frame.step)
        raise_for_error(answer)
        return answer

    def expect(self, session: bytes, step: int) -> asyncio.Future[Frame]:
        """Wait for the answer of ``(session, step)`` on this link, whoever asked: the client itself, or a
        peer that pushed the step here on the client's behalf (``relay.py``); ``forget`` it when done."""
        if self._closed is not None:
            raise LinkClosedError(f"link to {self.link.remote_id[:16]} is closed: {self._closed}")
        key = (session, step)
        if key in self._pending:
            raise RuntimeError(f"a request for session {session.hex()} step {step} is already waiting")
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        return future

    def forget(self, session: bytes, step: int) -> None:
        future = self._pending.pop((session, step), None)
        if future is not None and not future.done():
            future.cancel()

    async def send(self, frame: Frame) -> None:
        """Send a request whose answer was ``expect``ed."""
        await self.link.send(frame)

    async def wait(
        self, future: asyncio.Future[Frame], timeout: float, what: str, *, probe_every: float = PROBE_EVERY_S
    ) -> Frame:
        """The answer frame of an ``expect``ed request (an ERROR frame too, not raised), probing the link
        as ``call`` does; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        return await self._await_answer(future, deadline, timeout, what, probe_every)

    async def _await_answer(
        self, future: asyncio.Future[Frame], deadline: float, timeout: float, what: str, probe_every: float
    ) -> Frame:
        """Wait for ``future``, probing the link with pings that run alongside the wait.

        A ping can be held up behind a lost SCTP packet (resent after a second or more) on a busy link, so
        one late PONG proves nothing; ``PROBE_MISSES`` in a row do.
        """
        loop = asyncio.get_running_loop()
        misses = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"peer {self.link.remote_id[:16]} did not answer {what} within {timeout:.1f} s"
                )
            done, _ = await asyncio.wait({future}, timeout=min(probe_every, remaining))
            if done:
                return future.result()
            ping = asyncio.ensure_future(self.link.ping(timeout_s=PROBE_TIMEOUT_S))
            waiting: set[asyncio.Future[Any]] = {future, ping}
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                ping.cancel()
                return future.result()
            if ping not in done:
                ping.cancel()
                continue
            if ping.exception() is None:
                misses = 0
                continue
            misses += 1
            if misses >= PROBE_MISSES:
                dead = LinkClosedError(
                    f"peer {self.link.remote_id[:16]} missed {misses} pings in a row: {ping.exception()}"
                )
                future.cancel()  # this call raises ``dead`` itself
                self._fail(dead)  # every other call on this link fails now too, instead of probing again
                raise dead

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.link.recv()
                future = self._pending.get((frame.session, frame.step))
                if future is None or future.done():
                    log.debug(
                        "dropping unexpected %s frame from %s", frame.type.name, self.link.remote_id[:8]
                    )
                    continue
                future.set_result(frame)
        except asyncio.CancelledError:
            self._fail(LinkClosedError("the link was closed locally"))
            raise
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._closed = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    exc
                    if isinstance(exc, LinkClosedError)
                    else LinkClosedError(f"link to {self.link.remote_id[:16]} failed: {exc}")
                )

    async def aclose(self) -> None:
        self._reader.cancel()
        try:
            await asyncio.wait({self._reader})  # unlike awaiting it, never swallows our own cancellation
        finally:
            await self.link.aclose()


async def serve_link(link: FrameLink, handler: FrameHandler) -> None:
    """Answer every request that arrives on ``link`` with ``handler`` until it closes; requests run
    concurrently. When the link is gone, ``handler`` drops the sessions of its remote (for a
    ``LinkHandler``: once its remote has no other link here)."""
    slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
    tasks: set[asyncio.Task[None]] = set()
    aware = handler if isinstance(handler, LinkHandler) else None
    if aware is not None:
        aware.link_opened(link)

    async def answer(frame: Frame) -> None:
        try:
            reply = (
                await aware.answer(link, frame)
                if aware is not None
                else await handler.handle(link.remote_id, frame)
            )
            if reply is not None:
                await link.send(reply)
        except LinkClosedError:
            pass
        finally:
            slots.release()

    try:
        while True:
            frame = await link.recv()
            if frame.type in (FrameType.RESULT, FrameType.ERROR, FrameType.PONG):
                continue  # answers are not requests; a server never waits for any
            await slots.acquire()
            task = asyncio.create_task(answer(frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except LinkClosedError:
        log.info("link from %s closed", link.remote_id[:8])
    finally:
        for task in list(tasks):
            task.cancel()
        if aware is None or aware.link_closed(link):
            handler.close_client(link.remote_id)

"""The other peer of the cross-process test in ``test_transport.py``; run as ``python -m tests.support.transport_peer``.

Signaling travels as JSON lines: ``{"from": id, "payload": {...}}`` on stdin goes to
``LinkManager.handle_signal``, and ``send_signal`` writes ``{"to": id, "payload": {...}}`` to stdout.
It accepts one link, answers each FORWARD frame with a RESULT carrying the same tensors, and exits when
that link closes or stdin ends. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from python_peer import event_loop
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import TransportError
from python_peer.transport import LinkManager

log = logging.getLogger("transport_peer")


async def send_signal(peer_id: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"to": peer_id, "payload": payload}) + "\n")
    sys.stdout.flush()


async def pump_signals(reader: asyncio.StreamReader, manager: LinkManager) -> None:
    """Hand each stdin line to the manager until EOF; a bad line is logged, never fatal."""
    while line := await reader.readline():
        try:
            message = json.loads(line)
            await manager.handle_signal(message["from"], message["payload"])
        except (ValueError, KeyError, TypeError, TransportError) as exc:
            log.warning("signal refused: %r", exc)


async def echo(manager: LinkManager) -> None:
    link = await manager.accept()
    async for frame in link:
        if frame.type is FrameType.FORWARD:
            await link.send(
                Frame(FrameType.RESULT, frame.session, frame.step, meta=frame.meta, tensors=frame.tensors)
            )
    log.info("link closed: %s", link.close_error)


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with LinkManager(send_signal) as manager:
        tasks = {asyncio.create_task(pump_signals(reader, manager)), asyncio.create_task(echo(manager))}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a failure, so the exit status shows it


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="child %(name)s: %(message)s")
    event_loop.run(main())

"""Time bounds of every HTTP and websocket server (a peer's API, a signaling node), stated once.

Standard library only: ``with_header_deadline`` subclasses the server's h11 protocol class it is
handed (uvicorn's), so the core imports neither uvicorn nor h11.

- A request's headers must be complete within ``HEADER_TIMEOUT_S`` of its first byte (or of the
  connection's opening): a slowloris sending one header line every few seconds is cut off then.
- A request's body must arrive within ``BODY_TIMEOUT_S`` of its headers: one shorter than its
  Content-Length is answered 408 (the API) then.
- An idle keep-alive connection is closed after ``KEEP_ALIVE_S`` (uvicorn's ``timeout_keep_alive``).
- Websockets (signaling) are pinged every 20 s and closed when a pong is 20 s late; one that sends no
  message the node takes within 10 s of opening, or a peer's silent for 660 s, is closed too
  (``signaling/connection.py``). A peer's API serves no websockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


def with_header_deadline(base: type[Any], timeout_s: float = HEADER_TIMEOUT_S) -> type[Any]:
    """``base`` (uvicorn's ``H11Protocol``) closing a connection whose request headers are not complete
    within ``timeout_s`` of their first byte (or of the connection's opening)."""

    class HeaderDeadline(base):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return getattr(self.conn.their_state, "__name__", "") == "IDLE"

        def _watch(self) -> None:
            if not self._awaiting_headers():
                self._disarm()
            elif self._deadline is None:
                self._deadline = asyncio.get_running_loop().call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline

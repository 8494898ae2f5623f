"""Server-sent event responses whose body is closed as soon as the client is gone.

Starlette streams an async iterator until it ends or the client disconnects. Under ASGI 2.4 (uvicorn) a
send to a client that hung up raises and the stream stops there, but the iterator itself is left
suspended: what its ``finally`` frees (a generation's task and slot, which would otherwise run to its
last token; a page's event stream) then waits for the garbage collector, seconds later when the raised
exception's traceback holds the frames in a cycle. ``EventStreamResponse`` closes the iterator when the
stream stops, however it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from starlette.types import Send

EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response over ``events``, closed when the stream stops (see the module)."""

    def __init__(self, events: AsyncIterator[bytes] | AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


__all__ = ["EventStreamResponse"]

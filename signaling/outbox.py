"""What a connection still has to send: a bounded FIFO of messages, and the newest state per peer.

Replies and signals (``relay``, delivered ``signal``) go through the FIFO, bounded by count and by
size (a ``peers`` reply alone may be 256 KiB: a slow reader must not hold 256 of them): past either
bound a message is dropped and counted (clients retry signals end to end). Gossip and ``gone`` carry
soft state that only matters in its newest form, so they go into a table keyed by peer id where a
newer state replaces the one still waiting, in its place in line: a burst of announcements costs one
slot per peer, bounded by the directory's size, and the newest state is never the one lost. The
writer takes from the two in turn, so neither starves the other.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

# Orders the states of one peer: (seq, 0) for an announcement, (seq, 1) for its withdrawal.
Rank = tuple[int, int]


class Outbox:
    """A FIFO of at most ``max_messages`` texts of at most ``max_chars`` characters in all (one text
    alone is always taken), and at most ``max_keys`` newest states by key."""

    def __init__(self, max_messages: int, max_keys: int, max_chars: int = 1 << 20) -> None:
        if max_messages < 1 or max_keys < 1 or max_chars < 1:
            raise ValueError(
                f"an outbox needs room for messages, keys and text, not {max_messages}, {max_keys} "
                f"and {max_chars}"
            )
        self.max_messages = max_messages
        self.max_keys = max_keys
        self.max_chars = max_chars
        self.dropped = 0  # messages refused for want of room, since the connection opened
        self.coalesced = 0  # states replaced by a newer one before they were sent
        self._fifo: deque[str] = deque()
        self._fifo_chars = 0  # characters of the texts in the FIFO
        self._latest: OrderedDict[str, tuple[Rank, str]] = OrderedDict()
        self._fifo_turn = True
        self._unfinished = 0  # taken or waiting, not yet marked done
        self._ready = asyncio.Event()
        self._finished = asyncio.Event()
        self._finished.set()

    def __len__(self) -> int:
        return len(self._fifo) + len(self._latest)

    def put(self, text: str) -> bool:
        """Queue ``text`` last; ``False`` (and counted as dropped) when the FIFO is full, in messages or
        in characters."""
        full = bool(self._fifo) and self._fifo_chars + len(text) > self.max_chars
        if full or len(self._fifo) >= self.max_messages:
            self.dropped += 1
            return False
        self._fifo.append(text)
        self._fifo_chars += len(text)
        self._added()
        return True

    def put_latest(self, key: str, rank: Rank, text: str) -> bool:
        """Queue ``text`` as the state of ``key``, unless a newer state of ``key`` is already waiting.

        ``False`` (and counted as dropped) only when ``key`` is new and the table is full.
        """
        held = self._latest.get(key)
        if held is not None:
            if rank >= held[0]:
                self._latest[key] = (rank, text)  # keeps its place: a chatty peer cannot jump the line
            self.coalesced += 1
            return True
        if len(self._latest) >= self.max_keys:
            self.dropped += 1
            return False
        self._latest[key] = (rank, text)
        self._added()
        return True

    async def get(self) -> str:
        """The next text to send, waiting for one; call ``task_done()`` once it is sent."""
        while not self._fifo and not self._latest:
            self._ready.clear()
            await self._ready.wait()
        if self._fifo and (self._fifo_turn or not self._latest):
            self._fifo_turn = False
            text = self._fifo.popleft()
            self._fifo_chars -= len(text)
            return text
        self._fifo_turn = True
        _, (_, text) = self._latest.popitem(last=False)
        return text

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._unfinished = 0
            self._finished.set()

    async def join(self) -> None:
        """Wait until everything queued so far was taken and marked done."""
        await self._finished.wait()

    def _added(self) -> None:
        self._unfinished += 1
        self._finished.clear()
        self._ready.set()

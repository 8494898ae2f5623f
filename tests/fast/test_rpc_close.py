"""Closing an RPC client that is itself cancelled meanwhile (a generation stopped while it closes a link
on failover): the cancel is raised, not swallowed, and the link is closed all the same."""

from __future__ import annotations

import asyncio

import pytest

from python_peer.rpc import RpcClient
from tests.support.fakes import MemoryLink


async def test_a_close_cancelled_midway_raises_its_cancel_and_closes_the_link() -> None:
    mine, _theirs = MemoryLink.pair("client", "peer")
    rpc = RpcClient(mine)
    await asyncio.sleep(0)  # its reader waits for frames
    closing = asyncio.create_task(rpc.aclose())
    await asyncio.sleep(0)  # the close waits for the reader to stop ...
    closing.cancel()  # ... when whoever closes it is cancelled
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert rpc.closed and mine.closed

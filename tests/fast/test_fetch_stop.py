"""``ai4all peer --model NAME`` while its model downloads: a stop ends the download, and so does a cancel of
the peer itself, which is raised rather than swallowed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from python_peer import model_fetch


def _options() -> Any:
    node = SimpleNamespace(node="ws://127.0.0.1:9")
    return SimpleNamespace(
        model_name="m", peer_config=lambda: node, trust=None, span=None, memory_budget_bytes=None
    )


@pytest.fixture
def download(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """A download that never ends by itself: (it began, it was cancelled)."""
    began, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(*_args: object, **_kwargs: object) -> None:
        began.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(model_fetch, "fetch_with_node", endless)
    return began, cancelled


async def test_a_stop_ends_the_download(download: tuple[asyncio.Event, asyncio.Event]) -> None:
    began, cancelled = download
    stop = asyncio.Event()
    peer = asyncio.create_task(model_fetch.fetch_for_peer(_options(), stop))
    await began.wait()
    stop.set()
    assert await peer is None
    assert cancelled.is_set()


async def test_a_cancelled_peer_raises_its_cancel_and_ends_the_download(
    download: tuple[asyncio.Event, asyncio.Event],
) -> None:
    began, cancelled = download
    peer = asyncio.create_task(model_fetch.fetch_for_peer(_options(), asyncio.Event()))
    await began.wait()
    peer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await peer
    assert cancelled.is_set()  # before: the download ran on after the peer was gone

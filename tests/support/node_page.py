"""A tab on a signaling node's contribute page: what it requested, the errors it raised, Start, serving.

Shared by the contribute page tests and the end-to-end test on the default model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

START_TIMEOUT_MS = 90_000  # Pyodide, the ledger, the shard and onnxruntime-web, on a busy 2-core machine


@dataclass
class Visit:
    """A tab on a page, with what it requested and the errors it raised."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)

    def clear(self) -> None:
        self.requests.clear()
        self.sockets.clear()

    def paths(self) -> list[str]:
        return [re.sub(r"^https?://[^/]+", "", url) for url in self.requests]


@contextlib.contextmanager
def visit(browser: Browser, url: str) -> Iterator[Visit]:
    """A fresh context (empty IndexedDB) on ``url``; no page error may happen while it is open."""
    context = browser.new_context()
    page = context.new_page()
    seen = Visit(context, page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(f"console.error: {message.text}")

    page.on("pageerror", lambda error: seen.errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("websocket", lambda socket: seen.sockets.append(socket.url))
    try:
        page.goto(url)
        yield seen
        assert seen.errors == []
    finally:
        context.close()


def start(seen: Visit, *, span: str = "", budget_mb: str = "512") -> None:
    """Fill the settings and press Start."""
    expect(seen.testid("opt-in")).to_be_enabled()
    seen.testid("memory-budget").fill(budget_mb)
    seen.testid("span-input").fill(span)
    seen.testid("opt-in").click()


def wait_serving(seen: Visit, model: str, span: str) -> str:
    """Wait until the page serves ``span``; return its peer id."""
    expect(seen.testid("state")).to_have_text("serving", timeout=START_TIMEOUT_MS)
    expect(seen.testid("serving")).to_have_text(f"Serving blocks {span} of {model}.")
    peer_id = seen.testid("peer-id").text_content() or ""
    assert re.fullmatch(r"[0-9a-f]{64}", peer_id), peer_id
    return peer_id

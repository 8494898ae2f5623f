"""The node's pages in Debian's Chromium, against a real mesh: chat, dashboard, contribution settings.

One signaling node and three ``ai4all peer`` processes (spans 0-1, 1-3, 3-4 of the tiny Llama); the 1-3
peer serves the API and the pages (``--api-port 0``). The chat page must stream a reply (its text seen
growing) equal to the API's own greedy reply, and the balance in the header must move once the other
peers' blocks are paid for; the dashboard must show every peer and the model's coverage; pausing in
the settings must take the peer out of signaling lookups and resuming must bring it back. Every page
must fit a phone-sized screen. Screenshots go to ``tests/artifacts/pages/`` for review.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, ViewportSize, expect

from python_peer.core.manifest import load_manifest
from tests.support.browser import script
from tests.support.procs import Node, PeerProc, run_cli
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "artifacts" / "pages"
QUESTION = "What is the capital of France?"
MAX_TOKENS = 24
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=860)


@dataclass
class PagesMesh:
    node: Node
    peers: list[PeerProc]
    model: Path
    model_id: str
    hidden_size: int
    url: str  # the pages' origin, http://127.0.0.1:PORT

    @property
    def api_peer(self) -> PeerProc:
        return self.peers[1]

    def coverage(self) -> dict[str, Any]:
        card = httpx.get(f"{self.url}/v1/models/{self.model_id}", trust_env=False, timeout=10).json()
        return dict(card["coverage"])

    def announced(self, peer: PeerProc) -> list[tuple[int, int]] | None:
        for entry in self.node.directory()["entries"]:
            if entry["peer_id"] == peer.peer_id:
                return [(s["start"], s["end"]) for s in entry["serves"]]
        return None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[PagesMesh]:
    tmp = tmp_path_factory.mktemp("pages-mesh")
    node = Node("signal-a", tmp)
    peers: list[PeerProc] = []
    try:
        node.wait()
        fast = ["--gossip-interval", "0.5"]
        api = [*fast, "--api-port", "0", "--api-rate", "1000", "--api-burst", "1000"]
        for name, span, extra in (("p0-1", "0-1", fast), ("api1-3", "1-3", api), ("p3-4", "3-4", fast)):
            peers.append(PeerProc(name, tmp, tiny_llama_export, [node.url], span=span, extra=extra))
        for peer in peers:
            peer.wait()
        manifest = load_manifest(tiny_llama_export)
        hidden = int(manifest.config["hidden_size"])
        yield PagesMesh(node, peers, tiny_llama_export, manifest.name, hidden, peers[1].wait_api())
    finally:
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        node.stop()


def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    wait_for(check, timeout, what=what, interval=0.1)


@pytest.fixture(scope="module")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@dataclass
class Tab:
    page: Page
    errors: list[str]


@contextlib.contextmanager
def open_tab(browser: Browser, viewport: ViewportSize, **options: Any) -> Iterator[Tab]:
    """A page in a fresh context; uncaught errors and console errors (CSP violations included) are kept."""
    context: BrowserContext = browser.new_context(viewport=viewport, **options)
    page = context.new_page()
    tab = Tab(page, [])

    def on_console(message: ConsoleMessage) -> None:
        # A refused request (the bad span's 400) is logged by Chromium itself; that one is expected.
        if message.type == "error" and "Failed to load resource" not in message.text:
            tab.errors.append(f"console.error: {message.text}")

    page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    try:
        yield tab
    finally:
        context.close()


def _live(page: Page) -> None:
    """Wait for the first snapshot of /v1/node/events to reach the header."""
    # Locator assertions, not wait_for_function: polling a string predicate needs eval, which the
    # pages' CSP (script-src 'self') forbids, so it fails whenever the condition is not true at once.
    expect(page.locator("#balance")).to_have_attribute("data-units", re.compile(r"^-?\d+$"), timeout=15000)


def _balance(page: Page) -> int:
    return int(page.eval_on_selector("#balance", "e => e.dataset.units"))


def _no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate(
        "({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, view: innerWidth})"
    )
    assert widths["doc"] <= widths["view"] and widths["body"] <= widths["view"], widths


# Records the assistant's text length at each change, to see the reply grow while it streams.
WATCH_REPLY = script("pages/watch_reply")


def _ask(page: Page, question: str, max_tokens: int) -> str:
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", question)
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-done]", timeout=30000)
    return str(page.text_content(".message.assistant .content"))


def test_chat_streams_a_reply_and_the_balance_moves(browser: Browser, mesh: PagesMesh, shots: Path) -> None:
    with open_tab(browser, DESKTOP) as tab:
        page = tab.page
        page.goto(f"{mesh.url}/")
        assert page.url == f"{mesh.url}/chat"
        expect(page.locator("#model option")).to_have_attribute("value", mesh.model_id)
        _live(page)
        expect(page.locator("#serving-badge")).to_have_text("serving 1-3")
        before = _balance(page)

        page.evaluate(WATCH_REPLY)
        streamed = _ask(page, QUESTION, MAX_TOKENS)
        lengths = page.evaluate("window.__lengths")
        growth = sorted(set(lengths))
        assert len(growth) >= 3 and lengths[-1] == len(streamed), (
            f"the reply did not grow in steps: {lengths}"
        )

        # The page sent exactly what an OpenAI client would, and got the same greedy reply.
        body = {
            "model": mesh.model_id,
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        reference = httpx.post(
            f"{mesh.url}/v1/chat/completions", json=body, trust_env=False, timeout=60
        ).json()
        assert streamed == reference["choices"][0]["message"]["content"] and streamed
        usage = reference["usage"]
        positions = usage["prompt_tokens"] + usage["completion_tokens"]
        privacy = page.locator("#privacy-text")
        expect(privacy).to_contain_text(f"hidden states only ({positions} tokens × {mesh.hidden_size} floats")
        expect(privacy).to_contain_text("Prompt text, token ids and logits stayed on this node")
        expect(privacy).to_contain_text("Blocks 1-3 ran on this node itself")

        # The API peer paid the two other peers for blocks 0-1 and 3-4; its own span is free to it.
        expect(page.locator("#balance")).not_to_have_attribute("data-units", str(before), timeout=15000)
        assert _balance(page) < before
        expect(page.locator("#balance-delta")).to_contain_text("-")
        page.screenshot(path=shots / "chat-desktop.png", full_page=True)
        assert not tab.errors, tab.errors


def test_dashboard_shows_every_peer_and_the_coverage(
    browser: Browser, mesh: PagesMesh, shots: Path, tmp_path: Path
) -> None:
    # Another node chats through the mesh, so the API peer earns for its blocks 1-3.
    args = ["chat", QUESTION, "--model", str(mesh.model), "--signal", mesh.node.url, "--max-tokens", "4"]
    chat = run_cli([*args, "--data-dir", str(tmp_path / "client")], timeout=60)
    assert chat.returncode == 0, chat.stderr
    with open_tab(browser, DESKTOP) as tab:
        page = tab.page
        page.goto(f"{mesh.url}/dashboard")
        _live(page)
        expect(page.locator("#peers tbody tr")).to_have_count(3)
        for peer in mesh.peers:
            short = peer.peer_id[:8]
            expect(page.locator(f"#peers tr[data-peer='{peer.peer_id}']")).to_contain_text(short)
            expect(page.locator("#mesh-map .peer text.peer-id", has_text=short)).to_have_count(1)
        expect(page.locator(f"#peers tr[data-peer='{mesh.api_peer.peer_id}']")).to_contain_text("this node")
        summary = page.locator(f".coverage-summary[data-model='{mesh.model_id}']")
        expect(summary).to_contain_text("4 of 4 blocks covered")
        expect(page.locator(".coverage-plot rect.block")).to_have_count(4)
        expect(page.locator(".coverage-plot rect.span-bar")).to_have_count(3)
        expect(page.locator("#mesh-map .signaling.connected")).to_have_count(1)
        expect(page.locator("#mesh-map line.announce")).to_have_count(3)
        expect(page.locator("#earnings-plot polyline.earned")).to_have_count(1)
        expect(page.locator("#earnings-plot circle.receipt")).to_have_count(1)
        expect(page.locator("#earnings-note")).to_contain_text("earned from 1 receipt ")
        earnings = httpx.get(f"{mesh.url}/v1/node/earnings", trust_env=False).json()
        assert earnings["earned"] > 0 and len(earnings["points"]) == 1
        expect(page.locator("#d-serving")).to_have_text(f"blocks 1-3 of {mesh.model_id}")
        page.screenshot(path=shots / "dashboard-desktop.png", full_page=True)
        assert not tab.errors, tab.errors


def test_settings_pause_resume_and_a_bad_span(browser: Browser, mesh: PagesMesh, shots: Path) -> None:
    api = mesh.api_peer
    with open_tab(browser, DESKTOP) as tab:
        page = tab.page
        page.goto(f"{mesh.url}/settings")
        _live(page)
        expect(page.locator("#s-state")).to_have_text("serving")
        result = page.locator("#settings-result")

        page.uncheck("#serving")
        page.click("#save")
        expect(result).to_contain_text("Saved (serving): paused")
        _until(lambda: mesh.announced(api) == [], "signaling holds no span for the paused peer")
        _until(lambda: mesh.coverage()["covered_blocks"] == 2, "lookups no longer find blocks 1-3")
        expect(page.locator("#serving-badge")).to_have_text("paused")
        expect(page.locator("#s-state")).to_contain_text("paused")
        page.screenshot(path=shots / "settings-paused-desktop.png", full_page=True)

        page.check("#serving")
        page.click("#save")
        expect(result).to_contain_text("Saved (serving): serving blocks 1-3")
        _until(lambda: mesh.announced(api) == [(1, 3)], "signaling holds the resumed peer's span")
        _until(lambda: mesh.coverage()["covered_blocks"] == 4, "lookups find blocks 1-3 again")
        expect(page.locator("#serving-badge")).to_have_text("serving 1-3")

        page.fill("#span", "2-3")
        page.click("#save")
        expect(result).to_have_class(re.compile(r"\berror\b"))
        expect(result).to_contain_text("Not saved: span 2-3 is not a run of")
        expect(result).to_contain_text("choose one of: 0-1, 1-3, 3-4")
        assert mesh.announced(api) == [(1, 3)]
        page.screenshot(path=shots / "settings-desktop.png", full_page=True)
        assert not tab.errors, tab.errors


def test_every_page_fits_a_phone(browser: Browser, mesh: PagesMesh, shots: Path) -> None:
    with open_tab(browser, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2) as tab:
        page = tab.page
        page.goto(f"{mesh.url}/chat")
        expect(page.locator("#model option")).to_have_attribute("value", mesh.model_id)
        _live(page)
        _ask(page, QUESTION, 12)
        expect(page.locator("#privacy-text")).to_contain_text("hidden states only")
        _no_horizontal_scroll(page)
        page.screenshot(path=shots / "chat-phone.png", full_page=True)

        page.goto(f"{mesh.url}/dashboard")
        _live(page)
        expect(page.locator("#peers tbody tr")).to_have_count(3)
        expect(page.locator(".coverage-summary")).to_contain_text("4 of 4 blocks covered")
        _no_horizontal_scroll(page)
        page.screenshot(path=shots / "dashboard-phone.png", full_page=True)

        page.goto(f"{mesh.url}/settings")
        _live(page)
        expect(page.locator("#s-span")).to_contain_text("blocks 1-3")
        _no_horizontal_scroll(page)
        page.screenshot(path=shots / "settings-phone.png", full_page=True)
        assert not tab.errors, tab.errors

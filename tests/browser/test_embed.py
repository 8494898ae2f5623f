"""``embed.js`` on a page of another origin: consent first, then a node in a Web Worker, and Stop.

A signaling node (``ai4all signal --model-dir``) serves ``/embed.js``, the modules, the model files and
``/v1/config``. The host pages come from a second tiny server on ``localhost`` (another site than the
node's ``127.0.0.1``), plain pages without CSP or cross-origin isolation holding just the script tag,
an interval counter (to see the page stay responsive) and hostile CSS (which must not reach the
widget in its shadow root).

- Before consent the context's request log (it covers the worker's requests too) holds the page and
  ``embed.js`` only, no websocket opens and the node sees no connection; bad ``data-max-memory-mb`` or
  ``data-signal`` values are shown in the widget and nothing can start.
- After consent the worker announces the one span native peers leave free (1-3), a Python mesh client
  generates the same greedy tokens as ``LocalChain`` through it, the host page's counter keeps ticking
  meanwhile, and the widget shows the tokens served and the earnings; a second tab of the site is
  refused (one identity, one node). Stop ends the worker, the peer leaves the directory, and the client
  routes through a native peer instead. Stop while starting ends it too, and leaving the page makes
  the node say bye. ``data-signal`` picks the signaling node the worker announces on.
- The relay (``web/src/embed/relay.js``): malformed, oversized and unanswered messages on both halves,
  its bounded queue answered with ERROR ``overloaded`` over a real WebRTC link, and a dead worker
  detected by the heartbeat, which closes the links so clients fail over.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, WebSocket, expect

from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import LinkClosedError
from python_peer.generate import SamplingParams, agenerate, generate
from python_peer.identity import Identity
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.signal_client import SignalClient, SignalClientConfig
from python_peer.tokenizer import ModelTokenizer
from python_peer.transport import TransportConfig
from tests.support.browser import JS_DIR, script
from tests.support.loop_thread import LoopThread
from tests.support.procs import Node, PeerProc

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

PROMPT = "What is the capital of France?"
MAX_TOKENS = 12
FAST = ClientConfig(request_timeout_s=15.0, connect_timeout_s=15.0, ban_seconds=60.0)
WIDGET = "ai4all-widget"

# Someone else's page: its own styles (which must not reach the widget) and a ticker that shows whether
# the page stays responsive; "<!-- the embed tag -->" is replaced by the script tag under test.
HOST_PAGE = (JS_DIR / "embed" / "host_page.html").read_text(encoding="utf-8")
RESET_TICKER = script("embed/reset_ticker")


# --- the host site: another origin, plain pages ---------------------------------------------------


class _HostHandler(BaseHTTPRequestHandler):
    server_version = "host-site"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        site = cast(_HostServer, self.server).site
        body = site.pages.get(self.path)
        site.requests.append(self.path)
        status = HTTPStatus.OK if body is not None else HTTPStatus.NOT_FOUND
        data = body if body is not None else b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8" if body is not None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: HostSite) -> None:
        super().__init__(("127.0.0.1", 0), _HostHandler)
        self.site = site


@dataclass
class HostSite:
    """Pages on ``http://localhost:PORT``: another site than the node on 127.0.0.1."""

    url: str = ""
    pages: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add(self, path: str, node: Node, **attrs: str) -> str:
        """A page holding only the embed tag of ``node`` (with ``attrs``); returns its URL."""
        extra = "".join(f' {name.replace("_", "-")}="{html.escape(value)}"' for name, value in attrs.items())
        tag = f'<script src="{node.http_url}/embed.js"{extra}></script>'
        self.pages[path] = HOST_PAGE.replace("<!-- the embed tag -->", tag).encode()
        return self.url + path


@pytest.fixture(scope="module")
def host_site() -> Iterator[HostSite]:
    site = HostSite()
    server = _HostServer(site)
    site.url = f"http://localhost:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class HostPage:
    """A host page in a fresh context (empty IndexedDB), with every request and websocket it made."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def goto(self, url: str) -> None:
        self.requests.clear()
        self.websockets.clear()
        self.page.goto(url)
        expect(self.widget).to_have_attribute("data-state", re.compile(r"^(ask|invalid)$"))

    @property
    def widget(self) -> Any:
        return self.page.locator(WIDGET)

    def field(self, name: str) -> Any:
        return self.page.locator(f"#ai4all-{name}")


@contextlib.contextmanager
def host_page(browser: Browser) -> Iterator[HostPage]:
    context = browser.new_context()
    page = context.new_page()
    opened = HostPage(context, page)

    def on_console(message: ConsoleMessage) -> None:
        opened.console.append(f"{message.type}: {message.text}")

    def on_request(request: Request) -> None:
        opened.requests.append(request.url)

    def on_websocket(websocket: WebSocket) -> None:
        opened.websockets.append(websocket.url)

    # The context's request event covers the page, its dedicated workers and their module imports;
    # the page's websocket event covers its workers' websockets too.
    context.on("request", on_request)
    page.on("websocket", on_websocket)
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    try:
        yield opened
    finally:
        context.close()


# --- the mesh ------------------------------------------------------------------------------------------


@dataclass
class Mesh:
    node: Node
    peers: list[PeerProc]
    model: Path
    tmp: Path


@contextlib.contextmanager
def running_mesh(tmp: Path, model: Path, spans: list[str]) -> Iterator[Mesh]:
    node = Node("node-a", tmp, model_dirs=[model])
    peers: list[PeerProc] = []
    try:
        node.wait()
        peers = [PeerProc(f"p{span}", tmp, model, [node.url], span=span) for span in spans]
        for peer in peers:
            peer.wait()
        yield Mesh(node, peers, model, tmp)
    finally:
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


def browser_entries(node: Node) -> list[dict[str, Any]]:
    return [e for e in node.directory()["entries"] if e["kind"] == "browser"]


def wait_for(what: str, check: Any, page: Page, timeout: float = 10.0) -> Any:
    """Poll ``check`` until true; waits through ``page`` so Playwright's events (requests, workers
    closing) are delivered meanwhile (a plain sleep would hold them back)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


def wait_serving(host: HostPage) -> None:
    """Until the widget's node serves; on failure, say what the widget says."""
    failed_or_serving = re.compile(r"^(failed|running)$")
    expect(host.widget).to_have_attribute("data-state", failed_or_serving, timeout=120_000)
    assert host.widget.get_attribute("data-state") == "running", host.field("message").inner_text()
    expect(host.widget).to_have_attribute("data-node-state", "serving")


def local_tokens(model: Path) -> tuple[int, ...]:
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS)).token_ids


async def mesh_run(node: Node, model: Path) -> tuple[tuple[int, ...], list[tuple[str, int, int]]]:
    """Greedy tokens through the mesh, and the route a session takes."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        result = await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS))
        return result.token_ids, await probe_route(client)
    finally:
        await client.aclose()
        await mesh_node.aclose()


async def probe_route(client: MeshClient) -> list[tuple[str, int, int]]:
    session = await client.open(1, 8)
    try:
        return [(peer, start, end) for peer, start, end in session.route]
    finally:
        await session.close()


# --- consent ---------------------------------------------------------------------------------------------

BAD_MEMORY = ["abc", "0", "-512", "127", "4097", "1e3", "512.5", "", "0x200", "99999999999"]
BAD_SIGNAL = ["http://127.0.0.1:1/", "not a url", "ws://user:secret@127.0.0.1:1/", "wss://example.org/#x"]


def test_nothing_runs_before_consent_and_bad_settings_start_nothing(
    browser: Browser, host_site: HostSite, tiny_llama_export: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    node = Node("node-a", tmp_path, model_dirs=[tiny_llama_export])
    try:
        node.wait()
        embed_url = f"{node.http_url}/embed.js"
        with host_page(browser) as host:
            url = host_site.add("/plain", node, data_max_memory_mb="512")
            host.goto(url)
            start = host.field("start")
            expect(start).to_be_visible()  # the page's `button {display: none !important}` stays outside
            expect(host.field("dismiss")).to_be_visible()
            expect(host.field("message")).to_contain_text("up to 512 MB of memory")
            expect(host.field("message")).to_contain_text("127.0.0.1")
            host.page.screenshot(path=artifacts_dir / "embed_consent.png")
            host.page.wait_for_timeout(1500)  # what the script would start on its own shows up by now
            assert host.requests == [url, embed_url]
            assert host.websockets == []
            assert node.health()["connections"] == 0  # type: ignore[index]
            host.field("dismiss").click()
            expect(host.widget).to_have_attribute("data-state", "dismissed")
            expect(start).to_be_visible()
            host.page.wait_for_timeout(500)
            assert host.requests == [url, embed_url] and host.websockets == []

            # No attributes: the default budget, the node's own signaling list; still nothing runs.
            url = host_site.add("/defaults", node)
            host.goto(url)
            expect(host.field("message")).to_contain_text("up to 512 MB of memory")
            assert host.requests == [url, embed_url]

            for i, value in enumerate(BAD_MEMORY + BAD_SIGNAL):
                attr = "data_max_memory_mb" if value in BAD_MEMORY else "data_signal"
                url = host_site.add(f"/bad{i}", node, **{attr: value})
                host.goto(url)
                expect(host.widget).to_have_attribute("data-state", "invalid")
                name = attr.replace("_", "-")
                expect(host.field("message")).to_contain_text(f'{name}="{value}"')
                expect(host.field("message")).to_contain_text("cannot start")
                expect(start).to_be_hidden()
                if i == 0:
                    host.widget.screenshot(path=artifacts_dir / "embed_invalid.png")
                start.dispatch_event("click")  # even a scripted click starts nothing
                host.page.wait_for_timeout(300)
                assert host.requests == [url, embed_url], value
                assert host.websockets == []
            assert node.health()["connections"] == 0  # type: ignore[index]
            assert host.errors == []
            assert [line for line in host.console if line.startswith("error")] == []
    finally:
        node.stop()


# --- serving from a worker -------------------------------------------------------------------------------


def test_embedded_node_serves_a_span_from_a_worker_and_stops(
    browser: Browser, host_site: HostSite, tiny_llama_export: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    model = tiny_llama_export
    model_name = load_manifest(model).name
    expected = local_tokens(model)
    assert len(expected) == MAX_TOKENS, "the tiny model must not stop early for this comparison"
    with running_mesh(tmp_path, model, ["0-1", "3-4"]) as mesh, host_page(browser) as host:
        host.goto(host_site.add("/embed", mesh.node, data_max_memory_mb="256"))
        assert browser_entries(mesh.node) == []
        native_connections = mesh.node.health()["connections"]  # type: ignore[index]
        # Stop while the node is still starting: the widget says stopped, the worker ends, no span is listed.
        host.field("start").click()
        expect(host.widget).to_have_attribute("data-state", "starting")
        host.field("stop").click()
        expect(host.widget).to_have_attribute("data-state", "stopped", timeout=15_000)
        # The worker is gone with its websocket, if it had opened one; nothing was announced.
        wait_for("the worker to end", lambda: host.page.workers == [], host.page)
        wait_for(
            "the websocket to close",
            lambda: mesh.node.health()["connections"] == native_connections,  # type: ignore[index]
            host.page,
        )
        assert [e["serves"] for e in browser_entries(mesh.node)] in ([], [[]])
        host.requests.clear()
        host.websockets.clear()

        host.field("start").click()
        wait_serving(host)
        expect(host.field("span")).to_have_text(f"blocks 1-3 of {model_name}")
        entries = wait_for("the browser's announcement", lambda: browser_entries(mesh.node), host.page)
        assert [(s["start"], s["end"]) for s in entries[0]["serves"]] == [(1, 3)]
        browser_id = entries[0]["peer_id"]
        assert len(host.page.workers) == 1 and host.page.workers[0].url.startswith("blob:")
        # Everything the node fetched came from the node's origin; its one websocket is the signaling.
        origins = {re.sub(r"^(blob:)?(\w+://[^/]+).*", r"\1\2", u) for u in host.requests}
        assert origins == {mesh.node.http_url, f"blob:{host_site.url}"}, host.requests
        assert host.websockets == [mesh.node.url + "/"]

        host.page.evaluate(RESET_TICKER)
        began = time.monotonic()
        tokens, route = LoopThread(mesh_run(mesh.node, model)).result(timeout=180)
        elapsed_ms = (time.monotonic() - began) * 1000
        ticker = host.page.evaluate("() => window.ticker")
        assert tokens == expected
        assert route == [(mesh.peers[0].peer_id, 0, 1), (browser_id, 1, 3), (mesh.peers[1].peer_id, 3, 4)]
        # The host page kept running while the worker computed: its 20 ms counter never stalled.
        assert ticker["count"] >= elapsed_ms / 20 / 3, (ticker, elapsed_ms)
        assert ticker["maxGapMs"] < 1000, ticker
        expect(host.field("tokens")).to_have_text(re.compile(r"^([1-9]\d+) \("), timeout=10_000)
        served = int(host.field("tokens").inner_text().split()[0])
        assert served >= MAX_TOKENS
        # The client countersigned its receipts: the worker's ledger credits this browser.
        expect(host.field("earned")).not_to_have_text(re.compile(r"^0\.000 credits"), timeout=30_000)
        expect(host.field("earned")).to_have_text(re.compile(r"^\d+\.\d{3} credits \(balance \d+\.\d{3}\)$"))
        host.widget.screenshot(path=artifacts_dir / "embed_running.png")

        # A second tab of the site shares the identity: its consent is refused while this node runs.
        second = host.context.new_page()
        second.goto(host.page.url)
        second.locator("#ai4all-start").click()
        expect(second.locator(WIDGET)).to_have_attribute("data-state", "failed", timeout=30_000)
        expect(second.locator("#ai4all-message")).to_contain_text("already runs in another tab")
        second.close()
        assert [e["peer_id"] for e in browser_entries(mesh.node)] == [browser_id]

        host.field("stop").click()
        expect(host.widget).to_have_attribute("data-state", "stopped", timeout=15_000)
        expect(host.field("message")).to_contain_text("nothing runs now")
        wait_for("the worker to end", lambda: host.page.workers == [], host.page)
        wait_for("the browser to leave the directory", lambda: browser_entries(mesh.node) == [], host.page, 5)
        expect(host.field("start")).to_be_visible()
        assert host.errors == []

        spare = PeerProc("spare1-3", mesh.tmp, model, [mesh.node.url], span="1-3")
        try:
            spare.wait()
            tokens, route = LoopThread(mesh_run(mesh.node, model)).result(timeout=180)
        finally:
            spare.stop()
        assert tokens == expected
        assert [peer for peer, start, _ in route if start == 1] == [spare.peer_id]

        # The host page itself keeps nothing: no cookie, no web storage (the worker's IndexedDB holds all).
        assert host.page.evaluate("() => [document.cookie, localStorage.length, sessionStorage.length]") == [
            "",
            0,
            0,
        ]

        # Once more, from the cache; leaving the page stops the node, which says bye to signaling.
        host.field("start").click()
        wait_serving(host)
        wait_for("the browser to come back", lambda: browser_entries(mesh.node), host.page)
        host_site.pages["/elsewhere"] = (
            b"<!doctype html><title>Elsewhere</title><link rel='icon' href='data:,'>"
        )
        host.page.goto(host_site.url + "/elsewhere")
        wait_for("the browser to say bye", lambda: browser_entries(mesh.node) == [], host.page, 5)
        assert host.errors == []
        assert [line for line in host.console if line.startswith("error")] == []


def test_data_signal_picks_the_signaling_node(
    browser: Browser, host_site: HostSite, tiny_llama_export: Path, tmp_path: Path
) -> None:
    """The worker announces on the node ``data-signal`` names, not on the one that served embed.js."""
    serving = Node("node-a", tmp_path, model_dirs=[tiny_llama_export])
    other = Node("node-b", tmp_path)
    try:
        serving.wait()
        other.wait()
        with host_page(browser) as host:
            host.goto(host_site.add("/signal", serving, data_signal=other.url))
            host.field("start").click()
            wait_serving(host)
            entries = wait_for("the announcement on node-b", lambda: browser_entries(other), host.page)
            assert entries[0]["connected_here"] is True
            assert browser_entries(serving) == []
            assert host.websockets == [other.url + "/"]
            host.field("stop").click()
            expect(host.widget).to_have_attribute("data-state", "stopped", timeout=15_000)
            wait_for("the browser to leave node-b", lambda: browser_entries(other) == [], host.page, 5)
            assert host.errors == []
    finally:
        serving.stop()
        other.stop()


# --- the relay -------------------------------------------------------------------------------------------

RELAY_CHECKS_JS = script("embed/relay_checks")


def test_relay_refuses_malformed_oversized_and_unanswered_messages(
    browser: Browser, host_site: HostSite, tmp_path: Path, tiny_llama_export: Path
) -> None:
    node = Node("node-a", tmp_path, model_dirs=[tiny_llama_export])
    try:
        node.wait()
        with host_page(browser) as host:
            host.goto(host_site.add("/relay", node))
            out = host.page.evaluate(RELAY_CHECKS_JS, node.http_url)
            assert host.errors == []
    finally:
        node.stop()
    # Errors of the page's BrowserTransport reach the worker with their class and message.
    assert out["noSdpSection"]["ok"] is False and out["noSdpSection"]["name"] == "SignalPayloadError"
    assert "m=application" in out["noSdpSection"]["message"]
    assert out["notAnObject"]["name"] == "SignalPayloadError"
    host_warnings = "\n".join(out["hostWarnings"])
    assert "dropped a malformed message" in host_warnings
    assert 'unknown type "no-such-type"' in host_warnings
    assert "relay version 99" in host_warnings
    worker_warnings = "\n".join(out["workerWarnings"])
    assert "reply to no pending request (9999)" in worker_warnings  # the page refused the forged send
    assert "link 5, which the page never opened" in worker_warnings
    assert "does not decode" in worker_warnings
    # Only link-open made a link; its undecodable frame was counted, the good one delivered.
    assert out["linkCount"] == 1
    assert out["link6"]["state"] == "open" and out["link6"]["stats"]["badFrames"] == 1
    assert out["frames"] == [["a" * 64, FrameType.CLOSE]]
    assert out["sendOnUnknown"]["name"] == "LinkClosedError"
    assert "closed or unknown on the page" in out["sendOnUnknown"]["message"]
    assert out["afterClose"] == {"ok": False, "name": "TransportError", "message": "the transport is closed"}
    assert out["linkAfterClose"] == "closed"

    first, second, third = out["bounded"]
    assert third["name"] == "TransportError"
    assert "2 handle-signal requests already wait on the other side of the relay" in third["message"]
    for timed_out in (first, second):
        assert timed_out["name"] == "TransportError"
        assert "handle-signal got no answer across the relay within 300 ms" in timed_out["message"]
    assert 250 < out["boundedMs"] < 3000
    first, second, third = out["sendsBounded"]
    assert "frames already wait on the page" in third["message"] and third["name"] == "TransportError"
    assert first["name"] == second["name"] == "TransportError" and "send got no answer" in first["message"]

    oversized, not_bytes = out["pageOversized"]
    assert oversized["ok"] is False and "over the relay's limit of 1024" in oversized["error"]["message"]
    assert not_bytes["ok"] is False and "no ArrayBuffer" in not_bytes["error"]["message"]
    assert out["workerOversized"]["name"] == "LimitExceededError"

    dead = out["dead"]["dead"]
    assert dead is not None and "has not answered for" in dead["reason"], out["dead"]
    assert 400 <= dead["afterMs"] < 900
    assert "ping" in out["dead"]["seen"] and "closed" in out["dead"]["seen"]
    assert out["live"]["dead"] is None, out["live"]


# A page-side RelayHost whose "worker" speaks the protocol but never takes a frame (so the relay's queue
# fills up), relaying offers it receives through a JS SignalClient; `silence()` makes it stop answering.
FAKE_WORKER_JS = script("embed/fake_worker")


async def overload_run(
    signal_url: str, browser_id: str, overloaded: threading.Event, silenced: threading.Event
) -> list[Frame]:
    """Three OPENs on one link: the third is refused as overloaded; then the link dies with the worker."""
    identity = Identity.generate()
    signal_client = await SignalClient.create(identity, SignalClientConfig(urls=(signal_url,)))
    node = MeshNode(identity, signal_client, TransportConfig(connect_timeout_s=15.0))
    try:
        link = await node.links.connect(browser_id)
        assert await link.ping(5) > 0  # the page's link answers PING itself
        sessions = [bytes([i]) * 16 for i in (1, 2, 3)]
        meta = {"model": "m", "start": 1, "end": 3, "batch": 1, "max_length": 8}
        for session in sessions:
            await link.send(Frame(FrameType.OPEN, session, 0, meta=meta))
        async with asyncio.timeout(5):
            answers = [await link.recv()]
        with pytest.raises(asyncio.TimeoutError):  # the first two wait for a worker that never takes them
            async with asyncio.timeout(0.5):
                answers.append(await link.recv())
        overloaded.set()
        await asyncio.to_thread(silenced.wait, 30)
        with pytest.raises(LinkClosedError):  # the page closes the link once the worker is declared dead
            async with asyncio.timeout(15):
                answers.append(await link.recv())
        return answers
    finally:
        await node.aclose()


def test_relay_queue_overload_and_dead_worker_over_webrtc(
    browser: Browser, host_site: HostSite, tmp_path: Path, tiny_llama_export: Path
) -> None:
    node = Node("node-a", tmp_path, model_dirs=[tiny_llama_export])
    try:
        node.wait()
        with host_page(browser) as host:
            host.goto(host_site.add("/fake", node))
            browser_id = host.page.evaluate(FAKE_WORKER_JS, {"nodeUrl": node.http_url, "signalUrl": node.url})
            overloaded, silenced = threading.Event(), threading.Event()
            run = LoopThread(overload_run(node.url, browser_id, overloaded, silenced))
            try:
                assert overloaded.wait(60), "the client never saw the overloaded answer"
                assert host.page.evaluate("() => window.fakeWorker.links()") == ["open"]
                host.page.evaluate("() => window.fakeWorker.silence()")
            finally:
                silenced.set()
            answers = run.result(timeout=60)
            state = host.page.evaluate("() => window.fakeWorker.state")
            links = host.page.evaluate("() => window.fakeWorker.links()")
            assert host.errors == []
    finally:
        node.stop()
    [refused] = answers
    assert refused.type == FrameType.ERROR and refused.meta["code"] == "overloaded"
    assert refused.session == bytes([3]) * 16 and refused.step == 0
    assert "2 frames" in str(refused.meta["message"]) and "wait for the worker" in str(
        refused.meta["message"]
    )
    assert state["framesToWorker"] == 2
    assert any("answered" in w and "overloaded" in w for w in state["warnings"])
    assert state["dead"] is not None and "has not answered for" in state["dead"]
    assert links == []


# --- the shard cache ---------------------------------------------------------------------------------------


def test_a_second_visit_loads_the_shard_from_the_cache(
    browser: Browser, host_site: HostSite, tiny_llama_export: Path, tmp_path: Path
) -> None:
    """After consent the worker caches its verified shard in the site's IndexedDB; a reload and a second
    consent serve from that cache: no second request for the shard's bytes, no cache warning."""
    node = Node("node-a", tmp_path, model_dirs=[tiny_llama_export])
    try:
        node.wait()
        with host_page(browser) as host:
            url = host_site.add("/cached", node)
            for visit in ("first", "second"):
                host.goto(url)  # the second visit reloads the page: the first visit's worker ends
                host.console.clear()
                host.field("start").click()
                wait_serving(host)
                shards = [
                    u
                    for u in host.requests
                    if u.startswith(node.http_url + "/models/") and u.endswith(".onnx")
                ]
                cache_warnings = [line for line in host.console if "cache" in line or "cached" in line]
                assert cache_warnings == [], (visit, cache_warnings)
                if visit == "first":
                    # The node takes the least-served run of shards that fits its budget (here all of them):
                    # each shard of it is fetched once.
                    assert shards and len(shards) == len(set(shards)), host.requests
                else:
                    assert shards == [], host.requests
            assert host.errors == []
    finally:
        node.stop()


BIG_SHARD_JS = """async (origin) => {
  const source = `
    const storage = await import('${origin}/web/src/storage/db.js');
    const { sha256Hex } = await import('${origin}/web/src/runtime/shard.js');
    self.onmessage = async () => {
      try {
        const warnings = [];
        const log = { warn: (m) => warnings.push(String(m)) };
        const size = 130 * 1024 * 1024 + 5;  // over Chromium's ~127 MiB limit on one IndexedDB value
        const bytes = new Uint8Array(size);
        for (let i = 0; i < size; i += 4093) bytes[i] = (i % 251) + 1;
        const sha = await sha256Hex(bytes);
        const url = URL.createObjectURL(new Blob([bytes]));
        const db = await storage.openDatabase('big-shard');
        const first = await sha256Hex(await storage.fetchShardCached(db, url, sha, size, undefined, { log }));
        URL.revokeObjectURL(url);  // from now on a download fails: only the cache can answer
        const second = await sha256Hex(await storage.fetchShardCached(db, url, sha, size, undefined, { log }));
        const listed = (await new storage.ShardCache(db).list()).map((info) => [info.size, info.pieces]);
        // A corrupt piece (one byte flipped) fails the sha256 check: the copy is dropped, downloaded again.
        await new Promise((resolve, reject) => {
          const tx = db.transaction('shard_bytes', 'readwrite');
          const store = tx.objectStore('shard_bytes');
          const request = store.get([sha, 3]);
          request.onsuccess = () => {
            const piece = new Uint8Array(request.result);
            piece[100] ^= 0xff;
            store.put(piece, [sha, 3]);
          };
          tx.oncomplete = resolve;
          tx.onerror = () => reject(tx.error);
        });
        const corrupt = await storage.fetchShardCached(db, url, sha, size, undefined, { log }).then(
          () => 'served', (err) => err.name);
        const after = await new storage.ShardCache(db).list();
        postMessage({ ok: true, same: first === sha && second === sha, warnings, listed, size, corrupt, after: after.length });
      } catch (err) {
        postMessage({ ok: false, error: String(err && err.stack || err) });
      }
    };
    postMessage('ready');`;
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: 'text/javascript' })), { type: 'module' });
  await new Promise((resolve) => { worker.onmessage = resolve; });
  const result = await new Promise((resolve) => { worker.onmessage = (e) => resolve(e.data); worker.postMessage('go'); });
  worker.terminate();
  return result;
}"""


def test_the_shard_cache_holds_a_shard_bigger_than_one_indexeddb_value(
    browser: Browser, web_server: Any
) -> None:
    """A real model's span is often over the ~127 MiB Chromium allows one IndexedDB value (the put aborted
    the transaction: "The transaction was aborted", so every visit downloaded it again): in a worker, as
    the embedded node runs, a 130 MiB shard is cached in pieces and read back without a download."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(web_server.url_for("/"))
        result = page.evaluate(BIG_SHARD_JS, web_server.url)
    finally:
        context.close()
    assert result["ok"], result.get("error")
    assert result["same"] is True
    assert result["listed"] == [[result["size"], 9]]  # 16 MiB pieces
    # The corrupt copy was not served: it was deleted, and the download it fell back on failed.
    assert result["corrupt"] == "ShardError"
    assert result["after"] == 0
    assert len(result["warnings"]) == 1 and "is corrupt" in result["warnings"][0], result["warnings"]

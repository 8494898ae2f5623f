"""Fixtures of the browser tests: Debian's Chromium through pytest-playwright, and a local static server.

Launch settings come from ``playwright.config.py`` at the repository root, loaded by path (its name is
not importable). pytest-playwright's ``browser`` fixture launches with them, so nothing ever looks for
a downloaded browser. ``web/`` and ``tests/vectors/`` are served on a free 127.0.0.1 port with the
MIME types and the cross-origin isolation headers the browser node needs (``.mjs`` as JavaScript,
``.wasm`` as ``application/wasm``, COOP/COEP for threaded WASM); ``/`` is a blank harness page on which
tests import modules. The signaling node will serve ``web/`` later; this server is for tests only.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"

# URL prefix -> directory served under it; nothing else of the repository is reachable.
MOUNTS: dict[str, Path] = {"/web/": ROOT / "web", "/tests/vectors/": ROOT / "tests" / "vectors"}
HARNESS_PATH = "/"
HARNESS_HTML = (
    b'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
    b"<title>AI4All browser tests</title><style>body{font:14px monospace;margin:16px}li{margin:2px 0}</style>"
    b'</head><body><h1>AI4All browser tests</h1><ul id="notes"></ul></body></html>\n'
)
MIME_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".tar": "application/x-tar",
    ".py": "text/x-python; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}
DEFAULT_MIME_TYPE = "application/octet-stream"
# Cross-origin isolation (SharedArrayBuffer, threaded WASM); nosniff makes a wrong MIME type fail loudly.
RESPONSE_HEADERS: dict[str, str] = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _load_launch_config() -> ModuleType:
    """``playwright.config.py`` as a module (a file name with a dot cannot be imported by name)."""
    path = ROOT / "playwright.config.py"
    spec = importlib.util.spec_from_file_location("ai4all_playwright_config", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the browser launch settings from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launch_config = _load_launch_config()


def resolve_url_path(path: str) -> Path | None:
    """The file a URL path names under MOUNTS, or None: no directories, no ``..``, nothing outside."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    for prefix, root in MOUNTS.items():
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
            return None
        file = root.joinpath(*parts)
        return file if file.is_file() else None
    return None


class _StaticHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the harness page and of files under MOUNTS, with the isolation headers."""

    server_version = "ai4all-test-static"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the log below is what tests read
        pass

    def _serve(self, *, send_body: bool) -> None:
        log = cast(_StaticServer, self.server).request_log
        if urllib.parse.urlsplit(self.path).path == HARNESS_PATH:
            self._reply(HTTPStatus.OK, MIME_TYPES[".html"], len(HARNESS_HTML))
            if send_body:
                self.wfile.write(HARNESS_HTML)
            log.append((self.path, HTTPStatus.OK))
            return
        file = resolve_url_path(self.path)
        if file is None:
            body = b"not found\n"
            self._reply(HTTPStatus.NOT_FOUND, MIME_TYPES[".txt"], len(body))
            if send_body:
                self.wfile.write(body)
            log.append((self.path, HTTPStatus.NOT_FOUND))
            return
        self._reply(HTTPStatus.OK, MIME_TYPES.get(file.suffix, DEFAULT_MIME_TYPE), file.stat().st_size)
        if send_body:
            with file.open("rb") as source:
                try:
                    shutil.copyfileobj(source, self.wfile)
                except (BrokenPipeError, ConnectionResetError):  # the page navigated away mid-file
                    self.close_connection = True
        log.append((self.path, HTTPStatus.OK))

    def _reply(self, status: HTTPStatus, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in RESPONSE_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()


class _StaticServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], request_log: list[tuple[str, int]]) -> None:
        super().__init__(address, _StaticHandler)
        self.request_log = request_log


@dataclass
class WebServer:
    """The running static server: ``url`` has no trailing slash; ``requests`` logs (path, status)."""

    url: str
    requests: list[tuple[str, int]] = field(default_factory=list)

    def url_for(self, path: str) -> str:
        return self.url + path


@dataclass
class Harness:
    """A page on the harness URL; ``errors`` collects uncaught page errors and console errors."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a line to the page, so the screenshot saved at the end shows what was checked."""
        self.page.evaluate(
            "text => { const li = document.createElement('li'); li.textContent = text;"
            " document.getElementById('notes').append(li); }",
            text,
        )

    def take_errors(self) -> list[str]:
        errors, self.errors[:] = list(self.errors), []
        return errors


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any], browser_name: str) -> dict[str, Any]:
    """pytest-playwright's launch arguments with ours: Debian's Chromium binary and its switches."""
    if browser_name != "chromium":
        pytest.skip(f"only Debian's Chromium is installed here, not {browser_name}")
    if "channel" in browser_type_launch_args:
        raise pytest.UsageError(
            "--browser-channel is not supported: the tests launch the Chromium binary of "
            "playwright.config.py (set AI4ALL_CHROMIUM to use another one)"
        )
    options = launch_config.browser_launch_options(headless=browser_type_launch_args.get("headless", True))
    if "slow_mo" in browser_type_launch_args:
        options["slow_mo"] = browser_type_launch_args["slow_mo"]
    return dict(options)


@pytest.fixture(scope="session")
def webgpu_browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    """A second Chromium with a WebGPU adapter (SwiftShader: for correctness, never for speed)."""
    browser = launch_browser(args=launch_config.chromium_args(webgpu=True))
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def web_server() -> Iterator[WebServer]:
    """Serve MOUNTS and the harness page on a free port of 127.0.0.1 for the whole session."""
    log: list[tuple[str, int]] = []
    httpd = _StaticServer(("127.0.0.1", 0), log)
    server = WebServer(url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=log)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``tests/artifacts/browser/`` (git-ignored): screenshots of test pages."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def harness(
    browser: Browser, web_server: WebServer, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    """One page per test module on the harness URL; its screenshot is saved when the module ends."""
    context = browser.new_context()
    page = context.new_page()
    opened = Harness(page, context)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(f"console.error: {message.text}")

    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    page.goto(web_server.url_for(HARNESS_PATH))
    try:
        yield opened
    finally:
        name = request.module.__name__.rsplit(".", 1)[-1]
        page.screenshot(path=artifacts_dir / f"{name}.png", full_page=True)
        context.close()


T = TypeVar("T")


class LoopThread:
    """``asyncio.run`` of one coroutine in a daemon thread; ``result`` waits for it."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.future: Future[Any] = Future()

        def main() -> None:
            try:
                self.future.set_result(asyncio.run(coro))
            except BaseException as exc:  # handed to the test thread
                self.future.set_exception(exc)

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> Any:
        try:
            return self.future.result(timeout)
        finally:
            self.thread.join(1)

"""The browser tests' static server: ``web/`` and ``tests/vectors/`` on a free 127.0.0.1 port.

Files are served with the MIME types and the cross-origin isolation headers the browser node needs
(``.mjs`` as JavaScript, ``.wasm`` as ``application/wasm``, COOP/COEP for threaded WASM); ``/`` is a blank
harness page on which tests import modules. ``MOUNTS`` maps URL prefixes to directories: a test may add
one for its duration (``monkeypatch.setitem``). The signaling node serves ``web/`` to real users; this
server is for tests only.
"""

from __future__ import annotations

import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]

# URL prefix -> directory served under it; nothing else of the repository is reachable.
MOUNTS: dict[str, Path] = {"/web/": ROOT / "web", "/tests/vectors/": ROOT / "tests" / "vectors"}
HARNESS_PATH = "/"
# Where tests mount the tiny model and ``python_peer/core`` (for Pyodide) when they need them.
MODEL_PREFIX = "/model/"
CORE_PREFIX = "/py/python_peer/core/"
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


@contextmanager
def serve() -> Iterator[WebServer]:
    """Serve MOUNTS and the harness page on a free port of 127.0.0.1 until the block ends."""
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

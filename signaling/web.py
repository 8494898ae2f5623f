"""The browser node as a signaling node serves it: pages, modules, browser dependencies, model files.

Every signaling node serves, on its own port next to the websocket at ``/`` (``docs/browser.md``):

- ``GET /``       the contribute page (``web/src/ui/contribute.js``)
- ``GET /chat``   the browser chat page (``web/src/ui/browser_chat.js``)
- ``GET /embed.js``  the embed script (``web/src/embed/embed.js``)
- ``GET /web/src/**`` the browser node's modules
- ``GET /web/node_modules/<dependency>/**`` the five browser dependencies (``BROWSER_DEPENDENCIES``)
- ``GET /py/python_peer/core/*.py`` the standard-library ledger rules, for Pyodide
- ``GET /models/<name>/<file>`` the files the manifest of each ``--model-dir`` lists, its ``manifest.sig.json``
  and ``manifest.record.json``
- ``GET /v1/config`` the page configuration (``BrowserSite.config``)

Paths are resolved strictly (``resolve_file``): each static root is a fixed folder, a request names a
plain file under it (no ``..``, no hidden names, no empty segments, no backslash or NUL), and the file
it resolves to, links followed, must still lie under that folder. Model files are looked up by name in
the manifest's list, never built from the request. Nothing else is listed or served.

``resolve_file`` and ``mime_type`` come from ``python_peer/core/static_files.py``, shared with the native
node's pages (``python_peer/api/``).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from python_peer.core.admission import admit_model_dir
from python_peer.core.canonical import MODEL_RE
from python_peer.core.economics import GRANT_POW_BITS
from python_peer.core.errors import ManifestError
from python_peer.core.ice import IceSettings
from python_peer.core.manifest import MANIFEST_FILE, load_manifest
from python_peer.core.publication import SIGNED_MANIFEST_FILE
from python_peer.core.registry_record import RECORD_FILE
from python_peer.core.static_files import mime_type, resolve_file

from .errors import SiteError

REPO_DIR = Path(__file__).resolve().parent.parent
WEB_DIR = REPO_DIR / "web"
PYTHON_CORE_DIR = REPO_DIR / "python_peer" / "core"
TEMPLATE = "node/page.html"

# The browser dependencies a page may load, as folders of web/node_modules/: nothing else of it is served.
BROWSER_DEPENDENCIES = (
    "onnxruntime-web/dist",
    "pyodide",
    "@huggingface/tokenizers/dist",
    "@huggingface/jinja/dist",
    "@noble/hashes",  # its ES modules lie at the package's top and import each other relatively
)

# What the browser node needs and no more. 'wasm-unsafe-eval': WebAssembly.instantiate (onnxruntime-web,
# Pyodide); neither needs eval (Pyodide's module build imports pyodide.asm.mjs, tests/browser/
# test_node_pages.py loads it under this policy). connect-src reaches any http(s)/ws(s) origin: sibling
# signaling nodes, and their model files, live on other origins. worker-src blob:: the embed widget on a
# page of another origin starts its worker from a blob (a worker script must be same-origin).
PAGE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "connect-src 'self' ws: wss: http: https:",
        "worker-src 'self' blob:",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Static files, /embed.js and /v1/config: readable by pages of any origin (the embed widget), and
# embeddable under their COEP. COEP on the files themselves keeps a worker started from one of them
# cross-origin isolated (threaded WASM).
STATIC_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# A 404 is readable from other origins too: the embed widget sees "not found", not a network error.
NOT_FOUND_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
PAGES = {
    "contribute": ("Contribute", "contribute.js"),
    "chat": ("Chat in your browser", "browser_chat.js"),
}
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class ServedModel:
    """A model directory a signaling node serves: its name and the files its manifest lists."""

    name: str
    directory: Path
    files: frozenset[str]

    @classmethod
    def load(cls, directory: Path) -> ServedModel:
        """Read ``directory/manifest.json``; every file it lists must be a plain name present there."""
        root = Path(directory)
        if not root.is_dir():
            raise SiteError(f"--model-dir {root}: not a directory")
        try:
            manifest = load_manifest(root)
        except ManifestError as exc:
            raise SiteError(f"--model-dir {root}: no valid manifest: {exc}") from exc
        name = manifest.name
        if MODEL_RE.match(name) is None or any(part in ("", ".", "..") for part in name.split("/")):
            raise SiteError(
                f"--model-dir {root}: {MANIFEST_FILE} model.name {name!r} is not a model name peers can "
                "announce (1-128 of A-Z a-z 0-9 . _ : / @ + -, no empty, '.' or '..' part)"
            )
        tokenizer = manifest.tokenizer
        names = [MANIFEST_FILE, *(item.file for shard in manifest.shards for item in shard.files)]
        for key in ("file", "chat_template_file"):
            value = tokenizer.get(key)
            if value is None and key == "chat_template_file":
                continue
            if not isinstance(value, str):
                raise SiteError(
                    f"--model-dir {root}: {MANIFEST_FILE} tokenizer.{key} is {value!r}, not a file"
                )
            names.append(value)
        if (root / SIGNED_MANIFEST_FILE).is_file():
            names.append(SIGNED_MANIFEST_FILE)  # browsers check the publisher's signature with it
        if (root / RECORD_FILE).is_file():
            names.append(RECORD_FILE)  # its registry record, for whoever fetches the model over HTTP
        files = frozenset(names)
        for listed in sorted(files):
            if resolve_file(root, listed) is None or "/" in listed:
                raise SiteError(
                    f"--model-dir {root}: {MANIFEST_FILE} lists {listed!r}, which is not a file in that "
                    "directory (re-export the model: ai4all export --out DIR)"
                )
        for shard in manifest.shards:
            for item in shard.files:  # the .onnx and its external-data file, if any
                size = (root / item.file).stat().st_size
                if size != item.bytes:
                    raise SiteError(
                        f"--model-dir {root}: shard {shard.file}: {item.file} has {size} bytes, the manifest "
                        f"says {item.bytes} (a partial copy? re-export or copy it again)"
                    )
        try:
            admit_model_dir(root)  # nothing is served to browsers that a node would not admit
        except ManifestError as exc:
            raise SiteError(f"--model-dir {root}: {exc}") from exc
        return cls(name, root.resolve(), files)

    def file(self, name: str) -> Path | None:
        """The listed file ``name`` of this model, or None."""
        if name not in self.files:
            return None
        return resolve_file(self.directory, name)


def index_models(models: Iterable[ServedModel]) -> dict[str, ServedModel]:
    """``models`` by name; two directories of one model name are refused (which would a browser get?)."""
    by_name: dict[str, ServedModel] = {}
    for model in models:
        if model.name in by_name:
            raise SiteError(
                f"two --model-dir directories export the model {model.name!r}: "
                f"{by_name[model.name].directory} and {model.directory}"
            )
        by_name[model.name] = model
    return by_name


@dataclass
class BrowserSite:
    """What a signaling node serves to browsers, besides the websocket; ``install`` adds the routes."""

    node_id: str
    public_url: str  # the node's ws:// or wss:// URL as configured (``--url`` or ws://HOST:PORT)
    url_given: bool  # --url was given: HTTP URLs derive from it, not from the request's Host
    siblings: Sequence[str] = ()
    models: Sequence[ServedModel] = ()
    pow_bits: int = GRANT_POW_BITS
    web_dir: Path = WEB_DIR
    core_dir: Path = PYTHON_CORE_DIR
    known_siblings: Callable[[], Iterable[str]] | None = None  # siblings learned since (federation)
    ice: IceSettings = field(default_factory=IceSettings)  # --ice-server etc.: loopback only by default
    # the publishers whose models this node's pages use (--trust-publisher), and whether they take an
    # unsigned local export (--allow-unsigned): pages check every signed manifest themselves
    trusted_publishers: tuple[str, ...] = ()
    allow_unsigned: bool = False
    _by_name: dict[str, ServedModel] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = index_models(self.models)
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.web_dir / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # --- configuration ------------------------------------------------------------------------------

    def http_base(self, request: Request) -> str:
        """``http(s)://host:port`` of this node as the browser reaches it, without a trailing slash."""
        if self.url_given:
            parts = urllib.parse.urlsplit(self.public_url)
            scheme = "https" if parts.scheme == "wss" else "http"
            return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        host = request.headers.get("host", "")
        if _HOST_RE.match(host) is None:
            host = urllib.parse.urlsplit(self.public_url).netloc
        return f"{request.url.scheme}://{host}"

    def signal_urls(self, request: Request) -> list[str]:
        """This node's websocket URL first, then its siblings' (configured, then learned)."""
        own = self.public_url
        host = urllib.parse.urlsplit(own).hostname or ""
        if not self.url_given and _is_wildcard(host):  # listening on every address: as reached
            base = self.http_base(request)
            own = ("wss" if base.startswith("https:") else "ws") + base[base.index(":") :]
        urls = [own]
        learned: Iterable[str] = self.known_siblings() if self.known_siblings is not None else ()
        for url in [*self.siblings, *learned]:
            if url not in urls:
                urls.append(url)
        return urls

    def config(self, request: Request) -> dict[str, Any]:
        """The page configuration (``docs/browser.md``, "Page configuration"): nothing secret but the
        TURN servers' username and credential, which every browser of the mesh needs to use them."""
        base = self.http_base(request)
        return {
            "node_id": self.node_id,
            "signal": self.signal_urls(request),
            "models": [
                {
                    "name": m.name,
                    "base": f"{base}/models/{urllib.parse.quote(m.name, safe='')}/",
                    "signed": SIGNED_MANIFEST_FILE in m.files,  # pages verify it; unsigned: allow_unsigned
                }
                for m in self.models
            ],
            "ledger": {"pow_bits": self.pow_bits},
            "python_core": f"{base}/py/python_peer/core/",
            "ice": self.ice.page_config(),
            "publishers": {"trusted": list(self.trusted_publishers), "allow_unsigned": self.allow_unsigned},
        }

    # --- responses -----------------------------------------------------------------------------------

    def page(self, request: Request, name: str) -> Response:
        title, module = PAGES[name]
        try:
            html = self._templates.get_template(TEMPLATE).render(
                page=name, title=title, module=f"/web/src/ui/{module}", config=self.config(request)
            )
        except jinja2.TemplateNotFound:
            return _not_found(f"the page template {TEMPLATE} is not in {self.web_dir / 'templates'}")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    def web_file(self, path: str) -> Response:
        """``/web/<path>``: the modules under ``src/`` and the browser dependencies, nothing else."""
        if path.startswith("src/"):
            return _file(self.web_dir / "src", path.removeprefix("src/"), f"/web/{path}")
        if path.startswith("node_modules/"):
            rest = path.removeprefix("node_modules/")
            for dependency in BROWSER_DEPENDENCIES:
                if rest.startswith(dependency + "/"):
                    root = self.web_dir / "node_modules" / dependency
                    return _file(root, rest.removeprefix(dependency + "/"), f"/web/{path}")
        return _not_found(f"/web/{path} is not served: only web/src/ and {', '.join(BROWSER_DEPENDENCIES)}")

    def core_file(self, name: str) -> Response:
        """``/py/python_peer/core/<name>.py``: one module of the standard-library core."""
        if "/" in name or not name.endswith(".py"):
            return _not_found(f"/py/python_peer/core/{name} is not served: only the core's *.py files")
        return _file(self.core_dir, name, f"/py/python_peer/core/{name}")

    def model_file(self, path: str) -> Response:
        """``/models/<name>/<file>``: a file the manifest of model ``<name>`` lists."""
        name, _, file_name = path.rpartition("/")
        model = self._by_name.get(name)
        file = model.file(file_name) if model is not None else None
        if file is None:
            return _not_found(f"/models/{path}: no such model file (only the files its manifest lists)")
        return FileResponse(file, media_type=mime_type(file), headers=STATIC_HEADERS)

    def install(self, app: FastAPI) -> None:
        """Add the routes; the websocket at ``/`` is the app's own and coexists with ``GET /``."""
        app.add_middleware(NoSniff)

        @app.get("/", include_in_schema=False)
        async def contribute(request: Request) -> Response:
            return self.page(request, "contribute")

        @app.get("/chat", include_in_schema=False)
        async def chat(request: Request) -> Response:
            return self.page(request, "chat")

        @app.get("/embed.js", include_in_schema=False)
        async def embed() -> Response:
            return _file(self.web_dir / "src" / "embed", "embed.js", "/embed.js")

        @app.get("/web/{path:path}", include_in_schema=False)
        async def web(path: str) -> Response:
            return self.web_file(path)

        @app.get("/py/python_peer/core/{name:path}", include_in_schema=False)
        async def core(name: str) -> Response:
            return self.core_file(name)

        @app.get("/models/{path:path}", include_in_schema=False)
        async def models(path: str) -> Response:
            return self.model_file(path)

        @app.get("/v1/config")
        async def config(request: Request) -> Response:
            return JSONResponse(self.config(request), headers=STATIC_HEADERS)


class NoSniff:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every HTTP response, the framework's own
    404s and 405s included, so a browser never guesses a type the node did not say."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_nosniff)


def _file(root: Path, path: str, shown: str) -> Response:
    file = resolve_file(root, path)
    if file is None:
        return _not_found(f"no file {shown}")
    return FileResponse(file, media_type=mime_type(file), headers=STATIC_HEADERS)


def _not_found(message: str) -> Response:
    shown = message if len(message) <= 300 else message[:300] + "..."  # paths come from the request
    return PlainTextResponse(shown + "\n", status_code=404, headers=NOT_FOUND_HEADERS)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


__all__ = [
    "BROWSER_DEPENDENCIES",
    "PAGE_CSP",
    "PAGE_HEADERS",
    "STATIC_HEADERS",
    "BrowserSite",
    "NoSniff",
    "ServedModel",
    "index_models",
]

"""A signaling node serves the browser node: its pages in Debian's Chromium, with the node's own headers.

One ``ai4all signal`` process serves the tiny Llama export (``--model-dir``). The pages at ``/`` and
``/chat`` must load cross-origin isolated, with their configuration, stylesheet and module, and with no
request refused and no CSP violation. Under the pages' own CSP and COEP, Pyodide must start and import
the standard-library core from ``/py/python_peer/core/``, and onnxruntime-web's WASM must run the
model's embed shard from ``/models/<name>/`` on two threads (its workers start under that CSP), equal
to onnxruntime on the CPU here. A page of another origin (the tests' static server, itself under COEP)
must be able to read ``/v1/config``, import the node's modules and download its shards: what the embed
widget does.

The Pyodide and onnxruntime tests open the node's real page with only its module request aborted (the
other helpers' page modules run a whole browser node, which is not what these tests look at): the
HTML, its headers and every other request come from the node unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Response, Route

from python_peer.core.manifest import load_manifest
from tests.support.browser import script
from tests.support.procs import Node
from tests.support.static_server import WebServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"/": "web/src/ui/contribute.js", "/chat": "web/src/ui/browser_chat.js"}

# Collects CSP violations from the start of every document, before any page script runs.
WATCH_CSP = script("node_pages/watch_csp")


@dataclass
class Opened:
    """A page of the node and what went wrong on it."""

    page: Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    failed: list[str] = field(default_factory=list)  # responses >= 400 and requests that failed

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("() => window.__cspViolations"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node-pages")
    started = Node("pages-node", tmp, model_dirs=[tiny_llama_export])
    try:
        started.wait()
        yield started
    finally:
        assert started.stop() == 0


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context()
    opened.add_init_script(WATCH_CSP)
    yield opened
    opened.close()


def open_page(context: BrowserContext, url: str, *, without_module: str | None = None) -> Opened:
    """Open ``url``, recording errors; ``without_module`` aborts that one module request."""
    page = context.new_page()
    opened = Opened(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(f"console.error: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            opened.failed.append(f"{response.status} {response.url}")

    def on_failed(request: Request) -> None:
        if not (without_module and request.url.endswith(without_module)):
            opened.failed.append(f"failed {request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    if without_module:

        def abort(route: Route) -> None:
            route.abort("blockedbyclient")

        page.route(f"**{without_module}", abort)
    page.goto(url)
    return opened


def page_state(page: Page) -> dict[str, Any]:
    return dict(page.evaluate(script("node_pages/page_state")))


@pytest.mark.parametrize("path", list(PAGES))
def test_page_shell_is_isolated_configured_and_styled(node: Node, context: BrowserContext, path: str) -> None:
    """The page itself, whoever writes its module: headers, config, stylesheet, no CSP violation."""
    module = PAGES[path]
    opened = open_page(context, node.http_url + path, without_module=module.removeprefix("web"))
    opened.page.wait_for_load_state("load")
    state = page_state(opened.page)
    assert state["isolated"] is True, "COOP/COEP must make the page cross-origin isolated"
    assert state["module"] == "/" + module and state["app"] and state["styled"]
    config = state["config"]
    assert config == json.loads(_get(node.http_url + "/v1/config"))
    assert config["signal"][0] == node.url and config["node_id"] == node.name
    assert opened.failed == [] and opened.csp_violations() == []
    assert [e for e in opened.errors if "ERR_BLOCKED_BY_CLIENT" not in e] == []


@pytest.mark.parametrize("path", list(PAGES))
def test_page_with_its_module_loads_without_serving_errors(
    node: Node, context: BrowserContext, path: str
) -> None:
    """The whole page: its module and everything it imports are served (no 404, no MIME or CSP refusal)."""
    module = PAGES[path]
    if not (ROOT / module).is_file():
        pytest.skip(f"{module} is not written yet (another helper's module): only the page shell was checked")
    opened = open_page(context, node.http_url + path)
    opened.page.wait_for_load_state("networkidle")
    prefix = f"404 {node.http_url}/web/src/"
    missing = [f.removeprefix(prefix) for f in opened.failed if f.startswith(prefix)]
    unwritten = [name for name in missing if not (ROOT / "web" / "src" / name).exists()]
    if unwritten and unwritten == missing:
        pytest.skip(
            f"{module} imports web/src/{', web/src/'.join(unwritten)}, not written yet (another helper's)"
        )
    serving = [
        e
        for e in opened.errors
        if any(
            word in e
            for word in ("Content Security Policy", "MIME", "Cross-Origin", "404", "Failed to load module")
        )
    ]
    assert opened.failed == [] and opened.csp_violations() == [] and serving == [], (
        opened.failed,
        opened.errors,
    )


def test_pyodide_loads_under_the_page_csp_and_imports_the_core(node: Node, context: BrowserContext) -> None:
    opened = open_page(context, node.http_url + "/chat", without_module="/src/ui/browser_chat.js")
    result = opened.page.evaluate(script("node_pages/pyodide_core"))
    assert result["sum"] == 2 and result["bits"] == result["expected"], result
    assert opened.csp_violations() == [] and opened.failed == [], (opened.csp_violations(), opened.failed)


def test_onnxruntime_wasm_runs_a_shard_from_the_node(
    node: Node, context: BrowserContext, tiny_llama_export: Path
) -> None:
    import onnxruntime as ort

    manifest = load_manifest(tiny_llama_export)
    ids = [[1, 5, 9, 2]]
    opened = open_page(context, node.http_url + "/", without_module="/src/ui/contribute.js")
    result = opened.page.evaluate(
        script("node_pages/wasm_shard"),
        ids,
    )
    assert result["backend"] == "wasm" and result["name"] == manifest.name
    assert result["threads"] == 2  # threaded WASM: its workers start under the page's CSP and COEP
    embed = manifest.embed
    session = ort.InferenceSession(str(tiny_llama_export / embed.file), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["hidden_states_out"], {"input_ids": np.array(ids, dtype=np.int64)})
    assert result["dims"] == list(expected.shape)
    np.testing.assert_allclose(np.array(result["data"], dtype=np.float32), expected.ravel(), atol=1e-6)
    assert opened.csp_violations() == [] and opened.failed == [], (opened.csp_violations(), opened.failed)


def test_a_page_of_another_origin_reads_config_modules_and_shards(
    node: Node, browser: Browser, web_server: WebServer
) -> None:
    """The embed widget's view: a cross-origin-isolated page elsewhere fetches and imports from the node."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(web_server.url_for("/"))
        result = page.evaluate(
            script("node_pages/other_origin"),
            node.http_url,
        )
    finally:
        context.close()
    assert result["isolated"] is True and result["node"] == node.name
    assert result["size"] == result["expected"]
    expected_embed = 200 if (ROOT / "web/src/embed/embed.js").is_file() else 404
    assert result["embed"] == expected_embed


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, trust_env=False, timeout=10).text

"""Fixtures of the browser tests: Debian's Chromium through pytest-playwright, a static server, a harness page.

Launch settings come from ``playwright.config.py`` at the repository root (``tests/support/browser.py``
loads it by path: its name is not importable). pytest-playwright's ``browser`` fixture launches with them,
so nothing ever looks for a downloaded browser. The static server (``tests/support/static_server.py``)
serves ``web/`` and ``tests/vectors/`` with the headers the browser node needs; ``harness`` is a page on
its blank harness URL. Fixtures shared by several test modules (the tiny model and the core mounted on the
static server) live here too; helpers that are not fixtures live in ``tests/support/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage

from tests.support.browser import Harness, launch_config
from tests.support.static_server import (
    CORE_PREFIX,
    HARNESS_PATH,
    MODEL_PREFIX,
    MOUNTS,
    ROOT,
    WebServer,
    serve,
)

ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"


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
    with serve() as server:
        yield server


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


@pytest.fixture
def served_model(tiny_llama_export: Path) -> Iterator[Path]:
    """The tiny Llama export, served at ``MODEL_PREFIX`` for the test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, MODEL_PREFIX, tiny_llama_export)
        yield tiny_llama_export


@pytest.fixture
def served_core() -> Iterator[None]:
    """``python_peer/core`` served at ``CORE_PREFIX`` for the test (Pyodide imports the ledger rules)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, CORE_PREFIX, ROOT / "python_peer" / "core")
        yield

"""What browser tests share besides fixtures: the launch settings, the harness page, and page scripts.

Page scripts live in ``tests/browser/js/<test module>/<name>.js``, one function per file (``// @ts-check``,
JSDoc types): ``script(name)`` returns a file's text, and ``page.evaluate(script(name), arg)`` evaluates
it, so its value, the function, is called with ``arg`` (as an inline function string was). Playwright
evaluates through the DevTools protocol, so the node pages' CSP (no eval, no inline scripts) still holds
for the pages' own code. ``add_init_script(script(name))`` runs a file as a plain script instead.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from playwright.sync_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "browser" / "js"


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


@functools.cache
def script(name: str) -> str:
    """The text of ``tests/browser/js/<name>.js``: a function expression for ``page.evaluate``."""
    path = JS_DIR / f"{name}.js"
    if not path.is_file():
        raise FileNotFoundError(f"no page script {name!r}: {path} does not exist")
    return path.read_text(encoding="utf-8")


@dataclass
class Harness:
    """A page on the harness URL; ``errors`` collects uncaught page errors and console errors."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a line to the page, so the screenshot saved at the end shows what was checked."""
        self.page.evaluate(script("harness/note"), text)

    def take_errors(self) -> list[str]:
        errors, self.errors[:] = list(self.errors), []
        return errors

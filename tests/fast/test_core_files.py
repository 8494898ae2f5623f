"""The browser's ledger runs ``python_peer/core`` in Pyodide from the files ``CORE_FILES`` lists
(``web/src/ledger/python_core.js``): every core module the two it loads import, directly or not, must
be listed, or the page fails with an ImportError only when a browser first opens its ledger."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "python_peer" / "core"
LOADED = ("browser_ledger.py", "ledger_exchange.py")  # what python_core.js imports (loadCore, loadCoreModule)


def _listed() -> set[str]:
    source = (ROOT / "web" / "src" / "ledger" / "python_core.js").read_text()
    block = re.search(r"CORE_FILES = Object\.freeze\(\[(.*?)\]\)", source, re.S)
    assert block is not None, "CORE_FILES not found in python_core.js"
    return set(re.findall(r"'([a-z_]+\.py)'", block.group(1)))


def _imported(name: str) -> set[str]:
    """The core modules ``name`` imports relatively (``from .x import``, ``from . import x``)."""
    found = set()
    for node in ast.walk(ast.parse((CORE / name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(f"{node.module.split('.')[0]}.py")
            else:
                found.update(f"{alias.name}.py" for alias in node.names)
    return found


def test_every_core_module_the_browser_imports_is_listed() -> None:
    needed, todo = set(), ["__init__.py", *LOADED]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += sorted(_imported(name))
    missing = needed - _listed()
    assert not missing, f"python_core.js CORE_FILES lacks {sorted(missing)}"

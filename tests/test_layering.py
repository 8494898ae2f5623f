"""The layering of the code, read statically (no process, no import): who may import whom, no import
cycle in Python or JS, a stdlib-only core, and no source module over ``MAX_LINES``.

Python imports are read with ``ast``: module-level and function-level imports both count; imports under
``if TYPE_CHECKING:`` are left out (they never run, and annotations may name a module above). JS
imports are the static ``import ... from './x.js'`` and ``export ... from './x.js'`` of ``web/src``;
dynamic ``import()`` is left out.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from python_peer.core import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("python_peer", "signaling", "exporter")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every Python module of the packages, by dotted name."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "node_modules" not in path.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dotted names ``name`` imports: a known module where one is meant, else the name as written."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        for alias in node.names:
            submodule = f"{module}.{alias.name}"
            found.add(submodule if submodule in known else module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) & known for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _all_imports() -> dict[str, set[str]]:
    """Every module's imports as written (not only our own modules), for the rules on foreign imports."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


# --- who may import whom ------------------------------------------------------------------------------


def test_signaling_shares_only_the_core_and_the_identity_with_peers() -> None:
    allowed = ("python_peer.core", "python_peer.identity")
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in _all_imports().items()
        if name.split(".")[0] == "signaling"
        for target in targets
        if target.split(".")[0] == "python_peer"
        and not any(target == a or target.startswith(a + ".") for a in allowed)
    )
    assert wrong == []


def test_the_peer_never_imports_signaling() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in _all_imports().items()
        if name.split(".")[0] == "python_peer"
        for target in targets
        if target.split(".")[0] == "signaling"
    )
    assert wrong == []


# The command-line modules, and the one shared definition of the ICE flags; below them, library functions
# take typed options (frozen dataclasses), never an ``argparse.Namespace``.
_COMMAND_LINE = {
    "exporter.cli",
    "python_peer.cli",
    "python_peer.benchmark_cli",
    "python_peer.calibrate_cli",
    "python_peer.chat_cli",
    "python_peer.ledger_cli",
    "python_peer.models_cli",
    "python_peer.peer_cli",
    "python_peer.publish_cli",
    "python_peer.status_cli",
    "python_peer.up",
    "python_peer.core.ice",
    "python_peer.core.publisher_trust",  # the one definition of the trust flags, as ice.py's
    "python_peer.core.js_constants",  # a generator script: its main() is its command line
    "signaling.cli",
}


def test_only_the_command_line_reads_arguments() -> None:
    readers = sorted(name for name, targets in _all_imports().items() if "argparse" in targets)
    assert set(readers) <= _COMMAND_LINE, sorted(set(readers) - _COMMAND_LINE)


def test_no_import_cycle_in_python() -> None:
    graph = _graph()
    assert "python_peer.api.app" in graph and "signaling.web" in graph  # the graph is the real one
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_core_imports_only_the_standard_library() -> None:
    core = ROOT / "python_peer" / "core"
    foreign = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            foreign += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in sys.stdlib_module_names]
    assert foreign == []
    assert (core / "wire.py").exists() and errors.WireError.code == "bad_frame"


def _is_exception(node: ast.ClassDef) -> bool:
    """A class deriving, by name, from an error or exception class (``Error`` of signaling's messages is not)."""
    names = [
        b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
        for b in node.bases
    ]
    return any(n.endswith(("Error", "Exception")) for n in names)


def test_the_drawn_exception_tree_names_every_exception_class() -> None:
    """``python_peer/core/errors.py`` draws the whole hierarchy: a new public exception goes in it."""
    drawn = errors.__doc__ or ""
    missing = [
        f"{name}.{node.name}"
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and _is_exception(node)
        if not re.search(rf"\b{node.name}\b", drawn)
    ]
    assert missing == []


# --- module size ---------------------------------------------------------------------------------------


def _source_files() -> Iterator[Path]:
    for folder in ("python_peer", "signaling", "exporter", "bench"):
        yield from (p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts)
    yield from (p for p in (ROOT / "web" / "src").rglob("*.js") if "node_modules" not in p.parts)


def test_no_source_module_is_over_the_limit() -> None:
    over = []
    for path in sorted(_source_files()):
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            over.append(f"{relative}: {lines} lines")
    assert over == []


# --- JS -----------------------------------------------------------------------------------------------

# import x from './a.js'; import { a, b } from '../b.js'; import './c.js'; export { d } from './d.js';
# export * from './e.js'. Not import('./f.js') (dynamic), nor imports of packages (no leading dot).
_JS_IMPORT = re.compile(
    r"""^\s*(?:import|export)\s+(?:[\w*{}\s,$]*?\s*from\s*)?['"](\.{1,2}/[^'"]+)['"]""", re.MULTILINE
)


def _js_graph() -> dict[str, set[str]]:
    src = ROOT / "web" / "src"
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        targets = {(path.parent / spec).resolve() for spec in _JS_IMPORT.findall(text)}
        graph[path.relative_to(ROOT).as_posix()] = {
            t.relative_to(ROOT).as_posix() for t in targets if t.is_relative_to(src)
        }
    return graph


def test_the_js_import_pattern() -> None:
    text = (
        "import a from './a.js';\nimport {\n  b,\n  c,\n} from '../b.js';\nimport './c.js';\n"
        "export { d } from './d.js';\nexport * from './e.js';\nconst f = await import('./f.js');\n"
        "import g from 'pkg';\n"
    )
    assert _JS_IMPORT.findall(text) == ["./a.js", "../b.js", "./c.js", "./d.js", "./e.js"]


def test_no_import_cycle_in_js() -> None:
    graph = _js_graph()
    assert len(graph) > 10 and any(graph.values())  # the modules were found and read
    assert _cycles(graph) == []

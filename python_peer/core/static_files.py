"""Static files served strictly: resolving a request path under a fixed folder, and its MIME type.

Standard library only; shared by the signaling node's browser site (``signaling/web.py``) and the
native node's pages (``python_peer/api/``). A request names a plain file under the root (no ``..``, no
hidden names, no empty segments, no backslash or NUL), and the file it resolves to, links followed,
must still lie under the root. Nothing else is served.
"""

from __future__ import annotations

from pathlib import Path

MIME_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".py": "text/x-python; charset=utf-8",
    ".zip": "application/zip",
    ".jinja": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".bin": "application/octet-stream",
}
DEFAULT_MIME_TYPE = "application/octet-stream"


def resolve_file(root: Path, path: str) -> Path | None:
    """The regular file ``path`` (``a/b/c``) names under ``root``, or None.

    Refused: empty segments (so no leading ``/``), ``.``, ``..`` and other hidden names, backslashes,
    NUL, names the OS cannot resolve, and any file that, links followed, lies outside ``root``.
    """
    parts = path.split("/")
    if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        return None
    try:
        base = root.resolve()
        file = base.joinpath(*parts).resolve()
        if not file.is_relative_to(base) or not file.is_file():
            return None
    except (OSError, ValueError):  # a name too long, a link loop
        return None
    return file


def mime_type(file: Path | str) -> str:
    """The Content-Type of ``file`` by its suffix (``.mjs`` is JavaScript); unknown ones are bytes."""
    return MIME_TYPES.get(Path(file).suffix.lower(), DEFAULT_MIME_TYPE)

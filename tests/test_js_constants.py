"""The browser's protocol constants are generated from the Python core and checked in: never stale."""

from __future__ import annotations

import re

from python_peer.core import js_constants


def test_checked_in_constants_are_current() -> None:
    assert js_constants.TARGET.read_text(encoding="utf-8") == js_constants.render(), (
        "web/src/protocol/constants.js is stale: run python -m python_peer.core.js_constants"
    )


def test_no_generated_constant_is_redefined_in_web_src() -> None:
    names = [name for _, group in js_constants.EXPORTS for name in group]
    src = js_constants.TARGET.parent.parent
    pattern = re.compile(r"^\s*(?:export\s+)?const\s+(" + "|".join(names) + r")\s*=", re.MULTILINE)
    offenders = []
    for path in sorted(src.rglob("*.js")):
        if path == js_constants.TARGET:
            continue
        offenders += [f"{path.relative_to(src)}: {m.group(1)}" for m in pattern.finditer(path.read_text())]
    assert not offenders, f"constants written twice (import them from protocol/constants.js): {offenders}"

"""The browser's protocol constants are generated from the Python core and checked in: never stale."""

from __future__ import annotations

import json
import re

import pytest

from python_peer.core import js_constants, wire


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


def test_enums_and_tables_are_frozen_objects_with_every_member() -> None:
    text = js_constants.render()
    for enum in (wire.FrameType, wire.FrameFlags, wire.ErrorCode):
        block = text.split(f"export const {enum.__name__} = Object.freeze({{\n", 1)[1].split("\n});", 1)[0]
        assert block.splitlines() == [f"  {m.name}: {json.dumps(m.value)}," for m in enum], enum
    assert 'export const MAGIC = "A4AF";' in text
    assert (
        "export const DTYPE_SIZES = Object.freeze({\n  float32: 4,\n  float16: 2,\n  int64: 8,\n  uint8: 1,\n});"
        in text
    )


def test_only_exact_values_are_exported() -> None:
    for bad in (float("nan"), float("inf"), True, 2**53, b"\xff", None):
        with pytest.raises((TypeError, ValueError)):
            js_constants._literal("X", bad)
    # a finite float is exact: both sides are IEEE doubles, and the shortest repr reads back the same
    for fraction in (0.05, 1e-2, 1 / 3):
        assert float(js_constants._literal("X", fraction)) == fraction

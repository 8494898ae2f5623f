"""Writes the browser's copy of the protocol constants: ``web/src/protocol/constants.js``.

Each protocol constant is written once, in this core; the browser imports the generated module instead of
repeating the numbers: the wire format's sizes, limits and enums (``FrameType``, ``FrameFlags`` and
``ErrorCode`` become frozen objects), the signaling protocol's contexts and bounds, and the session
protocol's. Run ``python -m python_peer.core.js_constants`` after changing one of the constants
below (``--check`` exits 1 when the checked-in file is stale; ``tests/test_js_constants.py`` does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from pathlib import Path
from types import ModuleType

from . import (
    admission,
    answers,
    canonical,
    chunks,
    ledger_exchange,
    memory_budget,
    proof_of_work,
    protocol,
    publication,
    receipts,
    registry_record,
    spot_policy,
    wire,
)

TARGET = Path(__file__).resolve().parents[2] / "web" / "src" / "protocol" / "constants.js"

# (module, names): what the browser needs, in the order the generated file lists them.
EXPORTS: tuple[tuple[ModuleType, tuple[str, ...]], ...] = (
    (
        wire,
        (
            "MAGIC",
            "VERSION",
            "HEADER_SIZE",
            "SESSION_ID_BYTES",
            "ALIGN",
            "MAX_FRAME_BYTES",
            "MAX_METADATA_BYTES",
            "MAX_TENSORS",
            "MAX_RANK",
            "MAX_DIM",
            "MAX_NAME_BYTES",
            "MAX_META_DEPTH",
            "MAX_SAFE_INT",
            "MAX_ERROR_MESSAGE_BYTES",
            "MAX_STEP",
            "CHUNK_MAGIC",
            "CHUNK_HEADER_SIZE",
            "DEFAULT_CHUNK_SIZE",
            "MAX_CHUNKS",
            "MAX_MESSAGE_ID",
            "DTYPE_SIZES",
            "FrameType",
            "FrameFlags",
            "ErrorCode",
        ),
    ),
    (
        canonical,
        (
            "PROTOCOL_VERSION",
            "ANNOUNCE_CONTEXT",
            "SIGNAL_CONTEXT",
            "AUTH_CONTEXT",
            "BYE_CONTEXT",
            "MAX_DEPTH",
            "MAX_MESSAGE_BYTES",
            "MAX_SIGNAL_PAYLOAD_BYTES",
            "MIN_TTL_MS",
            "MAX_TTL_MS",
            "MAX_CLOCK_SKEW_MS",
            "MAX_SEQ_AHEAD_MS",
            "MAX_SIGNAL_AGE_MS",
            "MAX_SERVES",
            "MAX_SIGNALING_URLS",
            "MAX_COUNTER",
            "MAX_LAYER",
        ),
    ),
    (
        protocol,
        (
            "MAX_SESSIONS",
            "MAX_PENDING_RECEIPTS",
            "MAX_LENGTH_LIMIT",
            "MAX_BATCH",
            "PUSH_ENTRIES",
            "PUSH_BYTES",
            "CHANNEL_GOSSIP_BYTES",
            "SIGNALING_GOSSIP_BYTES",
            "WEBRTC_SIGNAL",
            "LEDGER_SIGNAL",
            "MAX_SDP_CHARS",
            "PROBE_EVERY_MS",
            "PROBE_TIMEOUT_MS",
            "PROBE_MISSES",
            "OPEN_TIMEOUT_MS",
            "SIGNALING_FIRST_MESSAGE_MS",
            "SIGNALING_IDLE_MS",
        ),
    ),
    (receipts, ("RECEIPT_CONTEXT",)),
    (ledger_exchange, ("OPEN_LOG",)),
    (answers, ("ANSWER_CONTEXT", "ANSWER_META_KEY", "INPUT_CHAIN_START")),
    (proof_of_work, ("GRANT_POW_CONTEXT",)),
    (
        spot_policy,
        ("SPOT_CHECK_FLOOR", "SPOT_CHECK_WARMUP", "SPOT_CHECK_TOLERANCES", "MAX_TRACKED_PEERS"),
    ),
    (
        admission,
        ("ALLOWED_OPS", "ALLOWED_MS_OPS", "ALLOWED_DOMAINS", "IR_VERSIONS", "OPSET_RANGES", "MS_DOMAIN"),
    ),
    (
        publication,
        (
            "SIGNED_MANIFEST_FILE",
            "MANIFEST_CONTEXT",
            "PUBLICATION_VERSION",
            "CHUNK_BYTES",
            "MAX_PUBLISHED_FILES",
            "MAX_FILE_BYTES",
            "MAX_SIGNED_MANIFEST_BYTES",
        ),
    ),
    (registry_record, ("RECORD_FILE", "RECORD_CONTEXT", "RECORD_VERSION", "MAX_RECORD_BYTES")),
    (
        chunks,
        (
            "SIGNED_TENSOR",
            "MANIFEST_TENSOR",
            "DATA_TENSOR",
            "MAX_CHUNK_REQUESTS_IN_FLIGHT",
            "MAX_SEEDER_REQUESTS_IN_FLIGHT",
            "CHUNK_REQUESTS_PER_S",
            "DEFAULT_UPLOAD_BYTES_PER_S",
            "MAX_SEEDER_REQUESTERS",
            "CHUNK_REQUEST_TIMEOUT_MS",
            "SOURCE_BAN_MS",
            "HAVE_FILES_BYTES",
            "MAX_MANIFEST_ANSWER_BYTES",
            "ChunkKind",
            "ChunkErrorCode",
        ),
    ),
    (
        memory_budget,
        (
            "MEMORY_FIELD",
            "KV_DTYPE_BYTES",
            "PLAN_SESSIONS",
            "PLAN_CONTEXT",
            "WASM_MEMORY_BYTES",
            "WASM_RUNTIME_BYTES",
        ),
    ),
)


def _frozen(name: str, table: dict[str, object]) -> str:
    items = "".join(
        f"\n  {key if key.isidentifier() else json.dumps(key)}: {_literal(f'{name}.{key}', item)},"
        for key, item in table.items()
    )
    return f"Object.freeze({{{items}\n}})"


def _literal(name: str, value: object) -> str:
    """One constant as JavaScript: a number (int or finite float), a string (ASCII bytes too), or a frozen object for an enum
    or a str -> int table."""
    if isinstance(value, type) and issubclass(value, Enum):
        return _frozen(name, {m.name: m.value for m in value})
    if isinstance(value, dict):
        return _frozen(name, value)
    if isinstance(value, tuple):  # a frozen array
        return f"Object.freeze([{', '.join(_literal(f'{name}[]', item) for item in value)}])"
    if isinstance(value, bytes):
        if not value.isascii() or not value.isalnum():
            raise ValueError(f"{name}: only ASCII letters and digits are exported from bytes")
        value = value.decode("ascii")
    if isinstance(value, float):  # JSON's shortest repr reads back as the same double in JavaScript
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name}: {value} is not a finite number")
        return json.dumps(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        kind = type(value).__name__
        raise TypeError(
            f"{name}: only int, float, str, bytes, enum, dict and tuple constants are exported, not {kind}"
        )
    if isinstance(value, int) and abs(value) > 2**53 - 1:
        raise ValueError(f"{name}: {value} is not exact in a JavaScript number")
    return json.dumps(int(value) if isinstance(value, int) else str(value))


def render() -> str:
    """The text of ``constants.js`` for the constants as they are now."""
    lines = [
        "// @ts-check",
        "// Generated by `python -m python_peer.core.js_constants` from python_peer/core: do not edit.",
        "// Each constant is defined, with its reasoning, in the Python module named above its block.",
    ]
    for module, names in EXPORTS:
        lines.append("")
        lines.append(f"// {module.__name__}")
        for name in names:
            lines.append(f"export const {name} = {_literal(name, getattr(module, name))};")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m python_peer.core.js_constants", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run python -m python_peer.core.js_constants", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The spot-check policy's numbers, shared by the native client (``python_peer/spot_check.py``) and the
browser's (``web/src/client/spot_check.js``, through the generated ``web/src/protocol/constants.js``).

Standard library only. A client checks a peer's hop in every session until the peer has passed
``SPOT_CHECK_WARMUP`` checks, then with probability ``(warmup / (passes + 1))**2``, never below
``SPOT_CHECK_FLOOR`` (BOINC's adaptive replication; docs/trust.md). Two answers to the same step agree when
``max |a - b| <= tolerance * max(max |a|, max |b|)``, the tolerance fitted to the shards' dtype
(``SPOT_CHECK_TOLERANCES``; an unknown dtype gets the loosest, ``q4``'s).
"""

from __future__ import annotations

SPOT_CHECK_FLOOR = 0.05  # the lowest check rate: no peer is ever left unchecked
SPOT_CHECK_WARMUP = 5  # checks a peer must pass before it is checked less than every session
# Relative tolerance on max |a - b| / max(max |a|, max |b|), per shard dtype. Native onnxruntime and
# onnxruntime-web (WASM) differ by ~2e-3 in fp32 on SmolLM2 (docs/trust.md); fp16 and weight-only 8-bit
# kernels differ more between runtimes; 4-bit most. A liar that changes tokens is far above these: noise,
# zeros, skipped blocks or stale states change the hidden states by O(1) relative to their max.
SPOT_CHECK_TOLERANCES = {"fp32": 1e-2, "fp16": 3e-2, "q8": 5e-2, "q4": 1e-1}
MAX_TRACKED_PEERS = 4096  # a client's tables of passes and caught peers are bounded


def check_rate(passes: int, warmup: int = SPOT_CHECK_WARMUP, floor: float = SPOT_CHECK_FLOOR) -> float:
    """The probability of checking a peer with ``passes`` checks passed in a row."""
    if passes < warmup:
        return 1.0
    return max(floor, min(1.0, (warmup / (passes + 1)) ** 2))


def tolerance_for(dtype: str, tolerances: dict[str, float] | None = None) -> float:
    """The agreement tolerance of shards of ``dtype`` (``q4``'s for a dtype not listed)."""
    table = SPOT_CHECK_TOLERANCES if tolerances is None else tolerances
    return table.get(dtype, SPOT_CHECK_TOLERANCES["q4"])


__all__ = [
    "MAX_TRACKED_PEERS",
    "SPOT_CHECK_FLOOR",
    "SPOT_CHECK_TOLERANCES",
    "SPOT_CHECK_WARMUP",
    "check_rate",
    "tolerance_for",
]

"""Regenerate the golden narrowing vectors: ``python tests/vectors/generate_narrowing.py [--out FILE]``.

The cases are the contract between ``python_peer/tensors.py`` (``to_wire``) and its browser twin
``web/src/protocol/tensors.js`` (``floatTensor``): for float32 values, the dtype a sender carries them in
(float16 when every value is a float16, losslessly) and the exact bytes. Both test suites read
``narrowing.json`` (``tests/fast/test_tensors.py`` also checks that the file on disk is what this script
writes).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

from python_peer.tensors import to_wire

OUT = Path(__file__).resolve().parent / "narrowing.json"
INF = float("inf")


def cases() -> dict[str, list[float]]:
    """Float32 values by case name; every value is exact in float32."""
    rng = np.random.default_rng(20261206)
    float16s = rng.normal(0, 40, 64).astype(np.float16).astype(np.float32)
    float32s = rng.normal(0, 40, 64).astype(np.float32)
    return {
        "float16 values, random": [float(v) for v in float16s],
        "float16 edges": [0.0, -0.0, 65504.0, -65504.0, 2.0**-14, 2.0**-24, 3 * 2.0**-24, 1023 * 2.0**-24],
        "float16 values and Inf": [1.5, INF, -INF, -2.5],
        "float32 values, random": [float(v) for v in float32s],
        "one value float16 rounds": [1.0, 2.0, 1.0 + 2.0**-12],
        "one value float16 overflows": [1.0, 65520.0],
        "one value below float16's smallest subnormal": [1.0, 2.0**-25],
        "a subnormal with a bit float16 lacks": [1.0, 3 * 2.0**-25],
        "a float32 subnormal": [1.0, 2.0**-130],
        "NaN": [1.0, float("nan")],
        "zeros": [0.0] * 8,
    }


def vectors() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, values in cases().items():
        array = np.array(values, dtype=np.float32).reshape(1, 1, len(values))
        tensor = to_wire("hidden_states", array)
        out.append(
            {
                "case": name,
                "float32": struct.pack(f"<{len(values)}f", *values).hex(),
                "shape": list(array.shape),
                "dtype": tensor.dtype,
                "data": tensor.data.hex(),
            }
        )
    return out


def write(out: Path) -> None:
    out.write_text(json.dumps(vectors(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    write(parser.parse_args().out)

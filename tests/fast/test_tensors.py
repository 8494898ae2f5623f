"""``python_peer/tensors.py``: a float32 array of float16 values travels as float16, losslessly; anything
else float32 keeps its dtype (docs/wire.md, "Tensor descriptors")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from python_peer.core.errors import NonFiniteError
from python_peer.core.wire import Frame, FrameType, decode_frame, encode_frame
from python_peer.tensors import from_wire, to_wire

ROOT = Path(__file__).resolve().parents[2]


def through_a_frame(array: np.ndarray) -> tuple[str, np.ndarray]:
    """The dtype ``array`` is carried in and what the receiver reads, through an encoded FORWARD."""
    frame = Frame(FrameType.FORWARD, b"\x01" * 16, 0, tensors=(to_wire("hidden_states", array),))
    carried = decode_frame(encode_frame(frame)).tensor("hidden_states")
    return carried.dtype, from_wire(carried)


def test_float16_values_travel_as_float16_and_come_back_exactly() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(0, 300, (2, 5, 8)).astype(np.float16).astype(np.float32)
    values[0, 0, :4] = [0.0, -0.0, 65504.0, 2.0**-24]  # zero's sign, the largest, the smallest subnormal
    dtype, back = through_a_frame(values)
    assert dtype == "float16"
    assert back.dtype == np.float32 and back.shape == values.shape
    np.testing.assert_array_equal(back, values)
    assert np.signbit(back[0, 0, 1])


@pytest.mark.parametrize(
    "odd",
    [
        1.0 + 2.0**-12,  # float16 would round it
        65520.0,  # float16 would overflow it to Inf
        2.0**-26,  # float16 would flush it to zero
    ],
)
def test_one_value_float16_would_change_keeps_the_tensor_float32(odd: float) -> None:
    values = np.ones((1, 3, 4), np.float32)
    values[0, 2, 3] = odd
    dtype, back = through_a_frame(values)
    assert dtype == "float32"
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused_whichever_dtype_carries_them(bad: float) -> None:
    values = np.ones((1, 2, 4), np.float32)
    values[0, 1, 2] = bad
    frame = Frame(FrameType.FORWARD, b"\x01" * 16, 0, tensors=(to_wire("hidden_states", values),))
    with pytest.raises(NonFiniteError):
        from_wire(decode_frame(encode_frame(frame)).tensor("hidden_states"))


def test_int64_and_empty_tensors_keep_their_dtype() -> None:
    assert to_wire("position_ids", np.arange(4, dtype=np.int64)[None]).dtype == "int64"
    assert to_wire("hidden_states", np.zeros((1, 0, 8), np.float32)).dtype == "float32"


def test_narrowing_vectors_on_disk_are_what_the_generator_writes(tmp_path: Path) -> None:
    """tests/vectors/narrowing.json, which web/test/narrowing.test.js holds the browser's encoder to."""
    out = tmp_path / "narrowing.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "vectors" / "generate_narrowing.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, cwd=ROOT, env=env)
    on_disk = (ROOT / "tests" / "vectors" / "narrowing.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == on_disk
    cases = {c["case"]: c["dtype"] for c in json.loads(on_disk)}
    assert cases["float16 edges"] == "float16" and cases["NaN"] == "float32"

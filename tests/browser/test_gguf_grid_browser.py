"""Shards that carry a GGUF grid run in onnxruntime-web (WASM) as in native onnxruntime.

A q4 conversion of a small fp32 graph whose weights come from a real GGUF file holds every operator
such shards use: MatMulNBits with 4-bit codes (Q4_0, and Q4_1 with its block-sum correction) and 8-bit
codes (Q8_0), and the dequantizing gather of the embedding (8-bit codes, and 4-bit ones unpacked with
BitShift). The page runs it through ``web/src/runtime/onnx.js``; every output matches onnxruntime's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from exporter import quantize
from exporter.gguf_grid import GgufGrid, describe
from tests.support.browser import Harness, script
from tests.support.gguf_shards import GGUFType, K, fp32_shard, sample_weight, write_gguf
from tests.support.static_server import MOUNTS

pytestmark = pytest.mark.browser

PREFIX = "/gguf-grid/"
VOCAB = 40
RUN_GRAPH_JS = script("quantized/run_graph")


@pytest.fixture(scope="module")
def q4_shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("gguf-grid")
    rng = np.random.default_rng(3)
    values = write_gguf(
        work / "tiny.gguf",
        {
            "q41": (sample_weight(rng, 48), GGUFType.Q4_1),
            "q40": (sample_weight(rng, 32), GGUFType.Q4_0),
            "q80": (sample_weight(rng, 40), GGUFType.Q8_0),
            "embd8": (sample_weight(rng, VOCAB), GGUFType.Q8_0),
            "embd4": (sample_weight(rng, VOCAB), GGUFType.Q4_1),
        },
    )
    fp32 = fp32_shard(
        work / "fp32.onnx",
        {"q41": values["q41"], "q40": values["q40"], "q80": values["q80"]},
        {"e8": values["embd8"], "e4": values["embd4"]},
    )
    quantize.convert(fp32, work / "q4.onnx", "q4", GgufGrid(work / "tiny.gguf"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, PREFIX, work)
        yield work / "q4.onnx"


def test_q4_grid_shard_runs_in_wasm_as_natively(harness: Harness, q4_shard: Path) -> None:
    import onnx

    kinds = describe(onnx.load(str(q4_shard)))
    assert set(kinds) == {
        "MatMulNBits Q4_1 as 4-bit",
        "MatMulNBits Q4_0 as 4-bit",
        "MatMulNBits Q8_0 as 8-bit",
        "Gather Q8_0 as 8-bit",
        "Gather Q4_1 as 4-bit",
    }
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    ids = np.array([[0, 1, 2], [VOCAB - 1, 7, 0]], dtype=np.int64)
    session = ort.InferenceSession(str(q4_shard), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    native = dict(zip(names, session.run(names, {"x": x, "ids": ids}), strict=True))

    result = harness.page.evaluate(
        RUN_GRAPH_JS,
        {
            "url": PREFIX + q4_shard.name,
            "x": base64.b64encode(x.tobytes()).decode("ascii"),
            "xDims": list(x.shape),
            "ids": ids.ravel().tolist(),
            "idsDims": list(ids.shape),
        },
    )
    assert result["ok"], result.get("message")
    assert result["backend"] == "wasm"
    assert set(result["outputs"]) == set(names)
    diffs = {}
    for name, out in result["outputs"].items():
        got = np.frombuffer(base64.b64decode(out["data"]), dtype=np.float32).reshape(out["dims"])
        assert got.shape == native[name].shape, name
        diffs[name] = float(np.abs(got - native[name]).max())
    harness.note(f"GGUF-grid q4 shard in onnxruntime-web {result['version']}: max abs diffs {diffs}")
    # int8 activations (Q8_0, accuracy_level 4) may round differently between kernels; the rest is float
    for name, diff in diffs.items():
        assert diff < (2e-2 if name == "y_q80" else 1e-4), (name, diffs)
    assert harness.take_errors() == []

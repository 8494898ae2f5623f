"""A GGUF's own grid carried into a q4/q8 shard: MatMul and Gather weights found in the file by value
(rows reordered as transformers reorders Q/K) become MatMulNBits and a dequantizing gather with the
file's codes and scales, and compute what the fp32 shard computes; what the file cannot give falls back
to re-quantization with a line that names the weight; a corrupt file is refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf.quants import quantize
from onnx import TensorProto

from exporter import quantize as q
from exporter.errors import ModelSourceError
from exporter.gguf_grid import GgufGrid, describe
from tests.support.gguf_shards import GGUFType, K, fp32_shard, sample_weight, write_gguf

T = GGUFType
VOCAB = 50
RNG = np.random.default_rng(7)


def _weight(rows: int, cols: int = K) -> np.ndarray:
    return sample_weight(RNG, rows, cols)


def _twin_rows(w: np.ndarray) -> np.ndarray:
    """Row 3 holds row 2's values reversed: equal row sums, different rows (Q8_0 keeps both exactly)."""
    w[3] = w[2][::-1]
    return w


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    values = write_gguf(
        path,
        {
            "blk.0.attn_q.weight": (_weight(48), T.Q4_1),
            "blk.0.attn_k.weight": (_weight(32), T.Q4_0),
            "blk.0.ffn_up.weight": (_twin_rows(_weight(40)), T.Q8_0),
            "blk.0.ffn_down.weight": (_weight(24), T.Q5_0),
            "blk.0.norm_like.weight": (_weight(16), T.F32),
            "token_embd.weight": (_weight(VOCAB), T.Q8_0),
            "token_embd4.weight": (_weight(VOCAB), T.Q4_1),
        },
    )
    return path, values


def _run(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "x": RNG.standard_normal((2, 3, K)).astype(np.float32),
        "ids": np.array([[0, 1, 2], [VOCAB - 1, 7, 0]], dtype=np.int64),
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


FEEDS_SEED = 11


def _compare(fp32: Path, converted: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    global RNG
    RNG = np.random.default_rng(FEEDS_SEED)
    ref = _run(fp32)
    RNG = np.random.default_rng(FEEDS_SEED)
    return ref, _run(converted)


@pytest.mark.parametrize("dtype", ["q4", "q8"])
def test_grid_is_carried_exactly(source, tmp_path: Path, dtype: str, monkeypatch) -> None:
    path, values = source
    # float32 activations everywhere, so that only the weights are compared (8-bit runs at level 4 by default)
    monkeypatch.setattr(q, "GRID_ACCURACY_LEVEL", {4: 0, 8: 0})
    # transformers reorders Q and K rows (llama.cpp permutes them for its rotary layout): reorder here too
    perm = RNG.permutation(48)
    weights = {
        "q": values["blk.0.attn_q.weight"][perm],
        "k": values["blk.0.attn_k.weight"],
        "up": values["blk.0.ffn_up.weight"][RNG.permutation(40)],
    }
    embeddings = {"e8": values["token_embd.weight"], "e4": values["token_embd4.weight"]}
    fp32 = fp32_shard(tmp_path / "fp32.onnx", weights, embeddings)
    out = tmp_path / f"{dtype}.onnx"
    q.convert(fp32, out, dtype, GgufGrid(path))

    model = onnx.load(str(out))
    # Each grid keeps its own width whatever the dtype: exact, and no larger than the file.
    assert describe(model) == {
        "MatMulNBits Q4_1 as 4-bit": 1,
        "MatMulNBits Q4_0 as 4-bit": 1,
        "MatMulNBits Q8_0 as 8-bit": 1,
        "Gather Q8_0 as 8-bit": 1,
        "Gather Q4_1 as 4-bit": 1,
    }
    floats = [
        i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2
    ]
    assert floats == [f"gguf_block_sum_{K}"]  # the only float matrix left: Q4_1's 0/1 block indicator
    ref, got = _compare(fp32, out)
    for name in ("e_e8", "e_e4"):
        np.testing.assert_array_equal(got[name], ref[name])  # the gather dequantizes as the GGUF does
    for name in ("y_q", "y_k", "y_up"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)
    assert out.stat().st_size < 0.4 * fp32.stat().st_size


def test_head_keeps_its_8bit_grid_as_codes_dequantized_at_load(source, tmp_path: Path) -> None:
    path, values = source
    # the tied head: the Q8_0 embedding matrix as a MatMul weight, in a shard converted as kind "head"
    fp32 = fp32_shard(tmp_path / "fp32.onnx", {"head": values["token_embd.weight"]}, {})
    out = tmp_path / "head.onnx"
    q.convert(fp32, out, "q4", GgufGrid(path), kind="head")
    model = onnx.load(str(out))
    assert describe(model) == {"MatMul Q8_0 as 8-bit, dequantized at load": 1}
    assert not any(i.data_type == TensorProto.FLOAT and len(i.dims) == 2 for i in model.graph.initializer)
    ref, got = _compare(fp32, out)
    np.testing.assert_allclose(got["y_head"], ref["y_head"], rtol=1e-5, atol=1e-6)
    assert out.stat().st_size < 0.35 * fp32.stat().st_size


def test_weights_the_file_cannot_give_are_requantized_and_named(source, tmp_path: Path, caplog) -> None:
    path, values = source
    weights = {
        "q5": values["blk.0.ffn_down.weight"],  # Q5_0: no MatMulNBits form decoded here
        "f32": values["blk.0.norm_like.weight"],  # a float tensor: no grid at all
        "stranger": (RNG.standard_normal((40, K)) * 0.05).astype(np.float32),  # not in the file
    }
    fp32 = fp32_shard(tmp_path / "fp32.onnx", weights, {})
    out = tmp_path / "q4.onnx"
    with caplog.at_level(logging.WARNING, logger="exporter.quantize"):
        q.convert(fp32, out, "q4", GgufGrid(path))
    assert describe(onnx.load(str(out))) == {"MatMulNBits re-quantized to 4-bit": 3}
    lines = [r.getMessage() for r in caplog.records]
    assert any("onnx::MatMul_q5" in m and "blk.0.ffn_down.weight (Q5_0)" in m for m in lines), lines
    assert any("onnx::MatMul_stranger" in m and "no quantized GGUF tensor" in m for m in lines), lines
    assert all("\n" not in m for m in lines)
    ref, got = _compare(fp32, out)
    for name in ref:  # re-quantized to a fresh symmetric grid: close, not exact
        diff = np.abs(got[name] - ref[name])
        assert diff.max() > 1e-4 and diff.mean() < 0.1 * np.abs(ref[name]).mean()


def test_a_truncated_gguf_is_refused_in_one_line(source, tmp_path: Path) -> None:
    path, _ = source
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 300])
    with pytest.raises(ModelSourceError) as info:
        GgufGrid(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)


def test_nan_scales_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "nan.gguf"
    data = quantize(_weight(8), T.Q4_1)
    data = data.copy()
    data[3, 0:2] = np.array([np.nan], dtype=np.float16).view(np.uint8)  # row 3's first block: d = NaN
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.3.attn_v.weight", data, raw_dtype=T.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError, match=r"blk\.3\.attn_v\.weight \(Q4_1\) holds NaN or Inf"):
        GgufGrid(path)

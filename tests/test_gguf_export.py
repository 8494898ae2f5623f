"""``ai4all export model.gguf --dtype q4`` on a GGUF that holds a tensor type MatMulNBits cannot carry
(Q5_0): the export succeeds, says in one line which weight of which shard falls back to re-quantization
and why, and the manifest's ``quality`` counts the weights carried from the file's grid and the one
re-quantized. The GGUF is built here (random weights, the default model's tokenizer), loaded by
transformers as any GGUF is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter.source import default_gguf
from python_peer.core.manifest import load_manifest
from tests.support.gguf_shards import GGUFType, tiny_llama_gguf
from tests.support.procs import run_cli

pytestmark = pytest.mark.slow  # transformers parses the 49152-token vocabulary (~1 minute here)


def test_a_tensor_type_without_a_grid_falls_back_and_is_named(tmp_path: Path) -> None:
    model = tiny_llama_gguf(
        tmp_path / "tiny.gguf",
        default_gguf(),
        np.random.default_rng(1),
        {"blk.1.ffn_down.weight": GGUFType.Q5_0},
    )
    out = tmp_path / "q4"
    result = run_cli(["export", str(model), "--out", str(out), "--dtype", "q4", "--shards", "2"], timeout=900)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "re-quantized" in line]
    assert len(lines) == 1, result.stderr
    assert "blocks_1-2.onnx" in lines[0] and "blk.1.ffn_down.weight (Q5_0)" in lines[0]
    assert "cannot carry over" in lines[0]
    quality = load_manifest(out).quality
    assert quality is not None
    assert quality["weights"] == {
        "Gather Q8_0 as 8-bit": 1,
        "MatMul Q8_0 as 8-bit, dequantized at load": 1,
        "MatMulNBits Q4_1 as 4-bit": 13,  # 2 layers x 7 matrices, but the Q5_0 one
        "MatMulNBits re-quantized to 4-bit": 1,
    }
    assert quality["size_ratio"] < 0.35

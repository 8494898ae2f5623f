"""q4 of the default model keeps its answers: the Q4_1 GGUF's own grid is carried into the shards
(issue 13, point 3). Through the CLI, as a user exports it: at most 0.2 of fp32's size and greedy
agreement with fp32 of at least 0.95, stated in the manifest's ``quality`` and equal to a fresh
measurement against the fp32 export."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import quality
from python_peer.core.manifest import load_manifest
from tests.support.procs import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # two exports of the default model


@pytest.fixture(scope="module")
def q4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from python_peer.up import DEFAULT_SPANS

    out = tmp_path_factory.mktemp("q4") / "SmolLM2-135M-Instruct"
    result = run_cli(["export", "--out", str(out), "--spans", DEFAULT_SPANS, "--dtype", "q4"], timeout=1200)
    assert result.returncode == 0, result.stderr
    return out


def test_q4_of_the_default_model_keeps_its_answers(q4_dir: Path, default_models_dir: Path) -> None:
    manifest = load_manifest(q4_dir)
    recorded = manifest.quality
    assert recorded is not None and manifest.dtype == "q4"
    # every weight of the GGUF carried as it is: 210 Q4_1 matrices, the Q8_0 embedding and (tied) head
    assert recorded["weights"] == {
        "Gather Q8_0 as 8-bit": 1,
        "MatMulNBits Q4_1 as 4-bit": 210,
        "MatMul Q8_0 as 8-bit, dequantized at load": 1,
    }
    fp32_dir = default_models_dir / "SmolLM2-135M-Instruct"
    fp32 = load_manifest(fp32_dir)
    assert recorded["bytes"] == sum(s.bytes for s in manifest.shards)
    assert recorded["fp32_bytes"] == sum(s.bytes for s in fp32.shards)
    assert recorded["size_ratio"] <= 0.2
    assert recorded["greedy_agreement"] >= 0.95  # measured: 1.0, largest logit difference 3e-4
    fresh = quality.measure(fp32_dir, fp32, q4_dir, manifest)
    assert fresh["greedy_agreement"] == pytest.approx(recorded["greedy_agreement"], abs=1e-6)
    assert fresh["max_abs_logit_diff"] == pytest.approx(recorded["max_abs_logit_diff"], abs=1e-4)

"""A 1.45B-parameter model (5.8 GB in fp32) exports in the memory of its largest span, not of the model.

The model is written by ``tests/support/big_models.py`` (seeded random weights, one safetensors file per
layer; the session fixture ``big_model_factory`` writes it once for this test and
``test_big_model_mesh.py``) and exported by the pipeline in a child process that records its peak
resident memory per step.
Streamed, each step's peak stays under ``baseline + FACTOR x that step's shard + SLACK``, and the last
blocks span peaks no higher than the first: nothing of an earlier span is still held. (Loaded whole, as
the exporter once did, the 5.8 GB of weights would sit under every step.) FACTOR is measured: tracing and
``torch.onnx.export`` hold about four copies of a span's weights (bench/bench_big_model.py, figures in
bench/README.md).
"""

from __future__ import annotations

import shutil

import pytest

from python_peer.core.manifest import load_manifest
from tests.support.big_models import SHAPES, measure_export, shard_bytes, weights_bytes

pytestmark = pytest.mark.slow

# Measured 4.1-4.5 (the span, its constant-folded copy, the graph proto and its serialization).
FACTOR = 5.0
SLACK = 1 << 30


def test_big_model_export_peak_follows_the_largest_span(
    tmp_path_factory: pytest.TempPathFactory, big_model_factory
) -> None:
    model = big_model_factory("1.5b")  # written once per session, shared with test_big_model_mesh.py
    total = weights_bytes(model)
    assert total == 4 * SHAPES["1.5b"].params() and total > 5.5e9
    out = tmp_path_factory.mktemp("big-1.5b-export") / "model"
    try:
        measured = measure_export(model, out, "0-10,10-20,20-30", timeout=3600)
        manifest = load_manifest(out)
        assert [str(s.span) for s in manifest.blocks] == ["0-10", "10-20", "20-30"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    steps = {s["step"]: s["peak_rss"] for s in measured["steps"]}
    shards = {step: held for step in steps if (held := shard_bytes(step)) is not None}
    assert len(shards) == 5, steps  # embed, three blocks spans, head
    for step, held in shards.items():
        bound = measured["baseline_rss"] + FACTOR * held + SLACK
        assert steps[step] < bound, f"{step}: peak {steps[step] / 1e9:.2f} GB over {bound / 1e9:.2f} GB"
    blocks = [steps[step] for step in shards if step.startswith("exporting blocks")]
    # Spans of 1.76 GB: holding on to one would add that much; allocator noise measured up to 0.2 GB.
    span = 10 * 4 * SHAPES["1.5b"].layer_params()
    assert blocks[-1] < blocks[0] + span / 4, f"the last span's peak grew past the first's: {blocks}"
    head = next(steps[step] for step in shards if step.startswith("exporting head"))
    assert head < blocks[0] - total / 4, f"the head step still holds a span's weights: {steps}"

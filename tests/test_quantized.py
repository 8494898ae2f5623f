"""fp16, q8 and q4 variants: they run, they are smaller, and the error figures in their manifests
match a fresh measurement against a separate fp32 export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter import pipeline, quality, source
from python_peer.chain import LocalChain
from python_peer.core.manifest import Manifest
from python_peer.core.spans import parse_spans

SPANS = tuple(parse_spans("0-2,2-4"))


@pytest.fixture(scope="module")
def fp32_export(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("fp32") / "model"
    return out, pipeline.run_export(pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=SPANS))


@pytest.fixture(scope="module", params=["fp16", "q8", "q4"])
def variant(request, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp(request.param) / "model"
    manifest = pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=SPANS, dtype=request.param)
    )
    return out, manifest


def test_manifest_figures_match_a_fresh_measurement(variant, fp32_export) -> None:
    out, manifest = variant
    fp32_dir, fp32_manifest = fp32_export
    recorded = manifest.quality
    assert recorded is not None
    assert recorded["reference"] == "fp32"
    assert recorded["prompts"] == len(quality.PROMPTS) + len(quality.CHAT_PROMPTS)
    fresh = quality.measure(fp32_dir, fp32_manifest, out, manifest)
    assert fresh["tokens"] == recorded["tokens"]
    assert fresh["greedy_agreement"] == pytest.approx(recorded["greedy_agreement"], abs=1e-6)
    assert fresh["max_abs_logit_diff"] == pytest.approx(recorded["max_abs_logit_diff"], abs=1e-5)
    assert fresh["mean_abs_logit_diff"] == pytest.approx(recorded["mean_abs_logit_diff"], abs=1e-5)
    assert recorded["max_abs_logit_diff"] > 0.0, "a variant that equals fp32 exactly was not converted"
    assert recorded["greedy_agreement"] > 0.5


def test_variant_is_what_it_claims(variant, fp32_export) -> None:
    out, manifest = variant
    fp32_manifest: Manifest = fp32_export[1]
    assert manifest.dtype in ("fp16", "q8", "q4")
    fp32_sizes = {s.file: s.bytes for s in fp32_manifest.shards}
    for shard in manifest.blocks:
        graph = onnx.load(str(out / shard.file)).graph
        ops = {node.op_type for node in graph.node}
        if manifest.dtype == "fp16":
            assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
        else:
            assert "MatMulNBits" in ops
        assert shard.bytes < fp32_sizes[shard.file]
        # Inputs and outputs stay float32, so variants chain with any other runner.
        fp32_shard = next(s for s in fp32_manifest.blocks if s.file == shard.file)
        assert shard.inputs == fp32_shard.inputs and shard.outputs == fp32_shard.outputs


def test_variant_chain_generates(variant) -> None:
    out, _ = variant
    chain = LocalChain(out)
    session = chain.open(1)
    logits = chain.step(session, np.array([[5, 6, 7]], dtype=np.int64), np.ones((1, 3), dtype=np.int64))
    assert logits.shape == (1, 3, 320) and np.isfinite(logits).all()


def test_the_fp32_reference_is_read_one_shard_at_a_time_and_gives_the_chains_logits(
    fp32_export, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quality.streamed_logits`` (how a quantized export measures itself against fp32 without holding
    the fp32 model) equals ``LocalChain``'s logits exactly, and never holds two shards at once."""
    import gc
    import weakref

    fp32_dir, manifest = fp32_export
    sequences = [[1, 5, 17, 42, 99], [3, 250, 7], [9]]
    chain = LocalChain(fp32_dir, manifest=manifest)
    expected = []
    for ids in sequences:
        session = chain.open(1)
        ids_arr = np.array([ids], dtype=np.int64)
        expected.append(chain.step(session, ids_arr, np.ones_like(ids_arr))[0])
        chain.close(session)
    del chain
    gc.collect()

    alive: weakref.WeakSet[object] = weakref.WeakSet()
    most = 0

    def counted(cls: type) -> type:
        class Counted(cls):
            def __init__(self, *args: object, **kwargs: object) -> None:
                nonlocal most
                gc.collect()
                super().__init__(*args, **kwargs)
                alive.add(self)
                most = max(most, len(alive))

        return Counted

    monkeypatch.setattr(quality, "ShardRunner", counted(quality.ShardRunner))
    monkeypatch.setattr(quality, "BlocksRunner", counted(quality.BlocksRunner))
    got = quality.streamed_logits(fp32_dir, manifest, sequences)
    for logits, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(logits, want)
    assert most == 1, f"{most} shards were loaded at once"

"""The shard runner refuses altered shards and bad inputs with typed errors, and keeps sessions apart."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from python_peer.chain import LocalChain
from python_peer.core import manifest as names
from python_peer.core.manifest import ShardEntry, load_manifest
from python_peer.errors import SessionError, ShardError, ShardInputError
from python_peer.runner import BatchStep, BlocksRunner, ShardRunner


@pytest.fixture
def blocks(tiny_llama_export: Path) -> BlocksRunner:
    manifest = load_manifest(tiny_llama_export)
    return BlocksRunner(tiny_llama_export, manifest.blocks[1], manifest)


def hidden(batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, seq, 64)).astype(np.float32)


def ones(batch: int, seq: int) -> np.ndarray:
    return np.ones((batch, seq), dtype=np.int64)


def test_truncated_shard_is_refused(tiny_llama_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(tiny_llama_export, copy)
    manifest = load_manifest(copy)
    path = copy / manifest.head.file
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"head.onnx is .* bytes, the manifest says"):
        ShardRunner(copy, manifest.head)


def test_missing_shard_is_refused(tiny_llama_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(tiny_llama_export, copy)
    manifest = load_manifest(copy)
    (copy / manifest.embed.file).unlink()
    with pytest.raises(ShardError, match=r"embed\.onnx is missing"):
        LocalChain(copy)


def test_wrong_inputs_are_refused(blocks: BlocksRunner) -> None:
    blocks.open("s", 2)
    with pytest.raises(ShardInputError, match="do not fit session"):
        blocks.forward("s", hidden(3, 2), ones(3, 2), ones(3, 2))
    with pytest.raises(ShardInputError, match="must both be"):
        blocks.forward("s", hidden(2, 2), ones(2, 3), ones(2, 2))
    bad = hidden(2, 2)
    bad[1, 1, 5] = np.nan
    with pytest.raises(ShardInputError, match="NaN or Inf"):
        blocks.forward("s", bad, ones(2, 2), ones(2, 2))
    inf = hidden(2, 2)
    inf[0, 0, 0] = np.inf
    with pytest.raises(ShardInputError, match="NaN or Inf"):
        blocks.forward("s", inf, ones(2, 2), ones(2, 2))
    # The refusals left the session as it was: a good step still works from an empty cache.
    out = blocks.forward("s", hidden(2, 2), ones(2, 2), np.array([[0, 1], [0, 1]]))
    assert out.shape == (2, 2, 64) and blocks.session("s").length == 2


def test_shard_runner_checks_names_dtypes_and_shapes(tiny_llama_export: Path) -> None:
    manifest = load_manifest(tiny_llama_export)
    head = ShardRunner(tiny_llama_export, manifest.head)
    with pytest.raises(ShardInputError, match="missing inputs"):
        head.run({})
    with pytest.raises(ShardInputError, match="unexpected inputs"):
        head.run({"hidden_states": hidden(1, 1), "extra": hidden(1, 1)})
    with pytest.raises(ShardInputError, match="is float64, expected float32"):
        head.run({"hidden_states": hidden(1, 1).astype(np.float64)})
    with pytest.raises(ShardInputError, match="rank 2"):
        head.run({"hidden_states": hidden(1, 1)[0]})
    with pytest.raises(ShardInputError, match="expected"):
        head.run({"hidden_states": np.zeros((1, 1, 63), dtype=np.float32)})


def test_sessions_are_independent_and_closable(blocks: BlocksRunner) -> None:
    blocks.open("a", 1)
    blocks.open("b", 1)
    with pytest.raises(SessionError, match="already open"):
        blocks.open("a", 1)
    blocks.forward("a", hidden(1, 3), ones(1, 3), np.array([[0, 1, 2]]))
    assert blocks.session("a").length == 3 and blocks.session("b").length == 0
    blocks.close("a")
    with pytest.raises(SessionError, match="not open"):
        blocks.forward("a", hidden(1, 1), ones(1, 1), np.array([[3]]))


def test_decode_with_cache_equals_one_pass(tiny_llama_export: Path) -> None:
    """Feeding tokens one at a time through the KV cache gives the logits of one pass over all of them."""
    chain = LocalChain(tiny_llama_export)
    ids = np.array([[5, 9, 17, 33, 2, 8]], dtype=np.int64)
    whole = chain.step(chain.open(1), ids, np.ones_like(ids))
    session = chain.open(1)
    steps = [
        chain.step(session, ids[:, i : i + 1], np.ones((1, 1), dtype=np.int64)) for i in range(ids.shape[1])
    ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-5)
    with pytest.raises(SessionError):
        chain.step("nope", ids, np.ones_like(ids))


def test_a_batch_of_sessions_pads_on_the_left_and_matches_each_alone(tiny_llama_export: Path) -> None:
    """``forward_batch`` over sessions of 2, 7 and 4 past tokens gives each what ``forward`` gives it alone
    (within float tolerance) and leaves each cache as long as its own; the padding is masked: the same
    zero-filled padding with mask 1 changes the answers, so the mask, not luck, keeps them apart."""
    manifest = load_manifest(tiny_llama_export)
    alone = BlocksRunner(tiny_llama_export, manifest.blocks[1], manifest)
    batched = BlocksRunner(tiny_llama_export, manifest.blocks[1], manifest)
    rng = np.random.default_rng(3)
    lengths = {"a": 2, "b": 7, "c": 4}
    for sid, n in lengths.items():
        prompt = rng.standard_normal((1, n, 64)).astype(np.float32)
        for runner in (alone, batched):
            runner.open(sid, 1)
            runner.forward(sid, prompt, ones(1, n), np.arange(n)[None])
    new = {sid: rng.standard_normal((1, 1, 64)).astype(np.float32) for sid in lengths}
    expected = {sid: alone.forward(sid, new[sid], ones(1, 1), np.array([[n]])) for sid, n in lengths.items()}
    steps = [BatchStep(sid, new[sid], ones(1, 1), np.array([[n]])) for sid, n in lengths.items()]
    result = batched.forward_batch(steps)
    assert all(batched.session(sid).length == n for sid, n in lengths.items())  # not committed yet
    result.commit()
    for row, sid in enumerate(lengths):
        np.testing.assert_allclose(result.hidden[row : row + 1], expected[sid], rtol=0, atol=1e-5)
        assert batched.session(sid).length == lengths[sid] + 1
        for name, cache in alone.session(sid).cache.items():
            np.testing.assert_allclose(batched.session(sid).cache[name], cache, rtol=0, atol=1e-5)
    # the next step alone, from the caches the batch left, agrees too
    more = rng.standard_normal((1, 1, 64)).astype(np.float32)
    np.testing.assert_allclose(
        batched.forward("a", more, ones(1, 1), np.array([[3]])),
        alone.forward("a", more, ones(1, 1), np.array([[3]])),
        rtol=0,
        atol=1e-5,
    )
    # the padding unmasked (mask 1 over the zero-filled padding of "a") gives another answer
    state = batched.session("c")
    padded_mask = np.ones((1, 9), dtype=np.int64)
    feeds: dict[str, np.ndarray] = {
        "hidden_states": new["c"],
        "attention_mask": padded_mask,
        "position_ids": np.array([[4]]),
    }
    for name, cache in state.cache.items():
        feeds[name] = np.concatenate([np.zeros((1, 2, 4, 16), np.float32), cache[:, :, :4]], axis=2)
    unmasked = batched.runner.run(feeds)["hidden_states_out"]
    assert np.abs(unmasked - expected["c"]).max() > 1e-3


def test_a_batch_refuses_what_it_cannot_batch(blocks: BlocksRunner) -> None:
    blocks.open("wide", 2)
    blocks.open("one", 1)
    with pytest.raises(ShardInputError, match="batch-1"):
        blocks.forward_batch([BatchStep("wide", hidden(2, 1), ones(2, 1), np.zeros((2, 1), np.int64))])
    with pytest.raises(ShardInputError, match="batch-1"):
        blocks.forward_batch([BatchStep("one", hidden(1, 2), ones(1, 2), np.zeros((1, 2), np.int64))])
    with pytest.raises(ShardInputError, match="NaN"):
        blocks.forward_batch(
            [BatchStep("one", np.full((1, 1, 64), np.nan, np.float32), ones(1, 1), ones(1, 1))]
        )
    step = BatchStep("one", hidden(1, 1), ones(1, 1), np.zeros((1, 1), np.int64))
    with pytest.raises(SessionError, match="one step per session"):
        blocks.forward_batch([step, step])
    with pytest.raises(SessionError, match="not open"):
        blocks.forward_batch([BatchStep("gone", hidden(1, 1), ones(1, 1), ones(1, 1))])
    assert blocks.session("one").length == 0


def _step_feeds(
    entry: ShardEntry, past: dict[str, Any], hidden_in: np.ndarray, length: int
) -> dict[str, Any]:
    """The inputs of one step of a blocks shard, as the manifest (docs/wire.md) names them."""
    seq = hidden_in.shape[1]
    feeds: dict[str, Any] = {
        names.HIDDEN_IN: hidden_in,
        names.ATTENTION_MASK: np.ones((1, length + seq), dtype=np.int64),
        names.POSITION_IDS: np.arange(length, length + seq, dtype=np.int64)[None, :],
    }
    empty = np.zeros((1, 2, 0, 16), dtype=np.float32)
    for layer in entry.span.layers():
        for name in (names.past_key(layer), names.past_value(layer)):
            feeds[name] = past.get(name, empty)
    return feeds


def _presents_as_pasts(entry: ShardEntry, outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        past: outputs[present]
        for layer in entry.span.layers()
        for past, present in (
            (names.past_key(layer), names.present_key(layer)),
            (names.past_value(layer), names.present_value(layer)),
        )
    }


def test_run_bound_keeps_the_cache_in_onnxruntime_and_returns_what_run_returns(
    tiny_llama_export: Path,
) -> None:
    """A prefill and three decode steps: the OrtValue cache fed back gives run()'s outputs exactly."""
    manifest = load_manifest(tiny_llama_export)
    entry = manifest.blocks[1]
    assert manifest.config["num_key_value_heads"] == 2 and manifest.config["head_dim"] == 16
    runner = ShardRunner(tiny_llama_export, entry)
    cache = frozenset(n for n in runner._inputs if n.startswith("past_key_values."))
    steps = [hidden(1, 5), hidden(1, 1) * 0.5, hidden(1, 1) * 2.0, hidden(1, 1) - 1.0]
    past_np: dict[str, Any] = {}
    past_bound: dict[str, Any] = {}
    length = 0
    for hidden_in in steps:
        plain = runner.run(_step_feeds(entry, past_np, hidden_in, length), trusted=cache)
        bound = runner.run_bound(_step_feeds(entry, past_bound, hidden_in, length), trusted=cache)
        assert all(isinstance(v, ort.OrtValue) for v in bound.values())
        np.testing.assert_array_equal(bound[names.HIDDEN_OUT].numpy(), plain[names.HIDDEN_OUT])
        past_np = _presents_as_pasts(entry, plain)
        past_bound = _presents_as_pasts(entry, bound)
        length += hidden_in.shape[1]
    key = names.past_key(entry.span.start)
    assert isinstance(past_bound[key], ort.OrtValue) and past_bound[key].shape() == [1, 2, 8, 16]
    np.testing.assert_array_equal(past_bound[key].numpy(), past_np[key])


def test_run_bound_refuses_what_run_refuses(tiny_llama_export: Path) -> None:
    """Hidden states from the network (numpy) are scanned; a bound cache of the wrong kind is refused."""
    manifest = load_manifest(tiny_llama_export)
    entry = manifest.blocks[1]
    runner = ShardRunner(tiny_llama_export, entry)
    good = _step_feeds(entry, {}, hidden(1, 2), 0)
    bad = hidden(1, 2)
    bad[0, 1, 3] = np.inf
    with pytest.raises(ShardInputError, match="NaN or Inf"):
        runner.run_bound({**good, names.HIDDEN_IN: bad})
    key = names.past_key(entry.span.start)
    as_int = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 0, 16), dtype=np.int64))
    with pytest.raises(ShardInputError, match=r"is tensor\(int64\), expected float32"):
        runner.run_bound({**good, key: as_int})
    rank3 = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 16), dtype=np.float32))
    with pytest.raises(ShardInputError, match="rank 3"):
        runner.run_bound({**good, key: rank3})
    wrong_heads = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 3, 0, 16), dtype=np.float32))
    with pytest.raises(ShardInputError, match="expected"):
        runner.run_bound({**good, key: wrong_heads})
    with pytest.raises(ShardInputError, match="missing inputs"):
        runner.run_bound({k: v for k, v in good.items() if k != key})
    # A cache whose length disagrees with the mask: onnxruntime's refusal, translated.
    long_cache = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 7, 16), dtype=np.float32))
    with pytest.raises(ShardInputError, match="refused its inputs"):
        runner.run_bound({**good, key: long_cache})
    assert runner.run_bound(good)[names.HIDDEN_OUT].shape() == [1, 2, 64]  # the runner still works

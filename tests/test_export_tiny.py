"""Tiny random Llama, Qwen2 and GPT-2 models export and chain to PyTorch's logits and greedy tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporter import pipeline, source
from python_peer.chain import LocalChain
from python_peer.core.spans import parse_spans

# (family, tied embeddings, grouped-query attention)
MODELS = [
    ("llama", False, True),
    ("llama", True, False),
    ("qwen2", False, True),
    ("qwen2", True, True),
    ("gpt2", True, False),
    ("gpt2", False, False),
]
LAYOUTS = ["0-1,1-2,2-3,3-4", "0-3,3-4", "0-4"]
PROMPTS = ["What is the capital of France?", "hello"]
DECODE_STEPS = 16


def left_padded_batch(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    width = max(len(e) for e in encoded)
    pad = 3  # the pad token of the tiny tokenizer
    ids = np.array([[pad] * (width - len(e)) + e for e in encoded], dtype=np.int64)
    mask = np.array([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=np.int64)
    assert mask[1, 0] == 0, "the second prompt must be left-padded for this test to mean anything"
    return ids, mask


def chain_greedy(
    chain: LocalChain, ids: np.ndarray, mask: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prefill logits and ``steps`` greedy tokens per row, decoding with the KV cache."""
    session = chain.open(ids.shape[0])
    try:
        logits = chain.step(session, ids, mask)
        prefill = logits
        tokens = []
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            tokens.append(nxt)
            logits = chain.step(session, nxt, np.ones_like(nxt))
        return prefill, np.concatenate(tokens, axis=1)
    finally:
        chain.close(session)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("family", "tied", "gqa"), MODELS)
def test_chain_matches_pytorch(
    tiny_model_factory, tmp_path: Path, family: str, tied: bool, gqa: bool, layout: str
) -> None:
    model_dir = tiny_model_factory(family, tied=tied, gqa=gqa)
    out = tmp_path / "out"
    manifest = pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(model_dir)), out, spans=tuple(parse_spans(layout)))
    )
    assert [str(s.span) for s in manifest.blocks] == layout.split(",")
    assert manifest.architecture == family

    loaded = source.load(source.resolve(str(model_dir)))
    assert loaded.model.config.tie_word_embeddings == tied
    ids, mask = left_padded_batch(model_dir)
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        reference = loaded.model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits.numpy()
        generated = loaded.model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=DECODE_STEPS,
            min_new_tokens=DECODE_STEPS,
            do_sample=False,
            pad_token_id=3,
            eos_token_id=None,
        )[:, ids.shape[1] :].numpy()

    prefill, tokens = chain_greedy(LocalChain(out), ids, mask, DECODE_STEPS)
    real = mask.astype(bool)
    assert np.abs(prefill - reference)[real].max() < 1e-4
    np.testing.assert_array_equal(tokens, generated)


def test_gqa_and_tying_are_really_exercised(tiny_model_factory) -> None:
    """The parametrisation above claims GQA and tied/untied heads; check the built models have them."""
    llama = source.load(source.resolve(str(tiny_model_factory("llama", tied=False, gqa=True)))).model
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads
    assert llama.lm_head.weight.data_ptr() != llama.model.embed_tokens.weight.data_ptr()
    tied = source.load(source.resolve(str(tiny_model_factory("qwen2", tied=True, gqa=True)))).model
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_shard_count_cuts_layers_evenly(tiny_model_factory, tmp_path: Path) -> None:
    model_dir = tiny_model_factory("llama", layers=4)
    manifest = pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(model_dir)), tmp_path / "o", shards=3)
    )
    assert [str(s.span) for s in manifest.blocks] == ["0-2", "2-3", "3-4"]
    embed, head = manifest.embed, manifest.head
    assert (embed.start, embed.end, head.start, head.end) == (0, 0, 4, 4)


def test_hidden_float16_shards_hand_on_float16_values_carried_in_half_the_bytes(
    tiny_llama_export: Path, tiny_llama_export_h16: Path
) -> None:
    """``--hidden-float16``: onnxruntime keeps the graph's rounding (no Cast pair optimised away), so the
    embedding's and every blocks shard's output is float16 values, which the wire carries as float16,
    widened back exactly; the logits stay within float16's rounding of the fp32 export's."""
    from python_peer.core import manifest as names
    from python_peer.tensors import from_wire, to_wire

    rounded, plain = LocalChain(tiny_llama_export_h16), LocalChain(tiny_llama_export)
    assert rounded.manifest.raw["export"]["args"]["hidden_float16"] is True
    assert "hidden_float16" not in plain.manifest.raw["export"]["args"]
    ids, mask = left_padded_batch(tiny_llama_export)
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    for chain, narrowed in ((rounded, True), (plain, False)):
        session = chain.open(ids.shape[0])
        hidden = chain.embed(ids, positions)
        outputs = [hidden]
        for runner in chain.blocks:
            hidden = runner.forward(session, hidden, mask, positions)
            outputs.append(hidden)
        chain.close(session)
        for out in outputs:
            assert out.dtype == np.float32
            carried = to_wire(names.HIDDEN_OUT, out)
            assert (carried.dtype == "float16") is narrowed
            assert len(carried.data) == out.size * (2 if narrowed else 4)
            np.testing.assert_array_equal(from_wire(carried), out)
    prefill, tokens = chain_greedy(rounded, ids, mask, DECODE_STEPS)
    reference, expected = chain_greedy(plain, ids, mask, DECODE_STEPS)
    real = mask.astype(bool)
    assert 0 < np.abs(prefill - reference)[real].max() < 1e-2 * np.abs(reference).max()
    np.testing.assert_array_equal(tokens, expected)


def test_the_chain_forward_then_the_head_on_the_last_position_is_step(tiny_llama_export: Path) -> None:
    """bench_mesh's local chain runs its head over the last position alone, as the mesh client does
    (``ChainDecoder(last_only=True)``): the same last logits as the head over every position."""
    from bench.bench_export import ChainDecoder

    every, last = (
        ChainDecoder("every", tiny_llama_export, 1),
        ChainDecoder("last", tiny_llama_export, 1, last_only=True),
    )
    ids = [5, 6, 7, 8, 9, 10, 11]
    a, b = every.begin(ids), last.begin(ids)
    assert a.shape == b.shape == (every.chain.manifest.config["vocab_size"],)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    for _ in range(4):
        token = int(a.argmax())
        assert int(b.argmax()) == token
        a, b = every.next(token), last.next(token)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    every.end()
    last.end()

"""Measures a weight variant against fp32 on a fixed set of prompts.

For each prompt the variant's chain generates greedily; then both chains read the prompt and those tokens
in one pass (teacher forcing), and we record the largest absolute logit difference and how often the
variant's greedy choice agrees with fp32's. The fp32 reference is read one shard at a time
(``streamed_logits``: every sequence through the embedding, then through each blocks shard, then the head,
each shard released before the next is loaded), so measuring a quantized export needs the memory of the
variant's chain plus one fp32 shard, not of the fp32 model: a 7B model's q4 export measures on the machine
that exports it. The same shards and prompts give the same numbers, which is what the tests check a
manifest's figures against. ``float16_peak`` reads the same prompts through a ``--hidden-float16`` export
for the largest hidden state it hands on, which the exporter holds within float16's range.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from python_peer.chain import LocalChain
from python_peer.core import manifest as names
from python_peer.core.manifest import Manifest
from python_peer.runner import BlocksRunner, ShardRunner

if TYPE_CHECKING:
    from python_peer.tokenizer import ModelTokenizer

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
    "The three primary colours are",
)
# Also measured through the chat template, when the model has one: that is how the model is used.
CHAT_PROMPTS = ("What is the capital of France?",)
NEW_TOKENS = 16


def _prompt_ids(tokenizer: ModelTokenizer) -> list[list[int]]:
    """The token ids of the fixed prompts, the chat-rendered ones too when the model has a template."""
    texts = list(PROMPTS)
    if tokenizer.chat_template is not None:
        texts += [tokenizer.render_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    return [tokenizer.encode(text) or [0] for text in texts]


def _greedy(chain: LocalChain, ids: list[int], steps: int) -> list[int]:
    session = chain.open(1)
    try:
        logits = chain.step(session, np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))
        out: list[int] = []
        for _ in range(steps):
            token = int(np.argmax(logits[0, -1]))
            out.append(token)
            logits = chain.step(session, np.array([[token]], dtype=np.int64), np.ones((1, 1), dtype=np.int64))
        return out
    finally:
        chain.close(session)


def _logits(chain: LocalChain, ids: list[int]) -> np.ndarray:
    session = chain.open(1)
    try:
        return chain.step(session, np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))[0]
    finally:
        chain.close(session)


def streamed_logits(
    model_dir: Path, manifest: Manifest, sequences: list[list[int]], peaks: list[float] | None = None
) -> list[np.ndarray]:
    """The logits (``[len, vocab]``) of each sequence read in one pass, as ``LocalChain`` gives them, with one
    shard of the model loaded at a time: every sequence goes through a shard before the next is loaded.
    ``peaks`` gets the largest |value| the embedding and each blocks shard hand on, in order."""
    positions = [np.arange(len(ids), dtype=np.int64)[None, :] for ids in sequences]
    embed = ShardRunner(model_dir, manifest.embed)
    hidden: list[np.ndarray] = []
    for ids, pos in zip(sequences, positions, strict=True):
        feeds = {names.INPUT_IDS: np.array([ids], dtype=np.int64)}
        if manifest.config.get("learned_positions", False):
            feeds[names.POSITION_IDS] = pos
        hidden.append(embed.run(feeds)[names.HIDDEN_OUT])
    del embed
    _peak(hidden, peaks)
    for entry in manifest.blocks:
        gc.collect()  # the previous shard's session is gone before this one loads
        blocks = BlocksRunner(model_dir, entry, manifest)
        for i, pos in enumerate(positions):
            blocks.open("quality", 1)
            hidden[i] = blocks.forward("quality", hidden[i], np.ones_like(pos), pos)
            blocks.close("quality")
        del blocks
        _peak(hidden, peaks)
    gc.collect()
    head = ShardRunner(model_dir, manifest.head)
    return [head.run({names.HIDDEN_IN: h})[names.LOGITS][0] for h in hidden]


def _peak(hidden: list[np.ndarray], peaks: list[float] | None) -> None:
    if peaks is not None:
        peaks.append(max(float(np.abs(h).max()) for h in hidden))


def float16_peak(model_dir: Path, manifest: Manifest, tokenizer_dir: Path) -> float:
    """The largest |hidden state| any shard of a ``--hidden-float16`` export hands on over the fixed
    prompts (one shard loaded at a time); ``inf`` when one overflowed float16's range."""
    from python_peer.errors import ShardInputError
    from python_peer.tokenizer import ModelTokenizer

    sequences = _prompt_ids(ModelTokenizer(tokenizer_dir, manifest))
    peaks: list[float] = []
    try:
        streamed_logits(model_dir, manifest, sequences, peaks)
    except ShardInputError:
        if peaks and not np.isfinite(peaks[-1]):
            return float("inf")  # an Inf handed on, refused by the next shard
        raise
    return max(peaks)


def measure(
    reference_dir: Path,
    reference: Manifest,
    candidate_dir: Path,
    candidate: Manifest,
    *,
    grid_source: bool = False,
) -> dict[str, Any]:
    """Compare the ``candidate`` chain with the fp32 ``reference`` chain; return the manifest's figures.

    ``grid_source``: the candidate was converted from a GGUF grid (``exporter.gguf_grid``); the figures
    then also count the weights carried from it and those re-quantized.
    """
    from python_peer.tokenizer import ModelTokenizer

    prompts = _prompt_ids(ModelTokenizer(candidate_dir, candidate))
    cand_chain = LocalChain(candidate_dir, manifest=candidate)
    sequences: list[list[int]] = []
    cand_logits: list[np.ndarray] = []
    for ids in prompts:
        sequences.append(ids + _greedy(cand_chain, ids, NEW_TOKENS))
        cand_logits.append(_logits(cand_chain, sequences[-1]))
    del cand_chain
    gc.collect()
    ref_logits = streamed_logits(reference_dir, reference, sequences)
    max_diff = 0.0
    diffs: list[float] = []
    agree = total = 0
    for ref, cand in zip(ref_logits, cand_logits, strict=True):
        diff = np.abs(ref - cand)
        max_diff = max(max_diff, float(diff.max()))
        diffs.append(float(diff.mean()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += len(ref)
    fp32_bytes = sum(s.bytes for s in reference.shards)
    candidate_bytes = sum(s.bytes for s in candidate.shards)
    figures: dict[str, Any] = {
        "reference": "fp32",
        "method": "teacher-forced logits over fixed prompts (plain and chat-templated) plus 16 greedy tokens of the variant each",
        "prompts": len(prompts),
        "tokens": total,
        "max_abs_logit_diff": round(max_diff, 6),
        "mean_abs_logit_diff": round(float(np.mean(diffs)), 6),
        "greedy_agreement": round(agree / total, 6),
        "bytes": candidate_bytes,
        "fp32_bytes": fp32_bytes,
        "size_ratio": round(candidate_bytes / fp32_bytes, 4),
    }
    figures["weights"] = weight_kinds(candidate_dir, candidate)
    if grid_source:
        figures["weights_from"] = "GGUF grid where MatMulNBits can carry it; the rest re-quantized"
    return figures


def weight_kinds(model_dir: Path, manifest: Manifest) -> dict[str, int]:
    """How the quantized weights of all shards are held, e.g. ``{"MatMulNBits Q4_1 as 4-bit": 210}``."""
    import onnx

    from .gguf_grid import describe

    counts: dict[str, int] = {}
    for shard in manifest.shards:
        model = onnx.load(str(model_dir / shard.file), load_external_data=False)
        for label, n in describe(model).items():
            counts[label] = counts.get(label, 0) + n
    return dict(sorted(counts.items()))

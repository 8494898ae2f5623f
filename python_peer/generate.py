"""Sampling and the generation loop over any ``Pipeline`` (a local chain now, the mesh later).

Logits stay on this machine: the pipeline returns them from the locally held head shard and
sampling happens here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .chain import Pipeline
from .errors import PeerError
from .tokenizer import ModelTokenizer, StreamDecoder


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise PeerError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise PeerError(f"temperature must be within 0..10, not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise PeerError(f"top_p must be within (0, 1], not {self.top_p}")


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from a ``[vocab]`` logit vector."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(len(probs), p=probs))


@dataclass
class Generation:
    """The outcome of one generation: the text, the ids and why it stopped."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "length"  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int = 0


def stream(
    pipeline: Pipeline,
    tokenizer: ModelTokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    result: Generation | None = None,
) -> Iterator[str]:
    """Yield text pieces as they are generated; fill ``result`` with the whole outcome."""
    if not prompt_ids:
        raise PeerError("the prompt is empty")
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt_ids)
    rng = np.random.default_rng(params.seed)
    decoder = StreamDecoder(tokenizer)
    session = pipeline.open(1)
    held = ""  # text withheld because it may be the start of a stop string
    try:
        logits = pipeline.step(
            session, np.array([prompt_ids], dtype=np.int64), np.ones((1, len(prompt_ids)), np.int64)
        )
        for _ in range(params.max_tokens):
            token = sample(logits[0, -1], params, rng)
            if token in tokenizer.eos_token_ids:
                result.finish_reason = "stop"
                break
            held += decoder.push(token)
            stop_at = min((i for s in params.stop if (i := held.find(s)) >= 0), default=-1)
            if stop_at >= 0:
                held = held[:stop_at]
                result.finish_reason = "stop"
                break
            safe = len(held) - max((len(s) - 1 for s in params.stop), default=0)
            if safe > 0:
                yield held[:safe]
                result.text += held[:safe]
                held = held[safe:]
            logits = pipeline.step(session, np.array([[token]], dtype=np.int64), np.ones((1, 1), np.int64))
        if held:
            yield held
            result.text += held
    finally:
        result.token_ids = tuple(decoder.ids)
        pipeline.close(session)


def generate(
    pipeline: Pipeline, tokenizer: ModelTokenizer, prompt_ids: list[int], params: SamplingParams
) -> Generation:
    result = Generation()
    for _ in stream(pipeline, tokenizer, prompt_ids, params, result):
        pass
    return result

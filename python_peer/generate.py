"""Sampling and the generation loop over any ``Pipeline`` (a local chain now, the mesh later).

Logits stay on this machine: the pipeline returns them from the locally held head shard and
sampling happens here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .chain import Pipeline
from .core.manifest import Manifest
from .errors import PeerError
from .tokenizer import ModelTokenizer, StreamDecoder

# Below this, dividing the logits by the temperature overflows to inf and the softmax to NaN: it is greedy.
MIN_TEMPERATURE = 1e-6


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
    if params.temperature < MIN_TEMPERATURE:
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


class AsyncSession(Protocol):
    """One open session of an awaited pipeline."""

    async def step(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...

    async def close(self) -> None: ...


class AsyncPipeline(Protocol):
    """A pipeline whose sessions are awaited: the mesh client."""

    manifest: Manifest

    async def open(self, batch: int, max_length: int) -> AsyncSession: ...


@dataclass
class Generation:
    """The outcome of one generation: the text, the ids and why it stopped."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "length"  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int = 0


class _Detokenizer:
    """Turns sampled tokens into text pieces: stops at end-of-sequence tokens and stop strings, and holds
    back text that may be the start of a stop string so the caller never sees part of one."""

    def __init__(self, tokenizer: ModelTokenizer, params: SamplingParams, result: Generation) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.result = result
        self.decoder = StreamDecoder(tokenizer)
        self.held = ""
        self.holdback = max((len(s) - 1 for s in params.stop), default=0)

    def push(self, token: int) -> tuple[str, bool]:
        """The text that can be shown after ``token``, and whether generation is over."""
        if token in self.tokenizer.eos_token_ids:
            self.result.finish_reason = "stop"
            return self.flush(), True
        self.held += self.decoder.push(token)
        self.result.token_ids = tuple(self.decoder.ids)
        stop_at = min((i for s in self.params.stop if (i := self.held.find(s)) >= 0), default=-1)
        if stop_at >= 0:
            self.held = self.held[:stop_at]
            self.result.finish_reason = "stop"
            return self.flush(), True
        safe = len(self.held) - self.holdback
        if safe <= 0:
            return "", False
        piece, self.held = self.held[:safe], self.held[safe:]
        self.result.text += piece
        return piece, False

    def flush(self) -> str:
        piece, self.held = self.held, ""
        self.result.text += piece
        return piece


def _prompt_arrays(prompt_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if not prompt_ids:
        raise PeerError("the prompt is empty")
    return np.array([prompt_ids], dtype=np.int64), np.ones((1, len(prompt_ids)), np.int64)


def _budget(manifest: Manifest, prompt_ids: list[int], params: SamplingParams) -> int:
    """How many tokens to sample: ``max_tokens``, or fewer where the model's context ends (the generation
    then stops for "length", as it does at ``max_tokens``). A prompt that fills the context is refused."""
    context = manifest.context
    if context is None:
        return params.max_tokens
    room = context - len(prompt_ids)
    if room < 1:
        raise PeerError(
            f"the prompt is {len(prompt_ids)} tokens; this model's context holds {context}, "
            "leaving no room for a token"
        )
    return min(params.max_tokens, room)


def stream(
    pipeline: Pipeline,
    tokenizer: ModelTokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    result: Generation | None = None,
) -> Iterator[str]:
    """Yield text pieces as they are generated; fill ``result`` with the whole outcome."""
    ids, mask = _prompt_arrays(prompt_ids)
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt_ids)
    rng = np.random.default_rng(params.seed)
    text = _Detokenizer(tokenizer, params, result)
    tokens = _budget(pipeline.manifest, prompt_ids, params)
    session = pipeline.open(1)
    try:
        logits = pipeline.step(session, ids, mask)
        for i in range(tokens):
            token = sample(logits[0, -1], params, rng)
            piece, done = text.push(token)
            if piece:
                yield piece
            if done:
                return
            if i == tokens - 1:  # the last token's own step would give logits no one samples
                break
            logits = pipeline.step(session, np.array([[token]], dtype=np.int64), np.ones((1, 1), np.int64))
        if piece := text.flush():
            yield piece
    finally:
        pipeline.close(session)


async def astream(
    pipeline: AsyncPipeline,
    tokenizer: ModelTokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    result: Generation | None = None,
) -> AsyncGenerator[str, None]:
    """``stream`` over a pipeline whose steps are awaited (the mesh)."""
    ids, mask = _prompt_arrays(prompt_ids)
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt_ids)
    rng = np.random.default_rng(params.seed)
    text = _Detokenizer(tokenizer, params, result)
    tokens = _budget(pipeline.manifest, prompt_ids, params)
    session = await pipeline.open(1, len(prompt_ids) + tokens)
    try:
        logits = await session.step(ids, mask)
        for i in range(tokens):
            token = sample(logits[0, -1], params, rng)
            piece, done = text.push(token)
            if piece:
                yield piece
            if done:
                return
            if i == tokens - 1:  # the last token's own step would give logits no one samples
                break
            logits = await session.step(np.array([[token]], dtype=np.int64), np.ones((1, 1), np.int64))
        if piece := text.flush():
            yield piece
    finally:
        await session.close()


def generate(
    pipeline: Pipeline, tokenizer: ModelTokenizer, prompt_ids: list[int], params: SamplingParams
) -> Generation:
    result = Generation()
    for _ in stream(pipeline, tokenizer, prompt_ids, params, result):
        pass
    return result


async def agenerate(
    pipeline: AsyncPipeline, tokenizer: ModelTokenizer, prompt_ids: list[int], params: SamplingParams
) -> Generation:
    result = Generation()
    async for _ in astream(pipeline, tokenizer, prompt_ids, params, result):
        pass
    return result

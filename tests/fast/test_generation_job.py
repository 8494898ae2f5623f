"""A generation of the API whose reader is gone (a client hung up mid-stream) stops and closes its mesh
session, and is not counted as finished, even when an await below swallows the cancel it is sent (as
``asyncio.wait_for`` does on Python 3.11 when the awaited answer arrives in the same turn of the loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import numpy as np

from python_peer.api.service import GenerationJob, MeshNodeService, _Model
from python_peer.core.manifest import Manifest
from python_peer.generate import SamplingParams
from python_peer.mesh_client import MeshClient
from python_peer.node import MeshNode
from python_peer.tokenizer import ModelTokenizer

VOCAB = 8
MAX_TOKENS = 200


class Letters:
    """A tokenizer of one letter per token, with no end-of-sequence token."""

    eos_token_ids: frozenset[int] = frozenset()

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


class DeafSession:
    """A mesh session whose every step swallows a cancel that reaches it while its answer is due."""

    def __init__(self) -> None:
        self.steps = 0
        self.swallowed = 0
        self.closed = False

    async def step(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.steps += 1
        try:
            await asyncio.sleep(0)  # the answer is on its way
        except asyncio.CancelledError:
            self.swallowed += 1  # ... and it came in the same turn: returned, the cancel is lost
        logits = np.zeros((1, input_ids.shape[1], VOCAB), np.float32)
        logits[0, -1, self.steps % VOCAB] = 1.0
        return logits

    async def close(self) -> None:
        self.closed = True


class NoContext:
    """A manifest that does not say the model's context: generation is bounded by ``max_tokens`` alone."""

    context = None


class DeafPipeline:
    def __init__(self) -> None:
        self.session = DeafSession()
        self.manifest = cast(Manifest, NoContext())

    async def open(self, batch: int, max_length: int) -> DeafSession:
        return self.session


async def test_a_generation_whose_reader_is_gone_stops_though_its_cancel_was_swallowed() -> None:
    pipeline = DeafPipeline()
    model = _Model(
        name="toy",
        model_dir=Path("."),
        manifest=cast(Manifest, None),
        tokenizer=cast(ModelTokenizer, Letters()),
        client=cast(MeshClient, pipeline),
        created=0,
    )
    service = MeshNodeService(cast(MeshNode, None), [model])
    job = GenerationJob(service, model, [1, 2, 3], SamplingParams(max_tokens=MAX_TOKENS, temperature=0))

    pieces = job.pieces()
    assert await anext(pieces)  # the first piece reached the client, who then hangs up
    await pieces.aclose()
    async with asyncio.timeout(5):
        while service._tasks:
            await asyncio.sleep(0)

    session = pipeline.session
    assert session.swallowed >= 1, "the test must swallow the cancel it is about"
    assert session.steps < 5, f"the generation ran on for {session.steps} steps after its reader left"
    assert session.closed, "the mesh session was left open"
    counters = service.counters
    assert (counters.generations, counters.running, counters.admitted) == (0, 0, 0)

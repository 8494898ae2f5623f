"""A local chain of shard runners: embed -> blocks ... -> head, in one process.

This is the reference the mesh is checked against: the same shards, no network. It implements the
``Pipeline`` protocol that generation drives, so the mesh client can stand in for it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

from python_peer.core import manifest as names
from python_peer.core.manifest import Manifest, load_manifest

from .errors import SessionError
from .runner import BlocksRunner, ShardRunner


def position_ids_for(mask: np.ndarray, past_mask: np.ndarray | None = None) -> np.ndarray:
    """Positions of new tokens: count of real tokens before each one (left padding gets position 0)."""
    past_count = np.zeros((mask.shape[0], 1), dtype=np.int64)
    if past_mask is not None and past_mask.shape[1]:
        past_count = past_mask.sum(axis=1, keepdims=True).astype(np.int64)
    positions = past_count + np.cumsum(mask, axis=1, dtype=np.int64) - 1
    return np.maximum(positions, 0)


class Pipeline(Protocol):
    """What generation needs: embed locally, send hidden states through every block, head locally."""

    manifest: Manifest

    def open(self, batch: int) -> str: ...

    def close(self, session_id: str) -> None: ...

    def step(self, session_id: str, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Feed new tokens (``[batch, seq]``) and their mask; return logits of the new tokens."""
        ...


class LocalChain:
    """Every shard of a manifest, loaded in this process."""

    def __init__(
        self, model_dir: str | Path, *, manifest: Manifest | None = None, threads: int | None = None
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.model_dir)
        self.learned_positions = bool(self.manifest.config.get("learned_positions", False))
        self.embed_runner = ShardRunner(self.model_dir, self.manifest.embed, threads=threads)
        self.blocks = [
            BlocksRunner(self.model_dir, e, self.manifest, threads=threads) for e in self.manifest.blocks
        ]
        self.head_runner = ShardRunner(self.model_dir, self.manifest.head, threads=threads)
        self._masks: dict[str, np.ndarray] = {}

    def open(self, batch: int) -> str:
        session_id = uuid.uuid4().hex
        for runner in self.blocks:
            runner.open(session_id, batch)
        self._masks[session_id] = np.zeros((batch, 0), dtype=np.int64)
        return session_id

    def close(self, session_id: str) -> None:
        for runner in self.blocks:
            runner.close(session_id)
        self._masks.pop(session_id, None)

    def embed(self, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        feeds = {names.INPUT_IDS: input_ids.astype(np.int64)}
        if self.learned_positions:
            feeds[names.POSITION_IDS] = position_ids
        return self.embed_runner.run(feeds)[names.HIDDEN_OUT]

    def head(self, hidden: np.ndarray) -> np.ndarray:
        return self.head_runner.run({names.HIDDEN_IN: hidden})[names.LOGITS]

    def step(self, session_id: str, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.head(self.forward(session_id, input_ids, mask))

    def forward(self, session_id: str, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``step`` up to the head: the last blocks shard's hidden states for the new tokens."""
        mask = mask.astype(np.int64)
        past_mask = self._masks.get(session_id)
        if past_mask is None:
            raise SessionError(f"session {session_id} is not open on this chain")
        positions = position_ids_for(mask, past_mask)
        hidden = self.embed(input_ids, positions)
        for runner in self.blocks:
            hidden = runner.forward(session_id, hidden, mask, positions)
        self._masks[session_id] = np.concatenate([past_mask, mask], axis=1)
        return hidden

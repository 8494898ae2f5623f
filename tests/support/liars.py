"""Lying serving peers for tests and the verification benchmark.

A ``Liar`` wraps an honest ``SpanServer`` and changes the hidden states of some of its FORWARD answers,
then signs its lie like an honest answer (a liar that does not sign is refused on the spot): the kind
of peer a spot check must catch. ``altered_model`` writes a copy of a model whose block weights are
perturbed, with a manifest matching its own files: a peer serving it runs "the model" with other weights.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from python_peer.core import manifest as names
from python_peer.core.answers import ANSWER_META_KEY, Answer, SignedAnswer, sign_answer, wire_digest
from python_peer.core.entries import GENESIS, Entry, make_entry
from python_peer.core.evidence import Evidence
from python_peer.core.wire import Frame, FrameType
from python_peer.identity import Identity
from python_peer.server import SpanServer
from python_peer.tensors import from_wire, to_wire

# kind -> (hidden in, honest out, previous output of this session, other session's output, rng) -> lie
LIES: dict[str, Callable[..., np.ndarray | None]] = {
    "skip": lambda x, out, prev, other, rng: x,
    "noise": lambda x, out, prev, other, rng: out + rng.normal(0, 1.0, out.shape).astype(np.float32),
    "zeros": lambda x, out, prev, other, rng: np.zeros_like(out),
    "stale": lambda x, out, prev, other, rng: prev if prev is not None and prev.shape == out.shape else None,
    "other_session": lambda x, out, prev, other, rng: (
        other if other is not None and other.shape == out.shape else None
    ),
    # what an honest runtime differs by (native vs WASM, ~2e-3 of max |x|): must never be caught
    "wasm_like": lambda x, out, prev, other, rng: (
        out + rng.uniform(-2e-3, 2e-3, out.shape).astype(np.float32) * float(np.max(np.abs(out)))
    ),
}
LIAR_KINDS = ("skip", "noise", "zeros", "stale", "other_session")


class Liar:
    """A ``FrameHandler`` serving ``server``'s span that lies (``kind``) on the steps ``when`` picks."""

    def __init__(
        self,
        server: SpanServer,
        kind: str,
        *,
        when: Callable[[Frame, random.Random], bool] = lambda frame, rng: True,
        seed: int = 1,
        delay_s: float = 0.0,
    ) -> None:
        self.server, self.kind, self.when, self.delay_s = server, kind, when, delay_s
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.previous: dict[bytes, np.ndarray] = {}  # session -> its last output
        self.recent: dict[tuple[int, ...], dict[bytes, np.ndarray]] = {}  # shape -> session -> last output
        self.lies = 0

    async def handle(self, client: str, frame: Frame) -> Frame:
        if self.delay_s and frame.type is FrameType.FORWARD:
            await asyncio.sleep(self.delay_s)  # "answers late": the client's timeout decides
        answer = await self.server.handle(client, frame)
        if frame.type is not FrameType.FORWARD or answer.type is not FrameType.RESULT or self.kind == "late":
            return answer
        out = from_wire(answer.tensor(names.HIDDEN_OUT))
        hidden = from_wire(frame.tensor(names.HIDDEN_IN))
        lie = None
        others = [o for session, o in self.recent.get(out.shape, {}).items() if session != frame.session]
        if self.when(frame, self.rng):
            lie = LIES[self.kind](
                hidden,
                out,
                self.previous.get(frame.session),
                others[-1] if others else None,
                self.np_rng,
            )
        self.previous[frame.session] = out
        self.recent.setdefault(out.shape, {})[frame.session] = out
        if lie is None:
            return answer
        self.lies += 1
        return self.resign(answer, lie.astype(np.float32))

    def resign(self, answer: Frame, lie: np.ndarray) -> Frame:
        """``answer`` carrying ``lie``, with the liar's signature over it (like an honest answer)."""
        result = to_wire(names.HIDDEN_OUT, lie)
        meta = dict(answer.meta)
        if ANSWER_META_KEY in meta and self.server.identity is not None:
            body = dict(meta[ANSWER_META_KEY]["body"], output=wire_digest(result))
            meta[ANSWER_META_KEY] = sign_answer(Answer.from_dict(body), self.server.identity.sign).to_dict()
        return Frame(answer.type, answer.session, answer.step, answer.flags, meta=meta, tensors=(result,))

    def close_client(self, client: str) -> None:
        self.server.close_client(client)


def decode_only(frame: Frame, rng: random.Random) -> bool:
    """Lie on decode steps only (every step after the prompt's)."""
    return frame.step > 0


def one_in_twenty(frame: Frame, rng: random.Random) -> bool:
    """Lie on one step in twenty, at random."""
    return rng.random() < 0.05


def altered_model(model_dir: Path, target: Path, start: int, end: int, scale: float = 0.5) -> Path:
    """A copy of ``model_dir`` whose ``blocks_{start}_{end}`` weights are perturbed by ``scale`` x N(0, 1),
    with ``manifest.json`` rewritten to match the altered file (its own copy of the manifest)."""
    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    file = f"blocks_{start}_{end}.onnx"
    model = onnx.load(target / file)
    rng = np.random.default_rng(99)
    for init in model.graph.initializer:
        if init.name.startswith(("wk", "wo")):
            weights = numpy_helper.to_array(init)
            init.CopyFrom(
                numpy_helper.from_array(
                    weights + rng.normal(0, scale, weights.shape).astype(np.float32), init.name
                )
            )
    data = model.SerializeToString()
    (target / file).write_bytes(data)
    manifest = json.loads((target / names.MANIFEST_FILE).read_text())
    for shard in manifest["shards"]:
        if shard["file"] == file:
            shard["sha256"], shard["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            shard["files"][0] = {"file": file, "sha256": shard["sha256"], "bytes": shard["bytes"]}
    (target / names.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return target


def accuse(
    author: Identity, liar: Identity, honest: list[Identity], session: str, model: str = "toy-model"
) -> Entry:
    """Evidence (seq 1 of ``author``'s log) against ``liar`` for ``session``, agreed by ``honest``: the
    entry a client writes after a settled disagreement, built from made-up answers."""

    def answer(server: Identity, output: str, sess: str) -> SignedAnswer:
        a = Answer(sess, model, 1, 3, 0, 4, "a" * 64, output, author.peer_id, server.peer_id)
        return sign_answer(a, server.sign)

    body = Evidence(answer(liar, "b" * 64, session), tuple(answer(h, "c" * 64, "d" * 32) for h in honest))
    return make_entry(author.peer_id, 1, GENESIS, 1_780_000_000_000, body, author.sign)

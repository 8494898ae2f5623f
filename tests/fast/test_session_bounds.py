"""A session's bounds are the caller's to keep, and the caller hears when it does not, not the peers.

The toy model's context is 256 positions (``max_position_embeddings``). Peers refuse a step whose positions
go past it (``test_positions.py``); a client that opened a session longer than that would take each such
refusal for a peer failing, ban it and route around it, one honest peer after another. So the client
refuses such a session itself, before any hold is written or any peer is asked; and a generation asked
for more tokens than the context has room for stops where it ends, for "length", without the step of its
last token (whose logits no one samples). A malformed step (another batch, a mask of another shape or
with values other than 0 and 1, no tokens) is refused the same way, before it is embedded or sent.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from python_peer.chain import LocalChain
from python_peer.core.protocol import MAX_BATCH
from python_peer.errors import MeshError, PeerError
from python_peer.generate import SamplingParams, agenerate, generate
from python_peer.tokenizer import ModelTokenizer
from tests.fast.conftest import ToyMesh
from tests.fast.toy_model import VOCAB
from tests.support.fakes import MemoryConnector
from tests.support.mesh import reference_greedy

CONTEXT = 256


class Digits:
    """A tokenizer for the toy model, which has none: a token is its number, and no token ends the text."""

    eos_token_ids: frozenset[int] = frozenset()

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


TOKENIZER = cast(ModelTokenizer, Digits())


def prompt(length: int) -> list[int]:
    return [(7 * i + 3) % VOCAB for i in range(length)]


async def test_a_session_longer_than_the_context_is_refused_before_any_peer_is_asked(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    assert m.manifest.context == CONTEXT
    peers = [m.peer((0, 1)), m.peer((1, 3)), m.peer((3, 4))]
    client = m.client()
    for batch, max_length, message in (
        (
            1,
            CONTEXT + 1,
            rf"max_length {CONTEXT + 1} must be an integer in 1\.\.{CONTEXT}; the model's context",
        ),
        (1, 0, r"max_length 0 must be"),
        (0, 8, rf"batch 0 must be an integer in 1\.\.{MAX_BATCH}"),
        (MAX_BATCH + 1, 8, r"batch 65 must be"),
    ):
        with pytest.raises(MeshError, match=message):
            await client.open(batch, max_length)
    assert all(not m.servers[p].sessions for p in peers), "no OPEN reached a peer"
    assert not any(client.bans.banned(p) for p in peers)
    assert isinstance(client.links, MemoryConnector) and client.links.connects == 0, "no link was even opened"

    # A session of the whole context runs to its last position.
    session = await client.open(1, CONTEXT)
    ids = np.array([prompt(CONTEXT - 2)], dtype=np.int64)
    logits = await session.step(ids, np.ones_like(ids))
    tokens = [int(np.argmax(logits[0, -1]))]
    for _ in range(2):  # positions 254 and 255
        logits = await session.step(np.array([tokens[-1:]]), np.ones((1, 1), dtype=np.int64))
        tokens.append(int(np.argmax(logits[0, -1])))
    with pytest.raises(MeshError, match="max_length 256 would be exceeded"):
        await session.step(np.array([tokens[-1:]]), np.ones((1, 1), dtype=np.int64))
    await session.close()
    assert tokens == reference_greedy(m.model_dir, prompt(CONTEXT - 2), 3)
    assert session.failovers == 0 and not any(client.bans.banned(p) for p in peers)


async def test_a_generation_stops_where_the_context_ends_for_length_and_takes_no_unsampled_step(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    peers = [m.peer((0, 1)), m.peer((1, 3)), m.peer((3, 4))]
    client = m.client()
    ids = prompt(CONTEXT - 4)
    result = await agenerate(client, TOKENIZER, ids, SamplingParams(max_tokens=10))
    assert list(result.token_ids) == reference_greedy(m.model_dir, ids, 4)
    assert result.finish_reason == "length"
    # The prompt and three decode steps, the fourth token's step not taken: on every peer.
    assert [m.servers[p].tokens_served for p in peers] == [CONTEXT - 1] * 3
    assert not any(client.bans.banned(p) for p in peers)

    short = await agenerate(client, TOKENIZER, ids[:10], SamplingParams(max_tokens=3))
    assert list(short.token_ids) == reference_greedy(m.model_dir, ids[:10], 3)
    assert [m.servers[p].tokens_served for p in peers] == [CONTEXT - 1 + 10 + 2] * 3

    with pytest.raises(
        PeerError, match=rf"the prompt is {CONTEXT} tokens; this model's context holds {CONTEXT}"
    ):
        await agenerate(client, TOKENIZER, prompt(CONTEXT), SamplingParams(max_tokens=1))
    assert [m.servers[p].tokens_served for p in peers] == [CONTEXT - 1 + 12] * 3


class Counted(LocalChain):
    """The local chain, counting the positions its steps run."""

    positions = 0

    def step(self, session_id: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.positions += input_ids.shape[1]
        return super().step(session_id, input_ids, attention_mask)


def test_the_local_chain_generates_to_the_same_bound(toy_mesh: ToyMesh) -> None:
    chain = Counted(toy_mesh.model_dir, threads=1)
    ids = prompt(CONTEXT - 4)
    result = generate(chain, TOKENIZER, ids, SamplingParams(max_tokens=10))
    assert list(result.token_ids) == reference_greedy(toy_mesh.model_dir, ids, 4)
    assert result.finish_reason == "length" and chain.positions == CONTEXT - 1
    with pytest.raises(PeerError, match="leaving no room for a token"):
        generate(chain, TOKENIZER, prompt(CONTEXT + 5), SamplingParams(max_tokens=1))


async def test_a_malformed_step_is_refused_before_it_is_sent_and_the_session_goes_on(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    peers = [m.peer((0, 1)), m.peer((1, 3)), m.peer((3, 4))]
    client = m.client()
    session = await client.open(1, 16)
    ones = np.ones((1, 2), np.int64)
    for ids, mask, message in (
        (np.array([[1, 2], [3, 4]]), np.ones((2, 2), np.int64), r"\[1, seq\] shape.*int64 \[2, 2\]"),
        (np.array([[1, 2]]), np.ones((1, 3), np.int64), r"\[1, 2\] and int64 \[1, 3\]"),
        (np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64), r"seq >= 1"),
        (np.array([1, 2]), np.ones(2, np.int64), r"\[1, seq\] shape"),
        (np.array([[1.0, 2.0]]), ones, r"float64 \[1, 2\]"),
        (np.array([[1, 2]]), np.array([[1, 2]]), r"mask values must be 0 or 1"),
    ):
        with pytest.raises(MeshError, match=message):
            await session.step(ids, mask)
    assert session.failovers == 0 and not any(client.bans.banned(p) for p in peers)
    assert all(s.length == 0 for p in peers for s in m.servers[p].sessions.values()), "nothing was sent"

    ids = np.array([[1, 2]])
    logits = await session.step(ids, ones)
    tokens = [int(np.argmax(logits[0, -1]))]
    logits = await session.step(np.array([tokens[-1:]]), np.ones((1, 1), np.int64))
    tokens.append(int(np.argmax(logits[0, -1])))
    await session.close()
    assert tokens == reference_greedy(m.model_dir, [1, 2], 2)

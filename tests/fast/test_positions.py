"""FORWARD ``position_ids`` are bounded by the model's context and the session's ``max_length``, and its
``attention_mask`` holds 0s and 1s.

The frames are raw FORWARD frames built with the wire codec (``core/wire.py``), sent over a link as any
client would send them; the refusal is a ``bad_shape`` ERROR frame and the session goes on unharmed.
"""

from __future__ import annotations

import numpy as np
import pytest

from python_peer.core import manifest as names
from python_peer.core.errors import RemoteBadShapeError
from python_peer.rpc import RpcClient
from python_peer.runner import BlocksRunner
from python_peer.tensors import expect
from tests.fast.conftest import ToyMesh
from tests.fast.toy_model import HIDDEN
from tests.support.decode_steps import forward_frame as forward
from tests.support.decode_steps import open_frame

CONTEXT = 256  # the toy model's max_position_embeddings


async def test_positions_past_the_context_or_max_length_get_bad_shape_and_the_session_goes_on(
    toy_mesh: ToyMesh,
) -> None:
    m = toy_mesh
    assert m.manifest.context == CONTEXT
    peer = m.peer((1, 3))
    rpc = RpcClient(await m.network.connect("a-client", peer))
    short, long = b"\x01" * 16, b"\x02" * 16
    server = m.servers[peer]
    await rpc.call(open_frame(server, short, 8), 5)
    await rpc.call(open_frame(server, long, 2 * CONTEXT), 5)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 1, HIDDEN)).astype(np.float32)
    three = rng.standard_normal((1, 3, HIDDEN)).astype(np.float32)

    with pytest.raises(
        RemoteBadShapeError, match=r"position_ids 1000000000\.\.1000000000 are outside 0\.\.7"
    ):
        await rpc.call(forward(short, 0, one, np.array([[10**9]])), 5)
    with pytest.raises(RemoteBadShapeError, match=r"outside 0\.\.7"):
        await rpc.call(forward(short, 0, one, np.array([[8]])), 5)  # max_length 8: positions 0..7
    with pytest.raises(RemoteBadShapeError, match=r"position_ids -1\.\.1"):
        await rpc.call(forward(short, 0, three, np.array([[-1, 0, 1]])), 5)
    with pytest.raises(RemoteBadShapeError, match=rf"outside 0\.\.{CONTEXT - 1} .*context {CONTEXT}"):
        await rpc.call(forward(long, 0, one, np.array([[CONTEXT]])), 5)  # max_length allows it; the model not
    for bad in (2, -1):  # an attention mask is 0 or 1 (the browser peer refuses the same)
        with pytest.raises(RemoteBadShapeError, match=r"attention mask values must be 0 or 1"):
            await rpc.call(forward(short, 0, three, np.arange(3)[None], np.array([[1, bad, 1]])), 5)
        with pytest.raises(RemoteBadShapeError, match=r"attention mask values must be 0 or 1"):
            await rpc.call(forward(short, 0, one, np.array([[0]]), np.array([[bad]])), 5)  # a decode step
    assert server.tokens_served == 0, "nothing was computed for a refused frame"

    # Both sessions are still at step 0 and answer as a fresh run of the same blocks does.
    answer = await rpc.call(forward(short, 0, three, np.arange(3)[None]), 5)
    last = await rpc.call(forward(short, 1, one, np.array([[7]])), 5)
    edge = await rpc.call(forward(long, 0, one, np.array([[CONTEXT - 1]])), 5)
    shards = [s for s in m.manifest.blocks if s.start >= 1 and s.end <= 3]
    runners = [BlocksRunner(m.model_dir, s, m.manifest, threads=1) for s in shards]
    for runner in runners:
        runner.open("x", 1)
    hidden, step = three, one
    for runner in runners:
        hidden = runner.forward("x", hidden, np.ones((1, 3), np.int64), np.arange(3)[None])
        step = runner.forward("x", step, np.ones((1, 1), np.int64), np.array([[7]]))
    np.testing.assert_allclose(expect(answer, names.HIDDEN_OUT, "f", 3), hidden, atol=1e-5)
    np.testing.assert_allclose(expect(last, names.HIDDEN_OUT, "f", 3), step, atol=1e-5)
    assert expect(edge, names.HIDDEN_OUT, "f", 3).shape == (1, 1, HIDDEN)
    await rpc.aclose()

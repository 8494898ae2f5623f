"""A peer serving spans of two models answers each session from its model's server (``model_router.py``).

Raw frames (``core/wire.py``) over an in-memory link, as any client sends them: OPEN names its model
(docs/wire.md); a model the peer does not serve is refused with ``session_refused`` naming what it
serves, and nothing runs; every later frame of a session reaches the server that opened it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from python_peer.core import manifest as names
from python_peer.core.errors import SessionRefusedError
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType
from python_peer.identity import Identity
from python_peer.model_router import ModelRouter
from python_peer.rpc import RpcClient
from python_peer.server import ServerConfig, SpanServer
from python_peer.span_gate import SpanGate
from python_peer.tensors import to_wire
from tests.fast.toy_model import HIDDEN
from tests.support.fakes import MemoryNetwork, announcement


@pytest.fixture(scope="module")
def second_toy(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy model again under another name: a second model on the same peer."""
    other = tmp_path_factory.mktemp("toy-two") / "model"
    shutil.copytree(toy, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["name"] = "toy-two"
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def opening(model: str, session: bytes, start: int = 1, end: int = 3) -> Frame:
    meta = {"model": model, "start": start, "end": end, "batch": 1, "max_length": 8}
    return Frame(FrameType.OPEN, session, 0, meta=meta)


def forward(session: bytes) -> Frame:
    hidden = np.random.default_rng(0).standard_normal((1, 2, HIDDEN)).astype(np.float32)
    return Frame(
        FrameType.FORWARD,
        session,
        0,
        tensors=(
            to_wire(names.HIDDEN_IN, hidden),
            to_wire(names.ATTENTION_MASK, np.ones((1, 2), dtype=np.int64)),
            to_wire(names.POSITION_IDS, np.arange(2, dtype=np.int64)[None]),
        ),
    )


async def test_each_session_reaches_its_models_server(toy: Path, second_toy: Path) -> None:
    identity = Identity.generate()
    one, two = load_manifest(toy), load_manifest(second_toy)
    servers = {
        m.name: SpanServer(d, m, Span(1, 3), ServerConfig(threads=1), None, identity=identity)
        for m, d in ((one, toy), (two, second_toy))
    }
    router = ModelRouter({name: SpanGate(server) for name, server in servers.items()})
    network = MemoryNetwork()
    network.serve(identity.peer_id, router, announcement(identity.peer_id, one.name, 1, 3))
    rpc = RpcClient(await network.connect("a-client", identity.peer_id))

    with pytest.raises(SessionRefusedError, match=r"serves no blocks of model 'other-model' \(it serves "):
        await rpc.call(opening("other-model", b"\x01" * 16), 5)
    with pytest.raises(SessionRefusedError):
        await rpc.call(Frame(FrameType.OPEN, b"\x02" * 16, 0, meta={"start": 1, "end": 3}), 5)
    assert all(not s.sessions for s in servers.values()), "a refused OPEN opened nothing"

    await rpc.call(opening("toy-two", b"\x03" * 16), 5)
    await rpc.call(forward(b"\x03" * 16), 5)
    assert (servers["toy-two"].tokens_served, servers[one.name].tokens_served) == (2, 0)
    await rpc.call(opening(one.name, b"\x04" * 16), 5)
    await rpc.call(forward(b"\x04" * 16), 5)
    assert (servers["toy-two"].tokens_served, servers[one.name].tokens_served) == (2, 2)
    # a span of the other model is refused by that model's server, as a one-model peer refuses it
    with pytest.raises(SessionRefusedError, match="not toy-two blocks 0-4"):
        await rpc.call(opening("toy-two", b"\x05" * 16, 0, 4), 5)

    router.close_client("a-client")
    assert all(not s.sessions for s in servers.values())

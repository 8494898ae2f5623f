"""Push routing with real processes: ``ai4all peer`` processes push each step's hidden states to the next
peer over WebRTC, the client sends every step to the first peer only, and the tokens are the local
chain's, including after a SIGKILL of the middle peer mid-generation (a spare serving its span takes over);
on an fp32 export and on one with ``--hidden-float16``, whose hidden states every hop carries as float16.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.core.wire import Frame, FrameType
from python_peer.generate import SamplingParams, generate
from python_peer.mesh_client import MeshClient
from python_peer.mesh_session import MeshSession
from python_peer.node import NodeConfig, open_client
from python_peer.rpc import RpcClient
from python_peer.tokenizer import ModelTokenizer
from tests.support.mesh import FAST, PROMPTS
from tests.support.procs import Node, PeerProc

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["fp32", "hidden_float16"])
def export(request: pytest.FixtureRequest) -> Path:
    """The tiny Llama's export, as is or with hidden states rounded to float16 values."""
    name = "tiny_llama_export" if request.param == "fp32" else "tiny_llama_export_h16"
    return Path(request.getfixturevalue(name))


def carried(model: Path) -> set[str]:
    """The dtype hidden states of ``model``'s shards travel in (``to_wire`` narrows float16 values)."""
    return {"float16"} if load_manifest(model).raw["export"]["args"].get("hidden_float16") else {"float32"}


@pytest.fixture
def procs(tmp_path: Path, export: Path) -> Iterator[dict[str, PeerProc]]:
    """One signaling node; peers for 0-1, 1-3, 3-4, and a spare 1-3."""
    node = Node("node", tmp_path, ())
    peers = {
        name: PeerProc(name, tmp_path, export, [node.url], span=span)
        for name, span in (("p0-1", "0-1"), ("p1-3", "1-3"), ("p3-4", "3-4"), ("spare1-3", "1-3"))
    }
    try:
        node.wait()
        for peer in peers.values():
            peer.wait()
        peers["node"] = node  # type: ignore[assignment]
        yield peers
    finally:
        for peer in peers.values():
            if isinstance(peer, PeerProc):
                with contextlib.suppress(AssertionError):
                    peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


@contextlib.asynccontextmanager
async def client_of(url: str, model: Path) -> AsyncIterator[MeshClient]:
    mesh_node, client = await open_client(NodeConfig(signal_urls=(url,)), model, FAST)
    try:
        yield client
    finally:
        await client.aclose()
        await mesh_node.aclose()


class Sent:
    """Counts the FORWARD frames the client itself sends on each hop's link."""

    def __init__(self) -> None:
        self.forwards: dict[str, int] = {}
        self.dtypes: set[str] = set()  # of the hidden states the client sent
        self._wrapped: set[int] = set()

    def watch(self, session: MeshSession) -> None:
        for hop in session.hops:
            rpc = hop.rpc
            assert isinstance(rpc, RpcClient)
            if id(rpc) in self._wrapped:
                continue
            self._wrapped.add(id(rpc))
            send, peer = rpc.link.send, hop.peer_id

            async def counted(frame: Frame, send: Any = send, peer: str = peer) -> None:
                if frame.type is FrameType.FORWARD:
                    self.forwards[peer] = self.forwards.get(peer, 0) + 1
                    self.dtypes.add(frame.tensor("hidden_states").dtype)
                await send(frame)

            rpc.link.send = counted  # type: ignore[method-assign]


def chat_ids(model: Path, prompt: str) -> list[int]:
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    return tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))


def local_tokens(model: Path, ids: list[int], n: int) -> tuple[int, ...]:
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=n)).token_ids


async def run(
    session: MeshSession,
    ids: list[int],
    n: int,
    sent: Sent,
    kill_at: int = -1,
    victim: PeerProc | None = None,
) -> tuple[int, ...]:
    sent.watch(session)
    logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
    tokens: list[int] = []
    for step in range(n):
        tokens.append(int(np.argmax(logits[0, -1])))
        if step == kill_at and victim is not None:
            victim.kill()  # SIGKILL: no goodbye, its links just go silent
        if len(tokens) == n:
            break
        sent.watch(session)
        logits = await session.step(np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
    return tuple(tokens)


async def test_pushed_steps_give_the_local_tokens_and_reach_only_the_first_peer_from_the_client(
    procs: dict[str, PeerProc], export: Path
) -> None:
    ids = chat_ids(export, PROMPTS[0])
    expected = local_tokens(export, ids, 16)
    url = procs["node"].url  # type: ignore[attr-defined]
    async with client_of(url, export) as client:
        session = await client.open(1, len(ids) + 16)
        sent = Sent()
        tokens = await run(session, ids, 16, sent)
        route = session.hops
        # The pushing peers kept their outputs (signed answers only came back); a spot check at close may
        # fetch them.
        kept = all(o is None for h in route[:-1] for o in h.outputs)
        await session.close()
    assert tokens == expected and kept
    assert all(h.pushes for h in route) and session.pushing and session.failovers == 0
    assert sent.forwards == {route[0].peer_id: 16}  # every step went to the first peer only; the rest pushed
    assert all(len(h.outputs) == 16 for h in route)
    assert sent.dtypes == carried(export)
    assert all(a is not None for h in route for a in h.answers)  # signed over what was carried


async def test_the_middle_peer_sigkilled_mid_generation_the_spare_takes_over_with_identical_tokens(
    procs: dict[str, PeerProc], export: Path
) -> None:
    ids = chat_ids(export, PROMPTS[1])
    expected = local_tokens(export, ids, 20)
    url = procs["node"].url  # type: ignore[attr-defined]
    async with client_of(url, export) as client:
        session = await client.open(1, len(ids) + 20)
        middle = next(h.peer_id for h in session.hops if (h.start, h.end) == (1, 3))
        victim = next(p for p in procs.values() if isinstance(p, PeerProc) and p.peer_id == middle)
        sent = Sent()
        tokens = await run(session, ids, 20, sent, kill_at=6, victim=victim)
        route = session.hops
        await session.close()
    assert tokens == expected
    assert session.failovers >= 1 and middle not in [h.peer_id for h in route]
    spare = next(
        p
        for p in procs.values()
        if isinstance(p, PeerProc) and p.name in ("p1-3", "spare1-3") and p is not victim
    )
    assert spare.peer_id in [h.peer_id for h in route]
    assert all(h.pushes for h in route) and session.pushing  # still pushed after the failover
    # Only the first peer gets steps from the client, but for the replay to the spare (one REPLAY FORWARD).
    assert sent.forwards.get(spare.peer_id, 0) <= 1 and sent.forwards[route[0].peer_id] == 20
    assert sent.dtypes == carried(export)  # the replay too


@pytest.mark.parametrize("export", ["hidden_float16"], indirect=True)
async def test_a_failover_after_a_long_generation_fetches_every_kept_output_at_once_and_blames_no_one_else(
    procs: dict[str, PeerProc], export: Path
) -> None:
    """190 decode steps, then the middle peer SIGKILLed: the replay to the spare needs every output the
    first peer kept, 191 FETCHes sent at once on one link (more than a peer answers concurrently, or
    queues, per link). All are answered; only the dead peer is banned, and the tokens are the local chain's."""
    ids = chat_ids(export, PROMPTS[1])
    n = 200
    expected = local_tokens(export, ids, n)
    url = procs["node"].url  # type: ignore[attr-defined]
    async with client_of(url, export) as client:
        session = await client.open(1, len(ids) + n)
        first = session.hops[0].peer_id
        middle = next(h.peer_id for h in session.hops if (h.start, h.end) == (1, 3))
        victim = next(p for p in procs.values() if isinstance(p, PeerProc) and p.peer_id == middle)
        sent = Sent()
        tokens = await run(session, ids, n, sent, kill_at=n - 10, victim=victim)
        route = session.hops
        await session.close()
        assert [p for p in (first, route[-1].peer_id) if client.bans.banned(p)] == []
    assert tokens == expected
    assert session.failovers == 1 and route[0].peer_id == first and middle not in [h.peer_id for h in route]
    spare = route[1].peer_id
    assert sent.forwards.get(spare, 0) <= 1  # the replay, one FORWARD

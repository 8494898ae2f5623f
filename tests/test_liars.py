"""A lying peer across real processes: caught by spot checks, proven by evidence that gossip spreads.

Real ``ai4all peer`` processes serve the tiny Llama export; blocks 1-3 are served by three peers, one of
them started with the test-only hook ``AI4ALL_TEST_LIE=zeros`` (``python_peer/server.py``): it returns
zeros for every FORWARD and signs them like honest answers. A client with a ledger chats until its spot
checks catch it (as the routed peer or as a checking one), then the test checks, through
``ai4all ledger show`` on another peer's data directory, that the evidence reached it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from python_peer.chain import LocalChain
from python_peer.core.evidence import Evidence
from python_peer.core.receipts import ReceiptBody
from python_peer.core.reputation import SUSPECT, reputation
from python_peer.generate import SamplingParams, generate
from python_peer.node import NodeConfig, open_client
from python_peer.server import TEST_LIE_ENV
from python_peer.tokenizer import ModelTokenizer
from tests.support.mesh import FAST, PROMPTS, mesh_tokens
from tests.support.procs import Node, PeerProc, ProcMesh, run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

SESSIONS = 8  # with every new peer checked every session, the liar is involved within a few
CHECKED = dataclasses.replace(FAST, gossip_every_s=0.0)  # gossip after every receipt: evidence spreads now


def local_tokens(model: Path, prompt: str, max_tokens: int) -> tuple[int, ...]:
    """The reference: the same greedy run through the shards in this process."""
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": prompt}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=max_tokens)).token_ids


class Mesh(ProcMesh):
    """A signaling node; peers for 0-1 and 3-4, three for 1-3 of which ``liar`` lies."""

    def __init__(self, tmp: Path, model: Path) -> None:
        node = Node("signal", tmp)
        spans = [("p0-1", "0-1"), ("liar", "1-3"), ("h1-3a", "1-3"), ("h1-3b", "1-3"), ("p3-4", "3-4")]
        peers = [
            PeerProc(
                name,
                tmp,
                model,
                [node.url],
                span=span,
                env={TEST_LIE_ENV: "zeros"} if name == "liar" else None,
            )
            for name, span in spans
        ]
        super().__init__(model, node, peers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("liars"), tiny_llama_export)
    try:
        mesh.ready()
        yield mesh
    finally:
        mesh.stop()


async def test_a_lying_peer_is_caught_proven_and_avoided_across_processes(mesh: Mesh) -> None:
    liar = mesh.peer("liar").peer_id
    honest = [mesh.peer("h1-3a"), mesh.peer("h1-3b")]
    config = NodeConfig(signal_urls=(mesh.node.url,))
    node, client = await open_client(config, mesh.model, CHECKED)
    try:
        assert client.spot_checks is not None and client.ledger is not None
        for i in range(SESSIONS):
            await mesh_tokens(client, PROMPTS[i % len(PROMPTS)], 6)
            if liar in client.spot_checks.caught:
                break
        assert liar in client.spot_checks.caught, [p.tail() for p in mesh.peers]
        report = client.ledger.store.report()
        found = reputation(report, liar)
        assert found.level == SUSPECT and found.authors == {client.ledger.peer_id}
        evidence = [e for e in client.ledger.store.entries() if isinstance(e.body, Evidence)]
        assert evidence
        lying = {a.session for a in found.accusations}
        assert not any(
            isinstance(e.body, ReceiptBody)
            and e.body.receipt.server == liar
            and e.body.receipt.session in lying
            for e in client.ledger.store.entries()
        ), "nothing countersigned for the session the liar lied in"
        # After detection the liar is never routed, and every reply is the honest one.
        for prompt in PROMPTS:
            assert await mesh_tokens(client, prompt, 6) == local_tokens(mesh.model, prompt, 6)
        await client.gossip_settled()
    finally:
        await client.aclose()
        await node.aclose()

    def reached() -> PeerProc | None:
        for peer in honest:
            done = run_cli(
                ["ledger", "show", liar, "--data-dir", str(peer.data_dir)], timeout=60, env={"COLUMNS": "200"}
            )
            if done.returncode == 0 and "reputation: suspect" in done.stdout:
                return peer
        return None

    assert wait_for(reached, 30, what="the evidence reaching an honest peer", interval=0.5) is not None

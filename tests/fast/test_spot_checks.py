"""Spot checks in memory: lying peers are caught, proven, unpaid and avoided; honest peers never are.

Each test builds a toy mesh where blocks 1-3 are served by a liar (preferred by routing: it announces the
best throughput) and two honest peers, with ledgers everywhere. The client generates sessions with
different prompts until its spot checks catch the liar, then the test checks the consequences: evidence
in the client's log and, through gossip, in another node's; no receipt for the liar's lying session;
routing avoids it; replies equal the local reference again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from python_peer.core.browser_ledger import BrowserLedgerCore
from python_peer.core.errors import SessionRefusedError
from python_peer.core.evidence import Evidence
from python_peer.core.manifest import load_manifest
from python_peer.core.receipts import ReceiptBody
from python_peer.core.reputation import SUSPECT, reputation
from python_peer.core.signature_claims import signature_claims
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.mesh_client import MeshClient
from python_peer.rpc import RpcClient
from python_peer.server import ServerConfig, SpanServer
from python_peer.spot_check import SpotCheckPolicy, agree
from tests.fast.conftest import FAST, ToyMesh, greedy
from tests.support.fakes import announcement
from tests.support.liars import LIAR_KINDS, Liar, accuse, altered_model, decode_only, one_in_twenty
from tests.support.mesh import reference_greedy as local_greedy

NEW_TOKENS = 8
CHECKED = dataclasses.replace(FAST, gossip_every_s=0.0, spot_checks=SpotCheckPolicy(seed=3))
DETECT_WITHIN = 5  # sessions of the liar, at the default policy (docs/trust.md)


def prompt(i: int) -> list[int]:
    return [(3 + 5 * i) % 32, (7 + 3 * i) % 32, (11 + i) % 32, 13]


def mesh_with_liar(
    m: ToyMesh, make_ledger: Callable[..., LedgerService], wrap: Callable[[SpanServer], Liar]
) -> tuple[str, list[str], MeshClient, LedgerService]:
    """Blocks 0-1 and 3-4 honest, 1-3 a liar (``wrap``) and two honest peers; a client with a ledger."""
    m.peer((0, 1), ledger=make_ledger())
    liar = m.peer((1, 3), ledger=make_ledger(), throughput=9000, wrap=lambda pid, s: wrap(s))
    honest = [m.peer((1, 3), ledger=make_ledger()) for _ in range(2)]
    m.peer((3, 4), ledger=make_ledger())
    own = make_ledger()
    return liar, honest, m.client(own, config=CHECKED), own


async def run_until_caught(client: MeshClient, liar: str, limit: int) -> int:
    """Sessions run (with different prompts) until ``liar`` is caught; ``limit + 1`` if it never is."""
    assert client.spot_checks is not None
    for i in range(limit):
        await greedy(client, prompt(i), NEW_TOKENS)
        if liar in client.spot_checks.caught:
            return i + 1
    return limit + 1


async def assert_consequences(
    m: ToyMesh, client: MeshClient, own: LedgerService, liar: str, honest: list[str]
) -> None:
    """Evidence in the client's log and in another node's, no receipt for the lying session, routing
    avoids the liar, and the reply equals the reference."""
    report = own.store.report()
    found = reputation(report, liar)
    assert found.level == SUSPECT and found.authors == {own.peer_id}
    lying_sessions = {a.session for a in found.accusations}
    evidence = [e.body for e in own.store.entries() if isinstance(e.body, Evidence)]
    assert evidence and all(body.accused == liar for body in evidence)
    assert not any(
        isinstance(e.body, ReceiptBody)
        and e.body.receipt.server == liar
        and e.body.receipt.session in lying_sessions
        for e in own.store.entries()
    ), "the client countersigned nothing for the session the liar lied in"
    await client.gossip_settled()
    holders = [
        pid
        for pid in honest
        if m.servers[pid].ledger is not None
        and any(isinstance(e.body, Evidence) for e in m.servers[pid].ledger.store.entries())  # type: ignore[union-attr]
    ]
    assert holders, "the evidence reached another node through gossip"
    other = m.servers[holders[0]].ledger
    assert other is not None and reputation(other.store.report(), liar).level == SUSPECT

    expected = local_greedy(m.model_dir, prompt(99), NEW_TOKENS)
    tokens, session = await greedy(client, prompt(99), NEW_TOKENS)
    assert liar not in [hop[0] for hop in session.route]
    assert tokens == expected


@pytest.mark.parametrize("kind", LIAR_KINDS)
async def test_a_liar_is_caught_proven_unpaid_and_avoided(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], kind: str
) -> None:
    m = toy_mesh
    liar, honest, client, own = mesh_with_liar(m, make_ledger, lambda s: Liar(s, kind))
    sessions = await run_until_caught(client, liar, DETECT_WITHIN)
    assert sessions <= DETECT_WITHIN, f"{kind} liar not caught within {DETECT_WITHIN} sessions"
    await assert_consequences(m, client, own, liar, honest)


@pytest.mark.parametrize("when", [decode_only, one_in_twenty], ids=["decode_only", "one_in_twenty"])
async def test_a_liar_on_some_steps_only_is_caught(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], when: Callable[..., bool]
) -> None:
    m = toy_mesh
    liar, honest, client, own = mesh_with_liar(m, make_ledger, lambda s: Liar(s, "noise", when=when, seed=5))
    # one step in twenty: a session of 8 steps holds a lie with probability 1 - 0.95**8 = 34%
    limit = DETECT_WITHIN if when is decode_only else 3 * DETECT_WITHIN
    sessions = await run_until_caught(client, liar, limit)
    assert sessions <= limit
    await assert_consequences(m, client, own, liar, honest)


async def test_a_new_client_avoids_a_suspect_from_its_ledger_alone_even_when_the_ledger_reads_last(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route reads the ledger's reputations and looks peers up at once: the evidence must still apply
    when the lookup answers first (here the reputation read is made the slow one)."""
    m = toy_mesh
    liar, _, client, own = mesh_with_liar(m, make_ledger, lambda s: Liar(s, "noise"))
    assert await run_until_caught(client, liar, DETECT_WITHIN) <= DETECT_WITHIN
    read = own.store.report

    def slow_report() -> object:
        time.sleep(0.2)  # in the reading thread: the lookup's answer is in long before
        return read()

    monkeypatch.setattr(own.store, "report", slow_report)
    fresh = m.client(own, config=CHECKED)  # caught nothing itself: only the ledger says who lied
    assert fresh.spot_checks is not None and not fresh.spot_checks.caught
    route = await fresh.route(0, m.manifest.num_layers, 64)
    assert liar not in [c.peer_id for c in route], "the liar, preferred by throughput, was routed to"
    tokens, session = await greedy(fresh, prompt(99), NEW_TOKENS)
    assert liar not in [hop[0] for hop in session.route]
    assert tokens == local_greedy(m.model_dir, prompt(99), NEW_TOKENS)


async def test_a_peer_running_altered_weights_is_caught(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService], tmp_path: Path
) -> None:
    m = toy_mesh
    altered = altered_model(m.model_dir, tmp_path / "altered", 1, 3)
    m.peer((0, 1), ledger=make_ledger())
    bad = make_ledger()
    server = SpanServer(altered, load_manifest(altered), Span(1, 3), ServerConfig(threads=1), bad)
    m.servers[bad.peer_id] = server
    m.network.serve(bad.peer_id, server, announcement(bad.peer_id, m.manifest.name, 1, 3, throughput=9000))
    honest = [m.peer((1, 3), ledger=make_ledger()) for _ in range(2)]
    m.peer((3, 4), ledger=make_ledger())
    own = make_ledger()
    client = m.client(own, config=CHECKED)
    assert await run_until_caught(client, bad.peer_id, DETECT_WITHIN) <= DETECT_WITHIN
    await assert_consequences(m, client, own, bad.peer_id, honest)


async def test_a_late_peer_is_routed_around_and_the_reply_is_right(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    m = toy_mesh
    fast = dataclasses.replace(CHECKED, request_timeout_s=0.5)
    m.peer((0, 1))
    late = m.peer((1, 3), throughput=9000, wrap=lambda pid, s: Liar(s, "late", delay_s=2.0))
    m.peer((1, 3))
    m.peer((3, 4))
    client = m.client(config=fast)
    tokens, session = await greedy(client, prompt(1), NEW_TOKENS)
    assert tokens == local_greedy(m.model_dir, prompt(1), NEW_TOKENS)
    assert client.bans.banned(late) and late not in [hop[0] for hop in session.route]


async def test_honest_peers_on_different_runtimes_are_never_accused(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """A peer whose outputs differ by what native vs WASM shows (~2e-3 of max |x|) passes every check."""
    m = toy_mesh
    m.peer((0, 1), ledger=make_ledger())
    wasm = m.peer((1, 3), ledger=make_ledger(), throughput=9000, wrap=lambda pid, s: Liar(s, "wasm_like"))
    for _ in range(2):
        m.peer((1, 3), ledger=make_ledger())
    m.peer((3, 4), ledger=make_ledger())
    own = make_ledger()
    client = m.client(own, config=CHECKED)
    assert client.spot_checks is not None
    for i in range(12):
        await greedy(client, prompt(i), NEW_TOKENS)
    stats = client.spot_checks.stats
    assert not client.spot_checks.caught and stats.caught == 0 and stats.inconclusive == 0
    assert stats.passed >= 3 and client.spot_checks.passes[wasm] >= 3
    assert not own.store.report().accusations


async def test_checks_thin_out_for_established_peers() -> None:
    """BOINC-style: every session while new, then falling, never below the floor."""
    policy = SpotCheckPolicy()
    assert policy.rate(0) == policy.rate(4) == 1.0 and policy.rate(9) == 0.25
    assert policy.rate(15) < 0.1 and policy.rate(22) == policy.rate(10_000) == policy.floor == 0.05
    assert policy.tolerance("fp32") < policy.tolerance("q8") < policy.tolerance("q4")


def test_agreement_tolerance_separates_runtime_noise_from_lies() -> None:
    rng = np.random.default_rng(0)
    out = rng.normal(0, 1, (1, 4, 8)).astype(np.float32)
    scale = float(np.abs(out).max())
    assert agree(out, out + 2e-3 * scale * rng.uniform(-1, 1, out.shape).astype(np.float32), 1e-2)
    assert not agree(out, out + rng.normal(0, 1, out.shape).astype(np.float32), 1e-2)
    assert not agree(out, np.zeros_like(out), 1e-2)
    assert not agree(out, out[:, :2], 1e-2)


async def test_an_unsigned_answer_is_a_hop_failure(toy_mesh: ToyMesh) -> None:
    """A peer without a signing identity (or one that strips it) is routed around like a dead one."""
    m = toy_mesh
    m.peer((0, 1))
    unsigned = SpanServer(m.model_dir, m.manifest, Span(1, 3), ServerConfig(threads=1))
    pid = "f" * 64
    m.network.serve(pid, unsigned, announcement(pid, m.manifest.name, 1, 3, throughput=9000))
    m.peer((1, 3))
    m.peer((3, 4))
    client = m.client(config=CHECKED)
    tokens, session = await greedy(client, prompt(2), NEW_TOKENS)
    assert tokens == local_greedy(m.model_dir, prompt(2), NEW_TOKENS)
    assert "BadAnswerError: unsigned" in session.last_failure and client.bans.banned(pid)


async def test_a_peer_refuses_to_serve_a_client_excluded_by_evidence(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """Evidence from two different clients excludes a peer: serving peers refuse its sessions."""
    m = toy_mesh
    server = make_ledger()
    pid = m.peer((1, 3), ledger=server)
    excluded = make_ledger()
    witnesses = [Identity.generate() for _ in range(4)]
    browser = BrowserLedgerCore(Identity.generate().peer_id, 4)  # a browser peer holding the same evidence
    for author, others in ((witnesses[0], witnesses[2:]), (witnesses[1], witnesses[2:])):
        entry = accuse(author, excluded.identity, others, "e" * 32)
        assert server.store.insert(entry, now=entry.time).status == "stored"
        browser.known.add(signature_claims(entry))  # what the browser checked in JS before it stores
        assert browser.store.insert(entry, now=entry.time).status == "stored"
    rpc = RpcClient(await m.network.connect(excluded.peer_id, pid))
    try:
        push = Frame(
            FrameType.GOSSIP, b"\x02" * 16, 0, meta={"kind": "push", "entries": excluded.own_entries()}
        )
        await rpc.call(push, 5)
        meta = {"model": m.manifest.name, "start": 1, "end": 3, "batch": 1, "max_length": 8}
        with pytest.raises(
            SessionRefusedError, match="is excluded: this node holds evidence against it from 2"
        ) as refused:
            await rpc.call(Frame(FrameType.OPEN, b"\x01" * 16, 0, meta=meta), 5)
        # the browser peer's refusal (span_server.js) is the core's message too
        refusal = browser.reputation(excluded.peer_id)["refusal"]
        assert refusal is not None and refusal in str(refused.value)
        assert browser.reputation(witnesses[0].peer_id)["refusal"] is None
    finally:
        await rpc.aclose()


class SignsTheTruthReturnsALie(Liar):
    """Returns zeros but keeps the honest answer's signature: the commitment does not match the output."""

    def resign(self, answer: Frame, lie: np.ndarray) -> Frame:
        from python_peer.core import manifest as names
        from python_peer.tensors import to_wire

        tensors = (to_wire(names.HIDDEN_OUT, lie),)
        return Frame(
            answer.type, answer.session, answer.step, answer.flags, meta=answer.meta, tensors=tensors
        )


async def test_an_answer_signed_over_another_output_is_a_hop_failure(toy_mesh: ToyMesh) -> None:
    m = toy_mesh
    m.peer((0, 1))
    cheat = m.peer((1, 3), throughput=9000, wrap=lambda pid, s: SignsTheTruthReturnsALie(s, "zeros"))
    m.peer((1, 3))
    m.peer((3, 4))
    client = m.client(config=CHECKED)
    tokens, session = await greedy(client, prompt(3), NEW_TOKENS)
    assert tokens == local_greedy(m.model_dir, prompt(3), NEW_TOKENS)
    assert "BadAnswerError: wrong_answer" in session.last_failure and "['output']" in session.last_failure
    assert client.bans.banned(cheat)


async def test_forged_evidence_pushed_over_a_session_link_is_not_stored(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """The attack through the documented protocol: a GOSSIP ``push`` of evidence entries whose answers
    were never signed by the accused (docs/mesh.md, docs/ledger.md)."""
    m = toy_mesh
    server = make_ledger()
    pid = m.peer((1, 3), ledger=server)
    mallory, victim = Identity.generate(), server.identity
    entry = accuse(mallory, victim, [Identity.generate(), Identity.generate()], "e" * 32).to_dict()
    fake_signature = Identity.generate().sign(b"not the answer")  # a well-formed signature by someone else
    entry["body"]["liar"]["signature"] = fake_signature
    from python_peer.core.canonical import signing_bytes
    from python_peer.core.entries import ENTRY_CONTEXT

    unsigned = {k: v for k, v in entry.items() if k != "signature"}
    entry["signature"] = mallory.sign(signing_bytes(ENTRY_CONTEXT, unsigned))  # the entry itself is signed
    rpc = RpcClient(await m.network.connect(mallory.peer_id, pid))
    try:
        push = Frame(FrameType.GOSSIP, b"\x04" * 16, 0, meta={"kind": "push", "entries": [entry]})
        assert (await rpc.call(push, 5)).meta == {"stored": 0, "held": 0}
        assert reputation(server.store.report(), victim.peer_id).level == "good"
    finally:
        await rpc.aclose()


async def test_a_node_serving_the_span_settles_a_disagreement_itself(
    toy_mesh: ToyMesh, make_ledger: Callable[..., LedgerService]
) -> None:
    """With only the liar and one honest peer besides it, the client's own node (serving 1-3 in process)
    settles: the liar is caught and unpaid; no evidence, since the verdict has no third signature."""
    from python_peer.span_gate import SpanGate

    m = toy_mesh
    own = make_ledger()
    me = m.peer((1, 3), ledger=own, throughput=10)  # slow: routing prefers the others
    gate = SpanGate(m.servers[me], me)
    m.peer((0, 1), ledger=make_ledger())
    liar = m.peer((1, 3), ledger=make_ledger(), throughput=9000, wrap=lambda pid, s: Liar(s, "zeros"))
    m.peer((1, 3), ledger=make_ledger())
    m.peer((3, 4), ledger=make_ledger())
    client = m.client(own, client_id=me, local=gate, config=CHECKED)
    assert await run_until_caught(client, liar, DETECT_WITHIN) == 1
    assert not own.store.report().accusations, "no evidence without a third signature"
    assert not any(
        isinstance(e.body, ReceiptBody) and e.body.receipt.server == liar for e in own.store.entries()
    )
    tokens, session = await greedy(client, prompt(50), NEW_TOKENS)
    assert tokens == local_greedy(m.model_dir, prompt(50), NEW_TOKENS) and liar not in [
        h[0] for h in session.route
    ]

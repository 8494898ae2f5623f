"""The chaos run (``bench/chaos.py``): its kill schedule keeps its rules, its ledger checks catch a lost
receipt and differing balances, and a short run over a real mesh meets the goals of issue 12."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from bench.chaos import ChaosConfig, run_chaos, tiny_model
from bench.chaos_ledgers import compare, receipts, snapshot
from bench.chaos_load import Load, References, copy_ledger
from bench.chaos_mesh import ChaosMesh, Incarnation, Proc
from bench.chaos_report import WARM_S, memory_rows
from bench.chaos_schedule import NODE, PEER, Kill, Limits, Schedule, ScheduleError, Target, check_plan, plan
from bench.chaos_user import UserProcess
from bench.mesh_processes import BenchError
from python_peer.core.entries import Entry
from python_peer.core.errors import AI4AllError
from python_peer.identity import IDENTITY_FILE
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from tests.support.ledger import NOW, RULES, Log, cosign, grant, ids

TARGETS = [
    Target("node-a", NODE),
    Target("node-b", NODE),
    Target("node-c", NODE),
    *(Target(f"peer-0-2-{i}", PEER, "0-2", protected=i == 0) for i in range(3)),
    *(Target(f"peer-2-4-{i}", PEER, "2-4", protected=i == 0) for i in range(3)),
]
UNPROTECTED = [dataclasses.replace(t, protected=False) for t in TARGETS]


# --- the schedule --------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    first = plan(TARGETS, 600, seed=7)
    assert first == plan(TARGETS, 600, seed=7)
    assert first != plan(TARGETS, 600, seed=8)
    assert 15 <= len(first) <= 45  # one kill every 20 s on average over 585 s


@pytest.mark.parametrize("seed", range(40))
def test_every_schedule_keeps_a_server_per_span_a_node_and_restarts_before_the_end(seed: int) -> None:
    limits = Limits(mean_gap_s=6.0, down_min_s=3.0, down_max_s=20.0, max_down=3)
    kills = plan(UNPROTECTED, 300, seed, limits)
    check_plan(kills, {t.name: t for t in UNPROTECTED}, limits.max_down)  # plan calls it too: prove it here
    for moment in sorted({k.at for k in kills}):
        down = {k.target for k in kills if k.at <= moment < k.restart_at}
        assert len(down) <= limits.max_down
        assert not {"node-a", "node-b", "node-c"} <= down
        for span in ("0-2", "2-4"):
            assert not {f"peer-{span}-{i}" for i in range(3)} <= down
    assert all(k.restart_at <= 300 - limits.quiet_end_s + 1e-6 for k in kills)
    assert {t.name for t in UNPROTECTED} >= {k.target for k in kills}


def test_a_schedule_that_breaks_a_rule_is_refused() -> None:
    targets = {t.name: t for t in TARGETS}
    unprotected = {t.name: t for t in UNPROTECTED}
    whole_span = [Kill(10, "peer-2-4-1", 10), Kill(12, "peer-2-4-2", 5), Kill(13, "peer-2-4-0", 5)]
    with pytest.raises(ScheduleError, match="every peer of span 2-4"):
        check_plan(whole_span, unprotected, max_down=5)
    every_node = [Kill(1, "node-a", 10), Kill(2, "node-b", 10), Kill(3, "node-c", 1)]
    with pytest.raises(ScheduleError, match="every signaling node"):
        check_plan(every_node, targets, max_down=5)
    with pytest.raises(ScheduleError, match="protected"):
        check_plan([Kill(1, "peer-0-2-0", 1)], targets, max_down=2)
    with pytest.raises(ScheduleError, match="at most 1"):
        check_plan([Kill(1, "node-a", 10), Kill(2, "peer-0-2-1", 1)], targets, max_down=1)
    with pytest.raises(ScheduleError, match="not a process"):
        check_plan([Kill(1, "node-z", 1)], targets, max_down=1)
    # The live rules take ``down`` as the mesh reports it (a restarting process counts as down).
    live = Schedule(UNPROTECTED, max_down=3)
    assert live.blocked("peer-0-2-2", {"peer-0-2-0", "peer-0-2-1"}) == "every peer of span 0-2 would be down"
    assert live.blocked("node-c", {"node-a", "node-b"}) == "every signaling node would be down"
    assert live.blocked("peer-2-4-1", {"peer-2-4-1"}) == "peer-2-4-1 is already down"
    assert live.blocked("peer-2-4-1", {"peer-0-2-0"}) is None
    # An API peer (protected) keeps its span served: the other two may be down together.
    assert Schedule(TARGETS, max_down=3).blocked("peer-0-2-2", {"peer-0-2-1"}) is None


# --- memory ----------------------------------------------------------------------------------------------


def test_every_life_s_memory_starts_warm_s_into_serving_the_load() -> None:
    """A life there when the load started starts at its first sample ``WARM_S`` into the load (its
    figure at the load's start kept beside), a restarted one at its first sample ``WARM_S`` after it
    became ready; a life too short to judge is reported, not judged."""
    mib = 2**20
    t0, seconds = 1_000.0, 600.0
    every = [t0 + 5 * i for i in range(121)]

    def proc(name: str, life: Incarnation) -> Proc:
        return Proc(name, PEER, [], lives=[life])

    spared = Incarnation(1, 11, 900.0, ready=950.0, rss_start=100 * mib, rss_last=130 * mib)
    spared.series = [(at, (110 + (at >= t0 + WARM_S) * 5) * mib) for at in every]
    restarted = Incarnation(2, 12, t0 + 100, ready=t0 + 110, rss_last=150 * mib)
    restarted.series = [(at, (140 if at < t0 + 110 + WARM_S else 145) * mib) for at in every if at > t0 + 110]
    late = Incarnation(3, 13, t0 + 400, ready=t0 + 410, rss_last=150 * mib)
    late.series = [(at, 150 * mib) for at in every if at > t0 + 410]
    rows = memory_rows(
        [proc("peer-0-2-2", spared), proc("peer-0-2-1", restarted), proc("peer-0-2-0", late)],
        (50 * mib, 51 * mib), t0, seconds,
    )  # fmt: skip
    harness, first, second, third = rows
    assert harness["start_mib"] == 50.0 and harness["judged"]
    assert first["start_mib"] == 115.0 and first["growth"] == round(15 / 115, 4) and first["judged"]
    assert first["load_start_mib"] == 100.0 and first["growth_from_load_start"] == 0.3
    assert second["start_mib"] == 145.0 and second["judged"] and "load_start_mib" not in second
    assert third["start_mib"] == 150.0 and not third["judged"]


# --- the ledger checks ---------------------------------------------------------------------------------


def _node(directory: Path, identity_index: int, entries: list[Entry]) -> Path:
    identity = ids(2, 7000)[identity_index]
    directory.mkdir()
    identity.save(directory / IDENTITY_FILE)
    with LedgerStore.open(directory / LEDGER_FILE, rules=RULES) as store:
        for outcome in store.insert_many(entries, NOW):
            assert outcome.ok, outcome
    return directory


def test_a_receipt_a_side_lacks_is_lost_until_gossip_brings_it_and_balances_differ(tmp_path: Path) -> None:
    client, server = ids(2, 7000)
    client_log, server_log = Log(client), Log(server)
    common = [client_log.add(grant(client)), server_log.add(grant(server))]
    both = cosign(client, server, tokens=50)
    common += [client_log.add(both), server_log.add(both)]
    only_client = client_log.add(cosign(client, server, tokens=60))  # the server died before recording it
    client_dir = _node(tmp_path / "client", 0, [*common, only_client])
    server_dir = _node(tmp_path / "server", 1, common)

    snaps = [snapshot(client_dir), snapshot(server_dir)]
    count = receipts(snaps)
    assert (count.total, count.both_sides, count.lost_count, count.client_log_only) == (2, 1, 1, 1)
    assert "not in the server's ledger" in count.lost[0]
    agreed = compare(snaps)
    assert not agreed.identical_balances and not agreed.identical_entries
    assert set(agreed.differing) == {client.peer_id, server.peer_id}
    # Only the server's ledger read: the receipt's client is not a node of the run, so it is unchecked.
    assert receipts(snaps[1:]).unchecked == 1 and receipts(snaps[1:]).lost_count == 0
    # Gossip brings the client's entry to the server: both ledgers hold the receipt (it counts once, for
    # the server too) and the balances agree; that only the client's log carries it stays visible.
    with LedgerStore.open(server_dir / LEDGER_FILE, rules=RULES) as store:
        assert store.insert_many([only_client], NOW)[0].ok
    snaps = [snapshot(client_dir), snapshot(server_dir)]
    assert compare(snaps).identical_balances and compare(snaps).identical_entries
    count = receipts(snaps)
    assert (count.both_sides, count.lost_count, count.client_log_only, count.server_log_only) == (2, 0, 1, 0)


def test_a_receipt_the_client_ledger_lacks_is_lost(tmp_path: Path) -> None:
    client, server = ids(2, 7000)
    client_log, server_log = Log(client), Log(server)
    grants = [client_log.add(grant(client)), server_log.add(grant(server))]
    only_server = server_log.add(cosign(client, server, tokens=70))
    client_dir = _node(tmp_path / "client", 0, grants)
    server_dir = _node(tmp_path / "server", 1, [*grants, only_server])
    count = receipts([snapshot(client_dir), snapshot(server_dir)])
    assert (
        count.lost_count == 1 and "not in the client's ledger" in count.lost[0] and count.server_log_only == 1
    )


def test_a_new_identity_starts_from_the_departed_ones_ledger(tmp_path: Path) -> None:
    """A native user replaced by a fresh identity hands it a copy of its ledger (no full re-fetch by
    gossip); the departed directory keeps its own ledger and identity for the receipt count."""
    client, server = ids(2, 7000)
    client_log, server_log = Log(client), Log(server)
    grants = [client_log.add(grant(client)), server_log.add(grant(server))]
    paid = client_log.add(cosign(client, server, tokens=30))
    departed = _node(tmp_path / "user0.1", 0, [*grants, paid])
    copy_ledger(departed, tmp_path / "user0.2")
    with (
        LedgerStore.open(departed / LEDGER_FILE, rules=RULES) as before,
        LedgerStore.open(tmp_path / "user0.2" / LEDGER_FILE, rules=RULES, create=False) as after,
    ):
        assert after.hashes() == before.hashes() and len(after) == 3
        assert after.report().balances == before.report().balances
    assert snapshot(departed).owner == client.peer_id  # the departed one's identity stays with its ledger
    assert not (tmp_path / "user0.2" / IDENTITY_FILE).exists()  # the new node makes its own


def test_the_spared_peers_are_never_killed_and_a_span_keeps_a_killable_peer(tmp_path: Path) -> None:
    """``--spare 1`` protects the last peer of each span (so a peer lives through the load and its memory
    is judged); the API peer and one more of each span stay killable, so sparing cannot hide a span."""
    manifest = SimpleNamespace(blocks=[SimpleNamespace(start=0, end=2), SimpleNamespace(start=2, end=4)])
    mesh = ChaosMesh(tmp_path, tmp_path, manifest, spared=1)  # type: ignore[arg-type]
    spared = {p.name for p in mesh.peers if p.protected}
    assert spared == {"peer-0-2-2", "peer-2-4-2"}
    kills = plan([p.target for p in mesh.procs], 600, 12)
    assert kills and not {k.target for k in kills} & spared
    assert {"peer-0-2-0", "peer-0-2-1", "peer-2-4-0", "peer-2-4-1"} <= {k.target for k in kills}
    with pytest.raises(BenchError, match="spared peers per span"):
        ChaosMesh(tmp_path, tmp_path, manifest, spared=2)  # type: ignore[arg-type]


# --- the native users' processes -----------------------------------------------------------------------


def _mesh(tmp_path: Path) -> ChaosMesh:
    manifest = SimpleNamespace(blocks=[SimpleNamespace(start=0, end=2), SimpleNamespace(start=2, end=4)])
    return ChaosMesh(tmp_path, tmp_path, manifest)  # type: ignore[arg-type]


async def test_a_user_process_that_dies_before_it_is_ready_is_reported(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    user = UserProcess(mesh, 0, tmp_path / "references.json", tmp_path, tmp_path / "users", 1, 5.0)
    try:
        with pytest.raises(BenchError, match=r"(?s)user0\.1 exited with status 1:.*manifest.json does not"):
            await user.start()  # no model in tmp_path
        assert mesh.users == [user.proc] and not user.proc.alive
    finally:
        await user.close()


def test_reference_replies_a_user_process_cannot_read_are_refused(tmp_path: Path) -> None:
    refs, no_model = tmp_path / "references.json", SimpleNamespace()
    refs.write_text('{"max_tokens": 8}')
    with pytest.raises(AI4AllError, match=r"cannot read the reference replies in .*KeyError"):
        References.read(refs, tmp_path, no_model)  # type: ignore[arg-type]
    refs.write_text('{"max_tokens": 8, "ids": [[1]], "replies": [{"text": "a", "token_ids": [1]}]}')
    with pytest.raises(AI4AllError, match="holds 1 reference replies, not 6"):
        References.read(refs, tmp_path, no_model)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def chaos_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("chaos-model"))


@pytest.mark.slow
async def test_a_user_process_that_dies_or_is_misled_is_reported(chaos_model: Path, tmp_path: Path) -> None:
    """The harness's side of the line protocol: a process killed under it, and one told a command it
    does not take now (``stop`` before ``run``), are each a BenchError with the status and the log's
    tail, not requests silently lost."""
    mesh = _mesh(tmp_path)
    refs = tmp_path / "references.json"
    References.compute(chaos_model, 4).write(refs)
    load = Load(t0=0.0)
    killed = UserProcess(mesh, 0, refs, chaos_model, tmp_path / "users", 1, 5.0)
    misled = UserProcess(mesh, 1, refs, chaos_model, tmp_path / "users", 1, 5.0)
    try:
        await killed.start()
        await misled.start()
        assert killed.proc.ready and mesh.users == [killed.proc, misled.proc]
        mesh.mark_start()
        assert all(u.lives[-1].rss_start for u in mesh.users)  # sampled like the mesh's processes
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        with pytest.raises(BenchError, match=r"user0\.1 exited with status -9"):
            await killed.chat(load, 0)
        misled.stop()
        with pytest.raises(
            BenchError, match=r"(?s)user1\.1 exited with status 1:.*'stop' is not one it takes"
        ):
            await misled.run(load)
        assert not load.outcomes and not load.users
    finally:
        await killed.close()
        await misled.close()
        mesh.stop()


# --- a short run over a real mesh ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_short_chaos_run_meets_the_goals(
    chaos_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """90 s of load over 3 nodes and 6 peers, a kill every ~12 s (about 6), then quiescence; the two
    native users each in a process of its own, whose memory is sampled like the mesh's.

    Memory growth is reported, not asserted: it follows the ledger, which grows by thousands of entries
    under this load, and in 90 s most processes are killed (bench/README.md, the 10-minute run)."""
    work = tmp_path_factory.mktemp("chaos")
    config = ChaosConfig(
        model_dir=chaos_model,
        work_dir=work / "mesh",
        seconds=90,
        seed=5,
        limits=Limits(mean_gap_s=12, down_min_s=3, down_max_s=8, quiet_end_s=10),
        native_users=2,
        api_interval_s=2.0,
        quiesce_timeout_s=120,
    )
    config.work_dir.mkdir()
    fig = await run_chaos(config, Console(stderr=True))
    assert fig.kills >= 3, fig.kills
    assert fig.wrong == 0, fig.wrong_examples
    assert fig.requests >= 50 and fig.by_kind["api"]["served"] >= 10, fig.by_kind
    assert fig.served_share >= 0.99, fig.failures
    assert None not in fig.recovery_s, fig.recovery_s  # after every kill, a chat succeeded again
    assert fig.receipts["lost"] == 0 and fig.receipts["unchecked"] == 0, fig.receipts
    assert fig.receipts["total"] >= fig.served and fig.receipts["both_sides"] == fig.receipts["total"], (
        fig.receipts
    )
    assert fig.ledgers["identical_balances"] and fig.ledgers["identical_entries"], fig.ledgers
    users = [row for row in fig.memory if row["process"].startswith("user")]
    assert [row["process"] for row in users] == ["user0", "user1"], fig.memory
    assert all(row["judged"] and row["end_mib"] and row["rss_before_replacement_mib"] for row in users), users
    assert fig.memory[0]["process"] == "chaos (harness)" and fig.memory[0]["judged"], fig.memory[0]

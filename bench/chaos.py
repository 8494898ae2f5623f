"""A chaos run: a local mesh under steady chat load while a seeded schedule SIGKILLs and restarts its processes.

For ``--minutes`` (default 10) three federated signaling nodes and three peers per blocks shard run on
loopback; native mesh clients, each in a process of its own, chat back to back and an API worker posts
chat completions to the two API peers, every reply compared with the greedy reply of the same shards chained here (``LocalChain``). A
schedule drawn from ``--seed`` kills a peer or a node every ``--kill-every`` seconds on average and
restarts it a few seconds later (never every peer of a span, never every node, at most two processes
down); an API request that finds its API peer dead goes to the other. Then the load stops, every process
is up, and the run waits (bounded) for the ledgers of every live node to agree. It reports requests made, served and failed (by reason),
wrong replies, receipts recorded on both sides, balances after quiescence, each process's memory at the
start and the end of the load, and the time from each kill to the next right chat. ``bench/README.md``
says what each figure means; the parts are ``chaos_schedule``, ``chaos_mesh``, ``chaos_load``,
``chaos_user``, ``chaos_ledgers`` and ``chaos_report``.

    python -m bench.chaos [--minutes M] [--seed S] [--model DIR | --default-model] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console

from bench.chaos_ledgers import converge, entry_count, receipts, snapshot
from bench.chaos_load import ApiWorker, Load, References, model_id
from bench.chaos_mesh import ChaosMesh, Proc, rss
from bench.chaos_model import export_in_child
from bench.chaos_report import Figures, Goals, KillRecord, figures, memory_rows, show
from bench.chaos_schedule import Kill, Limits, Schedule, plan
from bench.chaos_user import UserProcess
from bench.mesh_processes import BenchError
from python_peer import event_loop
from python_peer.core.economics import POW_BITS_ENV
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import load_manifest
from python_peer.heap import settle_allocator
from python_peer.memory_probe import Probe


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run."""

    model_dir: Path
    work_dir: Path  # logs and every node's data directory
    seconds: float = 600.0
    seed: int = 12
    limits: Limits = field(default_factory=Limits)
    nodes: int = 3
    peers_per_span: int = 3
    protect_api: bool = False  # never kill the API peers
    spared: int = 1  # peers per span never killed: they live through the load, so a peer is judged
    native_users: int = 3
    api_workers: int = 1
    api_interval_s: float = 3.0
    max_tokens: int = 8
    chat_timeout_s: float = 90.0
    quiesce_timeout_s: float = 180.0
    goals: Goals = field(default_factory=Goals)


def tiny_model(work: Path) -> Path:
    """A random 4-layer Llama exported in ``work`` by a child process (``chaos_model``): this process,
    whose memory is judged too, never loads torch."""
    return export_in_child(work)


class Chaos:
    """The run: the mesh, the load and the schedule, and what each recorded."""

    def __init__(self, config: ChaosConfig, log: Console) -> None:
        self.config = config
        self.log = log
        self.manifest = load_manifest(config.model_dir)
        self.mesh = ChaosMesh(
            config.work_dir,
            config.model_dir,
            self.manifest,
            nodes=config.nodes,
            peers_per_span=config.peers_per_span,
            protect_api=config.protect_api,
            spared=config.spared,
        )
        self.kills: list[KillRecord] = []
        self.restarts: set[asyncio.Task[None]] = set()
        self.users: list[UserProcess] = []
        self.rss_before_replacement: dict[str, int | None] = {}  # per user, before the warm-up's replacement

    async def run(self) -> Figures:
        config, mesh, log = self.config, self.mesh, self.log
        refs = await asyncio.to_thread(References.compute, config.model_dir, config.max_tokens)
        refs_file = config.work_dir / "references.json"
        refs.write(refs_file)
        log.log(f"reference replies of {len(refs.replies)} prompts computed here (LocalChain, greedy)")
        await mesh.start_all()
        log.log(f"{len(mesh.nodes)} signaling nodes and {len(mesh.peers)} peers ready in {config.work_dir}")
        load = Load(t0=time.monotonic())
        users_dir = config.work_dir / "users"
        self.users = [
            UserProcess(
                mesh, i, refs_file, config.model_dir, users_dir, config.seed * 100 + i, config.chat_timeout_s
            )
            for i in range(config.native_users)
        ]
        await asyncio.gather(*(u.start() for u in self.users))
        api_urls = [p.api_url for p in mesh.api_peers]
        model = await model_id(api_urls[0])
        workers = [
            ApiWorker(i, api_urls, model, refs, config.api_interval_s) for i in range(config.api_workers)
        ]
        await self._warm_up(load, workers)
        own = rss(os.getpid())
        own_series: list[tuple[float, int]] = []
        mesh.mark_start()
        probe = Probe.from_env("chaos")
        next_probe = 60.0
        witness = mesh.peers[-1].data_dir
        entries_at_start = await asyncio.to_thread(entry_count, witness) if witness is not None else 0
        schedule = plan([p.target for p in mesh.procs], config.seconds, config.seed, config.limits)
        log.log(f"load for {config.seconds:.0f} s; {len(schedule)} kills planned (seed {config.seed})")
        load = Load(t0=time.monotonic(), users=load.users)
        tasks = [asyncio.create_task(u.run(load)) for u in self.users]
        tasks += [
            asyncio.create_task(w.run(load, config.seed * 100 + 50 + i, config.chat_timeout_s))
            for i, w in enumerate(workers)
        ]
        chaos = asyncio.create_task(self._follow(schedule, load))
        try:
            while load.now() < config.seconds:
                await asyncio.sleep(min(5.0, max(0.0, config.seconds - load.now())))
                mesh.sample_memory()
                if (now_rss := rss(os.getpid())) is not None:
                    own_series.append((time.monotonic(), now_rss))
                if probe is not None and load.now() >= next_probe:
                    probe.sample()
                    next_probe += 60.0
                for task in tasks:
                    if task.done() and (exc := task.exception()) is not None:
                        raise BenchError(f"a load worker crashed: {exc}") from exc
            load.stop.set()
            seconds = load.now()
            for user in self.users:
                user.stop()
            await chaos
            async with asyncio.timeout(config.chat_timeout_s + 30):
                await asyncio.gather(*tasks)
            mesh.sample_memory()
            own_end = rss(os.getpid())
            if probe is not None:
                probe.stop()
            served = sum(1 for o in load.outcomes if o.served)
            log.log(
                f"load stopped: {served} of {len(load.outcomes)} requests served; waiting for the ledgers"
            )
            await self._everyone_up()
            live = [p.data_dir for p in mesh.peers if p.data_dir is not None]
            live += [u.data_dir for u in self.users if u.data_dir is not None]  # their nodes still up
            agreed = await converge(live, config.quiesce_timeout_s)
            agreed.entries_at_start = entries_at_start
            snaps = await asyncio.to_thread(lambda: [snapshot(d) for d in {*live, *load.users}])
            count = receipts(snaps)
        finally:
            load.stop.set()
            chaos.cancel()
            for task in [*tasks, *self.restarts]:
                task.cancel()
            await asyncio.gather(chaos, *tasks, *self.restarts, return_exceptions=True)
        memory = memory_rows(mesh.everyone, (own, own_end), load.t0, seconds, own_series=own_series)
        for row in memory:
            if row["process"] in self.rss_before_replacement:
                before = self.rss_before_replacement[row["process"]]
                row["rss_before_replacement_mib"] = round(before / 2**20, 1) if before is not None else None
        fig = figures(seconds, load.outcomes, self.kills, count, agreed, memory, config.goals)
        fig.api_redirects = load.api_redirects
        return fig

    async def _warm_up(self, load: Load, workers: list[ApiWorker]) -> None:
        """One right chat per user and per API peer before the clock starts, so memory starts warm; and
        each user replaced once by a fresh identity (``NativeUser.open``) and chatting right again.

        Replacing identities is this benchmark's own device (payment never refused), which no real
        client does: in 3-minute runs without kills the RSS of the process then hosting every user rose
        10-12 MiB in the minute that held the users' first replacement, against 2-3 MiB in each other
        minute, later replacements little. Taken during the warm-up, that one-time cost is in the start
        sample; ``rss_before_replacement_mib`` in each user's row of the JSON keeps the RSS before it.
        The users' processes warm up together, each its chats in order."""

        async def first(user: UserProcess) -> None:
            outcome = await user.chat(load, 0)
            if not (outcome.served and outcome.correct):
                raise BenchError(f"warm-up chat of {outcome.who} failed: {outcome.error}")

        async def replaced(user: UserProcess) -> None:
            await user.replace(load)
            outcome = await user.chat(load, 1)
            if not (outcome.served and outcome.correct):
                raise BenchError(f"warm-up chat of {outcome.who} (replaced) failed: {outcome.error}")

        async with httpx.AsyncClient(trust_env=False, timeout=self.config.chat_timeout_s) as http:
            await asyncio.gather(*(first(u) for u in self.users))
            self.rss_before_replacement = {
                u.name: rss(u.pid) if u.pid is not None else None for u in self.users
            }
            await asyncio.gather(*(replaced(u) for u in self.users))
            for worker in workers[:1]:
                for url in worker.api_urls:
                    outcome = await worker.chat(http, load, url, 0)
                    if not (outcome.served and outcome.correct):
                        raise BenchError(f"warm-up API chat at {url} failed: {outcome.error}")

    async def _follow(self, schedule: list[Kill], load: Load) -> None:
        """Carry out the plan on the live mesh: a kill waits (up to 30 s) while it would break a rule."""
        rules = Schedule([p.target for p in self.mesh.procs], self.config.limits.max_down)
        for kill in schedule:
            await _until(load, kill.at)
            if load.stop.is_set():
                break
            proc = self.mesh.by_name(kill.target)
            waited = 0.0
            while (why := rules.blocked(kill.target, self.mesh.down())) is not None and waited < 30:
                await asyncio.sleep(0.5)
                waited += 0.5
            if why is not None:
                self.kills.append(KillRecord(kill.target, kill.at, skipped=why))
                self.log.log(f"[{load.now():6.1f} s] kill of {kill.target} skipped: {why}")
                continue
            self.mesh.kill(proc)
            at = load.now()
            self.log.log(f"[{at:6.1f} s] SIGKILL {kill.target} (back in {kill.down_s:.1f} s)")
            record = KillRecord(kill.target, kill.at, at)
            self.kills.append(record)
            task = asyncio.create_task(self._restart(proc, kill, record, load))
            self.restarts.add(task)
            task.add_done_callback(self.restarts.discard)
        await asyncio.gather(*self.restarts)

    async def _restart(self, proc: Proc, kill: Kill, record: KillRecord, load: Load) -> None:
        await _until(load, (record.at or kill.at) + kill.down_s)
        self.mesh.start(proc)
        await self.mesh.wait_ready(proc)
        record.ready_at = load.now()
        self.log.log(f"[{record.ready_at:6.1f} s] {proc.name} serves again (life {len(proc.lives)})")

    async def _everyone_up(self) -> None:
        for proc in self.mesh.procs:
            if not proc.alive:
                self.mesh.start(proc)
                await self.mesh.wait_ready(proc)

    async def close(self) -> None:
        """The users' processes close their nodes (end of input), then every process still up is stopped."""
        await asyncio.gather(*(user.close() for user in self.users))
        self.mesh.stop()


async def _until(load: Load, at: float) -> None:
    rest = at - load.now()
    if rest > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rest):
                await load.stop.wait()


async def run_chaos(config: ChaosConfig, log: Console) -> Figures:
    """Run it and stop every process it started, also on errors and cancellation."""
    chaos = Chaos(config, log)
    try:
        return await chaos.run()
    finally:
        await chaos.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default: 10)")
    parser.add_argument(
        "--seed", type=int, default=12, help="seed of the kill schedule and prompts (default 12)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=20.0, help="mean seconds between kills (default 20)"
    )
    parser.add_argument(
        "--users", type=int, default=3, help="native mesh clients chatting at once (default 3)"
    )
    parser.add_argument(
        "--api-interval", type=float, default=3.0, help="seconds between API requests (default 3)"
    )
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per reply (default 8)")
    parser.add_argument("--protect-api", action="store_true", help="never kill the two API peers")
    parser.add_argument(
        "--spare",
        type=int,
        default=1,
        help="peers of each span never killed, so their memory is judged over the whole load (default 1)",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, default=None, help="an exported model directory")
    model.add_argument(
        "--default-model",
        action="store_true",
        help="SmolLM2-135M-Instruct (exported if absent) instead of a generated tiny model",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep logs and ledgers here (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.kill_every <= 0 or args.users < 1 or args.max_tokens < 1:
        parser.error("--minutes, --kill-every, --users and --max-tokens must be positive")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM too unwinds through the finally blocks that stop the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settle_allocator()  # as ``ai4all`` does first: this process's memory is judged too (heap.py)
    signal.signal(signal.SIGTERM, _interrupt)
    # The run's mesh is a private network: a cheap proof of work for each new identity's starter grant
    # (every process inherits it, so all agree on the rules).
    os.environ.setdefault(POW_BITS_ENV, "8")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 120)
    with tempfile.TemporaryDirectory(prefix="ai4all-chaos-") as tmp:
        work = (args.work or Path(tmp)).expanduser()
        work.mkdir(parents=True, exist_ok=True)
        try:
            model_dir = _model(args, work, log)
            model_name = load_manifest(model_dir).name
            config = ChaosConfig(
                model_dir=model_dir,
                work_dir=work / "mesh",
                seconds=args.minutes * 60,
                seed=args.seed,
                limits=Limits(mean_gap_s=args.kill_every),
                native_users=args.users,
                api_interval_s=args.api_interval,
                max_tokens=args.max_tokens,
                protect_api=args.protect_api,
                spared=args.spare,
            )
            config.work_dir.mkdir(parents=True, exist_ok=True)
            fig = event_loop.run(run_chaos(config, log))
        except AI4AllError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; every process this run started was stopped", file=sys.stderr)
            return 130
    show(fig, out)
    result: dict[str, Any] = {"model": model_name, "seed": args.seed, **asdict(fig)}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if all(fig.goals.values()) else 2


def _model(args: argparse.Namespace, work: Path, log: Console) -> Path:
    if args.model is not None:
        return Path(args.model).expanduser()
    if args.default_model:
        log.log("SmolLM2-135M-Instruct: exported in a child process unless the cache holds it already")
        return export_in_child(None)
    log.log("building and exporting a tiny random Llama (4 layers, spans 0-2, 2-4)")
    return tiny_model(work)


if __name__ == "__main__":
    sys.exit(main())

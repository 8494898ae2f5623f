"""A native user of the chaos run in a process of its own, as a real user runs ``ai4all chat``.

Every node holds every ledger entry (gossip), so a process hosting three users held three ledgers and its
memory grew like three; a user's process holds one, and the run judges its memory like every other
process's. The user's logic is ``NativeUser`` (``chaos_load``); this module is its process (``main``,
the child) and the harness's side of it (``UserProcess``), which speak by lines:

    python -m bench.chaos_user --index I --refs FILE --model DIR --data-root DIR --seed S --timeout T
                               --signal URL [--signal URL ...]

``--refs`` is the reference replies as ``References.write`` wrote them (computed once, in the harness);
``--seed`` draws the prompts of ``run``; ``--timeout`` bounds each chat. The child settles the allocator
first, as ``ai4all`` does (``python_peer/heap.py``), and inherits the harness's environment
(``AI4ALL_LEDGER_POW_BITS`` included, so every process agrees on the rules).

Commands, one a line on stdin:

    chat P     one chat of prompt P (0-5, ``chaos_load.PROMPTS``; the warm-up's), answered by its outcome
    replace    a fresh identity takes over from a copy of the ledger, answered by ``replaced``
    run        chat back to back, each chat answered by its outcome, until ``stop``
    stop       finish the chat under way and stop chatting, answered by ``stopped``; the node stays up,
               its ledger part of the mesh's quiescence
    (end of input)  close the client and its node, exit with status 0

Events, one JSON object a line on stdout, each with its ``event``:

    {"event": "ready"}                          references read, commands taken from now on
    {"event": "identity", "data_dir": DIR}      a new identity's data directory, before its first chat
    {"event": "outcome", "kind": "native", "who": NAME, "prompt": P, "start": T, "end": T,
     "served": BOOL, "correct": BOOL, "error": TEXT}
                                                a chat; T in seconds of ``time.monotonic()`` (Linux's
                                                CLOCK_MONOTONIC, one clock for every process)
    {"event": "replaced"}, {"event": "stopped"}

Anything else ends the child: an error's message or traceback on stderr (the log file
``<work>/user<I>.<n>.log``) and a non-zero status. ``UserProcess`` reports a child that ends before
its last answer as a ``BenchError`` with that status and the log's tail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from bench.chaos_load import PROMPTS, Load, NativeUser, Outcome, References
from bench.chaos_mesh import START_TIMEOUT_S, USER, ChaosMesh, Proc
from bench.mesh_processes import BenchError, Child
from python_peer import event_loop
from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import load_manifest
from python_peer.heap import settle_allocator
from python_peer.memory_probe import probe_rounds

CLOSE_TIMEOUT_S = 30.0


# --- the child -----------------------------------------------------------------------------------------


class _Events:
    """The child's stdout: one JSON object a line, flushed at once (the harness waits on each)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.told = 0  # identities of ``load.users`` already written

    def write(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    def identities(self) -> None:
        for data_dir in self.load.users[self.told :]:
            self.write("identity", data_dir=str(data_dir))
        self.told = len(self.load.users)

    def outcome(self, outcome: Outcome) -> None:
        self.identities()
        self.write("outcome", **asdict(outcome))


async def serve(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.model)
    refs = References.read(args.refs, args.model, manifest)
    user = NativeUser(args.index, args.signal, args.model, manifest, refs, args.data_root)
    load = Load(t0=0.0)  # load.now() is time.monotonic(): the harness subtracts its own start
    events = _Events(load)
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    running: asyncio.Task[None] | None = None
    reading: asyncio.Future[bytes] | None = None
    probing = asyncio.create_task(probe_rounds(f"user{args.index}"))  # with AI4ALL_MEMORY_PROBE only
    events.write("ready")
    try:
        while True:
            reading = reading or asyncio.ensure_future(stdin.readline())
            waiting: set[asyncio.Future[Any]] = {reading} if running is None else {reading, running}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if running is not None and running.done():
                running.result()  # a run ends only on ``stop``: it raised
                raise BenchError("the chats ended before stop")
            if not reading.done():
                continue
            line, reading = reading.result().decode(), None
            if not line:
                break
            command, *rest = line.split() or [""]
            prompt = int(rest[0]) if len(rest) == 1 and rest[0].isdigit() else len(PROMPTS)
            if command == "chat" and prompt < len(PROMPTS) and running is None:
                outcome = await user.chat(load, prompt, args.timeout)
                events.outcome(outcome)
            elif command == "replace" and not rest and running is None:
                await user.open(load)
                events.identities()
                events.write("replaced")
            elif command == "run" and not rest and running is None and not load.stop.is_set():
                running = asyncio.create_task(user.run(load, args.seed, args.timeout, events.outcome))
            elif command == "stop" and not rest and running is not None:
                load.stop.set()
                await running
                running = None
                events.write("stopped")
            else:
                raise BenchError(f"user{args.index}: command {line.strip()!r} is not one it takes now")
    finally:
        load.stop.set()
        for task in (running, reading, probing):
            if task is not None:
                task.cancel()
        transport.close()
        await user.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_user", description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True, help="the user's number (user<I>.<n> names)")
    parser.add_argument("--refs", type=Path, required=True, help="the reference replies (JSON)")
    parser.add_argument("--model", type=Path, required=True, help="the exported model directory")
    parser.add_argument("--data-root", type=Path, required=True, help="each identity's data dir goes here")
    parser.add_argument("--seed", type=int, required=True, help="seed of the prompts of run")
    parser.add_argument("--timeout", type=float, required=True, help="seconds a chat may take")
    parser.add_argument("--signal", action="append", required=True, help="a signaling node (each of them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settle_allocator()  # as ``ai4all`` does first (heap.py)
    args = parse_args(argv)
    try:
        event_loop.run(serve(args))
    except AI4AllError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- the harness's side --------------------------------------------------------------------------------


class UserProcess:
    """One user's process as the harness drives it: it starts it (a process of ``mesh``, sampled like the
    others), sends commands and turns its events into ``Outcome``s (on the run's clock) and
    ``Load.users``; a child that ends before answering is a ``BenchError`` with its log's tail."""

    def __init__(
        self,
        mesh: ChaosMesh,
        index: int,
        refs: Path,
        model_dir: Path,
        data_root: Path,
        seed: int,
        timeout: float,
    ) -> None:
        args = ["--index", str(index), "--refs", str(refs.resolve()), "--model", str(model_dir.resolve())]
        args += ["--data-root", str(data_root.resolve()), "--seed", str(seed), "--timeout", str(timeout)]
        for url in mesh.urls:  # NativeUser puts its own first
            args += ["--signal", url]
        self.mesh = mesh
        self.proc = Proc(f"user{index}", USER, args)
        self.data_dir: Path | None = None  # the current identity's
        self._child: Child | None = None
        self._events: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the child and wait for its ``ready``."""
        name = f"{self.name}.{len(self.proc.lives) + 1}"
        child = self._child = Child(name, self.proc.args, self.mesh.log_dir, "bench.chaos_user", piped=True)
        self.mesh.launch(self.proc, child)
        reader = self._events = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), child.proc.stdout
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                event = await self._event()
        except TimeoutError:
            raise BenchError(
                f"{self.name} was not ready within {START_TIMEOUT_S:.0f} s:\n{child.tail()}"
            ) from None
        self._expect(event, "ready")
        self.proc.lives[-1].ready = time.monotonic()

    async def chat(self, load: Load, prompt: int) -> Outcome:
        """One chat of ``prompt``; its outcome is returned, not counted (the warm-up's)."""
        self._send(f"chat {prompt}")
        while True:
            event = await self._event()
            if event["event"] == "identity":
                self._identity(load, event)
            else:
                self._expect(event, "outcome")
                return self._outcome(load, event)

    async def replace(self, load: Load) -> None:
        self._send("replace")
        await self._until(load, "replaced")

    async def run(self, load: Load) -> None:
        """Chat back to back, every outcome counted in ``load``, until ``stop`` is answered."""
        self._send("run")
        await self._until(load, "stopped")

    def stop(self) -> None:
        self._send("stop")

    async def close(self) -> None:
        """End of input: the child closes its node and exits; one that lingers is stopped."""
        child = self._child
        if child is None:
            return
        if child.proc.stdin is not None and not child.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                child.proc.stdin.close()
        try:
            await asyncio.to_thread(child.proc.wait, CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.stop()
        finally:
            if self._transport is not None:
                self._transport.close()
            self._child = self._events = self._transport = None

    def _send(self, command: str) -> None:
        child = self._child
        if child is None or child.proc.stdin is None:
            raise BenchError(f"{self.name} was not started")
        try:
            child.proc.stdin.write(f"{command}\n".encode())
            child.proc.stdin.flush()
        except BrokenPipeError:
            self._gone(child)

    async def _event(self) -> dict[str, Any]:
        child, events = self._child, self._events
        if child is None or events is None:
            raise BenchError(f"{self.name} was not started")
        line = await events.readline()
        if not line:  # its stdout closed: the process ended
            self._gone(child)
        try:
            event = json.loads(line)
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                raise ValueError("not an event")
        except ValueError:
            raise BenchError(f"{self.name} wrote {line[:200]!r}, not an event line") from None
        return event

    def _gone(self, child: Child) -> NoReturn:
        """Its pipe closed: the process is ending (reaped within moments, or it is a bug of its own)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(10)
        child.check_alive()  # raises with the status and the log's tail
        raise BenchError(f"{self.name} closed its pipes but runs on:\n{child.tail()}")

    async def _until(self, load: Load, answer: str) -> None:
        while (event := await self._event())["event"] != answer:
            if event["event"] == "identity":
                self._identity(load, event)
            else:
                self._expect(event, "outcome")
                load.outcomes.append(self._outcome(load, event))

    def _expect(self, event: dict[str, Any], name: str) -> None:
        if event["event"] != name:
            raise BenchError(f"{self.name} answered {event!r} where {name!r} was due")

    def _identity(self, load: Load, event: dict[str, Any]) -> None:
        self.data_dir = Path(event["data_dir"])
        load.users.append(self.data_dir)

    def _outcome(self, load: Load, event: dict[str, Any]) -> Outcome:
        try:
            return Outcome(
                str(event["kind"]),
                sys.intern(str(event["who"])),
                int(event["prompt"]),
                float(event["start"]) - load.t0,
                float(event["end"]) - load.t0,
                bool(event["served"]),
                bool(event["correct"]),
                str(event["error"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"{self.name} wrote a malformed outcome ({exc!r}): {event!r}") from None


if __name__ == "__main__":
    sys.exit(main())

"""``ai4all up``: a whole local mesh on 127.0.0.1, for trying AI4All on one machine.

It exports the default model on first run, and the same model again in q4 under its own name (a
second, smaller model on the same mesh), then starts two federated signaling nodes, three native peers
whose spans cover the default model (0-10, 10-20, 20-30; the first also serves all of the q4 model and
the API) and one spare peer that picks the least-served span, each as its own process. Each signaling
node also serves the browser node and both models' files: opening http://127.0.0.1:PORT/ in a browser
joins the mesh. It prints what runs where, answers a prompt through the mesh, and keeps running until
Ctrl-C, when it stops every process cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_peer.core.economics import POW_BITS_ENV
from python_peer.identity import Identity

from . import event_loop
from .errors import UpError

DEFAULT_PROMPT = "What is the capital of France?"
DEFAULT_SPANS = "0-10,10-20,20-30"
LOCAL_POW_BITS = 12  # the starter grant's proof of work on this private mesh: milliseconds, not seconds
MODEL_NAME = "SmolLM2-135M-Instruct"
SECOND_MODEL_NAME = "SmolLM2-135M-Instruct-q4"  # the default model's q4 export, one shard of all 30 blocks
SECOND_SPAN = "0-30"


_READY = re.compile(r"peer ([0-9a-f]{64}) serves \S+ blocks (\d+-\d+)")
_ALSO = re.compile(r"peer [0-9a-f]{64} also serves (\S+) blocks (\d+-\d+)")
# Tasks reading children's stderr; they end when the children do.
_DRAINS: set[asyncio.Task[None]] = set()


def register(subparsers: Any) -> None:
    from .chat_cli import add_sampling

    up = subparsers.add_parser(
        "up",
        help="run a local mesh (2 signaling nodes, 4 peers) and answer a prompt through it",
        description=__doc__,
    )
    up.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where exported models live (default: ~/.cache/ai4all/models)",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="peers' identities and ledgers (default: a fresh temporary directory, removed at the end)",
    )
    up.add_argument(
        "--port",
        type=int,
        default=8765,
        help="first signaling port; the second node takes the next and the API the one after (default 8765)",
    )
    up.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help=f"the prompt answered once the mesh is up (default: {DEFAULT_PROMPT!r})",
    )
    up.add_argument("--once", action="store_true", help="stop the mesh after answering the prompt")
    add_sampling(up)
    up.set_defaults(handler=run_up)


@dataclass
class Child:
    """One process of the mesh."""

    role: str
    what: str
    args: list[str]
    proc: asyncio.subprocess.Process | None = None
    log: list[str] = field(default_factory=list)


async def _start(child: Child, ready: str, timeout: float) -> None:
    """Start ``child`` and wait for a stderr line containing ``ready``; keep echoing nothing, keep a tail."""
    child.proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "python_peer.cli",
        *child.args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert child.proc.stderr is not None  # we asked for a pipe
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.01)):
                line = await child.proc.stderr.readline()
        except TimeoutError:
            raise UpError(
                f"{child.role} {child.what} did not start within {timeout:.0f} s; last output: {' | '.join(child.log[-3:])}"
            ) from None
        if not line:
            raise UpError(f"{child.role} {child.what} exited during start-up: {' | '.join(child.log[-3:])}")
        text = line.decode(errors="replace").rstrip()
        child.log = [*child.log[-20:], text]
        if ready in text:
            break
    _DRAINS.add(asyncio.get_running_loop().create_task(_drain(child)))


async def _drain(child: Child) -> None:
    """Keep reading a child's stderr so it never blocks on a full pipe; keep the tail for errors."""
    if child.proc is None or child.proc.stderr is None:
        return
    async for line in child.proc.stderr:
        child.log = [*child.log[-20:], line.decode(errors="replace").rstrip()]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                json.load(response)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise UpError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):
        if child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    for child in reversed(children):
        if child.proc is None:
            continue
        try:
            async with asyncio.timeout(10):
                await child.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()


def _export_default(model_dir: Path) -> None:
    if (model_dir / "manifest.json").is_file():
        return
    print(f"exporting the default model to {model_dir} (first run, about a minute)", file=sys.stderr)
    from .cli import build_parser

    export = build_parser().parse_args(["export", "--out", str(model_dir), "--spans", DEFAULT_SPANS])
    status = export.handler(export)
    if status:
        raise UpError("exporting the default model failed")


def export_second(model_dir: Path) -> None:
    """The default model in q4 under ``SECOND_MODEL_NAME`` (one shard), from the same packaged GGUF;
    nothing if ``model_dir`` holds it already."""
    if (model_dir / "manifest.json").is_file():
        return
    print(f"exporting {SECOND_MODEL_NAME} to {model_dir} (first run, a few minutes)", file=sys.stderr)
    import dataclasses

    from exporter import pipeline, source
    from python_peer.core.spans import Span

    src = dataclasses.replace(source.resolve(None), name=SECOND_MODEL_NAME)
    pipeline.run_export(pipeline.ExportRequest(src, model_dir, dtype="q4", spans=(Span.parse(SECOND_SPAN),)))


def _publish_default(model_dir: Path, publisher_dir: Path) -> str:
    """Sign ``model_dir`` with the identity in ``publisher_dir`` unless it already is; return the id."""
    from python_peer.core.errors import PublicationError
    from python_peer.core.publisher_trust import TrustPolicy, check_model_dir

    from .identity import verify
    from .publish_cli import publish_dir

    identity = Identity.load_or_create(publisher_dir)
    try:
        check_model_dir(model_dir, TrustPolicy(frozenset({identity.peer_id})), verify)
    except PublicationError:
        print(f"signing {model_dir} as publisher {identity.peer_id[:12]}…", file=sys.stderr)
        publish_dir(model_dir, identity)
    return identity.peer_id


async def up(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from exporter.source import cache_dir

    from .chat import ChatOptions, mesh_reply
    from .chat_cli import sampling_params

    models_dir = args.models_dir or cache_dir() / "models"
    model_dir, second_dir = models_dir / MODEL_NAME, models_dir / SECOND_MODEL_NAME
    # A fresh private network each run unless told otherwise: new identities, each with its starter grant.
    temporary = args.state_dir is None
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="ai4all-up-"))
    # Its ledger asks a light proof of work for starter grants; every process of this mesh inherits it.
    os.environ.setdefault(POW_BITS_ENV, str(LOCAL_POW_BITS))
    await asyncio.to_thread(_export_default, model_dir)
    await asyncio.to_thread(export_second, second_dir)
    # What up exports it publishes with its own key (kept beside the models), and its mesh trusts that key.
    publisher = await asyncio.to_thread(_publish_default, model_dir, models_dir / ".publisher")
    await asyncio.to_thread(_publish_default, second_dir, models_dir / ".publisher")
    trust = ["--trust-publisher", publisher]

    urls = [f"ws://127.0.0.1:{args.port}", f"ws://127.0.0.1:{args.port + 1}"]
    # browsers download either model's shards from either node
    model_args = ["--model-dir", str(model_dir), "--model-dir", str(second_dir)]
    # Each node keeps its node key in the state directory; each names the other by URL#KEY.
    node_dirs = [state / "node-a", state / "node-b"]
    keys = [Identity.load_or_create(d).peer_id for d in node_dirs]
    nodes = [
        Child(
            "signaling",
            urls[i],
            [
                "signal",
                "--port",
                str(args.port + i),
                "--sibling",
                f"{urls[1 - i]}#{keys[1 - i]}",
                "--data-dir",
                str(node_dirs[i]),
                "--node-id",
                name,
                *model_args,
                *trust,
            ],
        )
        for i, name in enumerate(("node-a", "node-b"))
    ]
    peers = []
    for i, span in enumerate([*DEFAULT_SPANS.split(","), None]):
        home = urls[i % 2]
        other = urls[(i + 1) % 2]
        cmd = [
            "peer",
            "--signal",
            home,
            "--signal",
            other,
            "--model",
            str(model_dir),
            "--data-dir",
            str(state / f"peer{i}"),
            *trust,
        ]
        if span is not None:
            cmd += ["--span", span]
        if i == 0:  # the API's peer also serves all of the second model, so it chats with both
            cmd += ["--model", str(second_dir), "--span", SECOND_SPAN, "--api-port", str(args.port + 2)]
        peers.append(Child("peer" if span else "spare peer", f"on {home}", cmd))
    children = nodes + peers
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console(stderr=True)
    try:
        for node in nodes:
            node.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "python_peer.cli",
                *node.args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            _DRAINS.add(loop.create_task(_drain(node)))
        for url in urls:
            await asyncio.to_thread(_wait_http, url.replace("ws://", "http://") + "/healthz", 30)
        await asyncio.gather(
            _start(peers[0], "api http", 180), *(_start(p, "serves", 180) for p in peers[1:3])
        )
        await _start(peers[3], "serves", 180)  # the spare picks its span once the others are announced

        table = Table(title="AI4All local mesh")
        for column in ("role", "pid", "where", "serves"):
            table.add_column(column)
        for node in nodes:
            table.add_row(node.role, str(node.proc.pid if node.proc else "?"), node.what, "")
        for peer in peers:
            ready = next((m for line in peer.log if (m := _READY.search(line))), None)
            served = f"blocks {ready.group(2)} (peer {ready.group(1)[:12]})" if ready else "?"
            also = [m.group(1, 2) for line in peer.log if (m := _ALSO.search(line))]
            served += "".join(f" + {name} blocks {span}" for name, span in also)
            table.add_row(peer.role, str(peer.proc.pid if peer.proc else "?"), peer.what, served)
        console.print(table)
        console.print(f"model: {model_dir}", soft_wrap=True)
        console.print(f"second model: {second_dir} (pick it on the chat pages)", soft_wrap=True)
        console.print(
            f'chat from another shell: ai4all chat "..." --model {model_dir} --signal {urls[1]} '
            f"--trust-publisher {publisher}",
            soft_wrap=True,
        )
        console.print(f"chat page: http://127.0.0.1:{args.port + 2}/chat", soft_wrap=True)
        console.print(f"OpenAI-compatible API: http://127.0.0.1:{args.port + 2}/v1", soft_wrap=True)
        for url in urls:
            site = url.replace("ws://", "http://")
            console.print(
                f"browser node: contribute at {site}/, chat in the browser at {site}/chat", soft_wrap=True
            )
        console.print(f"prompt: {args.prompt}", soft_wrap=True)
        # The mesh's own client: its data dir, and ICE on loopback (the default settings), as the
        # peers of this mesh on 127.0.0.1 have with their default flags.
        client = ChatOptions(
            model_dir=model_dir,
            prompt=args.prompt,
            sampling=sampling_params(args),
            signal_urls=(urls[1], urls[0]),
            data_dir=state / "client",
        )
        await mesh_reply(client)
        if not args.once:
            console.print("the mesh is running; Ctrl-C stops it")
            await stop.wait()
    finally:
        console.print("stopping the mesh")
        await _stop(children)
        if temporary:
            shutil.rmtree(state, ignore_errors=True)
    return 0


def run_up(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return event_loop.run(up(args))

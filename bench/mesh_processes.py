"""The processes of a benchmark mesh: signaling nodes and ``ai4all peer``s on loopback, stopped at the end.

``LocalMesh`` starts two federated signaling nodes, a lone node and one peer per blocks shard, waits
until each is ready, and stops every process it started on exit, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from python_peer.core.errors import AI4AllError
from python_peer.core.manifest import Manifest
from python_peer.core.publication import read_publication
from python_peer.identity import Identity

ROOT = Path(__file__).resolve().parents[1]  # children run from the repository root

START_TIMEOUT_S = 180.0
READY = re.compile(r"peer ([0-9a-f]{64}) serves \S+ blocks (\d+)-(\d+)")


class BenchError(AI4AllError):
    """The benchmark could not set up or check what it measures."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Child:
    """One subprocess (``ai4all``, no ``-v``: debug logs would slow it), its output in a log file."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, module: str = "python_peer.cli", piped: bool = False
    ) -> None:
        """``python -m module args``; ``piped``: its stdin and stdout are pipes to this process (a line
        protocol) and only its stderr goes to the log."""
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=subprocess.PIPE if piped else out,
                stderr=out if piped else subprocess.STDOUT,
                cwd=ROOT,
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
            )

    def tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}")

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log.read_text(errors="replace"))
            if match:
                return match
            self.check_alive()
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def node_health(http: str) -> dict[str, Any] | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(f"{http}/healthz", timeout=1) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


def directory(http: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{http}/v1/directory", timeout=10) as response:
        return dict(json.load(response))


@dataclass
class PeerInfo:
    name: str
    span: str
    home: str
    peer_id: str = ""


class LocalMesh:
    """Two federated signaling nodes, one peer per blocks shard, and a lone node for the announce test."""

    def __init__(self, log_dir: Path, model_dir: Path, manifest: Manifest, log: Console) -> None:
        self.log_dir = log_dir
        self.model_dir = model_dir
        self.manifest = manifest
        self.console = log
        ports = [free_port() for _ in range(3)]
        self.urls = [f"ws://127.0.0.1:{p}" for p in ports[:2]]
        self.solo_url = f"ws://127.0.0.1:{ports[2]}"
        self.children: list[Child] = []
        self.peers: list[PeerInfo] = []

    @staticmethod
    def http(url: str) -> str:
        return url.replace("ws://", "http://")

    def __enter__(self) -> LocalMesh:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        a, b = self.urls
        keys = {n: Identity.load_or_create(self.log_dir / f"{n}.node").peer_id for n in ("node-a", "node-b")}
        for name, url, other, sibling in (("node-a", a, "node-b", b), ("node-b", b, "node-a", a)):
            port = url.rsplit(":", 1)[1]
            args = ["signal", "--port", port, "--sibling", f"{sibling}#{keys[other]}", "--node-id", name]
            args += ["--data-dir", str(self.log_dir / f"{name}.node")]
            self.children.append(Child(name, args, self.log_dir))
        solo_port = self.solo_url.rsplit(":", 1)[1]
        self.children.append(
            Child("node-solo", ["signal", "--port", solo_port, "--node-id", "node-solo"], self.log_dir)
        )
        for child, url, siblings in zip(self.children, [a, b, self.solo_url], [1, 1, 0], strict=True):
            self._wait_node(child, url, siblings)
        peer_children = []
        signed = read_publication(self.model_dir)
        for i, shard in enumerate(self.manifest.blocks):
            # As ``ai4all up`` places them: 0-10 on A, 10-20 on B, 20-30 on A; the client is on B.
            home, other = self.urls[i % 2], self.urls[(i + 1) % 2]
            info = PeerInfo(f"peer-{shard.start}-{shard.end}", f"{shard.start}-{shard.end}", home)
            args = ["peer", "--signal", home, "--signal", other, "--model", str(self.model_dir)]
            args += ["--span", info.span, "--data-dir", str(self.log_dir / info.name)]
            args.append("--allow-unsigned")  # a local export
            if signed is not None:  # signed where it lies (``ai4all up`` signs the default model's export)
                args += ["--trust-publisher", signed.publisher]
            peer_children.append(Child(info.name, args, self.log_dir))
            self.peers.append(info)
        self.children += peer_children
        for child, info in zip(peer_children, self.peers, strict=True):
            info.peer_id = child.wait_line(READY, START_TIMEOUT_S).group(1)
            self.console.log(f"{info.name} ({info.peer_id[:12]}) serves blocks {info.span} via {info.home}")

    def _wait_node(self, child: Child, url: str, siblings: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            child.check_alive()
            health = node_health(self.http(url))
            if health is not None and len(health.get("siblings", [])) >= siblings:
                return
            time.sleep(0.1)
        raise BenchError(f"signaling node {child.name} at {url} was not ready within 30 s:\n{child.tail()}")

    def stop(self) -> None:
        for child in reversed(self.children):  # peers first, then the nodes
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            child.stop()

    def failed(self) -> str:
        """Log tails of children that died, for an error message."""
        dead = [c for c in self.children if c.proc.poll() not in (None, 0, -signal.SIGTERM)]
        return "\n".join(f"--- {c.name} (status {c.proc.returncode}):\n{c.tail()}" for c in dead)

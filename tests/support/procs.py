"""Processes of a test: ``ai4all`` CLI runs, ``ai4all signal`` nodes and ``ai4all peer`` peers on free loopback ports,
and meshes of them (``ProcMesh``; ``budget_mesh``: peers that choose their spans by memory budget)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from python_peer.identity import Identity
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    args: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``ai4all ARGS`` in a fresh interpreter; return the finished process (never raises on status)."""
    return subprocess.run(
        [sys.executable, "-m", "python_peer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
        check=False,
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def publish_copy(export: Path, root: Path) -> tuple[Path, str]:
    """A copy of ``export`` in ``root/model`` published with ``ai4all publish`` (the publisher's identity in
    ``root/publisher``): (the copy, the publisher's id)."""
    model = root / "model"
    shutil.copytree(export, model)
    result = run_cli(["publish", str(model), "--data-dir", str(root / "publisher")], timeout=120)
    assert result.returncode == 0, result.stderr
    return model, result.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_data_dir(log_dir: Path, name: str) -> Path:
    """Where the node ``name`` of a test mesh in ``log_dir`` keeps its node key."""
    return log_dir / f"{name}.node"


def node_key(log_dir: Path, name: str) -> str:
    """The node key of the node ``name`` in ``log_dir``, created before the node starts if need be,
    so a node started earlier can ``--accept-sibling`` it."""
    return Identity.load_or_create(node_data_dir(log_dir, name)).peer_id


class Node:
    """One ``ai4all signal`` subprocess; it serves the browser node's pages and ``model_dirs`` over HTTP.

    ``siblings`` are nodes (or ``URL#KEY`` strings) it dials; ``accept`` names nodes of the same
    ``log_dir`` that will dial it (their keys are made now). ``env`` adds to (or overrides) the test
    process's environment for this node only; ``extra_args`` are more ``ai4all signal`` flags.
    """

    def __init__(
        self,
        name: str,
        log_dir: Path,
        siblings: Sequence[Node | str] = (),
        model_dirs: Sequence[Path] = (),
        env: dict[str, str] | None = None,
        accept: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.key = node_key(log_dir, name)
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.http = self.http_url
        self.log = log_dir / f"{name}.log"
        args = [sys.executable, "-m", "python_peer.cli", "-v", "signal", "--port", str(self.port)]
        args += ["--node-id", name, "--data-dir", str(node_data_dir(log_dir, name))]
        for sibling in siblings:
            args += ["--sibling", sibling if isinstance(sibling, str) else f"{sibling.url}#{sibling.key}"]
        for other in accept:
            args += ["--accept-sibling", node_key(log_dir, other)]
        for model_dir in model_dirs:
            args += ["--model-dir", str(model_dir)]
        args += list(extra_args)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**_env(), **(env or {})}
            )

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.http}/healthz", timeout=1.0, trust_env=False)
            return dict(response.json())
        except httpx.HTTPError:
            return None

    def directory(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.http}/v1/directory", timeout=2.0, trust_env=False).json())

    def wait(self, siblings: int = 0, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited:\n{self.log.read_text()[-3000:]}")
            health = self.health()
            if health is not None and len(health["siblings"]) >= siblings:
                return
            time.sleep(0.05)
        raise AssertionError(f"node {self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"node {self.name} ignored signal {sig}:\n{self.log.read_text()[-3000:]}"
            ) from None


class PeerProc:
    """One ``ai4all peer`` subprocess; ``wait()`` returns once it announced its span."""

    READY = re.compile(r"peer ([0-9a-f]{64}) serves (\S+) blocks (\d+)-(\d+)")

    def __init__(
        self,
        name: str,
        log_dir: Path,
        model: Path,
        signals: list[str],
        *,
        span: str | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: variables added to the process's environment (a test-only hook such as ``AI4ALL_TEST_LIE``)."""
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.data_dir = log_dir / name
        args = [
            sys.executable,
            "-m",
            "python_peer.cli",
            "-v",
            "peer",
            "--model",
            str(model),
            "--data-dir",
            str(self.data_dir),
        ]
        for url in signals:
            args += ["--signal", url]
        if span:
            args += ["--span", span]
        args += extra or []
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**_env(), **(env or {})}
            )
        self.peer_id = ""
        self.span = ""

    def wait(self, timeout: float = 60.0) -> PeerProc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.READY.search(self.log.read_text())
            if match:
                self.peer_id, self.span = match.group(1), f"{match.group(3)}-{match.group(4)}"
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"peer {self.name} exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"peer {self.name} not ready:\n{self.log.read_text()[-3000:]}")

    API = re.compile(r"^api (http://\S+)/v1$", re.MULTILINE)

    def wait_api(self, timeout: float = 30.0) -> str:
        """The base URL (``http://host:port``) of the API this peer serves, once its log says it listens."""
        match = wait_for(
            lambda: self.API.search(self.log.read_text()),
            timeout,
            what=f"the API of {self.name} starting",
            interval=0.05,
            describe=self.tail,
        )
        return str(match.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"peer {self.name} ignored SIGTERM:\n{self.log.read_text()[-3000:]}"
            ) from None

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


class ProcMesh:
    """One signaling node and the ``ai4all peer`` processes a test module shares (all started when made):
    ``ready`` waits for every one, ``stop`` stops every one (a process that already died is no error here)."""

    def __init__(self, model: Path, node: Node, peers: list[PeerProc]) -> None:
        self.model, self.node, self.peers = model, node, peers

    def ready(self) -> None:
        self.node.wait()
        for peer in self.peers:
            peer.wait()

    def stop(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            self.node.stop()

    def peer(self, name: str) -> PeerProc:
        return next(p for p in self.peers if p.name == name)


def ledger_balance(peer: PeerProc, who: str) -> int:
    """``who``'s balance in units as ``peer``'s ledger holds it (``ai4all ledger balance --units``)."""
    result = run_cli(["ledger", "balance", who, "--units", "--data-dir", str(peer.data_dir)], timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def vm_rss(pid: int) -> int:
    """A process's resident memory in bytes (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


@dataclass
class BudgetMesh:
    """A signaling node and peers that chose their own spans by ``--memory-budget`` (``budget_mesh``)."""

    node: Node
    peers: list[PeerProc]
    budget: int

    def spans(self) -> list[str]:
        return [p.span for p in self.peers]

    def resident(self) -> dict[str, int]:
        return {f"{p.name} ({p.span})": vm_rss(p.proc.pid) for p in self.peers}


def _listed(node: Node, peer_id: str) -> Callable[[], bool]:
    return lambda: peer_id in json.dumps(node.directory())


@contextlib.contextmanager
def budget_mesh(
    model: Path, work: Path, memory_budget: int, count: int, *, ready_timeout: float = 900
) -> Iterator[BudgetMesh]:
    """A signaling node and ``count`` peers (``peer-0``...) started one after another with ``--memory-budget``
    and no ``--span``: each waits until the one before is listed, so it sees what that one serves. Every
    process is stopped at the end, also one that failed to start."""
    work.mkdir(parents=True, exist_ok=True)
    node = Node("node-a", work)
    mesh = BudgetMesh(node, [], memory_budget)
    try:
        node.wait()
        for i in range(count):
            extra = ["--memory-budget", str(memory_budget), "--gossip-interval", "0.5"]
            peer = PeerProc(f"peer-{i}", work, model, [node.url], extra=extra)
            mesh.peers.append(peer)
            peer.wait(timeout=ready_timeout)
            wait_for(_listed(node, peer.peer_id), 60, what=f"{peer.name} listed", describe=node.directory)
        yield mesh
    finally:
        for peer in mesh.peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()

"""``ai4all status`` against real ``ai4all peer`` processes, and the status socket's protocol attacked as
docs/operating.md describes it (one JSON line in, one out, on ``<data dir>/status.sock``).

- A peer whose data dir holds a benchmark of its span announces that figure (read back from the signaling
  node's directory) and ``status`` reports it, with its model, span, dtype, sessions, tokens served (after
  a chat through it), balance and signaling nodes, connected or not.
- A peer whose benchmark file is corrupt serves anyway, says so in its log, and announces what it measured.
- A span moved through the settings API (docs/api.md) announces that span's saved benchmark.
- Nothing running (no directory, no socket, a socket left by a SIGKILLed peer) is one line and status 1;
  a restarted peer takes its socket back.
- Attacks: garbage, oversized and silent requests get an error or are cut off, and never stop the peer
  from answering the next caller; another user of this machine is refused by the peer; something else
  listening on the socket (another identity, or not speaking the protocol) is refused by ``status``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from python_peer.identity import Identity
from tests.support.procs import Node, PeerProc, free_port, run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

SOCKET = "status.sock"
REQUEST = b'{"v": 1, "want": "status"}\n'


def status(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(["status", "--data-dir", str(data_dir), *args], timeout=60)
    return result.returncode, result.stdout, result.stderr


def status_json(data_dir: Path) -> dict:
    code, stdout, stderr = status(data_dir, "--json")
    assert code == 0, stderr
    return dict(json.loads(stdout))


def ask(path: Path, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """Speak to a status socket directly: send ``payload``, read until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


class Mesh:
    """A signaling node; peer ``main`` (a benchmark of its span saved first) and peer ``corrupt`` (an
    unreadable benchmark file), both serving the tiny Llama's blocks 0-4."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.tmp, self.model = tmp, model
        self.node = Node("signal", tmp)
        self.dead_url = f"ws://127.0.0.1:{free_port()}"  # configured, never reachable
        bench = run_cli(
            [
                "benchmark",
                "--model",
                str(model),
                "--span",
                "0-4",
                "--steps",
                "8",
                "--json",
                "--data-dir",
                str(tmp / "main"),
            ],
            timeout=300,
        )
        assert bench.returncode == 0, bench.stderr
        self.record = json.loads(bench.stdout)
        (tmp / "corrupt").mkdir()
        (tmp / "corrupt" / "benchmarks.json").write_text("{ not json")
        self.node.wait()
        self.main = self.peer("main")
        self.corrupt = self.peer("corrupt")
        self.main.wait()
        self.corrupt.wait()

    def peer(self, name: str) -> PeerProc:
        return PeerProc(name, self.tmp, self.model, [self.node.url, self.dead_url], span="0-4")

    def stop(self) -> None:
        for peer in (self.main, self.corrupt):
            peer.stop()
        self.node.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("status"), tiny_llama_export)
    try:
        yield mesh
    finally:
        mesh.stop()


def answering(data_dir: Path) -> dict | None:
    code, stdout, _ = status(data_dir, "--json")
    return json.loads(stdout) if code == 0 else None


def test_status_reports_what_the_peer_serves(mesh: Mesh) -> None:
    body = wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    manifest = json.loads((mesh.model / "manifest.json").read_text())
    assert body["peer_id"] == mesh.main.peer_id
    assert body["pid"] == mesh.main.proc.pid
    assert body["event_loop"] == "uvloop"  # the peer runs on uvloop (python_peer/event_loop.py)
    assert (body["model"], body["span"], body["dtype"], body["blocks"]) == (
        manifest["model"]["name"],
        "0-4",
        "fp32",
        4,
    )
    assert body["state"] == "serving" and body["uptime_s"] >= 0
    assert (
        body["throughput"] == mesh.record["block_tokens_per_s"] and body["throughput_source"] == "benchmark"
    )
    assert body["balance"]["granted"] > 0 and body["balance"]["balance"] == body["balance"]["granted"]
    assert body["signaling"]["state"] == "connected" and body["signaling"]["connected"] == mesh.node.url
    nodes = {n["url"]: n["connected"] for n in body["signaling"]["nodes"]}
    assert nodes[mesh.node.url] is True and nodes[mesh.dead_url] is False
    assert body["kv"]["free_tokens"] > 0 and body["open_sessions"] == 0
    assert body["batches"] == {
        "steps": 0,
        "batches": 0,
        "sizes": {},
        "fallbacks": 0,
        "inline": 0,
        "longest_wait_ms": 0.0,
    }
    assert isinstance(body["traffic"], list) and len(body["traffic"]) == body["links"]


def test_the_peer_announces_its_benchmark(mesh: Mesh) -> None:
    def announced() -> int | None:
        for entry in mesh.node.directory()["entries"]:
            if entry["peer_id"] == mesh.main.peer_id:
                return int(entry["throughput_milli"])
        return None

    figure = wait_for(announced, 30, what="the announcement")
    assert figure == int(mesh.record["block_tokens_per_s"] * 1000)
    assert "using the saved benchmark" in mesh.main.log.read_text()


def test_a_corrupt_benchmark_file_is_ignored_with_a_log_line(mesh: Mesh) -> None:
    body = wait_for(lambda: answering(mesh.corrupt.data_dir), 60, what="the peer's status socket")
    assert body["throughput_source"] == "measured at start" and body["throughput"] > 0
    log = mesh.corrupt.log.read_text()
    assert "ignoring the saved benchmarks" in log and "is not JSON" in log


def no_sessions(data_dir: Path) -> bool:
    return (answering(data_dir) or {}).get("open_sessions") == 0


def test_tokens_served_after_a_chat(mesh: Mesh) -> None:
    peers = (mesh.main.data_dir, mesh.corrupt.data_dir)
    for data_dir in peers:
        wait_for(partial(answering, data_dir), 60, what="the peers' status sockets")

    def served() -> int:  # the chat's route goes through one of the two peers
        return sum((answering(d) or {}).get("tokens_served", 0) for d in peers)

    before = served()
    chat = run_cli(
        [
            "chat",
            "What is the capital of France?",
            "--model",
            str(mesh.model),
            "--signal",
            mesh.node.url,
            "--data-dir",
            str(mesh.tmp / "client"),
            "--max-tokens",
            "4",
        ],
        timeout=180,
    )
    assert chat.returncode == 0, chat.stderr
    wait_for(lambda: served() > before, 30, what="tokens served by the peers")
    for data_dir in peers:
        wait_for(partial(no_sessions, data_dir), 30, what="sessions closed")


def test_human_output(mesh: Mesh) -> None:
    wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    code, stdout, stderr = status(mesh.main.data_dir)
    assert code == 0, stderr
    for words in (
        mesh.main.peer_id,
        "blocks 0-4 of 4 (fp32), serving",
        "(benchmark)",
        "tokens served",
        "credits",
    ):
        assert words in stdout, stdout
    assert f"{mesh.node.url}  connected" in stdout and f"{mesh.dead_url}  not connected" in stdout


def test_nothing_running(tmp_path: Path) -> None:
    for data_dir in (tmp_path / "absent", tmp_path):
        code, stdout, stderr = status(data_dir)
        assert code == 1 and stdout == ""
        assert stderr.startswith(f"ai4all status: error: no peer is running with data dir {data_dir}")
        assert len(stderr.strip().splitlines()) == 1


def test_a_killed_peer_leaves_a_socket_that_says_so_and_a_restart_takes_it_back(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    node = Node("signal", tmp_path)
    node.wait()
    # a data dir deeper than a Unix socket's path allows (108 bytes): still reachable
    name = "victim-" + "d" * 100
    assert len(str(tmp_path / name / SOCKET)) > 108
    peer = PeerProc(name, tmp_path, tiny_llama_export, [node.url], span="3-4").wait()
    try:
        wait_for(lambda: answering(peer.data_dir), 60, what="the peer's status socket")
        peer.kill()
        assert (peer.data_dir / SOCKET).exists()
        code, _, stderr = status(peer.data_dir)
        assert code == 1 and "is left from a peer that stopped" in stderr
        again = PeerProc(name, tmp_path, tiny_llama_export, [node.url], span="3-4").wait()
        try:
            body = wait_for(lambda: answering(again.data_dir), 60, what="the restarted peer's status")
            assert body["pid"] == again.proc.pid and body["peer_id"] == peer.peer_id
        finally:
            again.stop()
        assert not (peer.data_dir / SOCKET).exists()  # a clean stop removes it
    finally:
        peer.kill()
        node.stop()


def test_a_span_moved_from_the_settings_page_announces_its_benchmark(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    """``POST /v1/node/settings {"span": ...}`` (docs/api.md) loads the new span: its saved figure is
    announced, and ``status`` says so."""
    data_dir = tmp_path / "mover"
    bench = run_cli(
        [
            "benchmark",
            "--model",
            str(tiny_llama_export),
            "--span",
            "1-3",
            "--steps",
            "4",
            "--json",
            "--data-dir",
            str(data_dir),
        ],
        timeout=300,
    )
    assert bench.returncode == 0, bench.stderr
    figure = json.loads(bench.stdout)["block_tokens_per_s"]
    node = Node("signal", tmp_path)
    node.wait()
    peer = PeerProc("mover", tmp_path, tiny_llama_export, [node.url], span="0-1", extra=["--api-port", "0"])
    try:
        peer.wait()
        api = peer.wait_api()
        before = wait_for(lambda: answering(peer.data_dir), 60, what="the peer's status socket")
        assert before["span"] == "0-1" and before["throughput_source"] == "measured at start"
        response = httpx.post(f"{api}/v1/node/settings", json={"span": "1-3"}, timeout=60, trust_env=False)
        assert response.status_code == 200, response.text
        after = status_json(peer.data_dir)
        assert (
            after["span"] == "1-3"
            and after["throughput"] == figure
            and after["throughput_source"] == "benchmark"
        )

        def announced() -> bool:
            entries = [e for e in node.directory()["entries"] if e["peer_id"] == peer.peer_id]
            return bool(entries) and entries[0]["throughput_milli"] == int(figure * 1000)

        wait_for(announced, 30, what="the new figure announced")
    finally:
        peer.stop()
        node.stop()


# --- the socket under attack ------------------------------------------------------------------------------


def test_the_socket_is_private_to_its_user(mesh: Mesh) -> None:
    wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    path = mesh.main.data_dir / SOCKET
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(mesh.main.data_dir.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"hello\n",
        b'{"v": 2, "want": "status"}\n',
        b'{"v": 1, "want": "keys"}\n',
        b"[" * 900 + b"\n",
        b"x" * 5000 + b"\n",
        b"\xff\xfe\n",
    ],
)
def test_bad_requests_get_an_error_and_the_peer_answers_on(mesh: Mesh, payload: bytes) -> None:
    wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    path = mesh.main.data_dir / SOCKET
    try:
        answer = ask(path, payload)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""  # the peer may close before reading an oversized request in full
    if answer:
        body = json.loads(answer)
        assert set(body) == {"v", "error"} and "status" not in body
    assert ask(path, REQUEST).startswith(b'{"status": {')


def test_a_silent_caller_does_not_block_others(mesh: Mesh) -> None:
    wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    path = mesh.main.data_dir / SOCKET
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    try:
        for sock in silent:
            sock.connect(str(path))
        assert json.loads(ask(path, REQUEST))["status"]["peer_id"] == mesh.main.peer_id
        silent[0].settimeout(10)
        # a request that never ends is cut off with an error, within the peer's bound (2 s)
        assert b"error" in silent[0].recv(65536)
    finally:
        for sock in silent:
            sock.close()


SYSTEM_PYTHON = Path("/usr/bin/python3")  # one that another user may run (stdlib only is needed)


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="needs root (and /usr/bin/python3) to act as another user",
)
def test_another_user_is_refused(mesh: Mesh) -> None:
    """Even with the socket's mode opened to everyone, the peer checks the caller's uid."""
    wait_for(lambda: answering(mesh.main.data_dir), 60, what="the peer's status socket")
    path = mesh.main.data_dir / SOCKET
    public = Path(tempfile.mkdtemp(prefix="h14-status-"))
    try:
        public.chmod(0o755)
        os.link(path, public / SOCKET)  # a second name, reachable by anyone, for the same socket
        path.chmod(0o666)
        client = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(sys.argv[2].encode() + b"\\n")
    data = s.recv(65536)
except (BrokenPipeError, ConnectionResetError):
    data = b''
print(repr(data))
"""
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", client, str(public / SOCKET), REQUEST.decode().strip()],
            capture_output=True,
            text=True,
            timeout=30,
            user=65534,
            cwd="/",
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "b''"  # closed without a word
    finally:
        path.chmod(0o600)
        shutil.rmtree(public)
    assert ask(path, REQUEST).startswith(b'{"status": {')


class FakeSocket:
    """Something else listening on ``status.sock``: it answers every caller with ``answer``."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b'{"v": 1, "status": {"peer_id": "' + b"ab" * 32 + b'"}}\n', "answered for peer abababababababab"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "answered something that is not a peer's status"),
        (b'{"v": 1, "status": "fine"}\n', "answered something that is not a peer's status"),
        (b'{"v": 1, "error": "no"}\n', "the peer refused the status request: no"),
        (b"", "closed its status socket without answering"),
    ],
)
def test_status_refuses_an_impostor(tmp_path: Path, answer: bytes, words: str) -> None:
    Identity.load_or_create(tmp_path)  # the data dir's own identity, which the impostor does not hold
    fake = FakeSocket(tmp_path / SOCKET, answer)
    try:
        code, stdout, stderr = status(tmp_path, "--json")
    finally:
        fake.close()
    assert code == 1 and stdout == "" and words in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1

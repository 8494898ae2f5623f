"""A running peer's status, on a Unix socket in its data directory, for ``ai4all status``.

A peer started with a data directory listens on ``<data dir>/status.sock`` (mode 0600, in the directory
its identity key lives in, 0700). There is no TCP port: nobody on another machine can reach it, and on
this machine only the peer's own user (or root) may connect; the peer checks the caller's uid
(``SO_PEERCRED``) and the caller checks the peer's, and that the status names the identity the data
directory holds, so no other process can answer in the peer's place.

Protocol: the caller sends one line of JSON, ``{"v": 1, "want": "status"}`` (at most ``MAX_REQUEST``
bytes, within ``REQUEST_TIMEOUT_S``); the peer answers one line, ``{"v": 1, "status": {...}}`` or
``{"v": 1, "error": "..."}``, and closes. Fields of the status: ``docs/operating.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import AI4AllError, CommandError

from .event_loop import running_loop

if TYPE_CHECKING:
    from .node import Peer

log = logging.getLogger(__name__)

STATUS_SOCKET = "status.sock"
PROTOCOL = 1
MAX_REQUEST = 1024
MAX_ANSWER = 1 << 20
REQUEST_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8  # at once; more are closed at once
MAX_SESSIONS_LISTED = 64


MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; a longer path is reached through /proc/self/fd


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for a Unix socket: itself, or (Linux) the same file through a
    descriptor of its directory, so a data dir deep in the file system still has its status socket."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``), or None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _allowed(uid: int | None) -> bool:
    return uid is None or uid in (os.getuid(), 0)


async def snapshot(peer: Peer) -> dict[str, Any]:
    """What the peer serves and does now (the ``status`` object of the protocol)."""
    from .link import LinkState

    server, gate, signal = peer.server, peer.gate, peer.node.signal
    sessions = [
        {
            "client": s.client,
            "span": str(srv.span),
            "tokens": s.tokens,
            "length": s.length,
            "idle_s": round(time.monotonic() - s.last_used, 1),
        }
        for srv in gate.servers()
        for s in srv.sessions.values()
    ][:MAX_SESSIONS_LISTED]
    balance: dict[str, int] | None = None
    balance_error: str | None = None
    ledger = peer.node.ledger
    if ledger is None:
        balance_error = "this node keeps no ledger"
    else:
        try:
            account = (await asyncio.to_thread(ledger.store.report)).accounts.get(peer.node.peer_id)
            balance = {
                "balance": account.balance if account else 0,
                "granted": account.granted if account else 0,
                "earned": account.earned if account else 0,
                "bonuses": (account.rarity_bonus + account.uptime_bonus) if account else 0,
                "spent": account.spent if account else 0,
            }
        except AI4AllError as exc:
            balance_error = str(exc)
    connected = signal.url
    batches = server.batcher.stats
    return {
        "peer_id": peer.node.peer_id,
        "pid": os.getpid(),
        "event_loop": running_loop(),
        "started_at": round(peer.started, 3),
        "uptime_s": round(time.time() - peer.started, 1),
        "state": gate.state.value,
        "model": peer.manifest.name,
        "dtype": peer.manifest.dtype,
        "blocks": peer.manifest.num_layers,
        "span": str(server.span),
        "model_dir": str(peer.config.model_dir),
        "more_models": [
            {
                "model": name,
                "span": str(more.gate.server.span),
                "model_dir": str(more.model_dir),
                "open_sessions": more.gate.open_sessions,
                "tokens_served": more.gate.tokens_served,
            }
            for name, more in peer.more.items()
        ],
        "throughput": round(peer.throughput, 3),
        "throughput_source": peer.throughput_source,
        "open_sessions": gate.open_sessions,
        "sessions": sessions,
        "tokens_served": gate.tokens_served,
        "kv": {
            "budget_bytes": server.config.memory_budget_bytes,
            "reserved_bytes": server.reserved_bytes,
            "free_tokens": server.kv_free_tokens,
        },
        "balance": balance,
        "balance_error": balance_error,
        "links": sum(1 for link in peer.node.links.links if link.state is LinkState.OPEN),
        "traffic": [
            {
                "remote": link.remote_id,
                "frames_sent": link.stats.frames_sent,
                "bytes_sent": link.stats.bytes_sent,
                "frames_received": link.stats.frames_received,
                "bytes_received": link.stats.bytes_received,
            }
            for link in peer.node.links.links
            if link.state is LinkState.OPEN
        ][:MAX_SESSIONS_LISTED],
        "batches": {
            "steps": batches.steps,
            "batches": batches.batches,
            "sizes": {str(size): count for size, count in sorted(batches.sizes.items())},
            "fallbacks": batches.fallbacks,
            "inline": batches.inline,
            "longest_wait_ms": round(batches.longest_wait_s * 1e3, 3),
        },
        "signaling": {
            "state": signal.state.value,
            "connected": connected,
            "nodes": [{"url": url, "connected": url == connected} for url in signal.urls],
        },
    }


class StatusServer:
    """The peer's side: answers status requests on ``<data dir>/status.sock`` until closed."""

    def __init__(self, peer: Peer, path: Path) -> None:
        self.peer = peer
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._open = 0
        self._inode: int | None = None

    @classmethod
    async def start(cls, peer: Peer, data_dir: Path) -> StatusServer | None:
        """Listen, or log why not and return None: the peer serves on without a status socket."""
        path = data_dir / STATUS_SOCKET
        if path.exists() or path.is_symlink():
            if await _answers(path):
                log.warning("another peer answers on %s: this one exposes no status", path)
                return None
            try:
                path.unlink()  # left by a peer that did not stop cleanly
            except OSError as exc:
                log.warning("cannot remove %s (%s): ai4all status cannot reach this peer", path, exc)
                return None
        self = cls(peer, path)
        try:
            with _reachable(path) as name:
                self._server = await asyncio.start_unix_server(self._serve, path=name, limit=MAX_REQUEST)
            os.chmod(path, 0o600)
            self._inode = path.stat().st_ino
        except OSError as exc:
            log.warning("no status socket at %s (%s): ai4all status cannot reach this peer", path, exc)
            if self._server is not None:
                self._server.close()
            return None
        log.info("status socket %s", path)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            sock = writer.get_extra_info("socket")
            if self._open > MAX_CONNECTIONS or sock is None or not _allowed(_peer_uid(sock)):
                return
            answer: dict[str, Any]
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    line = await reader.readline()
                request = json.loads(line) if line.endswith(b"\n") else None
            except (TimeoutError, ValueError, RecursionError, asyncio.LimitOverrunError):
                request = None  # silent, oversized, not JSON or absurdly nested: answered with the error
            if request != {"v": PROTOCOL, "want": "status"}:
                answer = {"v": PROTOCOL, "error": 'send one line: {"v": 1, "want": "status"}'}
            else:
                answer = {"v": PROTOCOL, "status": await snapshot(self.peer)}
            writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("status request failed: %s", exc)
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
        with contextlib.suppress(OSError):  # remove it only if it is still ours
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()


async def serve_status(peer: Peer, data_dir: Path) -> None:
    """A task of the peer's node: the status socket for as long as the task runs."""
    server = await StatusServer.start(peer, data_dir)
    if server is None:
        return
    try:
        await asyncio.Event().wait()
    finally:
        await server.aclose()


async def _answers(path: Path) -> bool:
    """Whether something listens on the Unix socket at ``path``."""
    try:
        with _reachable(path) as name:
            async with asyncio.timeout(1.0):
                _reader, writer = await asyncio.open_unix_connection(name)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def ask_status(data_dir: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The status of the peer running with ``data_dir``; ``CommandError`` in one line when none runs
    there, or when whatever answers is not that peer."""
    from .identity import IDENTITY_FILE, Identity

    path = data_dir / STATUS_SOCKET
    not_running = f"no peer is running with data dir {data_dir}"
    if not data_dir.is_dir():
        raise CommandError(f"{not_running}: the directory does not exist")
    if not path.exists():
        raise CommandError(f"{not_running} (no {STATUS_SOCKET} there; start one with ai4all peer --data-dir)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _reachable(path) as name:
                sock.connect(name)
        except (ConnectionRefusedError, FileNotFoundError):
            raise CommandError(
                f"{not_running} (its {STATUS_SOCKET} is left from a peer that stopped)"
            ) from None
        except OSError as exc:
            raise CommandError(
                f"cannot reach the peer's status socket {path}: {exc.strerror or exc}"
            ) from None
        if not _allowed(_peer_uid(sock)):
            raise CommandError(f"{path} is served by another user's process: refused")
        try:
            sock.sendall(json.dumps({"v": PROTOCOL, "want": "status"}).encode() + b"\n")
            raw = _read_line(sock)
        except TimeoutError:
            raise CommandError(
                f"the peer with data dir {data_dir} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise CommandError(f"the peer's status socket {path} failed: {exc.strerror or exc}") from None
    if not raw:
        raise CommandError(
            f"the peer with data dir {data_dir} closed its status socket without answering (busy?)"
        )
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("v") != PROTOCOL:
        raise CommandError(f"{path} answered something that is not a peer's status")
    if "error" in answer:
        raise CommandError(f"the peer refused the status request: {str(answer['error'])[:200]}")
    status = answer.get("status")
    if not isinstance(status, dict) or not isinstance(status.get("peer_id"), str):
        raise CommandError(f"{path} answered something that is not a peer's status")
    key = data_dir / IDENTITY_FILE
    if key.exists():
        expected = Identity.load(key).peer_id
        if status["peer_id"] != expected:
            raise CommandError(
                f"{path} answered for peer {status['peer_id'][:16]}..., but {data_dir} holds identity "
                f"{expected[:16]}...: refused"
            )
    return status


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            raise CommandError(f"the status answer is over {MAX_ANSWER} bytes")
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


__all__ = ["STATUS_SOCKET", "StatusServer", "ask_status", "serve_status", "snapshot"]

"""A seeder that lies about chunks, speaking only the documented chunk protocol (docs/chunks.md).

``LiarSeeder`` answers ``manifest`` and ``have`` requests honestly (through an honest ``Seeder``) and
every ``chunk`` request with a lie built from raw frames, as an attacker's own code would: the chunk
corrupted (one byte flipped), truncated (one byte short), another file's bytes under the asked name, or
an answer labelled as another chunk. ``python -m tests.support.liar_seeder`` runs it in a real serving
peer (honest at inference, lying about chunks); ``LiarProc`` starts that process for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from python_peer import event_loop
from python_peer.core.wire import Frame, FrameType, WireTensor
from python_peer.seeding import Seeder
from tests.support.procs import ROOT, PeerProc, _env

LIES = ("corrupt", "truncate", "other_file", "mislabel")


class LiarSeeder:
    """Honest about what it holds, lying about every chunk's bytes in the way ``lie`` names."""

    def __init__(self, honest: Seeder, lie: str) -> None:
        if lie not in LIES:
            raise ValueError(f"lie {lie!r} is not one of {LIES}")
        self.honest = honest
        self.lie = lie
        self.lies_told = 0

    async def handle(self, client: str, frame: Frame) -> Frame:
        answer = await self.honest.handle(client, frame)
        if frame.meta.get("kind") != "chunk" or answer.type is not FrameType.CHUNK:
            return answer
        file, index, data = frame.meta["file"], frame.meta["index"], answer.tensors[0].data
        if self.lie == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        elif self.lie == "truncate":
            data = data[:-1]
        elif self.lie == "other_file":
            data = self._other_file_bytes(client, file, len(data))
        meta = {"kind": "chunk", "file": file, "index": index + 1 if self.lie == "mislabel" else index}
        self.lies_told += 1
        return Frame(FrameType.CHUNK, frame.session, frame.step, meta=meta,
                     tensors=(WireTensor("data", "uint8", (len(data),), data),))  # fmt: skip

    def _other_file_bytes(self, client: str, file: str, length: int) -> bytes:
        for model in self.honest.models.values():
            for name in sorted(model.files):
                if name != file:
                    return (model.root / name).read_bytes()[:length]
        return bytes(length)


async def _main(argv: list[str]) -> int:
    from python_peer.core.spans import Span
    from python_peer.node import NodeConfig, Peer, PeerConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--signal", action="append", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--span", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--lie", default="corrupt", choices=LIES)
    args = parser.parse_args(argv)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    config = PeerConfig(NodeConfig(tuple(args.signal), args.data_dir), args.model, Span.parse(args.span))
    async with await Peer.create(config) as peer:
        liar = LiarSeeder(peer.seeder, args.lie)
        peer.seeding.seeder = liar  # type: ignore[assignment]  # the seam a test liar takes over
        print(
            f"peer {peer.node.peer_id} serves {peer.manifest.name} blocks {peer.span}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        print(f"liar stopping after {liar.lies_told} lies", file=sys.stderr, flush=True)
    return 0


class LiarProc(PeerProc):
    """A serving peer process whose seeder lies (``python -m tests.support.liar_seeder``)."""

    def __init__(
        self, name: str, log_dir: Path, model: Path, signals: list[str], *, span: str, lie: str
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.data_dir = log_dir / name
        args = [sys.executable, "-m", "tests.support.liar_seeder", "--model", str(model), "--span", span]
        args += ["--data-dir", str(self.data_dir), "--lie", lie]
        for url in signals:
            args += ["--signal", url]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        self.peer_id = ""
        self.span = ""


if __name__ == "__main__":
    sys.exit(event_loop.run(_main(sys.argv[1:])))

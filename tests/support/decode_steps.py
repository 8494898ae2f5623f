"""Sessions decoding on one span server through the documented frames (OPEN, FORWARD, CLOSE:
docs/mesh.md), step by step or all at once, greedily through a local embed and head: what the batching
tests compare batched answers with answers alone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from python_peer.chain import LocalChain
from python_peer.core.wire import Frame, FrameType
from python_peer.server import SpanServer
from python_peer.tensors import from_wire, to_wire

CLIENT = "batching-client"


def open_frame(server: SpanServer, session: bytes, max_length: int = 128, batch: int = 1) -> Frame:
    meta = {
        "model": server.model,
        "start": server.span.start,
        "end": server.span.end,
        "batch": batch,
        "max_length": max_length,
    }
    return Frame(FrameType.OPEN, session, 0, meta=meta)


def forward_frame(
    session: bytes, step: int, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray | None = None
) -> Frame:
    """A FORWARD of ``hidden`` at ``positions``, with ``mask`` (all ones by default)."""
    return Frame(
        FrameType.FORWARD,
        session,
        step,
        tensors=(
            to_wire("hidden_states", hidden.astype(np.float32)),
            to_wire("attention_mask", np.ones(positions.shape, np.int64) if mask is None else mask),
            to_wire("position_ids", positions.astype(np.int64)),
        ),
    )


def answer(frame: Frame) -> np.ndarray | str:
    """The hidden states of a RESULT, or the code of an ERROR."""
    if frame.type is FrameType.ERROR:
        return str(frame.meta["code"])
    return from_wire(frame.tensor("hidden_states_out"))


@dataclass
class Decoding:
    """One session's state on the client side: what it sent and got back."""

    session: bytes
    length: int = 0
    step: int = 0
    outputs: list[np.ndarray | str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    async def send(self, server: SpanServer, hidden: np.ndarray, client: str = CLIENT) -> np.ndarray | str:
        seq = hidden.shape[1]
        positions = np.arange(self.length, self.length + seq, dtype=np.int64)[None]
        out = answer(await server.handle(client, forward_frame(self.session, self.step, hidden, positions)))
        self.outputs.append(out)
        if not isinstance(out, str):
            self.length += seq
            self.step += 1
        return out


async def open_sessions(server: SpanServer, count: int, client: str = CLIENT) -> list[Decoding]:
    sessions = [Decoding(bytes([i + 1]) * 16) for i in range(count)]
    for s in sessions:
        opened = await server.handle(client, open_frame(server, s.session))
        assert opened.type is FrameType.RESULT, opened.meta
    return sessions


async def decode_hidden(
    server: SpanServer, prompts: list[np.ndarray], steps: list[list[np.ndarray]], *, together: bool
) -> list[Decoding]:
    """Prefill each session with its prompt's hidden states, then send its decode steps' hidden states
    (fixed in advance): all sessions' k-th steps at once (``together``) or one session after another."""
    sessions = await open_sessions(server, len(prompts))
    for s, prompt in zip(sessions, prompts, strict=True):
        await s.send(server, prompt)
    if together:
        for k in range(max(len(x) for x in steps)):
            await asyncio.gather(
                *(s.send(server, x[k]) for s, x in zip(sessions, steps, strict=True) if k < len(x))
            )
    else:
        for s, x in zip(sessions, steps, strict=True):
            for hidden in x:
                await s.send(server, hidden)
    return sessions


async def decode_greedy(
    server: SpanServer, chain: LocalChain, prompts: list[list[int]], tokens: int, *, together: bool
) -> list[Decoding]:
    """Greedy decoding of each prompt, the server's span in the middle of ``chain``'s embed and head
    (the server must serve every block of the model): all sessions' steps at once or one by one."""

    def embed(ids: list[int], start: int) -> np.ndarray:
        positions = np.arange(start, start + len(ids), dtype=np.int64)[None]
        return chain.embed(np.array([ids], dtype=np.int64), positions)

    async def next_token(s: Decoding, ids: list[int]) -> None:
        out = await s.send(server, embed(ids, s.length))
        if isinstance(out, str):
            raise AssertionError(f"session {s.session.hex()} failed: {out}")
        s.tokens.append(int(np.argmax(chain.head(out[:, -1:])[0, -1])))

    sessions = await open_sessions(server, len(prompts))
    for s, prompt in zip(sessions, prompts, strict=True):
        await next_token(s, prompt)
    if together:
        for _ in range(tokens - 1):
            await asyncio.gather(*(next_token(s, [s.tokens[-1]]) for s in sessions))
    else:
        for s in sessions:
            for _ in range(tokens - 1):
                await next_token(s, [s.tokens[-1]])
    return sessions

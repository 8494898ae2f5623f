"""The span server in-process: sessions, the KV budget, order of steps, isolation and idle eviction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import PeerError
from python_peer.server import ServerConfig, SpanServer
from python_peer.tensors import from_wire, to_wire

S1, S2 = b"\x01" * 16, b"\x02" * 16


def server(model: Path, **config: object) -> SpanServer:
    manifest = load_manifest(model)
    return SpanServer(model, manifest, Span(1, 4), ServerConfig(**config))  # type: ignore[arg-type]


def opening(model: Path, session: bytes, max_length: int = 16) -> Frame:
    meta = {"model": load_manifest(model).name, "start": 1, "end": 4, "batch": 1, "max_length": max_length}
    return Frame(FrameType.OPEN, session, 0, meta=meta)


def forward(session: bytes, step: int, seq: int = 2, start: int = 0) -> Frame:
    hidden = np.random.default_rng(step).standard_normal((1, seq, 64)).astype(np.float32)
    return Frame(
        FrameType.FORWARD,
        session,
        step,
        tensors=(
            to_wire("hidden_states", hidden),
            to_wire("attention_mask", np.ones((1, seq), np.int64)),
            to_wire("position_ids", np.arange(start, start + seq, dtype=np.int64)[None]),
        ),
    )


def code(frame: Frame) -> str:
    return str(frame.meta["code"]) if frame.type is FrameType.ERROR else "ok"


async def test_span_runs_over_consecutive_shards(tiny_llama_export: Path) -> None:
    srv = server(tiny_llama_export)  # 1-4 is the shards 1-3 and 3-4 run one after the other
    assert len(srv.runners) == 2 and srv.measure_throughput() > 0
    assert code(await srv.handle("alice", opening(tiny_llama_export, S1))) == "ok"
    answer = await srv.handle("alice", forward(S1, 0))
    assert from_wire(answer.tensor("hidden_states_out")).shape == (1, 2, 64)
    assert srv.tokens_served == 2
    with pytest.raises(PeerError, match="not a run of this model's block shards"):
        SpanServer(tiny_llama_export, load_manifest(tiny_llama_export), Span(0, 2), ServerConfig())


async def test_sessions_belong_to_their_client(tiny_llama_export: Path) -> None:
    srv = server(tiny_llama_export)
    await srv.handle("alice", opening(tiny_llama_export, S1))
    assert code(await srv.handle("mallory", forward(S1, 0))) == "unknown_session"
    assert code(await srv.handle("alice", forward(S1, 0))) == "ok"
    srv.close_client("alice")
    assert srv.sessions == {}


async def test_budget_refuses_and_closing_frees(tiny_llama_export: Path) -> None:
    # 3 layers x K,V x 2 heads x 16 dims x 4 bytes = 768 B per token; 16 tokens = 12 KiB per session.
    srv = server(tiny_llama_export, memory_budget_bytes=2 * 768 * 16)
    assert code(await srv.handle("a", opening(tiny_llama_export, S1))) == "ok"
    assert code(await srv.handle("a", opening(tiny_llama_export, S2))) == "ok"
    refused = await srv.handle("b", opening(tiny_llama_export, b"\x03" * 16))
    assert code(refused) == "session_refused" and "KV memory budget full" in refused.meta["message"]
    assert srv.kv_free_tokens == 0
    assert (await srv.handle("a", Frame(FrameType.CLOSE, S1, 0))).meta == {"closed": True}
    assert code(await srv.handle("b", opening(tiny_llama_export, b"\x03" * 16))) == "ok"


async def test_steps_in_order_and_within_max_length(tiny_llama_export: Path) -> None:
    srv = server(tiny_llama_export)
    await srv.handle("a", opening(tiny_llama_export, S1, max_length=4))
    assert code(await srv.handle("a", forward(S1, 1))) == "out_of_order"
    assert code(await srv.handle("a", forward(S1, 0, seq=3))) == "ok"
    assert code(await srv.handle("a", forward(S1, 1, seq=2, start=3))) == "bad_shape"
    assert code(await srv.handle("a", forward(S1, 1, seq=1, start=3))) == "ok"
    assert code(await srv.handle("a", Frame(FrameType.GOSSIP, S1, 0))) == "bad_frame"


async def test_idle_sessions_are_evicted(tiny_llama_export: Path) -> None:
    srv = server(tiny_llama_export, idle_timeout_s=30.0)
    await srv.handle("a", opening(tiny_llama_export, S1))
    last = srv.sessions["a:" + S1.hex()].last_used
    assert srv.evict_idle(now=last + 10) == 0
    assert srv.evict_idle(now=last + 31) == 1
    assert code(await srv.handle("a", forward(S1, 0))) == "unknown_session"
    assert all(not r.sessions for r in srv.runners)

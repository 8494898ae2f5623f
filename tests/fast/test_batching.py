"""Batched decode on the toy model, through the span server's frames: sessions batched together get
exactly what each gets alone, whatever their past lengths; a session that fails or closes mid-batch
costs the others nothing; a lone session does not wait for the window."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_peer.batching import BatchConfig, DecodeBatcher, RowBatcher, padding_fits
from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.core.wire import Frame, FrameType
from python_peer.errors import ShardInputError
from python_peer.server import ServerConfig, SpanServer
from tests.fast import toy_model
from tests.fast.conftest import ToyMesh, greedy
from tests.support.decode_steps import CLIENT, Decoding, decode_hidden, open_frame, open_sessions
from tests.support.waiting import wait_for_async

ALONE = BatchConfig(enabled=False)
BATCHED = BatchConfig(window_s=0.5, gap_s=0.5)  # long: a batch starts when every session has its step queued


def span_server(model: Path, batching: BatchConfig, span: tuple[int, int] = (0, 4)) -> SpanServer:
    """The toy model's every shard (0-1, 1-3, 3-4) in one span server: a batch runs through three shards."""
    return SpanServer(model, load_manifest(model), Span(*span), ServerConfig(threads=1, batching=batching))


def plan(lengths: list[int], steps: int, seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    prompts = [rng.normal(0, 1, (1, n, toy_model.HIDDEN)).astype(np.float32) for n in lengths]
    decode = [
        [rng.normal(0, 1, (1, 1, toy_model.HIDDEN)).astype(np.float32) for _ in range(steps)] for _ in lengths
    ]
    return prompts, decode


def outputs(sessions: list) -> list[list[np.ndarray | str]]:
    return [s.outputs for s in sessions]


def assert_same(batched: list[list[np.ndarray | str]], alone: list[list[np.ndarray | str]]) -> None:
    for b_session, a_session in zip(batched, alone, strict=True):
        assert len(b_session) == len(a_session)
        for b, a in zip(b_session, a_session, strict=True):
            if isinstance(a, str) or isinstance(b, str):
                assert b == a
            else:
                np.testing.assert_array_equal(b, a)  # the toy's running sum adds zeros for padding: exact


async def test_batched_sessions_of_different_lengths_get_what_each_gets_alone(toy: Path) -> None:
    lengths = [1, 7, 3, 20, 12]
    prompts, steps = plan(lengths, steps=6)
    alone_server = span_server(toy, ALONE)
    alone = await decode_hidden(alone_server, prompts, steps, together=False)
    batched_server = span_server(toy, BATCHED)
    batched = await decode_hidden(batched_server, prompts, steps, together=True)
    assert_same(outputs(batched), outputs(alone))
    stats = batched_server.batcher.stats
    assert stats.sizes[len(lengths)] == 6, stats  # every decode step ran in a batch of all five sessions
    assert stats.fallbacks == 0 and alone_server.batcher.stats.largest == 1
    assert batched_server.tokens_served == alone_server.tokens_served == sum(lengths) + 6 * len(lengths)


async def test_a_session_whose_step_breaks_the_batch_fails_alone(toy: Path) -> None:
    """A client sends finite but enormous hidden states: the first shard turns them into NaN, the second
    refuses them, so the batched call fails; each step runs again alone and only that session fails (its
    session is closed, as a half-advanced session must be); the others get their answers alone."""
    prompts, steps = plan([4, 9, 2], steps=3, seed=1)
    steps[1][1] = np.full((1, 1, toy_model.HIDDEN), 3e38, dtype=np.float32)
    alone = await decode_hidden(span_server(toy, ALONE), prompts, steps, together=False)
    server = span_server(toy, BATCHED)
    batched = await decode_hidden(server, prompts, steps, together=True)
    assert batched[1].outputs[2] == "bad_shape" and batched[1].outputs[3] == "unknown_session"
    assert_same([batched[0].outputs, batched[2].outputs], [alone[0].outputs, alone[2].outputs])
    assert server.batcher.stats.fallbacks == 1
    assert server.batcher.stats.sizes[3] == 1 and server.batcher.stats.sizes[2] == 1  # before, after


async def prefilled(
    toy: Path, lengths: list[int], seed: int
) -> tuple[list[Decoding], SpanServer, list[Decoding], list[list[np.ndarray]]]:
    """What each session gets alone over 4 decode steps, and the same sessions opened and prefilled on a
    batching server, their decode steps still to send."""
    prompts, steps = plan(lengths, steps=4, seed=seed)
    alone = await decode_hidden(span_server(toy, ALONE), prompts, steps, together=False)
    server = span_server(toy, BATCHED)
    sessions = await open_sessions(server, len(lengths))
    for s, prompt in zip(sessions, prompts, strict=True):
        await s.send(server, prompt)
    return alone, server, sessions, steps


async def test_a_session_closed_mid_batch_costs_the_others_nothing(toy: Path) -> None:
    """Session 0 is closed (CLOSE frame) while its step waits in the queue with session 1's; session 2's
    step completes the batch. Session 0 gets ``unknown_session``; the others get what they get alone."""
    alone, server, sessions, steps = await prefilled(toy, [3, 5, 8], seed=2)
    await asyncio.gather(*(s.send(server, x[0]) for s, x in zip(sessions, steps, strict=True)))
    first = [asyncio.ensure_future(sessions[i].send(server, steps[i][1])) for i in (0, 1)]
    await wait_for_async(lambda: server.batcher.queued == 2, 5, what="two steps queued", interval=0.001)
    closed = await server.handle(CLIENT, Frame(FrameType.CLOSE, sessions[0].session, 0))
    assert closed.type is FrameType.RESULT
    await asyncio.gather(*first, sessions[2].send(server, steps[2][1]))
    assert sessions[0].outputs[-1] == "unknown_session"
    for k in (2, 3):
        await asyncio.gather(*(sessions[i].send(server, steps[i][k]) for i in (1, 2)))
    assert_same([sessions[1].outputs, sessions[2].outputs], [alone[1].outputs, alone[2].outputs])
    assert server.batcher.stats.sizes[2] >= 3 and server.batcher.stats.fallbacks == 0


async def test_a_session_closed_while_its_batch_runs_costs_the_others_nothing(toy: Path) -> None:
    """CLOSE arrives while the batched call runs in its thread: the closed session's new cache is dropped
    (or it got its answer just before); the others go on exactly as alone."""
    alone, server, sessions, steps = await prefilled(toy, [6, 2, 9], seed=4)
    sends = [asyncio.ensure_future(s.send(server, x[0])) for s, x in zip(sessions, steps, strict=True)]
    await wait_for_async(lambda: server.batcher.queued == 0, 5, what="the batch taken", interval=0.001)
    await server.handle(CLIENT, Frame(FrameType.CLOSE, sessions[0].session, 0))
    await asyncio.gather(*sends)
    for k in (1, 2, 3):
        await asyncio.gather(*(sessions[i].send(server, steps[i][k]) for i in (1, 2)))
    assert_same([sessions[1].outputs, sessions[2].outputs], [alone[1].outputs, alone[2].outputs])
    assert await sessions[0].send(server, steps[0][1]) == "unknown_session"


async def test_a_lone_session_does_not_wait_for_the_window(toy: Path) -> None:
    server = span_server(toy, BatchConfig(window_s=1.0))
    prompts, steps = plan([5], steps=3)
    started = time.monotonic()
    await decode_hidden(server, prompts, steps, together=True)
    assert time.monotonic() - started < 0.9
    assert server.batcher.stats.longest_wait_s < 0.5


def record_threads(server: SpanServer, delay_s: float = 0.0) -> list[int]:
    """The thread each step run alone takes (its id), appended as they run; each takes ``delay_s`` more."""
    threads: list[int] = []
    run_alone = server.batcher._run_alone

    def recorded(*args: Any) -> np.ndarray:
        threads.append(threading.get_ident())
        time.sleep(delay_s)
        return run_alone(*args)

    server.batcher._run_alone = recorded
    return threads


async def test_a_lone_session_steps_on_the_event_loop_once_a_step_proved_quick(toy: Path) -> None:
    """One session decoding: its first step runs in a worker thread and is timed, the next ones on the
    event loop (no thread hop), with exactly the answers of steps run alone in threads; once a second
    session decodes too, steps go through the batcher again, in threads."""
    prompts, steps = plan([5, 4], steps=4)
    alone = await decode_hidden(span_server(toy, ALONE), prompts[:1], steps[:1], together=False)
    server = span_server(toy, BatchConfig())
    loop_thread = threading.get_ident()
    threads = record_threads(server)
    (lone,) = await decode_hidden(server, prompts[:1], steps[:1], together=False)
    assert_same([lone.outputs], [alone[0].outputs])
    assert threads[0] != loop_thread  # the prompt
    assert threads[1] != loop_thread  # the first decode step: how long a step takes is not known yet
    assert threads[2:] == [loop_thread] * 3
    assert server.batcher.stats.inline == 3
    other = Decoding(b"\x09" * 16)
    assert (await server.handle(CLIENT, open_frame(server, other.session))).type is FrameType.RESULT
    await other.send(server, prompts[1])
    before = len(threads)
    await asyncio.gather(lone.send(server, steps[0][0]), other.send(server, steps[1][0]))
    assert server.batcher.stats.inline == 3
    assert loop_thread not in threads[before:]


async def test_a_lone_step_slower_than_inline_s_stays_in_a_thread(toy: Path) -> None:
    """A shard whose lone step takes longer than ``inline_s`` (a big model, a small device) never blocks
    the event loop: every step runs in a worker thread; ``inline_s`` 0 keeps every step there too."""
    prompts, steps = plan([5], steps=4)
    for config, delay_s in ((BatchConfig(inline_s=0.01), 0.02), (BatchConfig(inline_s=0.0), 0.0)):
        server = span_server(toy, config)
        threads = record_threads(server, delay_s)
        await decode_hidden(server, prompts, steps, together=False)
        assert len(threads) == 5 and threading.get_ident() not in threads
        assert server.batcher.stats.inline == 0


async def test_an_idle_session_delays_a_step_by_the_window_at_most(toy: Path) -> None:
    """Two sessions open, one decoding: its steps wait for the other's at most ``window_s``, then run."""
    server = span_server(toy, BatchConfig(window_s=0.05, gap_s=1.0))
    sessions = await open_sessions(server, 2)
    prompts, steps = plan([3, 3], steps=3)
    for s, prompt in zip(sessions, prompts, strict=True):
        await s.send(server, prompt)
    for hidden in steps[0]:
        assert not isinstance(await sessions[0].send(server, hidden), str)
    assert 0.04 <= server.batcher.stats.longest_wait_s < 0.5


async def test_a_step_waits_for_no_other_once_none_arrived_for_the_gap(toy: Path) -> None:
    """Two sessions open, one decoding: its steps run ``gap_s`` after they arrive, not ``window_s``."""
    server = span_server(toy, BatchConfig(window_s=1.0, gap_s=0.02))
    sessions = await open_sessions(server, 2)
    prompts, steps = plan([3, 3], steps=3)
    for s, prompt in zip(sessions, prompts, strict=True):
        await s.send(server, prompt)
    started = time.monotonic()
    for hidden in steps[0]:
        assert not isinstance(await sessions[0].send(server, hidden), str)
    assert time.monotonic() - started < 0.9
    assert 0.015 <= server.batcher.stats.longest_wait_s < 0.5


async def test_steps_arriving_closer_than_the_gap_join_one_batch(toy: Path) -> None:
    """Four decoding sessions, three of whose steps arrive 10 ms apart (as a client's messages do over
    WebRTC, one at a time) and the fourth's never: the three run as one batch once ``gap_s`` passed
    after the last, with what each gets alone."""
    prompts, steps = plan([2, 4, 6, 8], steps=1, seed=7)
    alone = await decode_hidden(
        span_server(toy, ALONE), prompts[:3], [s[:1] for s in steps[:3]], together=False
    )
    server = span_server(toy, BatchConfig(window_s=1.0, gap_s=0.2))
    sessions = await open_sessions(server, 4)
    for s, prompt in zip(sessions, prompts, strict=True):
        await s.send(server, prompt)

    async def later(i: int) -> None:
        await asyncio.sleep(0.01 * i)
        await sessions[i].send(server, steps[i][0])

    started = time.monotonic()
    await asyncio.gather(*(later(i) for i in range(3)))
    assert server.batcher.stats.sizes[3] == 1, server.batcher.stats
    assert time.monotonic() - started < 0.9  # not the window: the gap after the last
    for i in range(3):
        np.testing.assert_array_equal(sessions[i].outputs[-1], alone[i].outputs[-1])


def test_padding_may_at_most_double_the_cache() -> None:
    assert padding_fits([100, 90, 80])
    assert padding_fits([1, 2, 60])  # short sessions batch freely
    assert not padding_fits([1000, 10, 10, 10])
    assert padding_fits([1000, 900])


async def test_steps_too_far_apart_in_length_run_in_separate_batches(toy: Path) -> None:
    """A 100-token session takes one short one with it (padding doubles that pair's cache at most); the
    other two short ones would make the padded cache over twice their own, so they form the next batch."""
    prompts, steps = plan([100, 2, 3, 4], steps=2, seed=3)
    alone = await decode_hidden(span_server(toy, ALONE), prompts, steps, together=False)
    server = span_server(toy, BATCHED)
    batched = await decode_hidden(server, prompts, steps, together=True)
    assert_same(outputs(batched), outputs(alone))
    assert all(isinstance(x, np.ndarray) for s in batched for x in s.outputs)
    assert server.batcher.stats.sizes[2] == 4 and server.batcher.stats.largest == 2


def test_the_batch_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchConfig(max_batch=0)
    with pytest.raises(ValueError, match="window_s"):
        BatchConfig(window_s=-1)
    with pytest.raises(ValueError, match="gap_s"):
        BatchConfig(gap_s=2.0)
    with pytest.raises(ValueError, match="runners"):
        DecodeBatcher([], lambda *a: np.zeros(1))


async def test_mesh_sessions_batched_on_their_peers_decode_their_own_tokens(toy_mesh: ToyMesh) -> None:
    """Six greedy generations at once through the mesh client (every hop batched on its peer) give each
    the tokens the local chain gives it alone."""
    m = toy_mesh
    prompts = [[3, 5, 7, 11], [1], [30, 2, 9], [4, 4, 4, 4, 4, 4, 4, 4, 4], [17, 8], [6, 21, 13, 2, 5]]
    expected = []
    for prompt in prompts:
        chain = LocalChain(m.model_dir, threads=1)
        session = chain.open(1)
        logits = chain.step(session, np.array([prompt]), np.ones((1, len(prompt)), dtype=np.int64))
        tokens = []
        for _ in range(8):
            tokens.append(int(np.argmax(logits[0, -1])))
            logits = chain.step(session, np.array([[tokens[-1]]]), np.ones((1, 1), dtype=np.int64))
        expected.append(tokens)
    peers = [m.peer(span) for span in ((0, 1), (1, 3), (3, 4))]
    for peer in peers:
        m.servers[peer].batcher.config = BatchConfig(window_s=0.5, gap_s=0.5)
    client = m.client()
    results = await asyncio.gather(*(greedy(client, prompt, 8) for prompt in prompts))
    assert [tokens for tokens, _ in results] == expected
    for peer in peers:
        stats = m.servers[peer].batcher.stats
        assert stats.largest >= 2 and stats.fallbacks == 0, stats


async def test_row_batcher_stacks_calls_that_arrive_while_one_runs(toy: Path) -> None:
    """The client's heads: calls that arrive together run as one call and each caller gets its own rows;
    a caller whose rows the shard refuses (NaN) fails alone, the others get their rows."""
    head = LocalChain(toy, threads=1).head
    heads = RowBatcher(head)
    rng = np.random.default_rng(5)
    rows = [rng.normal(0, 1, (1, 1, toy_model.HIDDEN)).astype(np.float32) for _ in range(6)]
    results = await asyncio.gather(*(heads(r) for r in rows))
    for r, out in zip(rows, results, strict=True):
        np.testing.assert_allclose(out, head(r), rtol=0, atol=1e-6)
    assert heads.stats.sizes == {6: 1}
    rows[3] = np.full((1, 1, toy_model.HIDDEN), np.nan, dtype=np.float32)
    outcomes = await asyncio.gather(*(heads(r) for r in rows), return_exceptions=True)
    for i, (r, outcome) in enumerate(zip(rows, outcomes, strict=True)):
        if i == 3:
            assert isinstance(outcome, ShardInputError) and "NaN" in str(outcome)
        else:
            assert isinstance(outcome, np.ndarray)
            np.testing.assert_array_equal(outcome, head(r))  # run again alone after the stacked call failed
    lone = await heads(rows[0])  # a lone call runs at once, alone
    np.testing.assert_array_equal(lone, head(rows[0]))
    assert heads.stats.sizes == {6: 2, 1: 1}


async def test_row_batcher_waits_for_the_rows_its_callers_expect(toy: Path) -> None:
    """Two callers inside ``expecting``: the first call waits for the second's row (a lone caller would
    not), the two run as one call; a row that never comes is waited for ``window_s`` at most."""
    head = LocalChain(toy, threads=1).head
    heads = RowBatcher(head, window_s=1.0)
    rng = np.random.default_rng(6)
    rows = [rng.normal(0, 1, (1, 1, toy_model.HIDDEN)).astype(np.float32) for _ in range(2)]

    async def caller(i: int) -> np.ndarray:
        with heads.expecting(1):
            await asyncio.sleep(0.05 * i)  # the second is still on its way when the first calls
            return await heads(rows[i])

    results = await asyncio.gather(caller(0), caller(1))
    assert heads.stats.sizes == {2: 1}
    for r, out in zip(rows, results, strict=True):
        np.testing.assert_allclose(out, head(r), rtol=0, atol=1e-6)
    with heads.expecting(1):
        started = time.monotonic()
        assert np.array_equal(await heads(rows[0]), head(rows[0]))  # alone in ``expecting``: no wait
    assert time.monotonic() - started < 0.5
    short = RowBatcher(head, window_s=0.05)
    with short.expecting(2):  # a second row is expected but never comes
        started = time.monotonic()
        await short(rows[0])
        assert 0.04 <= time.monotonic() - started < 0.9


async def test_row_batcher_a_call_no_one_waited_for_neither_waits_nor_holds_others_up(toy: Path) -> None:
    """``arriving`` (a prompt's head): while another caller's row is expected, the call runs without
    waiting for it; and a caller that got its rows but is still inside ``expecting`` is no longer waited
    for once it leaves, so a call waiting for it runs then, not a window later."""
    head = LocalChain(toy, threads=1).head
    rows = np.random.default_rng(3).normal(0, 1, (1, 1, toy_model.HIDDEN)).astype(np.float32)
    heads = RowBatcher(head, window_s=1.0)
    with heads.expecting(1):  # a decoding session whose head has not come yet
        started = time.monotonic()
        with heads.arriving(1):
            assert np.array_equal(await heads(rows), head(rows))
        assert time.monotonic() - started < 0.5, "the prompt's head waited for a decode step's"

    left = asyncio.Event()

    async def lingering() -> None:
        with heads.expecting(1):
            await heads(rows)
            await asyncio.sleep(0.1)  # its rows came back; it leaves a little later
        left.set()

    task = asyncio.create_task(lingering())
    await asyncio.sleep(0.01)
    with heads.expecting(1):
        started = time.monotonic()
        await heads(rows)  # two rows expected, one queued: waits for the other caller, until it left
        waited = time.monotonic() - started
    await task
    assert left.is_set() and waited < 0.5, f"waited {waited:.2f} s for a caller that had left"


async def test_a_lone_sessions_heads_run_on_the_event_loop_the_prompts_too(toy_mesh: ToyMesh) -> None:
    """A client with one session: once a head call proved quick, every head of its next generation runs on
    the event loop, the prompt's included (its rows count as on their way only once they reach the head),
    with the same tokens; with a second session decoding at the same time, heads go through the batcher."""
    m = toy_mesh
    for span in ((0, 1), (1, 3), (3, 4)):
        m.peer(span)
    client = m.client()
    prompt = [3, 7, 11, 13]
    first, _ = await greedy(client, prompt, 4)
    before = client.heads.stats.inline
    again, _ = await greedy(client, prompt, 4)
    assert again == first
    assert client.heads.stats.inline - before == 4, "a head of the second generation ran in a thread"
    before = client.heads.stats.inline
    await asyncio.gather(greedy(client, prompt, 4), greedy(client, [5, 9, 2], 4))
    assert client.heads.stats.inline - before < 8, "two sessions' heads all ran alone on the loop"


async def test_row_batcher_runs_a_lone_callers_rows_on_the_event_loop(toy: Path) -> None:
    """A lone caller (inside ``expecting`` for its own rows only): its first call runs in a worker thread
    and is timed, the next ones on the event loop, with the same rows; a caller that did not say its rows
    were coming (no ``expecting``), or one whose call takes longer than ``inline_s``, runs in a thread."""
    head = LocalChain(toy, threads=1).head
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def recorded(rows: np.ndarray, delay_s: float = 0.0) -> np.ndarray:
        threads.append(threading.get_ident())
        time.sleep(delay_s)
        return head(rows)

    rows = np.random.default_rng(7).normal(0, 1, (1, 1, toy_model.HIDDEN)).astype(np.float32)
    heads = RowBatcher(recorded, window_s=1.0)
    for _ in range(3):
        with heads.expecting(1):
            np.testing.assert_array_equal(await heads(rows), head(rows))
    assert threads[0] != loop_thread and threads[1:] == [loop_thread] * 2
    assert heads.stats.inline == 2 and heads.stats.sizes == {1: 3}
    await heads(rows)  # nobody said it was coming: not known to be alone
    assert threads[-1] != loop_thread
    slow = RowBatcher(lambda r: recorded(r, 0.02), inline_s=0.01)
    for _ in range(3):
        with slow.expecting(1):
            await slow(rows)
    assert loop_thread not in threads[-3:] and slow.stats.inline == 0

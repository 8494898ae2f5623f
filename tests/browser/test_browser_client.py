"""The browser's mesh client (``web/src/client/``) and its tokenizer, in Chromium against Python.

- The tokenizer (``web/src/runtime/tokenizer.js``) gives ``ModelTokenizer``'s ids and prompt text, for
  the tiny Llama and for the default model when an export of it is on disk.
- In the harness page, a JS ``MeshClient`` with its own ``BrowserLedger`` (Pyodide, IndexedDB) offers
  WebRTC links to native ``ai4all peer`` processes serving 0-1, 1-3 and 3-4 of the tiny Llama, pushes
  its log (they refuse unpaid sessions), and generates greedy tokens equal to ``LocalChain``'s; every
  hop's receipt is countersigned and lands in the peer's own SQLite ledger and in the browser's.
- A peer SIGKILLed mid-generation (with a spare for its span) is noticed by missed pings; the client
  replays the span's inputs to the spare and the tokens are the same.
- A peer that answers badly (wrong shape, int64, NaN, no tensor, an ``unknown_session`` ERROR, an answer
  for another session, no answer at all) is named in a clear error, banned and routed around, with the
  same tokens and no receipt signed for the bad answer.
- Without a ledger (``ledger: null``) the client generates through a browser span server that keeps
  none (a second tab serving 0-4, browser to browser), and a native peer refuses it with a clear
  ``payment_required`` error.
- The offering side of ``BrowserTransport`` links two transports (and refuses bad signals); routes and
  sampling distributions equal Python's ``routing.choose_route`` and ``generate.sample``.
- The chat page served by a signaling node (``/chat``) replies through the mesh with Python's greedy
  text, and nothing the page sent contains the prompt: not an HTTP request (URL or body), not a
  signaling websocket frame, not a data channel message. Every data channel message is recorded (a
  wrapper of ``RTCDataChannel.prototype.send`` installed before the page runs), reassembled and decoded
  here: FORWARD frames carry only hidden states, mask and positions, and their bytes per peer are what
  the privacy panel shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Request, WebSocket, expect

from python_peer.chain import LocalChain
from python_peer.core.economics import network_rules
from python_peer.core.manifest import load_manifest
from python_peer.core.receipts import ReceiptBody
from python_peer.core.spans import Span
from python_peer.core.wire import (
    ErrorCode,
    Frame,
    FrameType,
    Reassembler,
    decode_frame,
    encode_frame,
    error_frame,
)
from python_peer.generate import SamplingParams, generate
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from python_peer.node import NodeConfig, Peer, PeerConfig
from python_peer.tensors import from_wire, to_wire
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser import Harness, script
from tests.support.browser_client import (
    CHAT_PROMPT,
    CLIENT_CONFIG,
    MAX_TOKENS,
    MESSAGES,
    chat_reference,
    run_generation,
    setup_client,
)
from tests.support.loop_thread import LoopThread
from tests.support.procs import Node, PeerProc
from tests.support.static_server import MODEL_PREFIX, MOUNTS, ROOT
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

DEFAULT_PREFIX = "/default-model/"

PLAIN_TEXTS = [
    "What is the capital of France?",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "Unicode: héllo wörld — 你好 🌍 ﬁ",
    "<|im_start|>user\nspecial tokens in the text<|im_end|>",
    "numbers 1234567890 and punctuation !?.,;:'\"()[]{}",
    "",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. 👋"},
        {"role": "user", "content": "Écris un poème\nsur la mer."},
    ],
]

# Load the tokenizer of the model at `base` and encode/render/decode everything it is given.
TOKENIZE_JS = script("browser_client/tokenize")


def check_tokenizer(harness: Harness, model: Path, prefix: str) -> None:
    manifest = load_manifest(model)
    tokenizer = ModelTokenizer(model, manifest)
    expected_texts = [tokenizer.encode(t) for t in PLAIN_TEXTS]
    # decode: the ids of the texts and prompts, plus ids that split a multi-byte character
    decode = [ids for ids in expected_texts if ids]
    decode += [tokenizer.encode(tokenizer.render_chat(c)) for c in CHATS]
    got = harness.page.evaluate(
        TOKENIZE_JS, {"base": prefix, "texts": PLAIN_TEXTS, "chats": CHATS, "decode": decode}
    )
    assert got["texts"] == expected_texts
    for chat, result in zip(CHATS, got["chats"], strict=True):
        prompt = tokenizer.render_chat(chat)
        assert result["prompt"] == prompt
        assert result["ids"] == tokenizer.encode(prompt)
        assert result["open"] == tokenizer.render_chat(chat, add_generation_prompt=False)
    assert got["decoded"] == [tokenizer.decode(ids) for ids in decode]
    assert got["streamed"] == [tokenizer.decode(ids) for ids in decode]
    assert sorted(got["eos"]) == sorted(tokenizer.eos_token_ids)
    assert harness.take_errors() == []


def test_tokenizer_ids_equal_pythons_tiny(harness: Harness, served_model: Path) -> None:
    check_tokenizer(harness, served_model, MODEL_PREFIX)


@pytest.mark.slow
def test_tokenizer_ids_equal_pythons_default_model(harness: Harness, default_models_dir: Path) -> None:
    """The default model's tokenizer and chat template, exported as ``ai4all up`` does (once per session)."""
    model = default_models_dir / "SmolLM2-135M-Instruct"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, DEFAULT_PREFIX, model)
        check_tokenizer(harness, model, DEFAULT_PREFIX)


# --- the mesh client against native peers ------------------------------------------------------------


@dataclass
class Mesh:
    node: Node
    peers: list[PeerProc] = field(default_factory=list)


@contextlib.contextmanager
def running_mesh(tmp: Path, model: Path, spans: list[str], page: Page) -> Iterator[Mesh]:
    """A signaling node and peers; the JS client on ``page`` is closed before they stop (else its signal
    client would try to reconnect to the stopped node, and log it)."""
    mesh = Mesh(Node("node-a", tmp))
    try:
        mesh.node.wait()
        mesh.peers = [
            PeerProc(f"p{i}-{span}", tmp, model, [mesh.node.url], span=span) for i, span in enumerate(spans)
        ]
        for peer in mesh.peers:
            peer.wait()
        yield mesh
    finally:
        page.evaluate("() => window.t?.client?.close()")
        for peer in mesh.peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            mesh.node.stop()


def local_tokens(model: Path) -> tuple[list[int], list[int]]:
    """The prompt's ids and the greedy tokens of the local chain: the reference."""
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat(MESSAGES))
    tokens = generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS)).token_ids
    assert len(tokens) == MAX_TOKENS, "the tiny model must not stop early for these comparisons"
    return ids, list(tokens)


def peer_receipts(peer: PeerProc, client: str) -> list[ReceiptBody]:
    """The receipts with ``client`` in the (stopped) peer's own ledger."""
    with LedgerStore.open(peer.data_dir / LEDGER_FILE, rules=network_rules(), create=False) as store:
        entries = store.entries_from(peer.peer_id, 1, 10_000)
        assert store.head(client) is not None, "the client's pushed log is not in the peer's ledger"
    return [e.body for e in entries if isinstance(e.body, ReceiptBody) and e.body.receipt.client == client]


def test_js_client_generates_through_native_peers(
    harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    ids, expected = local_tokens(served_model)
    chain = LocalChain(served_model)
    tokenizer = ModelTokenizer(served_model, chain.manifest)
    full_text = tokenizer.decode(expected)
    stop = next(
        full_text[i : i + 2]
        for i in range(len(full_text) // 2, len(full_text))
        if "\ufffd" not in full_text[i : i + 2]
    )
    stopped = generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS, stop=(stop,)))
    with running_mesh(tmp_path, served_model, ["0-1", "1-3", "3-4"], harness.page) as mesh:
        browser_id = setup_client(harness.page, "client-native", mesh.node.url)
        result = run_generation(harness.page)
        with_stop = dict(
            harness.page.evaluate(
                "(args) => window.t.generate(args)",
                {"messages": MESSAGES, "maxTokens": MAX_TOKENS, "stop": [stop]},
            )
        )
        for peer in mesh.peers:
            assert peer.stop() == 0, peer.tail()
    assert result["ids"] == ids
    assert result["tokens"] == expected, result["failures"]
    assert result["text"] == tokenizer.decode(expected) and result["finish"] == "length"
    # A stop string ends the text before it, as Python's generate does.
    assert (with_stop["text"], with_stop["tokens"], with_stop["finish"]) == (
        stopped.text,
        list(stopped.token_ids),
        "stop",
    )
    assert result["failovers"] == 0 and result["failures"] == []
    by_peer = {p.peer_id: p for p in mesh.peers}
    assert [(by_peer[peer].span, f"{a}-{b}") for peer, a, b in result["routes"][0]] == [
        ("0-1", "0-1"),
        ("1-3", "1-3"),
        ("3-4", "3-4"),
    ]
    # The prompt once, then every token but the last (whose logits are not needed): per hop.
    positions = len(ids) + MAX_TOKENS - 1
    traffic = {t["peerId"]: t for t in result["traffic"]}
    assert set(traffic) == set(by_peer)
    for seen in traffic.values():
        assert seen["tokenPositions"] == positions and seen["hiddenFrames"] == MAX_TOKENS
        assert seen["hiddenBytes"] > positions * 64 * 4  # float32 hidden states of width 64, and more
    # Receipts: each peer proposed one, the browser countersigned it, the peer recorded it in its log.
    assert sorted(r["peerId"] for r in result["receipts"]) == sorted(by_peer)
    assert len(result["own"]) == 3
    for peer in mesh.peers:
        receipts = peer_receipts(peer, browser_id)
        assert len(receipts) == 2, peer.tail()  # this generation's and the one with a stop string
        receipt = receipts[0].receipt
        assert (receipt.server, f"{receipt.start}-{receipt.end}", receipt.tokens) == (
            peer.peer_id,
            peer.span,
            positions,
        )
        own = [e for e in result["own"] if e["body"]["receipt"]["server"] == peer.peer_id]
        assert len(own) == 1 and own[0]["body"]["receipt"] == receipt.to_dict()
    assert harness.take_errors() == []


def test_js_client_fails_over_when_a_peer_is_killed(
    harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    _, expected = local_tokens(served_model)
    with running_mesh(tmp_path, served_model, ["0-1", "1-3", "3-4", "1-3"], harness.page) as mesh:
        setup_client(harness.page, "client-failover", mesh.node.url)
        harness.page.evaluate(
            "(args) => { window.t.running = window.t.generate(args); }",
            {"messages": MESSAGES, "maxTokens": MAX_TOKENS, "pauseAt": 4},
        )
        wait_for(
            lambda: harness.page.evaluate("() => window.t.reached"),
            60,
            what="the generation reaching the pause",
            interval=0.1,
        )
        first = harness.page.evaluate(
            "() => [...window.t.client.traffic.values()].map((t) => [t.peerId, t.spans])"
        )
        victim_id = next(peer for peer, spans in first if spans == ["1-3"])
        victim = next(p for p in mesh.peers if p.peer_id == victim_id)
        spare = next(p for p in mesh.peers if p.span == "1-3" and p is not victim)
        victim.kill()
        harness.page.evaluate("() => window.t.goOn()")
        result = dict(harness.page.evaluate("() => window.t.running"))
    assert result["tokens"] == expected
    assert result["failovers"] == 1
    assert [(p, a, b) for p, a, b in result["routes"][-1] if (a, b) == (1, 3)] == [(spare.peer_id, 1, 3)]
    assert [peer for peer, _ in result["failures"]] == [victim_id]
    # Found dead by its missed pings (about 7 s), well before the 15 s request timeout.
    assert (
        "LinkClosedError" in result["failures"][0][1]
        and "missed 2 pings in a row" in result["failures"][0][1]
    )
    spare_traffic = next(t for t in result["traffic"] if t["peerId"] == spare.peer_id)
    assert spare_traffic["hiddenFrames"] >= 2  # the replay, then the remaining steps
    assert harness.take_errors() == []


# --- bad answers --------------------------------------------------------------------------------------

FAULT_STEP = 2  # the faulty peer spoils its answer to this FORWARD step (0 is the prefill)
REPLAY = 2  # FrameFlags.REPLAY


class FaultyPeer:
    """A real native peer for 1-3 in this process, announcing a huge throughput so clients pick it first,
    whose answer to FORWARD step FAULT_STEP is spoiled as ``fault`` says (the step is still computed)."""

    def __init__(self, signal_url: str, model: Path, data_dir: Path) -> None:
        self.signal_url = signal_url
        self.model = model
        self.data_dir = data_dir
        self.fault = ""
        self.spoiled = 0
        self.peer_id = ""
        self.stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run(self, ready: Any) -> None:
        config = PeerConfig(
            NodeConfig((self.signal_url,), data_dir=self.data_dir), self.model, span=Span(1, 3)
        )
        peer = await Peer.create(config)
        original = peer.server.handle

        async def handle(client: str, frame: Frame) -> Frame:
            answer = await original(client, frame)
            if frame.type is not FrameType.FORWARD or frame.step != FAULT_STEP or frame.flags & REPLAY:
                return answer
            self.spoiled += 1
            return await self.spoil(frame, answer)

        peer.server.handle = handle  # type: ignore[method-assign]
        await peer.node.signal.update(throughput_milli=10**12)
        self.peer_id = peer.node.peer_id
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        ready.set()
        try:
            await self.stopping.wait()
        finally:
            await peer.aclose()

    async def spoil(self, frame: Frame, answer: Frame) -> Frame:
        hidden = from_wire(answer.tensor("hidden_states_out"))
        session, step = frame.session, frame.step
        if self.fault == "shape":
            return Frame(
                FrameType.RESULT, session, step, tensors=(to_wire("hidden_states_out", hidden[..., :-1]),)
            )
        if self.fault == "int64":
            bad = to_wire("hidden_states_out", hidden.astype(np.int64))
            return Frame(FrameType.RESULT, session, step, tensors=(bad,))
        if self.fault == "nan":
            poisoned = hidden.copy()
            poisoned[0, -1, 5] = np.nan
            return Frame(FrameType.RESULT, session, step, tensors=(to_wire("hidden_states_out", poisoned),))
        if self.fault == "missing":
            return Frame(FrameType.RESULT, session, step, meta={"opened": True})
        if self.fault == "unknown_session":
            return error_frame(
                session, step, ErrorCode.UNKNOWN_SESSION, "session is not open here (a restart?)"
            )
        if self.fault == "other_session":
            other = bytes(b ^ 0xFF for b in session)
            return Frame(FrameType.RESULT, other, step, tensors=answer.tensors)
        if self.fault == "silent":
            await asyncio.sleep(3600)
        raise AssertionError(f"unknown fault {self.fault!r}")

    def stop(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)


@pytest.mark.timeout(600)
def test_js_client_routes_around_bad_answers(
    harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    _, expected = local_tokens(served_model)
    with running_mesh(tmp_path, served_model, ["0-1", "1-3", "3-4"], harness.page) as mesh:
        honest = mesh.peers[1]
        faulty = FaultyPeer(mesh.node.url, served_model, tmp_path / "faulty")
        ready = threading.Event()
        thread = LoopThread(faulty.run(ready))
        try:
            assert ready.wait(60), "the faulty peer did not start"
            setup_client(harness.page, "client-faults", mesh.node.url)
            cases = [
                (
                    "shape",
                    15000,
                    rf"BadAnswerError: peer {faulty.peer_id[:16]} returned hidden states \[1, 1, 63\] for \[1, 1, 64\]",
                ),
                ("int64", 15000, r"TensorError: .*hidden_states_out as int64, not float"),
                (
                    "nan",
                    15000,
                    r"NonFiniteError: tensor .hidden_states_out. \(float32, shape \[1, 1, 64\]\) holds nan",
                ),
                ("missing", 15000, r"MetadataError: RESULT frame has no tensor .hidden_states_out."),
                (
                    "unknown_session",
                    15000,
                    r"UnknownSessionError: peer answered unknown_session: session is not open here",
                ),
                (
                    "other_session",
                    3000,
                    rf"RequestTimeoutError: peer {faulty.peer_id[:16]} did not answer FORWARD within 3.0 s",
                ),
                (
                    "silent",
                    3000,
                    rf"RequestTimeoutError: peer {faulty.peer_id[:16]} did not answer FORWARD within 3.0 s",
                ),
            ]
            for fault, timeout_ms, message in cases:
                faulty.fault = fault
                spoiled = faulty.spoiled
                config = {**CLIENT_CONFIG, "requestTimeoutMs": timeout_ms}
                harness.page.evaluate(
                    "([urls, config]) => window.t.connect(urls, config)", [[mesh.node.url], config]
                )
                result = run_generation(harness.page)
                assert faulty.spoiled == spoiled + 1, fault
                assert result["tokens"] == expected, (fault, result["failures"])
                assert [p for p, a, b in result["routes"][0] if (a, b) == (1, 3)] == [faulty.peer_id], fault
                assert [p for p, a, b in result["routes"][-1] if (a, b) == (1, 3)] == [honest.peer_id], fault
                assert [peer for peer, _ in result["failures"]] == [faulty.peer_id], (
                    fault,
                    result["failures"],
                )
                assert re.search(message, result["failures"][0][1]), (fault, result["failures"][0][1])
                # The bad answer earns nothing: its receipt (which counts the spoiled step) is not signed.
                assert sorted(r["peerId"] for r in result["receipts"]) == sorted(
                    p.peer_id for p in mesh.peers
                )
        finally:
            faulty.stop()
            thread.result(timeout=30)
    assert harness.take_errors() == []


# --- the chat page --------------------------------------------------------------------------------------


# Before any page script: keep a copy of every data channel message this page sends.
RECORD_CHANNELS_JS = script("browser_client/record_channels")


def decode_channel_messages(sent: list[list[Any]]) -> tuple[list[Frame], bytes]:
    """Reassemble each channel's chunks and decode its frames; return them and every message's bytes."""
    frames: list[Frame] = []
    assemblers: dict[int, Reassembler] = {}
    raw = bytearray()
    for channel, label, is_text, data in sent:
        assert label == "ai4all" and not is_text
        chunk = base64.b64decode(data)
        raw += chunk
        message = assemblers.setdefault(channel, Reassembler()).feed(chunk, 0.0)
        if message is not None:
            frames.append(decode_frame(message))
    assert all(len(a) == 0 for a in assemblers.values()), "a frame was sent only in part"
    return frames, bytes(raw)


def test_chat_page_replies_through_the_mesh_and_sends_no_prompt(
    browser: Browser, tiny_llama_export: Path, tmp_path: Path
) -> None:
    max_tokens = 10
    expected = chat_reference(tiny_llama_export, max_tokens)
    # The prompt as UTF-8, UTF-16, JSON-escaped and URL-encoded, and its one distinctive word.
    needles = [
        CHAT_PROMPT.encode(),
        CHAT_PROMPT.encode("utf-16-le"),
        json.dumps(CHAT_PROMPT).encode(),
        urllib.parse.quote(CHAT_PROMPT).encode(),
        b"xylophone",
    ]
    node = Node("chat-node", tmp_path, model_dirs=[tiny_llama_export])
    peers: list[PeerProc] = []
    context = browser.new_context()
    try:
        node.wait()
        peers = [
            PeerProc(f"c{i}-{span}", tmp_path, tiny_llama_export, [node.url], span=span)
            for i, span in enumerate(["0-1", "1-3", "3-4"])
        ]
        for peer in peers:
            peer.wait()
        context.add_init_script(RECORD_CHANNELS_JS)
        page = context.new_page()
        errors: list[str] = []
        requests: list[Request] = []
        ws_sent: list[str | bytes] = []
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.on("console", lambda m: errors.append(f"console.error: {m.text}") if m.type == "error" else None)
        page.on("request", lambda request: requests.append(request))

        def on_websocket(ws: WebSocket) -> None:
            ws.on("framesent", lambda payload: ws_sent.append(payload))

        page.on("websocket", on_websocket)
        page.goto(node.http_url + "/chat")
        expect(page.get_by_test_id("status")).to_contain_text("is ready", timeout=120_000)
        # The privacy table's empty state is one line in one cell spanning the table, not a letter per line.
        empty = page.get_by_test_id("peers-empty")
        expect(empty).to_have_text("No peer has been sent anything yet.")
        layout = empty.evaluate(
            """(cell) => ({ height: cell.getBoundingClientRect().height, width: cell.getBoundingClientRect().width,
                 table: cell.closest('table').getBoundingClientRect().width,
                 line: parseFloat(getComputedStyle(cell).lineHeight) || 1.5 * parseFloat(getComputedStyle(cell).fontSize),
                 padding: parseFloat(getComputedStyle(cell).paddingTop) + parseFloat(getComputedStyle(cell).paddingBottom) })"""
        )
        assert layout["height"] - layout["padding"] < 1.6 * layout["line"], layout
        assert layout["width"] > 0.9 * layout["table"], layout
        page.get_by_test_id("temperature").fill("0")
        page.get_by_test_id("max-tokens").fill(str(max_tokens))
        page.get_by_test_id("prompt").fill(CHAT_PROMPT)
        page.get_by_test_id("send").click()
        reply = page.get_by_test_id("assistant-message").last
        expect(reply).to_have_attribute("data-finish", re.compile(r"\w+"), timeout=120_000)
        assert reply.get_attribute("data-finish") == "length", (reply.text_content(), errors)
        assert reply.text_content() == expected
        expect(page.get_by_test_id("user-message").last).to_have_text(CHAT_PROMPT)
        expect(page.get_by_test_id("prompt-sent")).to_contain_text("never sent")
        expect(page.get_by_test_id("receipts")).to_have_text("3", timeout=20_000)
        hidden_total = int(page.get_by_test_id("hidden-total").get_attribute("data-bytes") or "0")
        per_peer = {
            str(row.get_attribute("data-peer")): int(
                (row.get_by_test_id("peer-hidden-bytes").get_attribute("title") or "0").split()[0]
            )
            for row in page.get_by_test_id("peers").locator("tr").all()
        }
        sent = page.evaluate("() => window.__channelSent()")
        page.screenshot(path=ROOT / "tests" / "artifacts" / "browser" / "browser_chat.png", full_page=True)
        assert errors == []
    finally:
        context.close()
        for peer in peers:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()

    # HTTP: no URL and no body holds the prompt (the page GETs its modules, the model, the ledger rules).
    assert requests, "no request was logged"
    for request in requests:
        url, body = request.url.encode(), request.post_data_buffer or b""
        assert not any(needle in url or needle in body for needle in needles), request.url
    # Signaling: announce, lookups, SDP; never the prompt.
    sent_ws = [f.encode() if isinstance(f, str) else f for f in ws_sent]
    assert any(b'"lookup"' in f for f in sent_ws) and any(b'"signal"' in f for f in sent_ws)
    assert not any(needle in f for f in sent_ws for needle in needles)
    # Data channels: the raw messages hold no prompt; the decoded frames carry hidden states only.
    assert sent, "no data channel message was recorded"
    frames, raw = decode_channel_messages(sent)
    assert not any(needle in raw for needle in needles)
    forward_bytes = 0
    for frame in frames:
        assert not any(needle in json.dumps(frame.meta).encode() for needle in needles)
        if frame.type is FrameType.FORWARD:
            assert [t.name for t in frame.tensors] == ["hidden_states", "attention_mask", "position_ids"]
            assert frame.tensors[0].dtype == "float32" and frame.tensors[0].shape[-1] == 64
            forward_bytes += len(encode_frame(frame))
        else:
            assert frame.tensors == (), frame.type
    kinds = {frame.type for frame in frames}
    assert kinds <= {
        FrameType.FORWARD,
        FrameType.OPEN,
        FrameType.CLOSE,
        FrameType.GOSSIP,
        FrameType.PING,
        FrameType.PONG,
    }
    assert FrameType.FORWARD in kinds and FrameType.GOSSIP in kinds
    # The privacy panel counts exactly the hidden-state frames that went out.
    assert hidden_total == forward_bytes == sum(per_peer.values()) > 0
    assert set(per_peer) == {p.peer_id for p in peers}


# --- the offering side of the transport, between two BrowserTransports ---------------------------------

# Two transports in one page, signals handed across directly: `a` offers to `b`, which echoes frames.
# Then the refusals: no answer, an undeliverable offer, stray and repeated answers, an unusable answer,
# a bad peer id, and a link closed by the remote.
TRANSPORT_JS = script("browser_client/transport")


def test_browser_transport_offers_to_another_browser_and_refuses_bad_signals(harness: Harness) -> None:
    out = harness.page.evaluate(TRANSPORT_JS)
    assert out["state"] == "open" and out["initiator"] is True and out["remoteInitiator"] == [False]
    assert out["rtt"] > 0 and out["rttMs"] == out["rtt"]
    assert out["sentBytes"] > 400_000
    assert out["echo"] == {"type": 3, "step": 3, "meta": {"echo": {"hello": "world"}, "bytes": 400_000}}
    assert (
        out["stray"].startswith("SignalPayloadError: answer from peer")
        and "no connect() is waiting" in out["stray"]
    )
    assert "no connect() is waiting" in out["repeated"]
    assert out["badKind"].startswith("SignalPayloadError") and "not webrtc" in out["badKind"]
    assert out["badPeer"].startswith("TransportError: peer id")
    assert out["silent"].startswith("LinkTimeoutError") and "no answer came within 1500 ms" in out["silent"]
    assert 1400 <= out["silentMs"] < 4000 and out["silentLinks"] == 0
    assert out["refused"].startswith("TransportError") and "was not delivered: unknown_peer" in out["refused"]
    assert out["refusedLinks"] == 0
    assert out["unusable"].startswith("SignalPayloadError") and "is unusable" in out["unusable"]
    assert (
        out["unusableConnect"].startswith("LinkClosedError") and "unusable answer" in out["unusableConnect"]
    )
    assert out["brokenLinks"] == 0
    assert out["closedState"] == "closed"
    assert out["pingAfterClose"].startswith("LinkClosedError")
    assert out["signalErrors"] == []
    assert harness.take_errors() == []


# --- routing and sampling against Python -----------------------------------------------------------------

ROUTE_JS = script("browser_client/route")

SAMPLE_JS = script("browser_client/sample")


def python_probs(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution Python's ``generate.sample`` draws from."""
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return probs


def test_routing_and_sampling_match_python(harness: Harness) -> None:
    from python_peer.routing import BanList, Candidate, NoRouteError, choose_route

    rng = np.random.default_rng(3)
    cases = []
    for _ in range(200):
        layers = int(rng.integers(2, 9))
        candidates = []
        for i in range(int(rng.integers(0, 9))):
            a = int(rng.integers(0, layers))
            b = int(rng.integers(a + 1, layers + 1))
            throughput = float(rng.choice([0.0, 10.0, 100.0, 1000.0, float(rng.uniform(1, 5000))]))
            rtt = None if rng.random() < 0.4 else float(rng.uniform(0.0005, 0.2))
            candidates.append(Candidate(f"p{i}", a, b, throughput, int(rng.integers(0, 200)), rtt))
        banned = [c.peer_id for c in candidates if rng.random() < 0.2]
        cases.append((candidates, 0, layers, banned, int(rng.integers(1, 100))))
    expected: list[Any] = []
    for candidates, start, end, banned, tokens in cases:
        bans = BanList(60)
        for peer in banned:
            bans.ban(peer)
        try:
            route = choose_route(candidates, start, end, banned=bans, tokens_needed=tokens)
            expected.append([[c.peer_id, c.start, c.end] for c in route])
        except NoRouteError as exc:
            expected.append(f"NoRouteError: {exc}")
    js_cases = [
        {
            "candidates": [
                {
                    "peerId": c.peer_id,
                    "start": c.start,
                    "end": c.end,
                    "throughput": c.throughput,
                    "kvFreeTokens": c.kv_free_tokens,
                    "rttS": c.rtt_s,
                }
                for c in candidates
            ],
            "start": start,
            "end": end,
            "banned": banned,
            "tokens": tokens,
        }
        for candidates, start, end, banned, tokens in cases
    ]
    got = harness.page.evaluate(ROUTE_JS, js_cases)
    assert got == expected
    assert sum(isinstance(e, list) for e in expected) > 40 and sum(isinstance(e, str) for e in expected) > 40

    logits = np.random.default_rng(4).standard_normal(40).astype(np.float32) * 2
    logits[17] = logits.max() + 0.5
    draws = 20_000
    out = harness.page.evaluate(SAMPLE_JS, {"logits": logits.tolist(), "draws": draws})
    assert out["greedy"] == out["tiny"] == int(np.argmax(logits)) == 17
    for key, temperature, top_p in (("full", 0.8, 1.0), ("nucleus", 1.3, 0.6)):
        probs = python_probs(logits, temperature, top_p)
        freq = np.array(out[key]) / draws
        assert np.all(freq[probs == 0] == 0), key  # never outside Python's nucleus
        assert np.abs(freq - probs).max() < 0.02, (key, np.abs(freq - probs).max())
    assert out["sameSeed"] and out["otherSeed"]
    assert out["refusals"] == [
        "GenerationError: max_tokens must be at least 1, not 0",
        "GenerationError: temperature must be within 0..10, not 11",
        "GenerationError: top_p must be within (0, 1], not 0",
        "GenerationError: seed must be an integer in 0..2**32-1, not -1",
        "GenerationError: stop must be a list of non-empty strings",
    ]
    assert harness.take_errors() == []


# --- without a ledger: browser span servers ---------------------------------------------------------------

# A tab serving all of the tiny model (0-4) with a SpanServer that keeps no ledger.
SERVE_ALL_JS = script("browser_client/serve_all")


def test_js_client_without_ledger(
    browser: Browser, harness: Harness, served_model: Path, served_core: None, tmp_path: Path
) -> None:
    _, expected = local_tokens(served_model)
    with running_mesh(tmp_path, served_model, [], harness.page) as mesh:
        server_context = browser.new_context()
        try:
            server_page = server_context.new_page()
            server_page.goto(harness.page.url)
            server_id = str(
                server_page.evaluate(SERVE_ALL_JS, {"base": MODEL_PREFIX, "signalUrl": mesh.node.url})
            )
            setup_client(harness.page, "client-no-ledger", mesh.node.url, with_ledger=False)
            result = run_generation(harness.page)
            answered = server_page.evaluate("() => window.node.answered")
        finally:
            server_context.close()
        assert result["tokens"] == expected, result["failures"]
        assert result["routes"][0] == [[server_id, 0, 4]] and result["failures"] == []
        assert result["receipts"] == [] and result["own"] == []
        assert answered["errors"] == 0 and answered["frames"] == MAX_TOKENS + 2  # open, forwards, close
        [traffic] = result["traffic"]
        assert traffic["peerId"] == server_id and traffic["controlFrames"] == 2  # no ledger push, no receipt

        # A native peer keeps a ledger: it refuses a client that pushes none.
        native = PeerProc("native0-4", tmp_path, served_model, [mesh.node.url], span="0-4")
        mesh.peers.append(native)
        native.wait()
        harness.page.evaluate(
            "([urls, config]) => window.t.connect(urls, config)", [[mesh.node.url], CLIENT_CONFIG]
        )
        error = str(
            harness.page.evaluate(
                "(args) => window.t.generate(args).then(() => 'no error', (e) => `${e.name}: ${e.message}`)",
                {"messages": MESSAGES, "maxTokens": 2},
            )
        )
    assert error.startswith(
        f"MeshError: peer {native.peer_id[:16]} refused to serve: peer answered payment_required"
    ), error
    assert harness.take_errors() == []

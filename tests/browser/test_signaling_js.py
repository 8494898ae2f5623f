"""The browser SignalClient (``web/src/signaling/client.js``) in Chromium against real signaling nodes.

A JS peer and a Python ``SignalClient`` meet on an ``ai4all signal`` subprocess: the Python side finds
the JS announcement by lookup and each verifies the other's signals; the JS canonical signing bytes
match Python's byte for byte; a tampered announcement is refused; and after its node is SIGKILLed
the JS peer fails over to a second node and is found there. The Python client runs on its own event
loop in a background thread, so these tests stay synchronous, as Playwright's sync API needs.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from python_peer.core.canonical import ANNOUNCE_CONTEXT, SIGNAL_CONTEXT, ServedSpan, signing_bytes
from python_peer.identity import Identity
from python_peer.signal_client import IncomingSignal, SignalClient, SignalClientConfig
from tests.support.browser import Harness, script
from tests.support.procs import Node
from tests.support.waiting import wait_for

pytestmark = pytest.mark.browser

T = TypeVar("T")
MODEL = "smollm2-135m"
GOLDEN_BODY: dict[str, Any] = {
    "v": 1,
    "peer_id": "ab" * 32,
    "kind": "browser",
    "seq": 5,
    "issued_ms": 1_700_000_000_000,
    "expires_ms": 1_700_000_060_000,
    "serves": [{"model": MODEL, "start": 0, "end": 10}],
    "throughput_milli": 22_000,
    "kv_free_tokens": 4096,
    "signaling": ["ws://127.0.0.1:9000"],
}
GOLDEN_SIGNAL: dict[str, Any] = {
    "from": "ab" * 32,
    "to": "cd" * 32,
    "ts_ms": 1_700_000_000_000,
    "payload": {"type": "offer", "sdp": 'v=0\r\no=- "é" 1', "ice": [{"candidate": "a", "mline": 0}]},
}

# The module as `window.S`, plus a registry of JS clients by name.
SETUP_JS = script("signaling_js/setup")


class PyPeer:
    """A Python ``SignalClient`` on its own event loop in a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self, urls: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = SignalClientConfig(urls=tuple(urls), request_timeout_s=5.0)
        self.client: SignalClient = self.run(SignalClient.create(Identity.generate(), config))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signaling_js")


@pytest.fixture(scope="module")
def node(log_dir: Path) -> Iterator[Node]:
    started = Node("js-a", log_dir)
    started.wait()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def page(harness: Harness) -> Harness:
    assert harness.page.evaluate(SETUP_JS)
    return harness


def start_js(page: Harness, name: str, urls: list[str], span: tuple[int, int] = (0, 10)) -> str:
    """Start a JS client called ``name`` announcing ``span`` of MODEL; returns its peer id."""
    return str(
        page.page.evaluate(
            script("signaling_js/start_client"),
            [name, urls, span[0], span[1]],
        )
    )


def close_js(page: Harness, name: str) -> None:
    page.page.evaluate(script("signaling_js/close_client"), name)


def test_golden_signing_bytes(page: Harness) -> None:
    """(c) JS and Python sign exactly the same bytes for an announcement and a signal body."""
    got = page.page.evaluate(
        script("signaling_js/signing_bytes"),
        [GOLDEN_BODY, GOLDEN_SIGNAL, ANNOUNCE_CONTEXT, SIGNAL_CONTEXT],
    )
    assert got[0] == signing_bytes(ANNOUNCE_CONTEXT, GOLDEN_BODY).hex()
    assert got[1] == signing_bytes(SIGNAL_CONTEXT, GOLDEN_SIGNAL).hex()
    refused = page.page.evaluate(script("signaling_js/signing_floats"))
    assert refused == ["CanonicalError"] * 3
    page.note("golden signing bytes equal Python's")


def test_identity_export_import(page: Harness) -> None:
    """An exported identity (JWK and PKCS8) imports to the same peer id and signs verifiably."""
    ok = page.page.evaluate(script("signaling_js/identity_round_trip"))
    assert ok == [True, True]


def test_announce_lookup_and_signals(page: Harness, node: Node) -> None:
    """(a) Python finds the JS announcement; (b) signals flow both ways, each side verifying."""
    js_id = start_js(page, "a", [node.url], (2, 6))
    py = PyPeer([node.url])
    try:
        found = py.run(py.client.lookup(MODEL, 0, 8))
        match = [ann for ann in found if ann.peer_id == js_id]
        assert match and match[0].kind == "browser" and match[0].serves == (ServedSpan(MODEL, 2, 6),)

        # JS -> Python: Python's recv_signal verifies the signature.
        payload = {"type": "offer", "sdp": "v=0\r\né", "n": 1}
        page.page.evaluate(
            "async ([to, payload]) => { await clients.a.sendSignal(to, payload); }",
            [py.client.peer_id, payload],
        )

        async def recv_signal() -> IncomingSignal:
            async with asyncio.timeout(5):
                return await py.client.recv_signal()

        incoming = py.run(recv_signal())
        assert incoming.sender == js_id and incoming.payload == payload

        # Python -> JS: the JS client verifies before delivering.
        answer = {"type": "answer", "sdp": "v=0", "ice": [{"candidate": "c", "mline": 0}]}
        py.run(py.client.send_signal(js_id, answer))
        got = page.page.evaluate(script("signaling_js/wait_peers"))
        assert got["sender"] == py.client.peer_id and got["payload"] == answer

        # The JS client's own lookup verifies the Python announcement.
        peers = page.page.evaluate(
            "async () => (await clients.a.lookup('smollm2-135m', 0, 8)).map((a) => a.peer_id)"
        )
        assert js_id in peers
    finally:
        close_js(page, "a")
        py.close()
    page.note("JS announce found by Python; signals verified both ways")


def test_forged_announcement_refused(page: Harness, node: Node) -> None:
    """(d) A lookup result with a tampered or re-signed-by-another-key body is dropped; the real one kept."""
    result = page.page.evaluate(script("signaling_js/forged_announcement"))
    assert result == {"kept": [1], "error": "SignatureError"}
    page.note("forged announcements refused")


def test_failover_to_second_node(page: Harness, node: Node, log_dir: Path) -> None:
    """(e) SIGKILL the JS client's node; it reconnects to the second and is found there."""
    first = Node("js-b1", log_dir)
    second = Node("js-b2", log_dir)
    first.wait()
    second.wait()
    py: PyPeer | None = None
    try:
        js_id = start_js(page, "f", [first.url, second.url], (0, 3))
        assert page.page.evaluate("() => clients.f.url") == first.url
        first.stop(signal.SIGKILL)
        py = PyPeer([second.url])
        found: list[str] = []

        def listed() -> bool:
            found[:] = [ann.peer_id for ann in py.run(py.client.lookup(MODEL, 0, 3))]
            return js_id in found

        wait_for(
            listed,
            10,
            what="the JS peer showing up on the second node",
            interval=0.1,
            describe=lambda: f"state {page.page.evaluate('() => clients.f.state')}",
        )
        assert js_id in found, (
            f"JS peer not found on the second node; state {page.page.evaluate('() => clients.f.state')}"
        )
        assert page.page.evaluate("() => clients.f.url") == second.url
        close_js(page, "f")
    finally:
        if py is not None:
            py.close()
        first.stop(signal.SIGKILL)
        second.stop()
    assert page.take_errors() == []
    page.note("failover after SIGKILL")

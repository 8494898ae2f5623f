"""The contribute page of a signaling node, in Debian's Chromium, serving in a mesh of native peers.

One ``ai4all signal`` node serves the pages, the modules and the tiny Llama export (``--model-dir``);
native ``ai4all peer`` processes serve blocks 0-1 and 3-4 (gossiping their ledgers every 2 s). The page
at ``/`` must fetch nothing from signaling or the model before the visitor opts in; then it serves the
least-served span (1-3), a Python mesh client's greedy tokens equal ``LocalChain``'s through it, the
chat page of another browser is served (and pays) through it too, its receipts reach the native peers' ledgers by gossip, and after a reload its identity, balance and log
are still there (IndexedDB) while nothing starts by itself. Pausing takes it out of lookups while an
open session runs to its end; new clients go to a native spare; resuming serves again. A corrupt cached
shard is downloaded again; a shard altered on the server is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from python_peer.core.economics import network_rules
from python_peer.core.manifest import load_manifest
from python_peer.core.receipts import ReceiptBody
from python_peer.core.spans import Span
from python_peer.ledger_store import LEDGER_FILE, LedgerStore
from tests.support.browser import script
from tests.support.browser_client import CHAT_PROMPT, chat_reference
from tests.support.browser_node import failover_run, local_tokens, mesh_run
from tests.support.loop_thread import LoopThread
from tests.support.node_page import START_TIMEOUT_MS, Visit, start, visit, wait_serving
from tests.support.procs import Node, PeerProc
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

GOSSIP_PEER_ARGS = ["--gossip-interval", "2"]


@dataclass
class Mesh:
    node: Node
    natives: list[PeerProc]
    model: Path
    model_name: str
    tmp: Path


@pytest.fixture(scope="module")
def mesh(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("contribute")
    node = Node("node-a", tmp, model_dirs=[tiny_llama_export])
    natives: list[PeerProc] = []
    try:
        node.wait()
        natives = [
            PeerProc(f"p{span}", tmp, tiny_llama_export, [node.url], span=span, extra=GOSSIP_PEER_ARGS)
            for span in ("0-1", "3-4")
        ]
        for peer in natives:
            peer.wait()
        yield Mesh(node, natives, tiny_llama_export, load_manifest(tiny_llama_export).name, tmp)
    finally:
        for peer in natives:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


def announced(node: Node, peer_id: str) -> list[tuple[int, int]] | None:
    """The spans ``peer_id`` announces on ``node`` now, or None when the node has no entry for it."""
    for entry in node.directory()["entries"]:
        if entry["peer_id"] == peer_id:
            return [(s["start"], s["end"]) for s in entry["serves"]]
    return None


def wait_announced(node: Node, peer_id: str, want: list[tuple[int, int]] | None, timeout: float = 15) -> None:
    wait_for(
        lambda: announced(node, peer_id) == want,
        timeout,
        what=f"{peer_id[:8]} announcing {want}",
        interval=0.1,
        describe=lambda: f"it announces {announced(node, peer_id)}",
    )


def credits_of(text: str | None) -> int:
    """'1,234.567 credits' -> 1234567 units."""
    match = re.fullmatch(r"(-?)([\d,]+)\.(\d{3}) credits", text or "")
    assert match, f"not an amount of credits: {text!r}"
    units = int(match.group(2).replace(",", "")) * 1000 + int(match.group(3))
    return -units if match.group(1) else units


def wait_earned(seen: Visit, above: int = 0, timeout: float = 20) -> int:
    """The page's earnings once they exceed ``above`` units."""

    def earned() -> int:
        return credits_of(seen.testid("earned").text_content())

    def more() -> int | None:
        units = earned()
        return units if units > above else None

    return wait_for(
        more,
        timeout,
        what=f"earnings above {above} units",
        interval=0.2,
        describe=lambda: f"earned stays at {earned()} units",
    )


def served_receipts(peer: PeerProc, browser_id: str) -> tuple[set[str], int]:
    """The receipts the browser logged as a server, as ``peer``'s ledger holds them, and its earnings there."""
    with LedgerStore.open(peer.data_dir / LEDGER_FILE, rules=network_rules()) as store:
        entries = store.entries_from(browser_id, 1, 1000)
        ids = {
            e.body.receipt.id
            for e in entries
            if isinstance(e.body, ReceiptBody) and e.body.receipt.server == browser_id
        }
        account = store.report().accounts.get(browser_id)
        return ids, account.earned if account is not None else 0


def test_opt_in_serve_gossip_and_reload(browser: Browser, mesh: Mesh, artifacts_dir: Path) -> None:
    expected = local_tokens(mesh.model)
    with visit(browser, mesh.node.http_url + "/") as seen:
        expect(seen.testid("opt-in")).to_be_enabled()
        expect(seen.testid("opt-in-note")).to_have_text("")
        seen.page.wait_for_timeout(500)  # anything the page would fetch by itself has started by now
        assert seen.sockets == []
        before = seen.paths()
        # Only the page and JavaScript modules: no model file, no ledger rules, no WebAssembly started.
        assert not [
            p for p in before if not (p == "/" or (p.startswith("/web/") and p.endswith((".js", ".css"))))
        ]
        assert not [p for p in before if "pyodide" in p or "onnxruntime" in p], before

        start(seen)  # no span given: the least served, 1-3 (the natives serve 0-1 and 3-4)
        expect(seen.testid("state")).not_to_have_text("not started")
        browser_id = wait_serving(seen, mesh.model_name, "1-3")
        need = load_manifest(mesh.model).memory.need(Span(1, 3))  # why: within the page's 512 MiB budget
        expect(seen.testid("span-reason")).to_have_text(
            f"Why these blocks: the least-served blocks that fit: {need.describe()}; budget 512.0 MiB on WASM, "
            "your budget (WASM holds up to 3.25 GiB)."
        )
        assert seen.sockets == [mesh.node.url + "/"] or seen.sockets == [mesh.node.url], seen.sockets
        shards = {s.file: s for s in load_manifest(mesh.model).shards}
        fetched = {p.rsplit("/", 1)[-1] for p in seen.paths() if p.startswith("/models/")}
        assert fetched == {
            "manifest.json",
            next(f for f, s in shards.items() if s.kind == "blocks" and s.start == 1),
        }
        expect(seen.testid("progress-text")).to_contain_text("downloaded, sha256 checked")
        wait_announced(mesh.node, browser_id, [(1, 3)])

        tokens, route, _ = LoopThread(mesh_run(mesh.node, mesh.model)).result(timeout=180)
        assert tokens == expected
        assert route == [(mesh.natives[0].peer_id, 0, 1), (browser_id, 1, 3), (mesh.natives[1].peer_id, 3, 4)]
        earned = wait_earned(seen)
        assert int((seen.testid("tokens-served").text_content() or "0").replace(",", "")) >= len(expected)
        expect(seen.testid("ledger-log").locator("[data-kind=receipt]")).not_to_have_count(0)

        # A browser client (the chat page of another browser: its own identity and ledger) is served by
        # this tab too, and pays it: the tab's ledger checks its balance and co-signs the receipt.
        chat_context = browser.new_context()
        try:
            chat = chat_context.new_page()
            chat.goto(mesh.node.http_url + "/chat")
            expect(chat.get_by_test_id("status")).to_contain_text("is ready", timeout=START_TIMEOUT_MS)
            chat.get_by_test_id("temperature").fill("0")
            chat.get_by_test_id("max-tokens").fill("6")
            chat.get_by_test_id("prompt").fill(CHAT_PROMPT)
            chat.get_by_test_id("send").click()
            reply = chat.get_by_test_id("assistant-message").last
            expect(reply).to_have_attribute("data-finish", "length", timeout=120_000)
            assert reply.text_content() == chat_reference(mesh.model, 6)
            expect(chat.get_by_test_id("receipts")).to_have_text("3", timeout=20_000)
            assert chat.get_by_test_id("peers").locator(f"tr[data-peer='{browser_id}']").count() == 1
        finally:
            chat_context.close()
        earned = wait_earned(seen, above=earned)

        # Gossip carries the browser's receipts to both native peers, whose ledgers credit it.
        seen.page.screenshot(path=artifacts_dir / "contribute_serving.png", full_page=True)
        views: list[tuple[set[str], int]] = []

        def learned() -> bool:
            # Both natives credit the browser, and gossip has settled: they hold the same receipts (one may
            # hold the first receipt while the second is still on its way).
            views[:] = [served_receipts(peer, browser_id) for peer in mesh.natives]
            return all(ids and earned_there > 0 for ids, earned_there in views) and views[0][0] == views[1][0]

        wait_for(
            learned,
            60,
            what="the natives learning the browser's receipts",
            interval=0.5,
            describe=lambda: views,
        )
        own = views[0][0]
        assert views[1][0] == own

        balance = seen.testid("balance").text_content()
        log = seen.testid("ledger-log").all_text_contents()
        seen.clear()
        seen.page.reload()  # leaving the page says bye: the mesh stops routing to this tab at once
        expect(seen.testid("opt-in")).to_be_enabled()
        expect(seen.testid("opt-in-note")).to_contain_text("contributed from this browser before")
        expect(seen.testid("peer-id")).to_have_text(browser_id)
        expect(seen.testid("balance")).to_have_text(balance or "", timeout=START_TIMEOUT_MS)  # Pyodide loads
        expect(seen.testid("earned")).to_have_text(f"{earned // 1000:,}.{earned % 1000:03d} credits")
        expect(seen.testid("ledger-log")).to_have_text(log)
        expect(seen.testid("state")).to_have_text("not started")
        wait_announced(mesh.node, browser_id, None)
        seen.page.wait_for_timeout(500)
        assert seen.sockets == []  # nothing started by itself
        assert not [p for p in seen.paths() if p.startswith("/models/")]


def test_pause_finishes_open_sessions_then_resume(
    browser: Browser, mesh: Mesh, tmp_path: Path, artifacts_dir: Path
) -> None:
    expected = local_tokens(mesh.model)
    reached, go_on = threading.Event(), threading.Event()
    with visit(browser, mesh.node.http_url + "/") as seen:
        start(seen, span="1-3")
        browser_id = wait_serving(seen, mesh.model_name, "1-3")
        wait_announced(mesh.node, browser_id, [(1, 3)])
        # A second tab of this browser (same identity and ledger) may not run a second node.
        second = seen.context.new_page()
        second.goto(mesh.node.http_url + "/")
        expect(second.get_by_test_id("opt-in")).to_be_enabled()
        second.get_by_test_id("opt-in").click()
        expect(second.get_by_test_id("error")).to_contain_text(
            "another tab of this browser already contributes", timeout=START_TIMEOUT_MS
        )
        second.close()
        # Nor may the chat page announce the same identity at signaling while the node serves.
        chat = seen.context.new_page()
        chat.goto(mesh.node.http_url + "/chat")
        expect(chat.get_by_test_id("status")).to_contain_text(
            "another tab of this browser already contributes as this node or chats as it",
            timeout=START_TIMEOUT_MS,
        )
        chat.close()
        wait_announced(mesh.node, browser_id, [(1, 3)])
        run = LoopThread(failover_run(mesh.node, mesh.model, reached, go_on))
        spare: PeerProc | None = None
        try:
            assert reached.wait(120), "the generation never reached the pause"
            expect(seen.testid("sessions")).to_have_text("1")
            # The spare starts first: the pause's grace (30 s) must not run out while it loads.
            spare = PeerProc("spare1-3", tmp_path, mesh.model, [mesh.node.url], span="1-3").wait()
            seen.testid("pause").click()
            expect(seen.testid("state")).to_have_text("paused")
            expect(seen.testid("serving")).to_have_text(
                f"Pausing: 1 open session is finishing (blocks 1-3 of {mesh.model_name})."
            )
            wait_announced(mesh.node, browser_id, [])  # out of lookups while its session runs on
            seen.page.screenshot(path=artifacts_dir / "contribute_pausing.png", full_page=True)
            go_on.set()
            tokens, first_route, last_route, failovers = run.result(timeout=120)
            # The open session ran to its end on the paused tab, and was paid for.
            assert tokens == expected and failovers == 0
            assert [p for p, a, b in first_route if (a, b) == (1, 3)] == [browser_id]
            assert last_route == first_route
            expect(seen.testid("sessions")).to_have_text("0")
            expect(seen.testid("serving")).to_have_text(
                f"Paused (blocks 1-3 of {mesh.model_name} not announced)."
            )
            wait_earned(seen)

            # A new client goes to the spare; after Resume (and the spare gone) to the tab again.
            tokens, route, _ = LoopThread(mesh_run(mesh.node, mesh.model)).result(timeout=180)
            assert tokens == expected and route[1] == (spare.peer_id, 1, 3)
            expect(seen.testid("pause")).to_have_text("Resume")
            seen.testid("pause").click()
            expect(seen.testid("state")).to_have_text("serving")
            wait_announced(mesh.node, browser_id, [(1, 3)])
            spare.stop()
            wait_announced(mesh.node, spare.peer_id, None)
            tokens, route, _ = LoopThread(mesh_run(mesh.node, mesh.model)).result(timeout=180)
            assert tokens == expected and route[1] == (browser_id, 1, 3)
        finally:
            go_on.set()
            if spare is not None:
                spare.stop()


CORRUPT_JS = script("contribute/corrupt")


def test_shard_cache_and_altered_shards(
    browser: Browser, mesh: Mesh, tmp_path: Path, artifacts_dir: Path
) -> None:
    manifest = load_manifest(mesh.model)
    shard = next(s for s in manifest.blocks if (s.start, s.end) == (1, 3))
    shard_path = f"/models/{mesh.model_name}/{shard.file}"
    with visit(browser, mesh.node.http_url + "/") as seen:
        start(seen, span="1-3")
        wait_serving(seen, mesh.model_name, "1-3")
        assert shard_path in seen.paths()

        # Next time the shard comes from IndexedDB, with no request.
        seen.page.reload()
        seen.clear()
        start(seen, span="1-3")
        wait_serving(seen, mesh.model_name, "1-3")
        expect(seen.testid("progress-text")).to_contain_text("cache, sha256 checked")
        assert shard_path not in seen.paths()

        # A corrupt cached copy fails its sha256 and is downloaded again.
        seen.page.reload()
        assert seen.page.evaluate(CORRUPT_JS, {"sha": shard.sha256}) is True
        seen.clear()
        start(seen, span="1-3")
        wait_serving(seen, mesh.model_name, "1-3")
        expect(seen.testid("progress-text")).to_contain_text("downloaded, sha256 checked")
        assert shard_path in seen.paths()

    # A node whose copy of the shard was altered (same size, other bytes): the page refuses it.
    altered = tmp_path / "altered"
    shutil.copytree(mesh.model, altered)
    with (altered / shard.file).open("r+b") as file:
        file.seek(shard.bytes // 2)
        byte = file.read(1)
        file.seek(shard.bytes // 2)
        file.write(bytes([byte[0] ^ 0xFF]))
    bad = Node("node-bad", tmp_path, model_dirs=[altered])
    try:
        bad.wait()
        with visit(browser, bad.http_url + "/") as seen:
            start(seen, span="3-1")  # refused on the page, before anything is fetched
            expect(seen.testid("error")).to_have_text("Cannot start: blocks 3-1: END must be above START.")
            start(seen, budget_mb="-5")
            expect(seen.testid("error")).to_contain_text("must be a positive number of MiB")
            assert seen.sockets == []
            start(seen, span="1-2")  # not a run of the manifest's block shards
            expect(seen.testid("error")).to_contain_text(
                "span 1-2 is not a run of this model's block shards (0-1, 1-3, 3-4)", timeout=START_TIMEOUT_MS
            )
            start(seen, budget_mb="0.001")  # no shard fits: a clear error, nothing served
            expect(seen.testid("error")).to_contain_text(
                f"no span of {mesh.model_name} fits a memory budget", timeout=START_TIMEOUT_MS
            )
            expect(seen.testid("state")).to_have_text("error")
            start(seen, span="1-3", budget_mb="300")
            expect(seen.testid("error")).to_contain_text("sha256", timeout=START_TIMEOUT_MS)
            expect(seen.testid("error")).to_contain_text("altered or corrupted")
            expect(seen.testid("state")).to_have_text("error")
            expect(seen.testid("serving")).to_have_text("Not serving.")
            seen.page.screenshot(path=artifacts_dir / "contribute_altered_shard.png", full_page=True)
            assert all(not entry["serves"] for entry in bad.directory()["entries"]), bad.directory()
            seen.page.reload()  # the settings were kept
            expect(seen.testid("memory-budget")).to_have_value("300")
            expect(seen.testid("span-input")).to_have_value("1-3")
    finally:
        bad.stop()

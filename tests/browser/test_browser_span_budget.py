"""Chromium: a browser node without a span picks the least-served blocks that fit its memory budget.

The tab asks signaling who serves what (a native peer serves blocks 0-1 of the tiny model), takes the run
of block shards that fits its budget (weights plus KV room for ``PLAN_SESSIONS`` sessions), announces it,
keeps its KV caches within what the budget leaves, and says why in its status. A span over the budget is
refused with the same line as a native peer's; a budget beyond WASM's 4 GiB is cut to what WASM holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Error

from python_peer.core.manifest import load_manifest
from python_peer.core.memory_budget import WASM_MEMORY_BYTES, WASM_RUNTIME_BYTES
from python_peer.core.spans import Span
from tests.support.browser_node import browser_peer, wait_listed
from tests.support.procs import Node, PeerProc
from tests.support.static_server import WebServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
MIB = 2**20


@pytest.fixture
def served_model(served_model: Path, served_core: None) -> Path:
    """The tiny model with the core beside it: a browser node runs the ledger rules under Pyodide."""
    return served_model


@contextlib.contextmanager
def mesh_serving_first_block(tmp: Path, model: Path) -> Iterator[Node]:
    node = Node("node-a", tmp)
    peer: PeerProc | None = None
    try:
        node.wait()
        peer = PeerProc("p0-1", tmp, model, [node.url], span="0-1").wait()
        yield node
    finally:
        if peer is not None:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()


def status_of(page: object) -> dict[str, object]:
    return dict(page.evaluate("() => window.node.node.status()"))  # type: ignore[attr-defined]


def test_the_browser_picks_the_least_served_span_within_its_budget(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(served_model)  # shards 0-1, 1-3, 3-4; a native peer serves 0-1
    memory = manifest.memory
    budget = memory.need(Span(1, 3)).total  # 1-3 fits, 1-4 does not
    assert memory.need(Span(1, 4)).total > budget >= memory.need(Span(3, 4)).total
    with (
        mesh_serving_first_block(tmp_path, served_model) as node,
        browser_peer(browser, web_server, node.url, served_model, None, budget / MIB) as (page, peer_id),
    ):
        wait_listed(node, peer_id)
        status = status_of(page)
        kv_budget = page.evaluate("() => window.node.node.server.config.memoryBudgetBytes")
    assert status["span"] == {"start": 1, "end": 3}, status
    need = memory.need(Span(1, 3))
    assert kv_budget == int(budget / MIB * MIB) - need.weights and need.weights + kv_budget <= budget
    choice = str(status["choice"])
    assert choice.startswith("the least-served blocks that fit: " + need.describe()), choice
    assert "on WASM" in choice


def test_a_span_over_the_budget_is_refused_and_wasm_caps_a_large_budget(
    browser: Browser, web_server: WebServer, served_model: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(served_model)
    need = manifest.memory.need(Span(0, 4))
    small = (need.total - 4096) / MIB
    with mesh_serving_first_block(tmp_path, served_model) as node:
        refused = r"span 0-4 needs .* KV for 8 sessions of \d+ tokens\); budget is"
        with (
            pytest.raises(Error, match=refused),
            browser_peer(browser, web_server, node.url, served_model, (0, 4), small),
        ):
            pass
        with browser_peer(browser, web_server, node.url, served_model, None, 16 * 1024) as (page, _):
            status = status_of(page)
            kv_budget = page.evaluate("() => window.node.node.server.config.memoryBudgetBytes")
    wasm = WASM_MEMORY_BYTES - WASM_RUNTIME_BYTES
    assert status["span"] == {"start": 1, "end": 4}  # all that nobody serves, not the served 0-1
    weights = manifest.memory.need(Span(1, 4)).weights
    assert kv_budget == wasm - weights  # not 16 GiB: a WASM instance holds 4 GiB
    assert "WASM's limit" in str(status["choice"])

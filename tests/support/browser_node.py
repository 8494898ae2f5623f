"""Browser tabs that serve blocks in a mesh of native peers, and native clients that use them.

Shared by the browser tests of serving tabs, the contribute page and channel gossip: a tab running a
``BrowserNode`` on the harness page (``browser_peer``), and native generations through the mesh (run them
with ``LoopThread``: Playwright's sync API holds the test thread's event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from playwright.sync_api import Browser, Page

from python_peer.chain import LocalChain
from python_peer.core.economics import POW_BITS_ENV
from python_peer.core.manifest import load_manifest
from python_peer.generate import SamplingParams, agenerate, generate
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import NodeConfig, open_client
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser import script
from tests.support.procs import Node
from tests.support.static_server import CORE_PREFIX, HARNESS_PATH, MODEL_PREFIX, WebServer
from tests.support.waiting import wait_for

PROMPT = "What is the capital of France?"
MAX_TOKENS = 12
FAST = ClientConfig(request_timeout_s=15.0, connect_timeout_s=15.0, ban_seconds=60.0)


# Start a BrowserNode on the harness page; its transport counts what it answers. `window.node` keeps it.
SERVE_JS = script("browser_peer/serve")


def page_config(web_server: WebServer, signal_url: str, model: Path) -> dict[str, Any]:
    """The page configuration of docs/browser.md for the harness server and one signaling node."""
    return {
        "node_id": "test",
        "signal": [signal_url],
        "models": [
            {"name": load_manifest(model).name, "base": web_server.url_for(MODEL_PREFIX), "signed": False}
        ],
        "ledger": {"pow_bits": int(os.environ[POW_BITS_ENV])},
        "python_core": web_server.url_for(CORE_PREFIX),
        # the session's exports are unsigned local ones (AI4ALL_ALLOW_UNSIGNED=1), as a node would say
        "publishers": {"trusted": [], "allow_unsigned": True},
    }


@contextlib.contextmanager
def browser_peer(
    browser: Browser,
    web_server: WebServer,
    signal_url: str,
    model: Path,
    span: tuple[int, int] | None = (1, 3),
    memory_budget_mb: float = 512,
    options: dict[str, Any] | None = None,
) -> Iterator[tuple[Page, str]]:
    """A fresh browser context (empty IndexedDB) running a BrowserNode that serves ``span`` (None: the
    least-served blocks that fit ``memory_budget_mb``).

    ``options`` go to ``BrowserNode.start`` as they are (``gossipIntervalMs``, say).
    """
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    try:
        page.goto(web_server.url_for(HARNESS_PATH))
        args = {
            "config": page_config(web_server, signal_url, model),
            "span": None if span is None else {"start": span[0], "end": span[1]},
            "memoryBudgetMb": memory_budget_mb,
            "options": options or {},
        }
        peer_id = page.evaluate(SERVE_JS, args)
        yield page, str(peer_id)
        assert errors == []
    finally:
        if not page.is_closed():
            context.close()


def wait_listed(node: Node, peer_id: str, timeout: float = 10) -> None:
    """Until ``node``'s directory lists ``peer_id``."""
    wait_for(
        lambda: peer_id in json.dumps(node.directory()),
        timeout,
        what=f"{peer_id[:8]} showing up",
        interval=0.1,
        describe=node.directory,
    )


def local_tokens(model: Path) -> tuple[int, ...]:
    """The greedy tokens of the local chain for PROMPT: the reference."""
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS)).token_ids


async def mesh_run(
    node: Node, model: Path
) -> tuple[tuple[int, ...], list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """Generate through the mesh; return the tokens, the route before and the route after."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        route_before = await probe_route(client)
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        result = await agenerate(client, tokenizer, ids, SamplingParams(max_tokens=MAX_TOKENS))
        tokens = result.token_ids
        route_after = await probe_route(client)
        return tokens, route_before, route_after
    finally:
        await client.aclose()
        await mesh_node.aclose()


async def probe_route(client: MeshClient) -> list[tuple[str, int, int]]:
    """The route a fresh session takes now."""
    session = await client.open(1, 8)
    try:
        return [(peer, start, end) for peer, start, end in session.route]
    finally:
        await session.close()


async def failover_run(
    node: Node, model: Path, reached: threading.Event, go_on: threading.Event
) -> tuple[tuple[int, ...], list[tuple[str, int, int]], list[tuple[str, int, int]], int]:
    """Greedy tokens step by step; after the fourth, wait for the test to swap the 1-3 peer."""
    mesh_node, client = await open_client(NodeConfig(signal_urls=(node.url,)), model, FAST)
    try:
        tokenizer = ModelTokenizer(client.model_dir, client.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
        session = await client.open(1, len(ids) + MAX_TOKENS)
        first_route = list(session.route)
        logits = await session.step(np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        tokens: list[int] = []
        for step in range(MAX_TOKENS):
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if step == 3:
                reached.set()
                await asyncio.to_thread(go_on.wait, 120)
            if step < MAX_TOKENS - 1:
                logits = await session.step(np.array([[token]]), np.ones((1, 1), dtype=np.int64))
        last_route = list(session.route)
        await session.close()
        return tuple(tokens), first_route, last_route, session.failovers
    finally:
        await client.aclose()
        await mesh_node.aclose()

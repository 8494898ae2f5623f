"""The browser's mesh client on a harness page, driven from Python: set it up, connect, generate.

Shared by the browser client tests and the channel gossip tests: ``setup_client`` opens an identity,
a ledger and the tokenizer in the page (``window.t``), ``run_generation`` generates greedily through the
mesh and returns what the page saw. ``chat_reference`` is the local chain's reply to ``CHAT_PROMPT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from python_peer.chain import LocalChain
from python_peer.generate import SamplingParams, generate
from python_peer.tokenizer import ModelTokenizer
from tests.support.browser import script
from tests.support.static_server import CORE_PREFIX, MODEL_PREFIX

PROMPT = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 12
# Short timeouts so that failures are found quickly; the tiny model answers in milliseconds.
CLIENT_CONFIG = {
    "requestTimeoutMs": 15000,
    "connectTimeoutMs": 15000,
    "closeTimeoutMs": 5000,
    "banSeconds": 60,
}


# Identity and ledger from a fresh IndexedDB database, the tokenizer, and `window.t.generate`: greedy
# generation through `generate.js` over a MeshClient, pausing before step `pauseAt` until `goOn()`.
SETUP_JS = script("browser_client/setup")


def setup_client(page: Page, name: str, signal_url: str, *, with_ledger: bool = True) -> str:
    """``window.t`` on ``page`` with IndexedDB database ``name``, connected to ``signal_url``; its peer id."""
    args = {
        "base": MODEL_PREFIX,
        "coreUrl": CORE_PREFIX,
        "powBits": 4,
        "dbName": name,
        "withLedger": with_ledger,
    }
    peer_id = str(page.evaluate(SETUP_JS, args))
    page.evaluate("([urls, config]) => window.t.connect(urls, config)", [[signal_url], CLIENT_CONFIG])
    return peer_id


def run_generation(page: Page, pause_at: int = -1) -> dict[str, Any]:
    """Greedy MAX_TOKENS for MESSAGES through the mesh; what the page saw (tokens, routes, receipts...)."""
    args = {"messages": MESSAGES, "maxTokens": MAX_TOKENS, "pauseAt": pause_at}
    return dict(page.evaluate("(args) => window.t.generate(args)", args))


# A prompt no byte of which may leave the machine: the chat page tests look for it in what was sent.
CHAT_PROMPT = "Tell me the secret word: xylophone-quartz, naïve café ☕"


def chat_reference(model: Path, max_tokens: int) -> str:
    """The local chain's greedy reply to CHAT_PROMPT."""
    chain = LocalChain(model)
    tokenizer = ModelTokenizer(model, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": CHAT_PROMPT}]))
    return generate(chain, tokenizer, ids, SamplingParams(max_tokens=max_tokens)).text

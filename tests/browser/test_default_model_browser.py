"""End to end on the real default model in the browser, as a person would use ``ai4all up``.

A signaling node serves the pages and SmolLM2-135M-Instruct (exported as ``ai4all up`` exports it);
native peers serve blocks 0-10 and 20-30; a contributing tab opts in for 10-20 (a 142 MB shard,
downloaded, sha256-checked and run by onnxruntime-web); the chat page of another browser asks the
README's question through that chain, with the tokenizer, embedding and head in its own tab. The reply
is the model's own greedy answer, "The capital of France is Paris.", and it went through the tab.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.support.node_page import start, visit, wait_serving
from tests.support.procs import Node, PeerProc

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

MODEL = "SmolLM2-135M-Instruct"
LOAD_TIMEOUT_MS = 240_000  # Pyodide, the ledger and a 142 MB shard on a busy 2-core machine


def test_chat_page_answers_through_a_contributing_tab(
    browser: Browser, default_models_dir: Path, tmp_path: Path
) -> None:
    model = default_models_dir / MODEL
    node = Node("node-default", tmp_path, model_dirs=[model])
    natives: list[PeerProc] = []
    try:
        node.wait()
        natives = [PeerProc(f"p{span}", tmp_path, model, [node.url], span=span) for span in ("0-10", "20-30")]
        for peer in natives:
            peer.wait(timeout=120)
        with visit(browser, node.http_url + "/") as seen:
            start(seen, span="10-20")
            browser_id = wait_serving(seen, MODEL, "10-20")
            with visit(browser, node.http_url + "/chat") as chat:
                expect(chat.testid("status")).to_contain_text("is ready", timeout=LOAD_TIMEOUT_MS)
                chat.testid("temperature").fill("0")
                chat.testid("max-tokens").fill("24")
                chat.testid("prompt").fill("What is the capital of France?")
                chat.testid("send").click()
                reply = chat.testid("assistant-message").last
                expect(reply).to_have_attribute("data-finish", re.compile(r"\w+"), timeout=180_000)
                assert reply.text_content() == "The capital of France is Paris."
                assert reply.get_attribute("data-finish") == "stop"
                expect(chat.testid("reply-info")).to_contain_text(f"{browser_id[:8]}… (10-20)")
            expect(seen.testid("tokens-served")).not_to_have_text("0", timeout=20_000)
    finally:
        for peer in natives:
            with contextlib.suppress(AssertionError):
                peer.stop()
        with contextlib.suppress(AssertionError):
            node.stop()

"""Real tier: native peers sized by ``--memory-budget`` split a model between them without ``--span``.

Each peer's budget holds about half of the tiny Llama (shards 0-1, 1-3, 3-4) with KV room for
``PLAN_SESSIONS`` sessions; the first takes the first half, the second the part nobody serves, and a chat
through them prints what the local chain prints. A peer whose budget holds no shard, or an explicit span
over its budget, stops at once with one line saying what it needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from python_peer.chain import LocalChain
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.generate import SamplingParams, generate
from python_peer.tokenizer import ModelTokenizer
from tests.support.mesh import PROMPTS
from tests.support.procs import budget_mesh, run_cli

pytestmark = pytest.mark.timeout(240)


def test_two_peers_with_half_a_model_each_split_it_and_serve_a_chat(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    model = tiny_llama_export
    manifest = load_manifest(model)
    memory = manifest.memory
    stated = manifest.raw["memory"]  # written by the exporter: each shard's bytes over its blocks
    for shard in manifest.blocks:
        assert sum(stated["block_weight_bytes"][shard.start : shard.end]) == shard.bytes
    assert stated["kv_bytes_per_token"] == [2 * 2 * 16 * 4] * 4  # K and V, 2 KV heads x 16 dims, float32
    budget = memory.need(Span(0, 3)).total  # shards 0-1 and 1-3, not the whole model
    assert memory.need(Span(0, 4)).total > budget
    # One after the other, each with half the model's budget: the second sees what the first serves.
    with budget_mesh(model, tmp_path, budget, 2, ready_timeout=120) as mesh:
        assert mesh.spans() == ["0-3", "3-4"], [p.tail() for p in mesh.peers]
        assert f"budget is {budget / 2**20:.1f} MiB" in mesh.peers[0].log.read_text(encoding="utf-8")

        chain = LocalChain(model)
        tokenizer = ModelTokenizer(model, chain.manifest)
        ids = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPTS[0]}]))
        expected = generate(chain, tokenizer, ids, SamplingParams(max_tokens=8)).text
        args = ["chat", PROMPTS[0], "--model", str(model), "--signal", mesh.node.url, "--max-tokens", "8"]
        result = run_cli([*args, "--data-dir", str(tmp_path / "client")], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_a_peer_whose_budget_holds_no_shard_names_the_smallest_and_stops(
    tmp_path: Path, tiny_llama_export: Path
) -> None:
    memory = load_manifest(tiny_llama_export).memory
    smallest = min((memory.need(Span(a, b)) for a, b in ((0, 1), (1, 3), (3, 4))), key=lambda n: n.total)
    with budget_mesh(tiny_llama_export, tmp_path, smallest.total, 0) as mesh:  # a node, no peer yet
        base = ["peer", "--signal", mesh.node.url, "--model", str(tiny_llama_export)]
        result = run_cli([*base, "--memory-budget", str(smallest.total - 1)], timeout=120)
        assert result.returncode == 1
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("ai4all peer: error: no span of ") and "not even its smallest shard: " in line
        assert smallest.describe() in line and line.endswith("raise the budget or export smaller spans")

        result = run_cli([*base, "--span", "0-4", "--memory-budget", "1MiB"], timeout=120)
        assert result.returncode == 1
        need = memory.need(Span(0, 4))
        assert (
            result.stderr.strip().splitlines()[-1]
            == f"ai4all peer: error: {need.describe()}; budget is 1.0 MiB"
        )

"""Spans sized to a peer's memory budget (``python_peer/core/memory_budget.py``, ``block_selection.py``).

The rule on the golden vectors shared with the browser, figures worked out by hand, manifests whose
``memory`` figures lie (refused at load), and ``ai4all peer`` refusing a span over its budget in one
line before it connects anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from python_peer import cli
from python_peer.block_selection import checked_span, least_served_choice
from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.errors import ManifestError, SpanError
from python_peer.core.manifest import MANIFEST_FILE, Manifest, load_manifest
from python_peer.core.memory_budget import (
    PLAN_SESSIONS,
    BlockFigures,
    available_ram,
    choose_span,
    parse_size,
)
from python_peer.core.spans import Span
from python_peer.errors import PeerError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
MIB, GIB = 2**20, 2**30


def vectors() -> dict[str, Any]:
    return json.loads((VECTORS / "span_choice.json").read_text(encoding="utf-8"))


def figures(data: dict[str, Any]) -> BlockFigures:
    config = data["model"]["config"]
    shards = [(s["start"], s["end"], s["bytes"]) for s in data["shards"]]
    return BlockFigures.from_manifest(data, config, shards, config["num_layers"])


def test_vectors_on_disk_are_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "span_choice.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = VECTORS / "generate_span_choice.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, cwd=ROOT, env=env)
    assert out.read_text(encoding="utf-8") == (VECTORS / "span_choice.json").read_text(encoding="utf-8")


def test_the_vectors_hold_the_cases_worked_out_by_hand() -> None:
    """Not only what the code wrote: the figures of the 12-block model, checked here by arithmetic."""
    v = vectors()
    first = v["choose"][0]
    # 12 blocks of 100 MiB; KV 2 x 4 heads x 64 x 4 B = 2048 B per token per block, 8 x 2048 tokens
    assert first["expect"]["weights"] == 1200 * MIB
    assert first["expect"]["kv"] == 12 * 2048 * PLAN_SESSIONS * 2048 == 384 * MIB
    assert first["expect"]["span"] == {"start": 0, "end": 12}
    picked = [c["expect"]["span"] for c in v["choose"][1:4]]
    assert picked == [{"start": 0, "end": 6}, {"start": 6, "end": 12}, {"start": 3, "end": 6}]
    assert v["check"][0]["error"] == (
        "span 0-20 needs 3.1 GiB (2.6 GiB weights + 0.5 GiB KV for 8 sessions of 2048 tokens); budget is 2.0 GiB"
    )
    shortest = next(c for c in v["choose"] if c["manifest"]["model"]["name"] == "uneven-7")
    assert shortest["expect"]["context"] == 256  # the model's own context is shorter than 2048


def test_choice_and_refusals_follow_the_vectors() -> None:
    v = vectors()
    for case in v["choose"]:
        data = case["manifest"]
        spans = [Span(s["start"], s["end"]) for s in data["shards"]]
        if "error" in case:
            with pytest.raises(SpanError) as caught:
                choose_span(spans, case["counts"], figures(data), case["budget"], data["model"]["name"])
            assert str(caught.value) == case["error"]
            assert "\n" not in case["error"] and "not even its smallest shard" in case["error"]
        else:
            need = choose_span(spans, case["counts"], figures(data), case["budget"], data["model"]["name"])
            assert need.total <= case["budget"]
            assert (need.span.start, need.span.end, need.total) == (
                case["expect"]["span"]["start"],
                case["expect"]["span"]["end"],
                case["expect"]["total"],
            )
    for case in v["figures"]:
        if "error" in case:
            with pytest.raises(ManifestError, match="manifest"):
                figures(case["manifest"])


def test_a_bigger_budget_never_chooses_a_shorter_span_on_an_idle_mesh() -> None:
    data = vectors()["choose"][0]["manifest"]
    spans = [Span(s["start"], s["end"]) for s in data["shards"]]
    lengths = []
    for budget in range(300 * MIB, 2 * GIB, 50 * MIB):
        try:
            lengths.append(len(choose_span(spans, [0] * 4, figures(data), budget, "m").span))
        except SpanError:
            lengths.append(0)
    assert lengths == sorted(lengths) and lengths[0] == 0 and lengths[-1] == 12


def test_sizes_parse_and_bad_ones_are_refused() -> None:
    assert parse_size("2GiB") == 2 * GIB
    assert parse_size("1.5 g") == int(1.5 * GIB)
    assert parse_size("800MB") == 800 * 10**6
    assert parse_size("4096") == 4096
    for bad in ("", "two GiB", "-1GiB", "0", "1 PB", "1e9"):
        with pytest.raises(SpanError, match="memory size"):
            parse_size(bad)
    assert available_ram("MemTotal: 100 kB\nMemAvailable:    2048 kB\n") == 2048 * 1024
    with pytest.raises(SpanError, match="MemAvailable"):
        available_ram("MemTotal: 100 kB\n")


def announcement(peer: str, model: str, start: int, end: int) -> Announcement:
    return Announcement(peer * 64, "native", 1, 1000, 61000, (ServedSpan(model, start, end),))


def test_two_peers_with_half_a_model_each_split_it(toy: Path) -> None:
    """The toy model (shards 0-1, 1-3, 3-4): a budget that holds about half goes to the part nobody serves."""
    manifest = load_manifest(toy)
    memory = manifest.memory
    half = max(memory.need(Span(0, 3)).total, memory.need(Span(1, 4)).total)
    assert half < memory.need(Span(0, 4)).total
    first = least_served_choice(manifest, [], half)
    assert first.span == Span(0, 3)
    second = least_served_choice(manifest, [announcement("a", manifest.name, 0, 3)], half)
    assert second.span == Span(3, 4)  # the unserved shard, without the served 1-3: 0-3 then 3-4 chain
    # a budget for everything still takes only the least-served shards
    assert least_served_choice(manifest, [announcement("a", manifest.name, 0, 3)], 2**40).span == Span(3, 4)
    with pytest.raises(PeerError, match="not even its smallest shard"):
        least_served_choice(manifest, [], min(memory.need(s.span).total for s in manifest.blocks) - 1)


def test_an_explicit_span_over_the_budget_says_what_it_needs(toy: Path) -> None:
    manifest = load_manifest(toy)
    need = manifest.memory.need(Span(0, 4))
    assert checked_span(manifest, Span(0, 4), need.total) == need
    with pytest.raises(PeerError) as caught:
        checked_span(manifest, Span(0, 4), need.total - 1)
    assert str(caught.value).startswith(f"span 0-4 needs {need.total / MIB:.1f} MiB (")
    assert str(caught.value).endswith(f"budget is {(need.total - 1) / MIB:.1f} MiB")
    with pytest.raises(PeerError, match="runs past the last layer"):
        checked_span(manifest, Span(2, 9), 10 * GIB)


def _tampered(toy: Path, tmp_path: Path, memory: Any) -> Path:
    """A copy of the toy model whose manifest states ``memory``, as a publisher could write it."""
    out = tmp_path / "model"
    shutil.copytree(toy, out)
    data = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["memory"] = memory
    (out / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    return out


def test_a_manifest_that_understates_its_blocks_is_refused_at_load(toy: Path, tmp_path: Path) -> None:
    """The attack: a publisher states tiny weights so that peers take spans that do not fit them."""
    manifest = load_manifest(toy)
    layers = manifest.num_layers
    kv = manifest.memory.kv_bytes_per_token[0]
    lies = {
        "understated weights": (
            {"block_weight_bytes": [1] * layers, "kv_bytes_per_token": [kv] * layers},
            "less than",
        ),
        "understated KV": (
            {"block_weight_bytes": list(manifest.memory.weight_bytes), "kv_bytes_per_token": [1] * layers},
            "does not match its config",
        ),
        "one block short": (
            {"block_weight_bytes": [10**9] * (layers - 1), "kv_bytes_per_token": [kv] * layers},
            "one per block",
        ),
        "a string": ("lots", "must be an object"),
    }
    for name, (memory, words) in lies.items():
        model = _tampered(toy, tmp_path / name.replace(" ", "_"), memory)
        with pytest.raises(ManifestError, match=words):
            load_manifest(model)


def test_a_manifest_with_honest_figures_loads_and_uses_them(toy: Path, tmp_path: Path) -> None:
    manifest = load_manifest(toy)
    layers = manifest.num_layers
    kv = manifest.memory.kv_bytes_per_token[0]
    model = _tampered(
        toy, tmp_path, {"block_weight_bytes": [50 * MIB] * layers, "kv_bytes_per_token": [kv] * layers}
    )
    stated = load_manifest(model)
    assert stated.memory.need(Span(0, 4)).weights == 4 * 50 * MIB
    assert Manifest.from_dict(stated.raw).memory == stated.memory


def test_ai4all_peer_refuses_a_span_over_its_budget_in_one_line(
    toy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any connection: the signaling URL points nowhere and is never tried."""
    argv = [
        "peer",
        "--signal",
        "ws://127.0.0.1:9",
        "--model",
        str(toy),
        "--span",
        "0-4",
        "--memory-budget",
        "64KiB",
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ai4all peer: error: span 0-4 needs ") and err.endswith("; budget is 0.1 MiB")
    assert "\n" not in err and "weights + " in err and f"KV for {PLAN_SESSIONS} sessions of" in err
    assert cli.main([*argv[:-1], "lots"]) == 1
    assert "--memory-budget: memory size 'lots'" in capsys.readouterr().err

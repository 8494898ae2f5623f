"""``ai4all calibrate`` on the tiny Llama's export (spans 0-1, 1-3, 3-4), through the command line only.

The figures are checked against the manifest's own ``memory`` object and the rule of docs/mesh.md
(weights plus KV room for 8 sessions of the model's context, 256 tokens here), computed here from the
JSON, not through the code under test. Bad input: a directory that is not an export, a span outside the
model, a budget that fits nothing, a budget that is not a size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.procs import run_cli

SESSIONS = 8


def figures(model: Path) -> tuple[list[int], list[int], int]:
    manifest = json.loads((model / "manifest.json").read_text())
    memory = manifest["memory"]
    context = min(2048, manifest["model"]["config"]["max_position_embeddings"])
    return memory["block_weight_bytes"], memory["kv_bytes_per_token"], context


def name(model: Path) -> str:
    return str(json.loads((model / "manifest.json").read_text())["model"]["name"])


def need(model: Path, start: int, end: int) -> int:
    weights, kv, context = figures(model)
    return sum(weights[start:end]) + sum(kv[start:end]) * SESSIONS * context


def calibrate(model: Path, *args: str) -> tuple[int, dict | None, str, str]:
    result = run_cli(["calibrate", "--model", str(model), *args], timeout=120)
    body = None
    if "--json" in args and result.stdout.strip():
        body = json.loads(result.stdout)
    return result.returncode, body, result.stdout, result.stderr


def test_lists_every_shard_run_with_what_it_needs(tiny_llama_export: Path) -> None:
    budget = need(tiny_llama_export, 1, 3)  # 0-1 and 3-4 fit, 1-3 just fits, nothing wider
    status, body, _, stderr = calibrate(tiny_llama_export, "--memory-budget", str(budget), "--json")
    assert status == 0, stderr
    assert body is not None
    assert body["budget_bytes"] == budget and body["sessions"] == SESSIONS and body["context"] == 256
    spans = {row["span"]: row for row in body["spans"]}
    assert set(spans) == {"0-1", "1-3", "3-4", "0-3", "1-4", "0-4"}  # every run of the three shards
    for text, row in spans.items():
        start, end = map(int, text.split("-"))
        assert row["total_bytes"] == need(tiny_llama_export, start, end)
        assert row["fits"] == (row["total_bytes"] <= budget)
    assert {s for s, row in spans.items() if row["fits"]} == {"0-1", "1-3", "3-4"}
    # cut anywhere, two blocks fit (1-3's need), three do not
    assert body["most_blocks"] == 2


def test_human_output_names_the_budget_and_the_fitting_spans(tiny_llama_export: Path) -> None:
    budget = need(tiny_llama_export, 0, 4)
    status, _, stdout, stderr = calibrate(tiny_llama_export, "--memory-budget", str(budget))
    assert status == 0, stderr
    assert f"{name(tiny_llama_export)} (fp32, 4 blocks)" in stdout and "8 sessions of 256 tokens" in stdout
    assert "Up to 4 consecutive blocks" in stdout
    for span in ("0-4", "0-3", "1-4", "1-3", "0-1", "3-4"):
        assert f"\n{span} " in stdout


def test_default_budget_is_half_of_available_memory(tiny_llama_export: Path) -> None:
    status, body, _, stderr = calibrate(tiny_llama_export, "--json")
    assert status == 0, stderr
    assert body is not None and body["budget_source"] == "50% of MemAvailable"
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    assert 0.3 * available < body["budget_bytes"] < 0.7 * available  # memory moves while the test runs


def test_one_span_checked(tiny_llama_export: Path) -> None:
    budget = need(tiny_llama_export, 1, 3)
    status, body, _, stderr = calibrate(
        tiny_llama_export, "--span", "1-3", "--memory-budget", str(budget), "--json"
    )
    assert status == 0, stderr
    assert body is not None and [row["span"] for row in body["spans"]] == ["1-3"] and body["spans"][0]["fits"]
    # a span over the budget: the figures, then one line saying what it needs, and status 1
    status, body, _, stderr = calibrate(
        tiny_llama_export, "--span", "0-4", "--memory-budget", str(budget), "--json"
    )
    assert status == 1 and body is not None and not body["spans"][0]["fits"]
    assert "span 0-4 needs" in stderr and "budget is" in stderr
    # cut inside a shard: the figures, and a note that this export cannot serve it
    status, body, _, _ = calibrate(
        tiny_llama_export, "--span", "1-2", "--memory-budget", str(budget), "--json"
    )
    assert status == 0 and body is not None and body["spans"][0]["loadable"] is False


@pytest.mark.parametrize("span", ["3-7", "4-5", "2-1", "x"])
def test_span_outside_the_model_is_refused(tiny_llama_export: Path, span: str) -> None:
    status, _, stdout, stderr = calibrate(tiny_llama_export, "--span", span)
    assert status == 1 and stdout == ""
    assert stderr.startswith("ai4all calibrate: error: --span") and len(stderr.strip().splitlines()) == 1


def test_budget_that_fits_nothing(tiny_llama_export: Path) -> None:
    prefix = f"ai4all calibrate: error: no span of {name(tiny_llama_export)} fits a memory budget of"
    smallest_shard = min(
        need(tiny_llama_export, 0, 1), need(tiny_llama_export, 1, 3), need(tiny_llama_export, 3, 4)
    )
    smallest_block = min(need(tiny_llama_export, i, i + 1) for i in range(4))
    # the middle shard's two blocks share its file's bytes: one of them alone needs less than any shard
    assert smallest_block < smallest_shard
    status, body, _, stderr = calibrate(tiny_llama_export, "--memory-budget", str(smallest_block), "--json")
    assert status == 1
    assert body is not None and not any(row["fits"] for row in body["spans"]) and body["most_blocks"] == 1
    line = stderr.strip().splitlines()[-1]
    assert (
        line.startswith(prefix) and "1 block would fit in a span of their own: export smaller spans" in line
    )
    status, body, _, stderr = calibrate(
        tiny_llama_export, "--memory-budget", str(smallest_block - 1), "--json"
    )
    assert status == 1 and body is not None and body["most_blocks"] == 0
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(prefix) and line.endswith("not even one block fits")


def test_not_an_export(tmp_path: Path, tiny_llama_export: Path) -> None:
    status, _, _, stderr = calibrate(tmp_path)
    assert status == 1 and "is not an exported model" in stderr
    (tmp_path / "manifest.json").write_text('{"format_version": 2, "model": []}')
    status, _, _, stderr = calibrate(tmp_path)
    assert status == 1 and "is not an exported model" in stderr and "Traceback" not in stderr
    for bad in ("0", "-1GiB", "lots", "1 XB"):
        status, _, _, stderr = calibrate(tiny_llama_export, f"--memory-budget={bad}")
        assert status == 1 and "--memory-budget" in stderr and "Traceback" not in stderr

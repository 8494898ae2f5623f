"""``ai4all benchmark`` on the tiny Llama's export (spans 0-1, 1-3, 3-4), and what a peer makes of the
saved figure (docs/operating.md, "Benchmark").

The command is run as a user runs it; the saved file is then read and edited as JSON, as an operator (or
a stray editor) would, and handed to the peer's side (``benchmark.announced_throughput``) over a real
``SpanServer``: a matching record is announced, a stale, mismatched or unreadable one is ignored with a
log line and the peer measures instead. Bad input: a directory that is not an export, a span outside the
model or not a run of its shards, counts out of range, a shard altered after export, a corrupted file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from python_peer.benchmark import BENCHMARK_FILE, announced_throughput
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.server import ServerConfig, SpanServer
from tests.support.procs import run_cli

DAY = 86400.0
THREADS = min(4, os.cpu_count() or 1)  # a peer's onnxruntime threads by default


def benchmark(model: Path, data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(["benchmark", "--model", str(model), "--data-dir", str(data_dir), *args], timeout=300)
    return result.returncode, result.stdout, result.stderr


def saved(data_dir: Path) -> dict:
    return dict(json.loads((data_dir / BENCHMARK_FILE).read_text()))


def write(data_dir: Path, body: object) -> None:
    (data_dir / BENCHMARK_FILE).write_text(json.dumps(body))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path) -> dict:
    """The file after benchmarking spans 1-3 and 0-4 (``--json`` of the last one checked too)."""
    data_dir = tmp_path_factory.mktemp("bench")
    status, _, stderr = benchmark(tiny_llama_export, data_dir, "--span", "1-3", "--steps", "8")
    assert status == 0, stderr
    status, stdout, stderr = benchmark(tiny_llama_export, data_dir, "--span", "0-4", "--steps", "8", "--json")
    assert status == 0, stderr
    record = json.loads(stdout)
    body = saved(data_dir)
    assert body["records"][-1] == record
    return body


def test_saves_a_record_tied_to_what_it_measured(measured: dict, tiny_llama_export: Path) -> None:
    manifest = json.loads((tiny_llama_export / "manifest.json").read_text())
    assert measured["format"] == "ai4all/benchmarks/v1"
    by_span = {r["span"]: r for r in measured["records"]}
    assert set(by_span) == {"1-3", "0-4"}
    for record in by_span.values():
        assert record["model"] == manifest["model"]["name"] and record["dtype"] == "fp32"
        assert record["steps"] == 8 and record["warmup"] == 4 and record["context"] == 128
        assert record["threads"] == THREADS
        assert record["block_tokens_per_s"] > 0 and record["step_ms_median"] > 0
        assert abs(record["measured_at"] - time.time()) < 600
        assert record["machine"]["onnxruntime"] and record["machine"]["cpus"] >= 1
    # 0-4 runs twice the blocks of 1-3 per token: the figure is in block-tokens, so it is not halved
    assert by_span["0-4"]["files"] != by_span["1-3"]["files"]


def test_human_summary_and_default_span(tiny_llama_export: Path, tmp_path: Path) -> None:
    status, stdout, stderr = benchmark(tiny_llama_export, tmp_path, "--steps", "4", "--memory-budget", "1GiB")
    assert status == 0, stderr
    # without --span: the longest run that fits the budget, as a peer takes on an idle mesh
    assert (
        f" blocks 0-4 (fp32, {THREADS} thread{'s' if THREADS > 1 else ''}): " in stdout
        and "block-tokens/s" in stdout
    )
    assert f"saved in {tmp_path / BENCHMARK_FILE}" in stdout
    status, stdout, _ = benchmark(
        tiny_llama_export, tmp_path / "other", "--span", "3-4", "--steps", "2", "--no-save"
    )
    assert status == 0 and "not saved" in stdout and not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--span", "3-7"], "--span 3-7 runs past the last layer"),
        (["--span", "1-2"], "--span 1-2 is not a run of"),
        (["--span", "2-1"], "--span: span 2-1 is empty"),
        (["--threads", "0"], "--threads 0 must be within"),
        (["--steps", "0"], "--steps 0 must be within"),
        (["--steps", "300"], "over the model's context of 256"),
        (["--memory-budget", "1KiB"], "(or give --span)"),
    ],
)
def test_bad_input_is_one_line(tiny_llama_export: Path, tmp_path: Path, args: list[str], words: str) -> None:
    status, stdout, stderr = benchmark(tiny_llama_export, tmp_path, *args)
    assert status == 1 and stdout == "" and words in stderr
    assert stderr.strip().splitlines()[-1].startswith("ai4all benchmark: error: ")
    assert not (tmp_path / BENCHMARK_FILE).exists()


def test_not_an_export_and_an_altered_shard(tiny_llama_export: Path, tmp_path: Path) -> None:
    status, _, stderr = benchmark(tmp_path, tmp_path / "data")
    assert status == 1 and "is not an exported model" in stderr
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama_export, copy)
    shard = copy / "blocks_1-3.onnx"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    status, _, stderr = benchmark(copy, tmp_path / "data", "--span", "1-3")
    assert status == 1 and "blocks_1-3.onnx has sha256" in stderr and "altered" in stderr
    assert not (tmp_path / "data" / BENCHMARK_FILE).exists()


def test_a_corrupted_file_is_kept_aside_and_replaced(tiny_llama_export: Path, tmp_path: Path) -> None:
    (tmp_path / BENCHMARK_FILE).write_text('{"format": "ai4all/benchmarks/v1", "records": [')
    status, _, stderr = benchmark(tiny_llama_export, tmp_path, "--span", "3-4", "--steps", "2")
    assert status == 0, stderr
    assert "was unreadable; kept it as" in stderr
    assert (tmp_path / (BENCHMARK_FILE + ".corrupt")).read_text().endswith('"records": [')
    assert [r["span"] for r in saved(tmp_path)["records"]] == ["3-4"]


# --- what a peer announces ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_llama_export: Path) -> SpanServer:
    manifest = load_manifest(tiny_llama_export)
    return SpanServer(tiny_llama_export, manifest, Span(1, 3), ServerConfig())


def announce(data_dir: Path, model: Path, server: SpanServer) -> tuple[float, str]:
    return announced_throughput(data_dir, load_manifest(model), server)


def with_record(data_dir: Path, measured: dict, of_span: str, **changes: object) -> dict:
    record = {**next(r for r in measured["records"] if r["span"] == of_span), **changes}
    write(data_dir, {"format": measured["format"], "records": [record]})
    return record


def measured_instead(
    data_dir: Path, model: Path, server: SpanServer, caplog: pytest.LogCaptureFixture, words: str
) -> None:
    """The peer ignores the saved file, says why in a log line with ``words``, and measures instead."""
    with caplog.at_level(logging.INFO, logger="python_peer.benchmark"):
        figure, source = announce(data_dir, model, server)
    assert source == "measured at start" and figure > 0
    assert words in caplog.text


def test_a_matching_record_is_announced(
    measured: dict,
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = with_record(tmp_path, measured, "1-3", block_tokens_per_s=12345.678)
    with caplog.at_level(logging.INFO, logger="python_peer.benchmark"):
        assert announce(tmp_path, tiny_llama_export, server) == (12345.678, "benchmark")
    assert "using the saved benchmark" in caplog.text
    assert record["span"] == "1-3"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"measured_at": time.time() - 40 * DAY}, "is stale: measured 40 days ago"),
        ({"measured_at": time.time() + 2 * DAY}, "is stale: it is dated in the future"),
        ({"threads": THREADS + 1}, f"measured with {THREADS + 1} threads, this peer runs {THREADS}"),
        ({"dtype": "q8"}, "measured on q8, this export is fp32"),
        ({"files": "0" * 64}, "measured on other files"),
        (
            {"machine": {"arch": "aarch64", "cpus": 4, "cpu_model": "Raspberry Pi 5", "onnxruntime": "1.0"}},
            "is stale: arch was 'aarch64'",
        ),
    ],
)
def test_a_stale_or_mismatched_record_is_ignored_with_a_log_line(
    measured: dict,
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    changes: dict,
    words: str,
) -> None:
    with_record(tmp_path, measured, "1-3", block_tokens_per_s=12345.678, **changes)
    with caplog.at_level(logging.INFO, logger="python_peer.benchmark"):
        figure, source = announce(tmp_path, tiny_llama_export, server)
    assert source == "measured at start" and figure != 12345.678 and figure > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and words in warnings[0], caplog.text


def test_a_record_of_another_span_is_not_used(
    measured: dict,
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with_record(tmp_path, measured, "0-4", block_tokens_per_s=12345.678)
    measured_instead(tmp_path, tiny_llama_export, server, caplog, "no saved benchmark for")


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        '{"format": "ai4all/benchmarks/v1", "records": [',
        '{"format": "something/else", "records": []}',
        '{"format": "ai4all/benchmarks/v1", "records": {}}',
        '{"format": "ai4all/benchmarks/v1", "records": [1]}',
        "\xff\xfe",
        "x" * (2 << 20),
    ],
)
def test_an_unreadable_file_is_ignored(
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    (tmp_path / BENCHMARK_FILE).write_bytes(content.encode("latin-1"))
    measured_instead(tmp_path, tiny_llama_export, server, caplog, "ignoring the saved benchmarks")


@pytest.mark.parametrize(
    "changes",
    [
        {"block_tokens_per_s": -5},
        {"block_tokens_per_s": 0},
        {"block_tokens_per_s": 1e300},  # over what an announcement can state
        {"block_tokens_per_s": "12345"},
        {"block_tokens_per_s": True},
        {"threads": 2.0},
        {"span": "1-"},
        {"machine": "mine"},
        {"extra": 1},
    ],
)
def test_a_record_out_of_bounds_is_ignored(
    measured: dict,
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    changes: dict,
) -> None:
    with_record(tmp_path, measured, "1-3", **changes)
    measured_instead(tmp_path, tiny_llama_export, server, caplog, "ignoring the saved benchmarks")


def test_nan_in_the_file_is_ignored(
    measured: dict,
    server: SpanServer,
    tiny_llama_export: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with_record(tmp_path, measured, "1-3")
    path = tmp_path / BENCHMARK_FILE
    text = path.read_text()
    figure = json.loads(text)["records"][0]["block_tokens_per_s"]
    path.write_text(text.replace(json.dumps(figure), "NaN"))
    measured_instead(tmp_path, tiny_llama_export, server, caplog, "ignoring the saved benchmarks")

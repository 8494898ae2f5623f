"""Shared fixtures: tiny random models per family (offline) and the default model's export.

Helpers that are not fixtures (processes, waiting, ledger data, browser pages) live in ``tests/support/``;
no test module imports another test module or a conftest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.procs import run_cli

# Keep onnxruntime, torch and tokenizers from each taking every core of a 2-core CI machine at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test meshes are private networks: a cheap proof of work for the ledger's starter grant (every process
# of a test inherits it, so all agree on the rules).
os.environ.setdefault("AI4ALL_LEDGER_POW_BITS", "4")
# Test meshes serve the tests' own local exports, unsigned (--allow-unsigned); the tests of signed
# manifests and publisher trust (tests/test_manifest_trust.py) clear it where they mean to be refused.
os.environ.setdefault("AI4ALL_ALLOW_UNSIGNED", "1")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Build (once per session) a tiny random model directory for a family and options."""
    from tests.support import tiny_models

    built: dict[tuple[str, int, bool, bool], Path] = {}

    def make(family: str, *, layers: int = 4, tied: bool = False, gqa: bool = True) -> Path:
        key = (family, layers, tied, gqa)
        if key not in built:
            directory = tmp_path_factory.mktemp(
                f"{family}-{layers}-{'tied' if tied else 'untied'}-{'gqa' if gqa else 'mha'}"
            )
            built[key] = tiny_models.build(directory, family, layers=layers, tied=tied, gqa=gqa)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def tiny_llama_export(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama exported in fp32 with spans 0-1,1-3,3-4."""
    from exporter import pipeline, source
    from python_peer.core.spans import parse_spans

    out = tmp_path_factory.mktemp("tiny-llama-export") / "model"
    pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=tuple(parse_spans("0-1,1-3,3-4")))
    )
    return out


@pytest.fixture(scope="session")
def tiny_llama_export_h16(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama exported as ``tiny_llama_export``, with ``--hidden-float16``."""
    from exporter import pipeline, source
    from python_peer.core.spans import parse_spans

    out = tmp_path_factory.mktemp("tiny-llama-export-h16") / "model"
    spans = tuple(parse_spans("0-1,1-3,3-4"))
    pipeline.run_export(
        pipeline.ExportRequest(source.resolve(str(tiny_llama)), out, spans=spans, hidden_float16=True)
    )
    return out


@pytest.fixture(scope="session")
def big_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Write (once per session) a ``tests/support/big_models.py`` Llama of a shape (``"1.5b"``: 5.8 GB):
    the slow tests of big models share it instead of each writing their own. With ``AI4ALL_BIG_MODELS=DIR``
    it is kept in ``DIR/model-SIZE`` and reused by later sessions (the benches' ``--work`` layout)."""
    from tests.support import big_models

    built: dict[str, Path] = {}
    keep = os.environ.get("AI4ALL_BIG_MODELS")

    def make(size: str) -> Path:
        if size not in built:
            where = Path(keep) / f"model-{size}" if keep else tmp_path_factory.mktemp(f"big-{size}")
            built[size] = big_models.build(where, size)
        return built[size]

    return make


@pytest.fixture(scope="session")
def big_fp32_export(big_model_factory, tmp_path_factory: pytest.TempPathFactory):
    """The fp32 export of a ``big_models`` shape cut as ``tests/support/big_mesh.PLANS`` says, with the
    peak memory of each export step (``big_mesh.MeasuredExport``), once per session for every test that
    needs it (the export test judges the peaks, the mesh test serves the shards). With
    ``AI4ALL_BIG_MODELS=DIR`` it is kept in ``DIR/export-SIZE-fp32`` and reused by later sessions."""
    from tests.support import big_mesh

    made: dict[str, big_mesh.MeasuredExport] = {}
    keep = os.environ.get("AI4ALL_BIG_MODELS")

    def make(size: str) -> big_mesh.MeasuredExport:
        if size not in made:
            base = Path(keep) if keep else tmp_path_factory.mktemp(f"big-{size}-fp32")
            made[size] = big_mesh.measured_fp32_export(big_model_factory(size), size, base)
        return made[size]

    return make


@pytest.fixture(scope="session")
def default_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model exported exactly as ``ai4all up`` exports it, through the CLI (once per session):
    ``<dir>/SmolLM2-135M-Instruct``. Only the tests marked ``slow`` use it."""
    from python_peer.up import DEFAULT_SPANS

    models = tmp_path_factory.mktemp("models")
    result = run_cli(
        ["export", "--out", str(models / "SmolLM2-135M-Instruct"), "--spans", DEFAULT_SPANS], timeout=900
    )
    assert result.returncode == 0, result.stderr
    return models


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the browser tests last: Playwright's sync API keeps an event loop running in the main thread
    for the rest of the session, and every asyncio test after it would fail to start its own."""
    browser = [item for item in items if "tests/browser/" in item.nodeid.replace("\\", "/")]
    if browser:
        items[:] = [item for item in items if item not in browser] + browser

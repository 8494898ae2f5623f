"""The admission allow-lists pinned over real exports: every family in every dtype is admitted, and each
allow-list is exactly what those exports emit plus the operators of the GGUF grids' code paths (read
from a real default-model q4 export; the tiny exports here come from Hugging Face directories)."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import onnx
import pytest

from exporter import pipeline, source
from python_peer.core.admission import ALLOWED_MS_OPS, ALLOWED_OPS, admit_model_dir
from python_peer.core.spans import parse_spans

FAMILIES = ("llama", "qwen2", "gpt2")
DTYPES = ("fp32", "fp16", "q8", "q4")
# Operators only the GGUF paths emit (exporter/quantize.py): the embedding's gather of Q8_0/Q4_x codes
# dequantized on the fly (4-bit codes unpacked with BitShift and Sub), and a Q8_0 head dequantized at load.
GGUF_ONLY = {
    "embed": {"BitShift", "Concat", "Mul", "Reshape", "Shape", "Sub", "Unsqueeze"},
    "blocks": set(),
    "head": {"Reshape", "Transpose", "Unsqueeze"},
}


@pytest.fixture(scope="module")
def exports(tiny_model_factory, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every family exported in every dtype."""
    out_dirs = []
    for family in FAMILIES:
        model = tiny_model_factory(family, tied=family == "gpt2")
        for dtype in DTYPES:
            out = tmp_path_factory.mktemp(f"{family}-{dtype}") / "model"
            request = pipeline.ExportRequest(
                source.resolve(str(model)), out, spans=tuple(parse_spans("0-2,2-4")), dtype=dtype
            )
            pipeline.run_export(request)
            out_dirs.append(out)
    return out_dirs


@pytest.fixture(scope="module")
def emitted(exports: list[Path]) -> dict[tuple[str, str], set[str]]:
    """(kind, domain) -> operators, over every export, each export admitted first."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for out in exports:
        manifest = admit_model_dir(out)
        for shard in manifest.shards:
            graph = onnx.load(str(out / shard.file), load_external_data=False).graph
            for node in graph.node:
                found[(shard.kind, node.domain or "")].add(node.op_type)
    return found


@pytest.mark.parametrize("kind", ["embed", "blocks", "head"])
def test_each_allow_list_is_what_the_exporter_emits(kind: str, emitted) -> None:
    assert set(ALLOWED_OPS[kind]) == emitted[(kind, "")] | GGUF_ONLY[kind]
    assert set(ALLOWED_MS_OPS[kind]) == emitted[(kind, "com.microsoft")]
    assert {domain for k, domain in emitted if k == kind} <= {"", "com.microsoft"}


BROWSER_CHECK = """
import { readFile } from 'node:fs/promises';
import { admitShard } from './src/runtime/admission.js';
for (const dir of JSON.parse(process.argv[1])) {
  const manifest = JSON.parse(await readFile(`${dir}/manifest.json`, 'utf8'));
  for (const shard of manifest.shards) admitShard(new Uint8Array(await readFile(`${dir}/${shard.file}`)), shard);
}
console.log('admitted');
"""


def test_the_browser_admits_every_export_too(exports: list[Path]) -> None:
    """``web/src/runtime/admission.js`` on the same real exports (node runs the module as the page does)."""
    web = Path(__file__).resolve().parent.parent / "web"
    args = ["node", "--input-type=module", "-e", BROWSER_CHECK, json.dumps([str(p) for p in exports])]
    result = subprocess.run(args, cwd=web, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "admitted", result.stderr

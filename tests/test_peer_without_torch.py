"""The peer runs on onnxruntime and numpy alone: a Raspberry Pi never installs torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.procs import ROOT

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "onnx", "optimum", "accelerate", "gguf"}:
            raise ImportError(f"{name} must not be imported by the peer")
        return None
sys.meta_path.insert(0, Block())
"""

SCRIPT = (
    BLOCKER
    + """
import numpy as np
from python_peer.chain import LocalChain
from python_peer.generate import SamplingParams, generate
from python_peer.tokenizer import ModelTokenizer
from python_peer import cli
chain = LocalChain(sys.argv[1])
tok = ModelTokenizer(sys.argv[1], chain.manifest)
prompt = tok.encode(tok.render_chat([{"role": "user", "content": "hello"}]))
out = generate(chain, tok, prompt, SamplingParams(max_tokens=5))
print(len(out.token_ids))
"""
)


def test_chain_and_generation_import_no_torch(tiny_llama_export: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_llama_export)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 1 <= int(result.stdout.strip()) <= 5


def test_peer_extra_does_not_need_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for role in ("peer", "signal"):
        assert not any(
            dep.split("[")[0].split(">")[0].split("=")[0].strip() in {"torch", "transformers"}
            for dep in extras[role]
        ), extras[role]

"""Big random-weight Llama models, written straight to safetensors one layer at a time, and the memory an
export of them takes, measured per shard in a child process.

``build(directory, "1.5b")`` writes a seeded ~1.45B-parameter Llama (5.8 GB in fp32) as one safetensors
file per layer plus an index, never holding more than one layer in memory, with the tiny test tokenizer of
``tiny_models.py`` (its ids are a subset of the model's 32000). ``"7b"`` is Llama-2-7B's shape (6.7B
parameters); ``"small"`` is a narrow 6-layer model of the same vocabulary for developing code that runs
on the others; ``"large"`` has one blocks span over 2 GB and only the tiny tokenizer's 320 ids.
``layers=`` truncates a shape, so that one span of a 7B model and its embedding and head can be
exported and measured without writing 27 GB.

``measure_export`` runs ``ai4all export``'s pipeline in a fresh interpreter (``python -m
tests.support.big_models``) that records its peak resident memory (``VmHWM``) during each step, resetting
the peak between steps through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BigShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    def matrix_params(self) -> int:
        """Parameters of one layer's weight matrices (attention and MLP)."""
        head_dim = self.hidden // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        return attention + 3 * self.hidden * self.intermediate

    def layer_params(self) -> int:
        return self.matrix_params() + 2 * self.hidden  # and its two norms

    def params(self) -> int:
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden + self.hidden


SHAPES = {
    # TinyLlama's widths with 30 layers: 1.45B parameters, 5.8 GB in fp32; three spans of 10 layers.
    "1.5b": BigShape(hidden=2048, intermediate=5632, layers=30, heads=32, kv_heads=4),
    # Llama-2-7B: 6.74B parameters, 27 GB in fp32.
    "7b": BigShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32),
    # The 1.5b model's code path in seconds (for developing the tests and benches that run on it): the same
    # vocabulary and grouped-query attention, narrow and 6 layers (9.6M parameters, 38 MB in fp32).
    "small": BigShape(hidden=256, intermediate=704, layers=6, heads=8, kv_heads=2),
    # One blocks shard over 2 GB (what no single ONNX protobuf holds): 9 layers of 62.9M parameters, 2.27 GB
    # of fp32 matrices, with the tiny tokenizer's 320 ids (tiny_models.VOCAB) so that embed and head stay small.
    "large": BigShape(hidden=2048, intermediate=8704, layers=9, heads=16, kv_heads=2, vocab=320),
}
STD = 0.02


def config_dict(shape: BigShape, layers: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def _layer_tensors(shape: BigShape, layer: int, seed: int) -> dict[str, Any]:
    import torch

    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    sizes = {
        "self_attn.q_proj.weight": (shape.hidden, shape.hidden),
        "self_attn.k_proj.weight": (kv, shape.hidden),
        "self_attn.v_proj.weight": (kv, shape.hidden),
        "self_attn.o_proj.weight": (shape.hidden, shape.hidden),
        "mlp.gate_proj.weight": (shape.intermediate, shape.hidden),
        "mlp.up_proj.weight": (shape.intermediate, shape.hidden),
        "mlp.down_proj.weight": (shape.hidden, shape.intermediate),
    }
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    tensors = {
        f"model.layers.{layer}.{name}": torch.randn(size, generator=generator) * STD
        for name, size in sizes.items()
    }
    for norm in ("input_layernorm", "post_attention_layernorm"):
        tensors[f"model.layers.{layer}.{norm}.weight"] = torch.ones(shape.hidden)
    return tensors


def build(directory: Path, size: str = "1.5b", *, layers: int | None = None, seed: int = 0) -> Path:
    """Write the model ``size`` (``SHAPES``), optionally cut to ``layers`` layers, to ``directory``.

    A directory already holding a complete build of the same arguments is reused (the index is written last).
    """
    import torch
    from safetensors.torch import save_file

    from tests.support.tiny_models import tiny_tokenizer

    shape = SHAPES[size]
    count = shape.layers if layers is None else layers
    stamp = {"size": size, "layers": count, "seed": seed, "std": STD}
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file() and json.loads(index_path.read_text()).get("metadata", {}).get("build") == stamp:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    files = count + 2
    weight_map: dict[str, str] = {}
    total = 0

    def write(number: int, tensors: dict[str, Any]) -> None:
        nonlocal total
        name = f"model-{number:05d}-of-{files:05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()

    generator = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
    write(1, {"model.embed_tokens.weight": torch.randn(shape.vocab, shape.hidden, generator=generator) * STD})
    for layer in range(count):
        write(layer + 2, _layer_tensors(shape, layer, seed))
    head = torch.randn(shape.vocab, shape.hidden, generator=generator) * STD
    write(files, {"lm_head.weight": head, "model.norm.weight": torch.ones(shape.hidden)})
    (directory / "config.json").write_text(json.dumps(config_dict(shape, count), indent=1))
    tiny_tokenizer().save_pretrained(directory)
    index = {"metadata": {"total_size": total, "build": stamp}, "weight_map": weight_map}
    index_path.write_text(json.dumps(index, indent=1))
    return directory


def weights_bytes(directory: Path) -> int:
    return int(json.loads((directory / "model.safetensors.index.json").read_text())["metadata"]["total_size"])


def shard_bytes(step: str) -> int | None:
    """The fp32 weight bytes an export step held, from its progress line ("... (1,762 MB of fp32 weights)")."""
    if "MB of fp32 weights" not in step:
        return None
    return int(step.rsplit("(", 1)[1].split(" MB")[0].replace(",", "")) * 1_000_000


# ---- the child process: export with a per-step peak of resident memory ----


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _child(model: str, out: str, spans: str) -> None:
    from exporter import pipeline, source
    from python_peer.core.spans import parse_spans

    steps: list[dict[str, Any]] = []
    baseline = _status_kib("VmRSS") * 1024

    def progress(step: str, done: int, total: int) -> None:
        peak = _status_kib("VmHWM") * 1024
        if steps:
            steps[-1]["peak_rss"] = peak
        steps.append({"step": step})
        _reset_peak()

    request = pipeline.ExportRequest(source.resolve(model), Path(out), spans=tuple(parse_spans(spans)))
    pipeline.run_export(request, progress)
    steps[-1]["peak_rss"] = _status_kib("VmHWM") * 1024
    print(json.dumps({"baseline_rss": baseline, "steps": steps}))


def measure_export(model: Path, out: Path, spans: str, *, timeout: float = 1800) -> dict[str, Any]:
    """Export ``model`` with ``spans`` in a child process; return its baseline RSS and each step's peak RSS."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.big_models", "export", str(model), str(out), spans],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"export of {model} failed:\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "export":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) >= 3 and sys.argv[1] == "build":
        build(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "1.5b")
    else:
        sys.exit("usage: python -m tests.support.big_models export MODEL OUT SPANS | build DIR [SIZE]")

"""A GGUF file's tensors, read lazily under their Hugging Face names and dequantized to fp32 one at a time.

The file is memory-mapped by ``gguf.GGUFReader``; a tensor's bytes are read and dequantized only when the
exporter builds the span that needs it. Names and layouts follow transformers' own GGUF loader
(``transformers.modeling_gguf_pytorch_utils``), so a streamed export equals one from ``from_pretrained``:

- names: gguf-py's tensor name map for the architecture (``blk.3.attn_q.weight`` <->
  ``model.layers.3.self_attn.q_proj.weight``);
- Llama: llama.cpp permutes the rows of ``attn_q`` / ``attn_k`` for its rotary layout; they are permuted back
  (per KV head for ``attn_k``);
- GPT-2: llama.cpp stores ``attn_qkv``, ``attn_output``, ``ffn_up`` and ``ffn_down`` transposed from
  transformers' ``Conv1D`` layout; they are transposed back.

Tensor types gguf-py cannot dequantize (e.g. ``Q8_1``, integer or f64 tensors) are refused by ``check``
before anything is exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelSourceError, UnsupportedModelError

# transformers' model_type -> gguf-py's architecture name, for the families the exporter supports.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}
_GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def _dequantizable(qtype: Any) -> bool:
    from gguf import GGMLQuantizationType, quants

    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return True
    traits = getattr(quants, "_type_traits", {})  # gguf-py's registry of the types it can dequantize
    return qtype in traits


class GGUFTensors:
    """The tensors of one GGUF file, named as ``hf_names`` (the model's state-dict names) ask for."""

    def __init__(self, path: Path, config: Any, hf_names: list[str]) -> None:
        from gguf import MODEL_ARCH_NAMES, GGUFReader, get_tensor_name_map

        self.where = str(path)
        self.family = str(config.model_type)
        arch_name = GGUF_ARCHITECTURES.get(self.family)
        arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch_name), None)
        if arch is None:
            raise UnsupportedModelError(
                f"{path}: GGUF models of architecture {self.family!r} are not supported"
            )
        try:
            self._reader = GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError, KeyError, struct errors on a corrupt file
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelSourceError(f"cannot read the GGUF file {path}: {text}") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._heads = int(config.num_attention_heads) if self.family == "llama" else 0
        self._kv_heads = (
            int(getattr(config, "num_key_value_heads", None) or self._heads) if self._heads else 0
        )
        name_map = get_tensor_name_map(arch, int(getattr(config, "num_hidden_layers", 0) or config.n_layer))
        self._gguf_name: dict[str, str] = {}
        for hf_name in hf_names:
            stem, _, suffix = hf_name.rpartition(".")
            gguf_stem = name_map.get_name(stem)
            if gguf_stem is not None:
                self._gguf_name[hf_name] = f"{gguf_stem}.{suffix}"

    def _info(self, hf_name: str) -> Any:
        return self._tensors.get(self._gguf_name.get(hf_name, ""))

    def _transposed(self, gguf_name: str) -> bool:
        return self.family == "gpt2" and gguf_name.endswith(_GPT2_TRANSPOSED)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for hf_name, gguf_name in self._gguf_name.items():
            info = self._tensors.get(gguf_name)
            if info is None:
                continue
            shape = tuple(int(d) for d in reversed(info.shape.tolist()))  # ggml lists the fastest axis first
            shapes[hf_name] = shape[::-1] if self._transposed(gguf_name) else shape
        return shapes

    def describe(self, name: str) -> str:
        gguf_name = self._gguf_name.get(name)
        return f"{name} (GGUF tensor {gguf_name})" if gguf_name else f"{name} (no GGUF name)"

    def check(self, name: str) -> str | None:
        info = self._info(name)
        if not _dequantizable(info.tensor_type):
            return f"has type {info.tensor_type.name}, which the exporter cannot dequantize"
        return None

    def load(self, name: str) -> torch.Tensor:
        from gguf import dequantize

        info = self._info(name)
        try:
            weights = np.asarray(dequantize(info.data, info.tensor_type), dtype=np.float32)
        except Exception as exc:  # gguf-py raises NotImplementedError, ValueError on odd blocks
            raise ModelSourceError(f"{self.where}: cannot dequantize {self.describe(name)}: {exc}") from exc
        gguf_name = self._gguf_name[name]
        if self.family == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            heads = self._heads if ".attn_q." in gguf_name else self._kv_heads
            weights = _unpermute(weights, heads)
        elif self._transposed(gguf_name):
            weights = weights.T
        # np.array copies: the tensor owns its memory (F32 tensors would otherwise be views of the mapping).
        return torch.from_numpy(np.array(weights, dtype=np.float32, order="C"))


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q or k projection (as transformers' GGUF loader does)."""
    dim = weights.shape[0] // heads // 2
    w = weights.reshape(heads, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)

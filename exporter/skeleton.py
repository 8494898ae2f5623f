"""The model's structure without its weights, filled one shard at a time from a lazy tensor source.

The transformers model is instantiated with its parameters on the ``meta`` device (no memory; buffers such as
the rotary frequencies stay real). ``Skeleton.part`` loads just the tensors one shard needs (the embedding,
a span of layers, or the final norm and head) into that model, yields it to the shard modules of
``modeling.py``, and puts the parameters back on ``meta`` afterwards, so the exporter holds one shard's
weights at a time. ``validate`` checks, from headers alone and before anything is written, that every
tensor the config calls for exists, has the config's shape, and has a type the exporter can read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import ModelSourceError
from .tensor_source import TensorSource

# State-dict name prefixes of each shard kind, per family; "{i}" is a layer index.
_PARTS = {
    "gpt2": {
        "embed": ("transformer.wte.", "transformer.wpe."),
        "layer": "transformer.h.{i}.",
        "head": ("transformer.ln_f.", "lm_head."),
    },
    "llama": {
        "embed": ("model.embed_tokens.",),
        "layer": "model.layers.{i}.",
        "head": ("model.norm.", "lm_head."),
    },
}


def _prefixes(family: str) -> dict[str, Any]:
    return _PARTS["gpt2" if family == "gpt2" else "llama"]


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def empty_model(config: Any) -> Any:
    """The transformers model of ``config`` with every parameter on ``meta`` and real buffers."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


class Skeleton:
    """A weightless model plus the tensor source that fills it, shard by shard."""

    def __init__(self, model: Any, tensors: TensorSource) -> None:
        self.model = model
        self.config = model.config
        self.tensors = tensors
        self.family = str(self.config.model_type)
        self._expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        self._available = tensors.shapes()
        self._prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
        self.num_layers = int(getattr(self.config, "num_hidden_layers", None) or self.config.n_layer)

    def names(self, kind: str, start: int = 0, end: int = 0) -> list[str]:
        """The state-dict names a shard needs: ``embed``, ``head``, or ``blocks`` of layers ``[start, end)``."""
        parts = _prefixes(self.family)
        if kind == "blocks":
            prefixes: tuple[str, ...] = tuple(parts["layer"].format(i=i) for i in range(start, end))
        else:
            prefixes = parts[kind]
        return [name for name in self._expected if name.startswith(prefixes)]

    def weight_bytes(self, kind: str, start: int = 0, end: int = 0) -> int:
        """The fp32 bytes of a shard's weights: what ``part`` holds in memory."""
        return sum(4 * _count(self._expected[name]) for name in self.names(kind, start, end))

    def source_name(self, name: str) -> str | None:
        """The checkpoint's name for ``name``: itself, without the base-model prefix, or the tied embedding."""
        if name == "lm_head.weight" and getattr(self.config, "tie_word_embeddings", False):
            # transformers ties the head to the embedding, whatever the file holds
            tied = self.names("embed")[0]
            return self.source_name(tied)
        for candidate in (name, name.removeprefix(self._prefix)):
            if candidate in self._available:
                return candidate
        return None

    def validate(self) -> None:
        """Refuse, in one line, a missing tensor, a shape the config disagrees with, or an unreadable type."""
        where = self.tensors.where
        wanted = self.names("embed") + self.names("blocks", 0, self.num_layers) + self.names("head")
        for name in wanted:
            found = self.source_name(name)
            if found is None:
                raise ModelSourceError(f"{where}: tensor {self.tensors.describe(name)} is missing")
            shape, expected = self._available[found], self._expected[name]
            if shape != expected:
                raise ModelSourceError(
                    f"{where}: tensor {self.tensors.describe(found)} has shape {list(shape)}, "
                    f"but the config says {list(expected)}"
                )
            problem = self.tensors.check(found)
            if problem is not None:
                raise ModelSourceError(f"{where}: tensor {self.tensors.describe(found)} {problem}")

    @contextlib.contextmanager
    def part(self, kind: str, start: int = 0, end: int = 0) -> Iterator[Any]:
        """The model with only one shard's tensors loaded; they are released when the block ends."""
        names = self.names(kind, start, end)
        try:
            for name in names:
                found = self.source_name(name)
                assert found is not None, "validate() runs before any part is built"
                self._set(name, self.tensors.load(found))
            yield self.model
        finally:
            for name in names:
                self._set(name, torch.empty(self._expected[name], device="meta"))

    def _set(self, name: str, tensor: torch.Tensor) -> None:
        path, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(path)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[leaf] = tensor

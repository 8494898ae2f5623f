"""Lazy tensors: a model's weights read one tensor at a time, by its Hugging Face name, in fp32.

A ``TensorSource`` knows every tensor's shape from the checkpoint's header alone (safetensors headers,
GGUF tensor infos) and reads a tensor's bytes only when asked, so the exporter holds one span's weights
at a time, never the model's. Sources:

- ``SafetensorsTensors``  a directory of ``*.safetensors`` files, sharded (``*.safetensors.index.json``)
                          or not; files are memory-mapped by ``safetensors.safe_open``.
- ``GGUFTensors``         a GGUF file (``gguf_tensors.py``), dequantized tensor by tensor.
- ``ModuleTensors``       a model already in memory (the hub and ``pytorch_model*.bin`` path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import ModelSourceError

# safetensors dtypes the exporter converts to fp32; integer and boolean tensors are not weights it can carry.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class TensorSource(Protocol):
    """Named tensors, read lazily."""

    where: str  # the file or directory, for error messages

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, from headers only."""
        ...

    def describe(self, name: str) -> str:
        """Where ``name`` lives, for error messages (e.g. the GGUF tensor name)."""
        ...

    def check(self, name: str) -> str | None:
        """Why ``name`` cannot be read as fp32, or None when it can (from headers only)."""
        ...

    def load(self, name: str) -> torch.Tensor:
        """The tensor in fp32 on the CPU, owned by the caller: dropping it releases its memory. (An fp32
        safetensors tensor is a private map of the file, paged in as the export reads it.)"""
        ...


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SafetensorsTensors:
    """The ``*.safetensors`` files of a Hugging Face model directory."""

    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open

        self.where = str(directory)
        self._files: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        indexes = sorted(directory.glob("*.safetensors.index.json"))
        files = self._indexed_files(indexes[0]) if indexes else sorted(directory.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"{directory} holds no weights (*.safetensors or pytorch_model*.bin)")
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                        if name in self._files:  # which copy transformers would load depends on file order
                            raise ModelSourceError(
                                f"{directory}: tensor {name} is in both {self._files[name].name} and {file.name}"
                            )
                        info = handle.get_slice(name)
                        self._files[name] = file
                        self._shapes[name] = tuple(int(d) for d in info.get_shape())
                        self._dtypes[name] = str(info.get_dtype())
            except ModelSourceError:
                raise
            except Exception as exc:  # safetensors raises its own error type and OSError for the same faults
                raise ModelSourceError(f"cannot load the model from {file}: {_first_line(exc)}") from exc

    def _indexed_files(self, index: Path) -> list[Path]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelSourceError(f"{index} is not a safetensors index: {_first_line(exc)}") from exc
        files = []
        for name in names:
            file = (index.parent / name).resolve()
            if file.parent != index.parent.resolve():
                raise ModelSourceError(f"{index} names {name!r}, which is outside the model directory")
            if not file.is_file():
                raise ModelSourceError(f"{index} names {name}, which does not exist in {index.parent}")
            files.append(file)
        return files

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def describe(self, name: str) -> str:
        return f"{self._files[name].name}: {name}" if name in self._files else name

    def check(self, name: str) -> str | None:
        dtype = self._dtypes[name]
        if dtype not in FLOAT_DTYPES:
            return f"has dtype {dtype}, which is not a floating-point weight type ({', '.join(FLOAT_DTYPES)})"
        return None

    def load(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._files[name]
        try:
            with safe_open(str(file), framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except Exception as exc:  # as above
            raise ModelSourceError(f"cannot read {name} from {file}: {_first_line(exc)}") from exc
        return tensor.to(torch.float32) if tensor.dtype != torch.float32 else tensor


class ModuleTensors:
    """The state dict of a model already loaded whole (hub ids and ``pytorch_model*.bin`` directories)."""

    def __init__(self, model: Any, where: str) -> None:
        self.where = where
        self._state = model.state_dict()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._state.items()}

    def describe(self, name: str) -> str:
        return name

    def check(self, name: str) -> str | None:
        tensor = self._state[name]
        return None if tensor.is_floating_point() else f"has dtype {tensor.dtype}, not a floating-point type"

    def load(self, name: str) -> torch.Tensor:
        return self._state[name].detach().to(torch.float32)

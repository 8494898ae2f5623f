"""Admission: the rules a shard's ``.onnx`` must pass before a node loads, serves or relays it.

A shard is data, never code: an ONNX ``ModelProto`` (no pickle, no archive), whose operators are all in
the allow-list of its kind, from the default ONNX domain or ``com.microsoft`` (onnxruntime's
``MatMulNBits``) and no other, with no model-local functions, training graphs or nested graphs, in an IR
version and operator-set versions this build knows, and whose graph inputs and outputs are exactly the
ones its manifest entry declares (which ``manifest.py`` has checked against the model's config). Each
refusal is an ``AdmissionError`` naming its rule.

The allow-lists are what the exporter emits for Llama, Qwen2 and GPT-2 in fp32, fp16, q8 and q4, from
Hugging Face directories and GGUF files (the GGUF grids' dequantizing gathers and MatMuls included);
``tests/test_admission_exports.py`` pins them over real exports. The browser checks the same lists
(``web/src/runtime/admission.js``, generated constants).
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from pathlib import Path

from .errors import AdmissionError, ManifestError
from .manifest import Manifest, ShardEntry, load_manifest
from .onnx_external import check_external_data
from .onnx_summary import OnnxSummary, summarize

DEFAULT_DOMAIN = ""
MS_DOMAIN = "com.microsoft"
# The operator sets a shard may import; "ai.onnx" is another name of the default one.
ALLOWED_DOMAINS = (DEFAULT_DOMAIN, "ai.onnx", MS_DOMAIN)
# ONNX IR versions this build admits (torch's exporter writes 8 at opset 17; onnxruntime-web reads <= 10).
IR_VERSIONS = (7, 8, 9, 10)
# Operator-set versions this build admits, per domain.
OPSET_RANGES = {DEFAULT_DOMAIN: (13, 21), MS_DOMAIN: (1, 1)}


def _ops(names: str) -> tuple[str, ...]:
    return tuple(names.split())


# Operators of the default domain, per shard kind.
ALLOWED_OPS: Mapping[str, tuple[str, ...]] = {
    # token ids -> hidden states: a gather of floats, or of GGUF codes dequantized on the fly
    "embed": _ops("Add BitShift Cast Concat Gather Mul Reshape Shape Sub Unsqueeze"),
    # attention, rotary embeddings, masks, MLPs and norms of Llama, Qwen2 and GPT-2 blocks
    "blocks": _ops(
        "Add And Cast Concat Constant ConstantOfShape Cos Div Equal Expand Gather Gemm Greater Identity "
        "LayerNormalization LessOrEqual MatMul Mul Neg Pow Range ReduceMean Reshape Shape Sigmoid Sin Slice "
        "Softmax Split Sqrt Squeeze Sub Tanh Transpose Unsqueeze Where"
    ),
    # final norm and LM head: a float MatMul, MatMulNBits, or a GGUF grid dequantized when the session loads
    "head": _ops(
        "Add Cast Constant Div LayerNormalization MatMul Mul Pow ReduceMean Reshape Sqrt Transpose Unsqueeze"
    ),
}
# Operators of com.microsoft, per shard kind: weight-only quantized MatMuls, nothing else.
ALLOWED_MS_OPS: Mapping[str, tuple[str, ...]] = {
    "embed": (),
    "blocks": ("MatMulNBits",),
    "head": ("MatMulNBits",),
}


def _domain(name: str) -> str:
    return DEFAULT_DOMAIN if name == "ai.onnx" else name


def allowed(kind: str, domain: str, op_type: str) -> bool:
    """Whether a node of ``domain``/``op_type`` may appear in a shard of ``kind``."""
    if _domain(domain) == DEFAULT_DOMAIN:
        return op_type in ALLOWED_OPS.get(kind, ())
    if domain == MS_DOMAIN:
        return op_type in ALLOWED_MS_OPS.get(kind, ())
    return False


def check_summary(summary: OnnxSummary, entry: ShardEntry) -> None:
    """Refuse a shard whose summary breaks a rule; the error names the shard and the rule."""
    check_operators(summary, entry.kind, entry.file)
    _check_io(summary, entry)


def check_operators(summary: OnnxSummary, kind: str, shard: str) -> None:
    """The rules on versions, operator sets and operators of a shard of ``kind`` (the browser's
    ``web/src/runtime/admission.js`` checks the same, in the same order, on the golden vectors of
    ``tests/vectors/admission/``)."""
    if summary.ir_version not in IR_VERSIONS:
        raise AdmissionError(
            "format_version",
            f"shard {shard}: ONNX IR version {summary.ir_version} is not one this build admits "
            f"({', '.join(map(str, IR_VERSIONS))})",
        )
    if summary.has_functions:
        raise AdmissionError(
            "no_custom_ops", f"shard {shard} defines model-local functions (custom operators)"
        )
    if summary.has_training_info:
        raise AdmissionError("onnx_only", f"shard {shard} holds training graphs; a shard is inference only")
    seen: set[str] = set()
    for domain, version in summary.opsets:
        name = _domain(domain)
        if name not in OPSET_RANGES:
            raise AdmissionError(
                "no_custom_ops",
                f"shard {shard} imports operator set {domain!r}: only the default ONNX domain and "
                f"{MS_DOMAIN} are admitted",
            )
        low, high = OPSET_RANGES[name]
        if not low <= version <= high:
            raise AdmissionError(
                "format_version",
                f"shard {shard}: operator set {name or 'ai.onnx'} version {version} is outside {low}-{high}",
            )
        if name in seen:
            raise AdmissionError("onnx_only", f"shard {shard} imports operator set {name or 'ai.onnx'} twice")
        seen.add(name)
    if DEFAULT_DOMAIN not in seen:
        raise AdmissionError("format_version", f"shard {shard} imports no version of the default ONNX domain")
    for raw_domain, op_type in sorted(summary.operators):
        domain = _domain(raw_domain)
        if domain not in ALLOWED_DOMAINS:
            raise AdmissionError(
                "no_custom_ops", f"shard {shard}: operator {op_type} is in the custom domain {domain!r}"
            )
        if domain not in seen:
            raise AdmissionError(
                "format_version",
                f"shard {shard}: operator {op_type} uses domain {domain!r}, which it does not import",
            )
        if not allowed(kind, domain, op_type):
            raise AdmissionError(
                "operator_allowed",
                f"shard {shard}: operator {(domain + '.') if domain else ''}{op_type} is not on the allow-list "
                f"of {kind} shards",
            )
    if summary.has_subgraphs:
        raise AdmissionError(
            "operator_allowed", f"shard {shard} holds nested graphs; no admitted operator has one"
        )


def _check_io(summary: OnnxSummary, entry: ShardEntry) -> None:
    """The graph's inputs (less initializers) and outputs are the entry's, with the same types and shapes."""
    shard = entry.file
    inputs = [v for v in summary.inputs if v.name not in summary.initializers]
    for side, found, declared in (
        ("inputs", inputs, entry.inputs),
        ("outputs", summary.outputs, entry.outputs),
    ):
        names = [v.name for v in found]
        wanted = {s.name for s in declared}
        if set(names) != wanted or len(set(names)) != len(names):
            raise AdmissionError(
                "declared_io",
                f"shard {shard}: the graph's {side} are not the manifest's: unexpected "
                f"{sorted(set(names) - wanted)[:6]}, missing {sorted(wanted - set(names))[:6]}"
                + (", some twice" if len(set(names)) != len(names) else ""),
            )
        by_name = {v.name: v for v in found}
        for spec in declared:
            value = by_name[spec.name]
            if value.dtype != spec.dtype:
                raise AdmissionError(
                    "declared_io",
                    f"shard {shard}: {spec.name} is {value.dtype} in the graph, {spec.dtype} in the manifest",
                )
            if value.shape is None or len(value.shape) != len(spec.shape):
                raise AdmissionError(
                    "declared_io",
                    f"shard {shard}: {spec.name} has shape {value.shape} in the graph, {list(spec.shape)} in the "
                    "manifest",
                )
            for got, want in zip(value.shape, spec.shape, strict=True):
                if isinstance(want, int) and got != want:
                    raise AdmissionError(
                        "declared_io",
                        f"shard {shard}: {spec.name} has shape {list(value.shape)} in the graph, "
                        f"{list(spec.shape)} in the manifest",
                    )


def admit_model_dir(model_dir: str | Path) -> Manifest:
    """Load ``DIR/manifest.json`` (its declared inputs, outputs and sizes checked against the config) and
    admit every shard's ``.onnx`` and external-data references, without hashing: what a node checks
    before it publishes or serves a directory's files to others. Hashes are checked when a shard loads."""
    manifest = load_manifest(model_dir)
    for entry in manifest.shards:
        path = Path(model_dir) / entry.file
        refused: tuple[str | None, str] | None = None
        try:
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                try:
                    check_shard_model(memoryview(view), entry)
                    check_external_data(
                        memoryview(view), entry.file, {item.file: item.bytes for item in entry.files}
                    )
                except AdmissionError as exc:  # kept as text: the traceback would pin the mapping open
                    refused = (exc.rule, exc.detail)
                except ManifestError as exc:
                    refused = (None, str(exc))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"shard {entry.file}: cannot read {path}: {exc}") from None
        if refused is not None:
            rule, text = refused
            raise ManifestError(text) if rule is None else AdmissionError(rule, text)
    return manifest


def check_shard_model(model: bytes | bytearray | memoryview, entry: ShardEntry) -> None:
    """Admit the serialized ``.onnx`` of ``entry`` or raise ``AdmissionError`` naming the rule."""
    try:
        summary = summarize(model)
    except AdmissionError as exc:
        raise AdmissionError(exc.rule, f"shard {entry.file}: {exc.detail}") from None
    check_summary(summary, entry)

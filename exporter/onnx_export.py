"""torch -> ONNX for one shard, with the fixed wire names and dynamic batch, sequence and past axes.

The TorchScript exporter is used: it takes seconds per shard where the dynamo exporter takes most of a
minute, and the graphs it gives chain to PyTorch's logits within ~1e-5.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from python_peer.core.manifest import TensorSpec, blocks_io, embed_io, head_io

from .errors import ExportFailedError
from .modeling import BlocksShard, EmbedShard, HeadShard, ModelShape

OPSET = 17

# Sizes of the dummy inputs used for tracing; any non-degenerate values do, as every axis is dynamic.
_BATCH, _SEQ, _PAST = 2, 3, 2


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in specs
    }


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    path: Path,
) -> None:
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs],
                dynamic_axes=_dynamic_axes(inputs + outputs),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # torch raises many unrelated types here; all mean the same to the user
        raise ExportFailedError(f"torch.onnx.export of {path.name} failed: {exc}") from exc


def export_embed(
    model: Any, shape: ModelShape, path: Path, *, hidden_float16: bool = False
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = embed_io(shape.hidden_size, learned_positions=shape.learned_positions)
    ids = torch.randint(0, shape.vocab_size, (_BATCH, _SEQ), dtype=torch.int64)
    args: tuple[torch.Tensor, ...] = (ids,)
    if shape.learned_positions:
        args = (ids, torch.arange(_SEQ, dtype=torch.int64).expand(_BATCH, _SEQ).contiguous())
    _export(EmbedShard(model, shape, hidden_float16=hidden_float16), args, inputs, outputs, path)
    return inputs, outputs


def export_head(model: Any, shape: ModelShape, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = head_io(shape.hidden_size, shape.vocab_size)
    hidden = torch.randn(_BATCH, _SEQ, shape.hidden_size)
    _export(HeadShard(model, shape), (hidden,), inputs, outputs, path)
    return inputs, outputs


def export_blocks(
    model: Any, shape: ModelShape, start: int, end: int, path: Path, *, hidden_float16: bool = False
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = blocks_io(start, end, shape.hidden_size, shape.num_kv_heads, shape.head_dim)
    hidden = torch.randn(_BATCH, _SEQ, shape.hidden_size)
    mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.int64)
    positions = torch.arange(_PAST, _PAST + _SEQ, dtype=torch.int64).expand(_BATCH, _SEQ).contiguous()
    past: list[Any] = []
    for _ in range(start, end):
        past += [torch.randn(_BATCH, shape.num_kv_heads, _PAST, shape.head_dim) for _ in range(2)]
    module = BlocksShard(model, shape, start, end, hidden_float16=hidden_float16)
    _export(module, (hidden, mask, positions, *past), inputs, outputs, path)
    return inputs, outputs

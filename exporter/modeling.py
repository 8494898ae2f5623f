"""Plain-torch shard modules for the Llama, Qwen2 and GPT-2 families.

Attention, masks and rotary embeddings are written here in plain torch, over the Hugging Face model's
own weight-holding submodules (linear layers, norms, MLPs). transformers' cache classes and attention
dispatch change between versions; this code does not depend on them, so every shard traces to the same
graph and takes its KV cache as plain ``past_key_values.{i}.key/.value`` tensors of shape
``[batch, kv_heads, past, head_dim]``.

The wire names are fixed (see ``python_peer.core.manifest``): a runner feeds each shard's
``hidden_states_out`` to the next shard's ``hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("gpt2", "llama", "qwen2")


@dataclass(frozen=True)
class ModelShape:
    """The few numbers every runner needs to build inputs for a shard."""

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    learned_positions: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "learned_positions": self.learned_positions,
        }


def rope_type(config: Any) -> str:
    """The rotary embedding's type, read from the config as transformers' rotary classes read it."""
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        return str(scaling.get("rope_type", scaling.get("type", "default")))
    return "default"


def model_shape(model_or_config: Any) -> ModelShape:
    """Read the model's dimensions (from a model or its config), refusing what this exporter cannot trace."""
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {family!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if family == "gpt2":
        if getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError("GPT-2 models with cross-attention are not supported")
        heads = config.n_head
        return ModelShape(
            family=family,
            num_layers=config.n_layer,
            hidden_size=config.n_embd,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.n_embd // heads,
            vocab_size=config.vocab_size,
            max_positions=config.n_positions,
            learned_positions=True,
        )
    if family == "qwen2" and getattr(config, "use_sliding_window", False):
        raise UnsupportedModelError("Qwen2 models with sliding-window attention are not supported")
    rope = rope_type(config)
    if rope in ("dynamic", "longrope"):
        raise UnsupportedModelError(
            f"rope scaling {rope!r} depends on the sequence length and is not supported"
        )
    heads = config.num_attention_heads
    return ModelShape(
        family=family,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        learned_positions=False,
    )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _additive_mask(attention_mask: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Causal + padding mask, ``[batch, 1, seq, past + seq]``, 0 where attending and dtype-min elsewhere.

    ``attention_mask`` covers the past and the new tokens (1 = real token, 0 = padding). Rows of padding
    queries are fully masked; they come out uniform, not NaN, and nobody reads them.
    """
    total = attention_mask.shape[1]
    past = total - seq_len
    query_pos = torch.arange(seq_len, device=attention_mask.device) + past
    key_pos = torch.arange(total, device=attention_mask.device)
    causal = key_pos[None, :] <= query_pos[:, None]
    allowed = causal[None, None, :, :] & (attention_mask[:, None, None, :] > 0)
    zero = torch.zeros((), dtype=dtype)
    minimum = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, minimum)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query KV heads; returns ``[batch, seq, heads * dim]``."""
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    if heads != kv_heads:
        rep = heads // kv_heads
        k = (
            k[:, :, None, :, :]
            .expand(batch, kv_heads, rep, k.shape[2], dim)
            .reshape(batch, heads, k.shape[2], dim)
        )
        v = (
            v[:, :, None, :, :]
            .expand(batch, kv_heads, rep, v.shape[2], dim)
            .reshape(batch, heads, v.shape[2], dim)
        )
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)
    return out.transpose(1, 2).reshape(batch, seq, heads * dim)


def to_float16_values(hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` rounded to the nearest float16 values, kept float32: what a shard exported with
    ``hidden_float16`` hands on (two Casts in the graph), so the wire carries it in half the bytes,
    losslessly (``python_peer/tensors.py``, ``to_wire``), and every route computes the same numbers."""
    return hidden.to(torch.float16).to(torch.float32)


class EmbedShard(nn.Module):
    """Token ids (and learned positions, for GPT-2) -> hidden states."""

    def __init__(self, model: Any, shape: ModelShape, *, hidden_float16: bool = False) -> None:
        super().__init__()
        self.hidden_float16 = hidden_float16
        self.learned_positions = shape.learned_positions
        if shape.family == "gpt2":
            self.tokens = model.transformer.wte
            self.positions = model.transformer.wpe
        else:
            self.tokens = model.model.embed_tokens
            self.positions = None

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden: torch.Tensor = self.tokens(input_ids)
        if self.positions is not None:
            hidden = hidden + self.positions(position_ids)
        return to_float16_values(hidden) if self.hidden_float16 else hidden


class HeadShard(nn.Module):
    """Final norm + language-model head: hidden states -> logits."""

    def __init__(self, model: Any, shape: ModelShape) -> None:
        super().__init__()
        self.norm = model.transformer.ln_f if shape.family == "gpt2" else model.model.norm
        self.lm_head = model.lm_head

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(self.norm(hidden_states))
        return logits


class BlocksShard(nn.Module):
    """Layers ``[start, end)``: hidden states + mask + positions + past KV -> hidden states + present KV.

    ``forward`` takes its past KV as a flat argument list, two tensors per layer, in layer order, which
    is the order of the ONNX inputs.
    """

    def __init__(
        self, model: Any, shape: ModelShape, start: int, end: int, *, hidden_float16: bool = False
    ) -> None:
        super().__init__()
        self.hidden_float16 = hidden_float16
        self.shape = shape
        self.start = start
        self.end = end
        if shape.family == "gpt2":
            self.layers = nn.ModuleList(model.transformer.h[start:end])
            self.scale_attn_weights = bool(getattr(model.config, "scale_attn_weights", True))
            self.inverse_layer_idx = bool(getattr(model.config, "scale_attn_by_inverse_layer_idx", False))
            self.rotary_scaling = 1.0
        else:
            self.layers = nn.ModuleList(model.model.layers[start:end])
            rotary = model.model.rotary_emb
            self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
            self.rotary_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = cast(torch.Tensor, self.inv_freq)  # a buffer; nn.Module's typing cannot say so
        freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rotary_scaling)[:, None], (emb.sin() * self.rotary_scaling)[:, None]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        seq_len = hidden_states.shape[1]
        mask = _additive_mask(attention_mask, seq_len, hidden_states.dtype)
        presents: list[torch.Tensor] = []
        if self.shape.family == "gpt2":
            # GPT-2 blocks do not use positions (they are learned, in the embedding), but every blocks shard
            # takes ``position_ids`` so that any runner chains any shard; this no-op keeps the input in the graph.
            hidden_states = hidden_states + (position_ids[:, :, None] * 0).to(hidden_states.dtype)
            for i, layer in enumerate(self.layers):
                hidden_states, key, value = self._gpt2_layer(
                    layer, self.start + i, hidden_states, mask, past[2 * i], past[2 * i + 1]
                )
                presents += [key, value]
        else:
            cos, sin = self._rotary(position_ids)
            for i, layer in enumerate(self.layers):
                hidden_states, key, value = self._llama_layer(
                    layer, hidden_states, mask, cos, sin, past[2 * i], past[2 * i + 1]
                )
                presents += [key, value]
        if self.hidden_float16:
            hidden_states = to_float16_values(hidden_states)
        return (hidden_states, *presents)

    def _split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, heads, self.shape.head_dim).transpose(1, 2)

    def _llama_layer(
        self,
        layer: Any,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden)
        q = self._split_heads(attn.q_proj(normed), self.shape.num_heads)
        k = self._split_heads(attn.k_proj(normed), self.shape.num_kv_heads)
        v = self._split_heads(attn.v_proj(normed), self.shape.num_kv_heads)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        key = torch.cat((past_key, k), dim=2)
        value = torch.cat((past_value, v), dim=2)
        out = _attend(q, key, value, mask, float(self.shape.head_dim) ** -0.5)
        hidden = hidden + attn.o_proj(out)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, key, value

    def _gpt2_layer(
        self,
        layer: Any,
        layer_idx: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = layer.attn
        qkv = attn.c_attn(layer.ln_1(hidden))
        q, k, v = qkv.split(self.shape.hidden_size, dim=2)
        q = self._split_heads(q, self.shape.num_heads)
        key = torch.cat((past_key, self._split_heads(k, self.shape.num_heads)), dim=2)
        value = torch.cat((past_value, self._split_heads(v, self.shape.num_heads)), dim=2)
        scale = float(self.shape.head_dim) ** -0.5 if self.scale_attn_weights else 1.0
        if self.inverse_layer_idx:
            scale /= float(layer_idx + 1)
        out = _attend(q, key, value, mask, scale)
        hidden = hidden + attn.c_proj(out)
        hidden = hidden + layer.mlp(layer.ln_2(hidden))
        return hidden, key, value

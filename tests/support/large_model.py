"""A seeded random Llama whose blocks shard exceeds 2 GB, built offline like ``tiny_models``.

Hidden 2048, MLP 8704, 2 KV heads, 9 layers: 62.9 M parameters a layer, 2.27 GB of fp32 blocks, which no
single ONNX protobuf can hold (2 GiB). The vocabulary is the tiny tokenizer's, so the embed and head
shards stay small and the test's time goes to the one large shard.

Run as a script (``python -m tests.support.large_model DIR``) so the building process's memory is
returned to the system before the export starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tests.support.tiny_models import VOCAB, tiny_tokenizer

LAYERS = 9
HIDDEN = 2048
INTERMEDIATE = 8704


def config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.02,
    )


def matrix_bytes() -> int:
    """fp32 bytes of the weight matrices of the blocks of ``config()`` (their norms, all ones, are one
    initializer after torch's deduplication): what the blocks shard's weights file holds at least."""
    c = config()
    head_dim = c.hidden_size // c.num_attention_heads
    attention = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.num_key_value_heads * head_dim
    mlp = 3 * c.hidden_size * c.intermediate_size
    return 4 * c.num_hidden_layers * (attention + mlp)


def build(directory: Path, seed: int = 0) -> Path:
    """Write the model (safetensors, fp32) and the tiny tokenizer to ``directory``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(), dtype=torch.float32)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


if __name__ == "__main__":
    build(Path(sys.argv[1]))

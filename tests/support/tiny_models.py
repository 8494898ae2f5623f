"""Tiny random models of each supported family, built offline from a config, with a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 320
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is wide and blue and deep.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The three primary colours are red, yellow and blue.",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def config_for(family: str, *, layers: int = 4, tied: bool = False, gqa: bool = True) -> PretrainedConfig:
    common = {"vocab_size": VOCAB, "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2}
    if family == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2 if gqa else 4,
            max_position_embeddings=256,
            rope_theta=10000.0,
            **common,
        )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=1 if gqa else 4,
            max_position_embeddings=256,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=256, **common)
    raise ValueError(family)


def build(
    directory: Path, family: str, *, layers: int = 4, tied: bool = False, gqa: bool = True, seed: int = 0
) -> Path:
    """Write a random model of ``family`` with its tokenizer to ``directory`` and return it."""
    torch.manual_seed(seed)
    config = config_for(family, layers=layers, tied=tied, gqa=gqa)
    model = AutoModelForCausalLM.from_config(config)
    # Larger-than-default weights make the logits spread out, so greedy choices are not near-ties.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory

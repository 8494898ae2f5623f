"""Generation over a local chain: greedy, seeded sampling, top-p, stop strings, max tokens, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from python_peer.chain import LocalChain
from python_peer.errors import PeerError
from python_peer.generate import Generation, SamplingParams, generate, sample, stream
from python_peer.tokenizer import ModelTokenizer, TemplateError
from tests.support.procs import run_cli


@pytest.fixture(scope="module")
def chain(tiny_llama_export: Path) -> LocalChain:
    return LocalChain(tiny_llama_export)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_export: Path, chain: LocalChain) -> ModelTokenizer:
    return ModelTokenizer(tiny_llama_export, chain.manifest)


def prompt(tokenizer: ModelTokenizer) -> list[int]:
    return tokenizer.encode(
        tokenizer.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    )


def test_chat_template_matches_transformers(tiny_llama: Path, tokenizer: ModelTokenizer) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reference = AutoTokenizer.from_pretrained(str(tiny_llama)).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.render_chat(messages) == reference


def test_greedy_is_deterministic_and_streams_its_text(chain, tokenizer) -> None:
    params = SamplingParams(max_tokens=12)
    result = Generation()
    pieces = list(stream(chain, tokenizer, prompt(tokenizer), params, result))
    assert "".join(pieces) == result.text
    assert result.text == generate(chain, tokenizer, prompt(tokenizer), params).text
    assert len(result.token_ids) <= 12 and result.prompt_tokens == len(prompt(tokenizer))


def test_seeded_sampling_is_reproducible(chain, tokenizer) -> None:
    a = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=10, temperature=1.5, seed=7))
    b = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=10, temperature=1.5, seed=7))
    c = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=10, temperature=1.5, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert picks == {0, 1}
    assert sample(logits, SamplingParams(), rng) == 0


def test_max_tokens_and_stop_strings(chain, tokenizer) -> None:
    full = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=20))
    assert len(full.token_ids) == 20 and full.finish_reason == "length", (
        "pick a prompt the tiny model does not end"
    )
    short = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=3))
    assert short.token_ids == full.token_ids[:3]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    stopped = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=20, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]


def test_eos_stops_generation(chain, tokenizer) -> None:
    ids = prompt(tokenizer)
    first = generate(chain, tokenizer, ids, SamplingParams(max_tokens=1)).token_ids[0]
    eos_tokenizer = ModelTokenizer(chain.model_dir, chain.manifest)
    eos_tokenizer.eos_token_ids = frozenset({first})
    result = generate(chain, eos_tokenizer, ids, SamplingParams(max_tokens=5))
    assert result.token_ids == () and result.finish_reason == "stop"


def test_bad_parameters_are_refused(chain, tokenizer) -> None:
    for kwargs in ({"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(PeerError):
            SamplingParams(**kwargs)
    with pytest.raises(PeerError, match="empty"):
        generate(chain, tokenizer, [], SamplingParams())


def test_template_raise_exception_is_a_typed_error(tokenizer: ModelTokenizer) -> None:
    broken = tokenizer
    original = broken.chat_template
    broken.chat_template = "{{ raise_exception('only user messages') }}"
    try:
        with pytest.raises(TemplateError, match="only user messages"):
            broken.render_chat([{"role": "system", "content": "x"}])
    finally:
        broken.chat_template = original


def test_chat_command_prints_the_reply_alone(tiny_llama_export: Path, chain, tokenizer) -> None:
    result = run_cli(
        ["chat", "What is the capital of France?", "--model", str(tiny_llama_export), "--max-tokens", "8"]
    )
    assert result.returncode == 0, result.stderr
    expected = generate(chain, tokenizer, prompt(tokenizer), SamplingParams(max_tokens=8)).text
    assert result.stdout == expected + "\n"


def test_help_lists_the_subcommands() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    for command in ("export", "chat", "up"):
        assert command in result.stdout

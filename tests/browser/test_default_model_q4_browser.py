"""The default model's q4 export (the GGUF's own grid: 4-bit MatMulNBits with their block-sum
correction, the 8-bit head dequantized when the session loads, the dequantizing gather of the
embedding) runs whole in onnxruntime-web
(WASM) through the runtime's runners, with the logits of native onnxruntime."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from python_peer.chain import LocalChain
from tests.support.browser import Harness, script
from tests.support.procs import run_cli
from tests.support.static_server import MOUNTS

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

PREFIX = "/q4-model/"
CHAIN_LOGITS_JS = script("quantized/chain_logits")


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from python_peer.up import DEFAULT_SPANS

    out = tmp_path_factory.mktemp("q4-browser") / "SmolLM2-135M-Instruct"
    result = run_cli(["export", "--out", str(out), "--spans", DEFAULT_SPANS, "--dtype", "q4"], timeout=1200)
    assert result.returncode == 0, result.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MOUNTS, PREFIX, out)
        yield out


def test_q4_default_model_runs_in_wasm_with_native_logits(harness: Harness, q4_model: Path) -> None:
    from python_peer.tokenizer import ModelTokenizer

    chain = LocalChain(q4_model)
    ids = ModelTokenizer(q4_model, chain.manifest).encode("The capital of France is")
    session = chain.open(1)
    native = chain.step(session, np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))[0]
    chain.close(session)

    result = harness.page.evaluate(CHAIN_LOGITS_JS, {"base": PREFIX, "ids": ids})
    got = np.frombuffer(base64.b64decode(result["data"]), dtype=np.float32).reshape(result["dims"])[0]
    assert got.shape == native.shape
    diff = float(np.abs(got - native).max())
    agree = float((got.argmax(-1) == native.argmax(-1)).mean())
    print(f"\ndefault model q4, WASM vs native: max logit diff {diff:.3g}, argmax agreement {agree}")
    harness.note(
        f"default model q4 in WASM: {len(ids)} tokens, max logit diff {diff:.3g}, argmax agreement {agree}"
    )
    assert got.argmax(-1)[-1] == native.argmax(-1)[-1]
    assert agree == 1.0 and diff < 1e-2  # float32 activations everywhere: only summation order differs
    assert harness.take_errors() == []

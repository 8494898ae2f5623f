"""Signed answers: a serving peer's commitment to what it returned for one FORWARD step.

Standard library only (the browser runs it under Pyodide). A peer signs, with ``ANSWER_CONTEXT``, an
``Answer``: which session, step and span it served, a hash of everything the session sent it so far (the
*input chain*, so the commitment pins the KV cache's history as well as the step's own input) and the
sha256 of the output tensor it returned. The commitment travels in the RESULT frame's metadata
(``ANSWER_META_KEY``, docs/wire.md). A client recomputes every field from what it sent and received and
checks the signature; an answer that does not match is a hop failure. Signed answers make a wrong one
attributable: two answers to the same input chain with different outputs are the core of an ``evidence``
entry (``evidence.py``).

Tensors are hashed over their canonical wire bytes (``tensor_digest``: dtype, shape, little-endian
data), exactly what the frame carried, so Python and JS agree without re-encoding anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .canonical import MAX_LAYER, MAX_SAFE_INT, MODEL_RE
from .errors import LedgerError
from .ledger_fields import (
    Rejection,
    Sign,
    Verify,
    context_bytes,
    int_field,
    object_fields,
    peer_field,
    sig_field,
    verified,
)
from .receipts import SESSION_RE
from .wire import WireTensor

ANSWER_CONTEXT = "ai4all/answer/v1"
ANSWER_META_KEY = "answer"  # the RESULT frame's metadata key holding ``{"body": ..., "signature": ...}``
INPUT_CHAIN_START = "0" * 64  # the input chain before a session's step 0
_HEX64 = frozenset("0123456789abcdef")

_ANSWER_KEYS = frozenset(
    {"session", "model", "start", "end", "step", "tokens", "input", "output", "client", "server"}
)
_SIGNED_KEYS = frozenset({"body", "signature"})


def _hash_field(what: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX64:
        raise LedgerError(f"{what} must be a sha256 (64 lowercase hex digits)")
    return value


def tensor_digest(dtype: str, shape: tuple[int, ...] | list[int], data: bytes) -> str:
    """sha256 of a tensor's canonical bytes: ``{"dtype":..,"shape":[..]}`` (canonical JSON), a newline,
    then the raw little-endian data exactly as the wire carries it."""
    head = json.dumps({"dtype": dtype, "shape": list(shape)}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(head.encode())
    digest.update(b"\n")
    digest.update(data)
    return digest.hexdigest()


def wire_digest(tensor: WireTensor) -> str:
    """``tensor_digest`` of a tensor as the frame carries it."""
    return tensor_digest(tensor.dtype, tensor.shape, tensor.data)


def chain_input(previous: str, step_digests: list[str] | tuple[str, ...]) -> str:
    """The input chain after one more step: sha256 of the previous chain and the step's input tensor
    digests (hidden states, attention mask, position ids, in that order), joined by ``:``."""
    return hashlib.sha256(":".join([previous, *step_digests]).encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    """What a serving peer commits to for FORWARD ``step`` of ``session`` on blocks ``[start, end)``.

    ``input`` is the input chain through this step (``chain_input``), ``output`` the ``tensor_digest`` of
    the hidden states returned, ``tokens`` the step's sequence length, ``client`` who asked.
    """

    session: str
    model: str
    start: int
    end: int
    step: int
    tokens: int
    input: str
    output: str
    client: str
    server: str

    def __post_init__(self) -> None:
        if not isinstance(self.session, str) or SESSION_RE.match(self.session) is None:
            raise LedgerError("answer session must be 32 lowercase hex digits (the 16-byte session id)")
        if not isinstance(self.model, str) or MODEL_RE.match(self.model) is None:
            raise LedgerError(f"answer model {self.model!r:.80} is not a model name")
        int_field("answer start", self.start, 0, MAX_LAYER - 1)
        int_field("answer end", self.end, self.start + 1, MAX_LAYER)
        int_field("answer step", self.step, 0, 2**32 - 1)
        int_field("answer tokens", self.tokens, 0, MAX_SAFE_INT)
        _hash_field("answer input", self.input)
        _hash_field("answer output", self.output)
        peer_field("answer client", self.client)
        peer_field("answer server", self.server)
        if self.client == self.server:
            raise LedgerError("an answer's client and server must be different identities")

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "step": self.step,
            "tokens": self.tokens,
            "input": self.input,
            "output": self.output,
            "client": self.client,
            "server": self.server,
        }

    def signing_bytes(self) -> bytes:
        """What the server signs: ``ANSWER_CONTEXT``, a newline, the canonical answer."""
        return context_bytes(ANSWER_CONTEXT, self.to_dict())

    @property
    def question(self) -> tuple[str, int, int, int, str]:
        """What two answers must share to be comparable: model, span, step and input chain."""
        return (self.model, self.start, self.end, self.step, self.input)

    @classmethod
    def from_dict(cls, data: object) -> Answer:
        a = object_fields("an answer", data, _ANSWER_KEYS)
        return cls(
            a["session"],
            a["model"],
            a["start"],
            a["end"],
            a["step"],
            a["tokens"],
            a["input"],
            a["output"],
            a["client"],
            a["server"],
        )


@dataclass(frozen=True)
class SignedAnswer:
    """An ``Answer`` with its server's signature: the commitment as carried in frames and evidence."""

    answer: Answer
    signature: str

    def __post_init__(self) -> None:
        sig_field("answer signature", self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"body": self.answer.to_dict(), "signature": self.signature}

    @classmethod
    def from_dict(cls, data: object) -> SignedAnswer:
        s = object_fields("a signed answer", data, _SIGNED_KEYS)
        return cls(Answer.from_dict(s["body"]), s["signature"])

    def check(self, verify: Verify) -> Rejection | None:
        """None if the server's signature covers this answer."""
        if not verified(verify, self.answer.server, self.answer.signing_bytes(), self.signature):
            return Rejection(
                "bad_signature", f"answer of {self.answer.server[:12]}… is not signed by its server"
            )
        return None


def sign_answer(answer: Answer, sign: Sign) -> SignedAnswer:
    """The server's commitment to ``answer``; ``sign`` is its key (``Identity.sign``)."""
    return SignedAnswer(answer, sign(answer.signing_bytes()))


def read_answer(meta: dict[str, Any], server: str) -> SignedAnswer | Rejection:
    """The signed answer a RESULT's metadata carries (from ``server``), parsed but not yet checked."""
    raw = meta.get(ANSWER_META_KEY)
    if raw is None:
        return Rejection("unsigned", f"peer {server[:12]}… returned an answer without a signature")
    try:
        return SignedAnswer.from_dict(raw)
    except LedgerError as exc:
        return Rejection("malformed", f"peer {server[:12]}…'s answer signature is malformed: {exc}")


def check_answer(signed: SignedAnswer, expected: Answer, verify: Verify) -> SignedAnswer | Rejection:
    """The client's check of a signed answer (``read_answer``): its body is exactly ``expected`` (what the
    client computed from what it sent and got back) and its signature is the server's."""
    if signed.answer != expected:
        fields = [k for k, v in signed.answer.to_dict().items() if expected.to_dict()[k] != v]
        return Rejection(
            "wrong_answer",
            f"peer {expected.server[:12]}… signed an answer that differs from what it returned in {fields}",
        )
    return signed.check(verify) or signed


__all__ = [
    "ANSWER_CONTEXT",
    "ANSWER_META_KEY",
    "INPUT_CHAIN_START",
    "Answer",
    "SignedAnswer",
    "chain_input",
    "check_answer",
    "read_answer",
    "sign_answer",
    "tensor_digest",
    "wire_digest",
]

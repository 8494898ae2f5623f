"""Evidence: a settled disagreement between serving peers, as a ledger entry body (kind ``evidence``).

Standard library only. A client that spot-checked a hop (``python_peer/spot_check.py``) and found its
answer out of tolerance with a second peer's, confirmed by a third, writes an ``Evidence`` body into its
own log: the liar's signed answer and the two signed answers that agree with each other and not with it.
Every node checks it with ``check_evidence`` (``rules.py``): the three answers are signed by their
servers, were given to the evidence's author, answer the same question (model, span, step and input
chain), come from three different servers, and the liar's output hash differs from both others'.

What a node can check is that three peers signed answers to one question and that one differs; that the
two others agree *within tolerance* is the author's word (outputs differ in their last bits between
runtimes, so hashes of honest outputs need not be equal). Consequences are therefore limited to what the
author could do anyway (not paying the liar for that session) until several authors agree
(``reputation.py``; docs/trust.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .answers import SignedAnswer
from .errors import LedgerError
from .ledger_fields import Rejection, Verify, object_fields

HONEST_ANSWERS = 2  # the checking peer's and the settling peer's
_EVIDENCE_KEYS = frozenset({"kind", "liar", "honest"})


@dataclass(frozen=True)
class Evidence:
    """The liar's signed answer and the ``HONEST_ANSWERS`` signed answers that settled it."""

    liar: SignedAnswer
    honest: tuple[SignedAnswer, ...]
    kind: str = field(default="evidence", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.liar, SignedAnswer) or not isinstance(self.honest, tuple):
            raise LedgerError("evidence holds a signed answer and a tuple of signed answers")
        if len(self.honest) != HONEST_ANSWERS or not all(isinstance(h, SignedAnswer) for h in self.honest):
            raise LedgerError(f"evidence holds exactly {HONEST_ANSWERS} honest signed answers")

    @property
    def accused(self) -> str:
        """The liar's peer id."""
        return self.liar.answer.server

    @property
    def session(self) -> str:
        """The liar's session (hex): the one it earns nothing for."""
        return self.liar.answer.session

    @property
    def client(self) -> str:
        return self.liar.answer.client

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "evidence",
            "liar": self.liar.to_dict(),
            "honest": [h.to_dict() for h in self.honest],
        }

    @classmethod
    def from_dict(cls, data: object) -> Evidence:
        body = object_fields("an evidence body", data, _EVIDENCE_KEYS)
        honest = body["honest"]
        if not isinstance(honest, list):
            raise LedgerError("evidence honest must be a list of signed answers")
        return cls(SignedAnswer.from_dict(body["liar"]), tuple(SignedAnswer.from_dict(h) for h in honest))


def check_evidence(author: str, evidence: Evidence, verify: Verify) -> Rejection | None:
    """Whether ``evidence`` in ``author``'s log proves a disagreement; a ``Rejection`` naming the flaw."""
    answers = [evidence.liar, *evidence.honest]
    liar = evidence.liar.answer
    for signed in answers:
        a = signed.answer
        if a.client != author:
            return Rejection(
                "bad_evidence", "evidence carries only answers given to its author (the answers' client)"
            )
        if a.question != liar.question:
            return Rejection(
                "bad_evidence",
                f"answer of {a.server[:12]}… answers another question (model, span, step or input differ)",
            )
    servers = [s.answer.server for s in answers]
    if len(set(servers)) != len(servers):
        return Rejection("bad_evidence", "evidence needs answers from three different servers")
    for signed in evidence.honest:
        if signed.answer.output == liar.output:
            return Rejection(
                "bad_evidence", f"the accused's output equals {signed.answer.server[:12]}…'s: no disagreement"
            )
    for signed in answers:
        rejection = signed.check(verify)
        if rejection is not None:
            return rejection
    return None


__all__ = ["HONEST_ANSWERS", "Evidence", "check_evidence"]

"""What the browser's ledger checks before appending the evidence its spot checks settled
(``BrowserLedgerCore.evidence_claims``, called by ``BrowserLedger.appendEvidence`` under Pyodide): the
three answers' signatures to verify, and a refusal, with the reason every node would give, of evidence
that is not this node's to write or proves no disagreement."""

from __future__ import annotations

import json

import pytest

from python_peer.core.answers import Answer, sign_answer
from python_peer.core.browser_ledger import BrowserLedgerCore, call_on
from python_peer.core.errors import LedgerError
from python_peer.core.evidence import Evidence
from python_peer.identity import Identity, verify


def answer(server: Identity, client: str, output: str) -> dict[str, object]:
    body = Answer("ab" * 16, "tiny-llama", 1, 3, 0, 7, "1" * 64, output, client, server.peer_id)
    return sign_answer(body, server.sign).to_dict()


def evidence(client: str, *, honest_output: str = "3" * 64) -> dict[str, object]:
    liar, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    return {
        "kind": "evidence",
        "liar": answer(liar, client, "2" * 64),
        "honest": [answer(a, client, honest_output), answer(b, client, honest_output)],
    }


def test_the_claims_are_the_three_answers_signatures() -> None:
    me = Identity.generate()
    core = BrowserLedgerCore(me.peer_id, 4)
    body = evidence(me.peer_id)
    claims = core.evidence_claims(body)
    parsed = Evidence.from_dict(body)
    servers = [parsed.liar.answer.server, *(h.answer.server for h in parsed.honest)]
    assert [c[0] for c in claims] == servers
    for peer, message, signature in claims:
        verify(peer, message.encode(), signature)  # raises if not
    # through the JSON boundary JavaScript uses
    assert json.loads(call_on(core, "evidence_claims", json.dumps({"evidence": body})))["ok"] == claims


def test_evidence_that_is_not_this_nodes_or_proves_nothing_is_refused() -> None:
    me = Identity.generate()
    core = BrowserLedgerCore(me.peer_id, 4)
    with pytest.raises(LedgerError, match="given to its author") as caught:
        core.evidence_claims(evidence(Identity.generate().peer_id))
    assert caught.value.code == "bad_evidence"
    with pytest.raises(LedgerError, match="no disagreement"):
        core.evidence_claims(evidence(me.peer_id, honest_output="2" * 64))
    with pytest.raises(LedgerError):
        core.evidence_claims({"kind": "evidence", "liar": {}, "honest": []})
    refused = json.loads(call_on(core, "evidence_claims", json.dumps({"evidence": {"kind": "grant"}})))
    assert refused["error"]["type"] == "LedgerError"

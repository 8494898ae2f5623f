"""Signed answers and evidence: the golden vectors, the rules on forged evidence, and the consequences.

The attacks speak only the documented formats (docs/ledger.md, docs/wire.md): entries are JSON read from
``tests/vectors/ledger/evidence.json`` or built by hand and pushed to a serving peer as a GOSSIP ``push``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from python_peer.core.answers import SignedAnswer, chain_input, tensor_digest
from python_peer.core.balances import compute
from python_peer.core.entries import Entry
from python_peer.core.errors import LedgerError
from python_peer.core.evidence import Evidence
from python_peer.core.receipts import Receipt, ReceiptBody
from python_peer.core.reputation import EXCLUDED, GOOD, SUSPECT, reputation
from python_peer.core.rules import check_body
from python_peer.identity import Identity
from python_peer.ledger_service import LedgerService
from python_peer.ledger_store import native_verify
from tests.support.liars import accuse

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads((VECTORS / "ledger" / "evidence.json").read_text(encoding="utf-8"))


def test_vectors_on_disk_are_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "evidence.json"
    script = VECTORS / "generate_evidence.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's core, not an installed copy
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, cwd=ROOT, env=env)
    assert out.read_text(encoding="utf-8") == (VECTORS / "ledger" / "evidence.json").read_text(
        encoding="utf-8"
    )


def test_digests_chain_and_answer_signature_match_the_vectors(vectors: dict[str, Any]) -> None:
    t = vectors["tensor"]
    assert tensor_digest(t["dtype"], t["shape"], bytes.fromhex(t["data_hex"])) == t["digest"]
    c = vectors["input_chain"]
    assert chain_input(c["previous"], c["step_digests"]) == c["chain"]
    signed = SignedAnswer.from_dict(vectors["answer"]["signed"])
    assert signed.answer.signing_bytes().hex() == vectors["answer"]["signing_bytes_hex"]
    assert signed.check(native_verify) is None
    assert signed.answer.input == c["chain"] and signed.answer.server == vectors["answer"]["server"]


def test_the_valid_evidence_entry_passes_the_rules(vectors: dict[str, Any]) -> None:
    entry = Entry.from_dict(vectors["evidence"]["entry"])
    assert entry.hash == vectors["evidence"]["hash"] and isinstance(entry.body, Evidence)
    assert check_body(entry, native_verify) is None
    assert entry.to_dict() == vectors["evidence"]["entry"], "canonical round trip"


@pytest.mark.parametrize(
    "name",
    ["bad_signature", "same_outputs", "mismatched_input", "answers_of_another_client", "one_server_twice"],
)
def test_forged_evidence_is_rejected_naming_the_flaw(vectors: dict[str, Any], name: str) -> None:
    case = next(c for c in vectors["forged"] if c["name"] == name)
    entry = Entry.from_dict(case["entry"])
    rejection = check_body(entry, native_verify)
    assert rejection is not None and rejection.code == case["rejection"], rejection


def test_forged_evidence_pushed_to_a_peer_is_not_stored_and_accuses_no_one(vectors: dict[str, Any]) -> None:
    """The push a client sends before its first session (docs/mesh.md): valid entries are stored, forged
    evidence is skipped, and reputations follow only what was stored."""
    peer = LedgerService.open(None, Identity.generate(), claim_grant=False)
    try:
        forged = [c["entry"] for c in vectors["forged"]]
        for one in forged:
            assert peer.accept_entries([one]) == 0
        liar = Entry.from_dict(vectors["evidence"]["entry"]).body
        assert isinstance(liar, Evidence)
        assert reputation(peer.store.report(), liar.accused).level == GOOD
        assert peer.accept_entries([vectors["evidence"]["entry"]]) == 1
        found = reputation(peer.store.report(), liar.accused)
        assert found.level == SUSPECT and found.sessions == {(liar.client, liar.session)}
    finally:
        peer.close()


def test_malformed_evidence_bodies_are_refused_with_a_clear_error(vectors: dict[str, Any]) -> None:
    good = vectors["evidence"]["entry"]
    for body in (
        {**good["body"], "honest": good["body"]["honest"][:1]},  # one honest answer is not a settlement
        {**good["body"], "extra": 1},
        {**good["body"], "honest": "x"},
        {**good["body"], "liar": {"body": {}, "signature": "00"}},
    ):
        with pytest.raises(LedgerError, match=r"evidence|answer|fields"):
            Entry.from_dict({**good, "body": body})


def test_evidence_voids_the_liars_receipt_for_that_session_only_and_two_authors_exclude() -> None:
    liar, honest = Identity.generate(), [Identity.generate(), Identity.generate()]
    client, other_client = Identity.generate(), Identity.generate()
    session = "e" * 32

    def receipt(sess: str) -> Entry:
        from python_peer.core.entries import GENESIS, make_entry

        r = Receipt(sess, "toy-model", 1, 3, 10, client.peer_id, liar.peer_id, 1_780_000_000_000)
        body = ReceiptBody(r, client.sign(r.signing_bytes()), liar.sign(r.signing_bytes()))
        return make_entry(liar.peer_id, 1, GENESIS, r.time, body, liar.sign)

    evidence = accuse(client, liar, honest, session)
    lying, other_session = receipt(session), receipt("f" * 32)
    report = compute([evidence, lying])
    assert report.ignored[lying.hash].code == "evidence"
    assert reputation(report, liar.peer_id).level == SUSPECT
    # evidence voids only its author's receipt with the liar for that session, not another session's
    assert other_session.hash not in compute([evidence, other_session]).ignored
    # nor another client's word about it
    by_other = accuse(other_client, liar, honest, session)
    assert lying.hash not in compute([by_other, lying]).ignored
    # a second, independent client's evidence excludes the liar
    assert reputation(compute([evidence, by_other]), liar.peer_id).level == EXCLUDED


def test_ledger_show_lists_the_evidence_against_a_peer_and_its_reputation(
    vectors: dict[str, Any], tmp_path: Path
) -> None:
    from python_peer.ledger_store import LEDGER_FILE, LedgerStore
    from tests.support.procs import run_cli

    entry = Entry.from_dict(vectors["evidence"]["entry"])
    assert isinstance(entry.body, Evidence)
    with LedgerStore.open(tmp_path / LEDGER_FILE) as store:
        assert store.insert(entry, now=entry.time).status == "stored"
    accused = entry.body.accused
    done = run_cli(
        ["ledger", "show", accused, "--data-dir", str(tmp_path)], timeout=60, env={"COLUMNS": "200"}
    )
    assert done.returncode == 0, done.stderr
    assert "reputation: suspect (1 evidence entries by 1 clients)" in done.stdout
    assert entry.body.session in done.stdout and entry.hash[:12] in done.stdout
    done = run_cli(
        ["ledger", "show", entry.author, "--data-dir", str(tmp_path)], timeout=60, env={"COLUMNS": "200"}
    )
    assert done.returncode == 0, done.stderr
    assert f"evidence: {accused[:12]}… lied at step 4" in done.stdout and "reputation: good" in done.stdout

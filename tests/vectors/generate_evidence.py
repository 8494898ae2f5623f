"""Regenerate the golden vectors of signed answers and evidence: ``python tests/vectors/generate_evidence.py``.

``ledger/evidence.json`` is the contract for an implementer of ``core/answers.py`` and ``core/evidence.py``
(docs/wire.md, docs/ledger.md): a tensor and its digest, an input chain, a signed answer with its signing
bytes, a valid evidence entry with its hash, and forged variants with the rejection each must get.
Everything is fixed (keys from seeds, fixed times), so the file is what this script writes
(``tests/test_evidence.py`` checks it, and checks every case under the rules).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any

from python_peer.core.answers import Answer, chain_input, sign_answer, tensor_digest
from python_peer.core.entries import GENESIS, make_entry
from python_peer.core.evidence import Evidence
from python_peer.identity import Identity

OUT = Path(__file__).parent / "ledger" / "evidence.json"
TIME = 1_780_000_000_000
MODEL = "toy-model"


def identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def _answer(server: Identity, client: Identity, session: str, output: str, chain: str) -> Answer:
    return Answer(session, MODEL, 1, 3, 4, 1, chain, output, client.peer_id, server.peer_id)


def vectors() -> dict[str, Any]:
    client, liar, checker, settler = identity(1), identity(2), identity(3), identity(4)
    hidden = [(i - 6) / 4 for i in range(12)]
    data = struct.pack("<12f", *hidden)
    digest = tensor_digest("float32", (1, 3, 4), data)
    tensor: dict[str, Any] = {
        "dtype": "float32",
        "shape": [1, 3, 4],
        "data_hex": data.hex(),
        "digest": digest,
    }
    mask = struct.pack("<3q", 1, 1, 1)
    positions = struct.pack("<3q", 0, 1, 2)
    step_digests = [
        digest,
        tensor_digest("int64", (1, 3), mask),
        tensor_digest("int64", (1, 3), positions),
    ]
    chain = chain_input("0" * 64, step_digests)
    outputs = {
        "lie": tensor_digest("float32", (1, 3, 4), bytes(48)),
        "honest": digest,
        "honest_other_runtime": tensor_digest(
            "float32", (1, 3, 4), struct.pack("<12f", *[h + 1e-4 for h in hidden])
        ),
    }
    sessions = ["11" * 16, "22" * 16, "33" * 16]
    signed_liar = sign_answer(_answer(liar, client, sessions[0], outputs["lie"], chain), liar.sign)
    signed_checker = sign_answer(
        _answer(checker, client, sessions[1], outputs["honest"], chain), checker.sign
    )
    signed_settler = sign_answer(
        _answer(settler, client, sessions[2], outputs["honest_other_runtime"], chain), settler.sign
    )

    def entry(body: Evidence | dict[str, Any], author: Identity = client) -> dict[str, Any]:
        if isinstance(body, Evidence):
            return make_entry(author.peer_id, 1, GENESIS, TIME, body, author.sign).to_dict()
        # a hand-made body the constructors would refuse to build: signed as raw JSON, like an attacker
        from python_peer.core.canonical import signing_bytes
        from python_peer.core.entries import ENTRY_CONTEXT

        unsigned = {"author": author.peer_id, "seq": 1, "prev": GENESIS, "time": TIME, "body": body}
        return {**unsigned, "signature": author.sign(signing_bytes(ENTRY_CONTEXT, unsigned))}

    valid = Evidence(signed_liar, (signed_checker, signed_settler))
    tampered = signed_liar.to_dict()
    tampered["body"] = {**tampered["body"], "output": "ab" * 32}  # the liar never signed this
    other_input = sign_answer(
        _answer(checker, client, sessions[1], outputs["honest"], chain_input(chain, step_digests)),
        checker.sign,
    )
    same_output = sign_answer(_answer(liar, client, sessions[0], outputs["honest"], chain), liar.sign)
    stranger = identity(5)
    foreign = sign_answer(_answer(liar, stranger, sessions[0], outputs["lie"], chain), liar.sign)
    forged: dict[str, tuple[Evidence | dict[str, Any], str]] = {
        "bad_signature": (
            {
                "kind": "evidence",
                "liar": tampered,
                "honest": [signed_checker.to_dict(), signed_settler.to_dict()],
            },
            "bad_signature",
        ),
        "same_outputs": (Evidence(same_output, (signed_checker, signed_settler)), "bad_evidence"),
        "mismatched_input": (Evidence(signed_liar, (other_input, signed_settler)), "bad_evidence"),
        "answers_of_another_client": (Evidence(foreign, (signed_checker, signed_settler)), "bad_evidence"),
        "one_server_twice": (Evidence(signed_liar, (signed_checker, signed_checker)), "bad_evidence"),
    }
    return {
        "tensor": tensor,
        "input_chain": {"previous": "0" * 64, "step_digests": step_digests, "chain": chain},
        "answer": {
            "signed": signed_checker.to_dict(),
            "signing_bytes_hex": signed_checker.answer.signing_bytes().hex(),
            "server": checker.peer_id,
        },
        "evidence": {
            "entry": entry(valid),
            "hash": make_entry(client.peer_id, 1, GENESIS, TIME, valid, client.sign).hash,
        },
        "forged": [
            {"name": name, "entry": entry(body), "rejection": code} for name, (body, code) in forged.items()
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.write_text(json.dumps(vectors(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The minting attack of issue 11, replayed with nothing but docs/ledger.md and docs/signaling.md: two fresh
identities (no grant) co-sign a receipt for 2**24 tokens through 30 blocks, the server's identity logs it at
seq 1 and pushes it to a real serving peer as a signaling ``signal`` carrying a gossip ``entries`` message.
The peer stores it (it is valid) and credits nothing from it; honest balances and bonuses do not move.

Everything the attacker sends is built here by hand: pynacl keys, canonical JSON as the docs define it
(sorted keys, no whitespace, UTF-8; all our content is ASCII), the contexts of the signed bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from nacl.signing import SigningKey

from tests.support.procs import Node, PeerProc, run_cli

MODEL = "smollm2-135m"
ZEROS = "0" * 64


def canonical(obj: Any) -> bytes:
    """docs/signaling.md, "Canonical JSON": keys sorted, no whitespace, UTF-8, integers only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Key:
    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.id = self.key.verify_key.encode().hex()

    def sign(self, context: str, body: Any) -> str:
        return self.key.sign(context.encode() + b"\n" + canonical(body)).signature.hex()


def entry(author: Key, seq: int, prev: str, when: int, body: dict[str, Any]) -> dict[str, Any]:
    unsigned = {"author": author.id, "body": body, "prev": prev, "seq": seq, "time": when}
    return {**unsigned, "signature": author.sign("ai4all/ledger/entry/v1", unsigned)}


def entry_hash(e: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in e.items() if k != "signature"}
    return hashlib.sha256(b"ai4all/ledger/entry/v1\n" + canonical(unsigned)).hexdigest()


def receipt(client: Key, server: Key, start: int, end: int, tokens: int, when: int) -> dict[str, Any]:
    r = {
        "session": os.urandom(16).hex(),
        "model": MODEL,
        "start": start,
        "end": end,
        "tokens": tokens,
        "client": client.id,
        "server": server.id,
        "time": when,
    }
    return {
        "kind": "receipt",
        "receipt": r,
        "client_sig": client.sign("ai4all/ledger/receipt/v1", r),
        "server_sig": server.sign("ai4all/ledger/receipt/v1", r),
    }


def grant(author: Key, bits: int) -> dict[str, Any]:
    """docs/ledger.md, "grant": a nonce whose proof-of-work hash starts with ``bits`` zero bits."""
    nonce = 0
    while True:
        digest = hashlib.sha256(
            b"ai4all/ledger/grant-pow/v1\n" + canonical({"author": author.id, "nonce": nonce})
        ).digest()
        if int.from_bytes(digest, "big") >> (256 - bits) == 0:
            return {"kind": "grant", "nonce": nonce}
        nonce += 1


async def push(node_url: str, sender: Key, to: str, entries: list[dict[str, Any]]) -> None:
    """Announce ``sender`` on the node (serving nothing) and signal ``to`` one gossip ``entries`` message."""
    async with websockets.connect(node_url) as ws:
        hello = json.loads(await ws.recv())
        now = int(time.time() * 1000)
        body = {
            "v": 1,
            "peer_id": sender.id,
            "kind": "native",
            "seq": now,
            "issued_ms": now,
            "expires_ms": now + 60_000,
            "serves": [],
            "throughput_milli": 0,
            "kv_free_tokens": 0,
            "signaling": [node_url],
        }
        proof = sender.sign("ai4all/auth/v1", {"node_id": hello["node_id"], "nonce": hello["nonce"]})
        await ws.send(
            json.dumps(
                {
                    "type": "announce",
                    "id": 1,
                    "body": body,
                    "sig": sender.sign("ai4all/announce/v1", body),
                    "proof": proof,
                }
            )
        )
        assert json.loads(await ws.recv())["type"] == "announced"
        message = {"type": "entries", "v": 1, "entries": entries, "proofs": [], "more": False}
        signed = {
            "from": sender.id,
            "to": to,
            "ts_ms": int(time.time() * 1000),
            "payload": {"kind": "ledger", "msg": message},
        }
        await ws.send(
            json.dumps({"type": "signal", "id": 2, **signed, "sig": sender.sign("ai4all/signal/v1", signed)})
        )
        while (answer := json.loads(await ws.recv()))["type"] != "ack":
            assert answer["type"] == "signal", answer  # the peer may answer with gossip of its own
        await ws.send(json.dumps({"type": "bye", "id": 3}))


def show(peer: PeerProc, who: str) -> str:
    done = run_cli(
        ["ledger", "show", who, "--data-dir", str(peer.data_dir)], timeout=60, env={"COLUMNS": "250"}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def balance(peer: PeerProc, who: str) -> int:
    done = run_cli(["ledger", "balance", who, "--units", "--data-dir", str(peer.data_dir)], timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def rarity(text: str) -> str:
    found = re.search(r"rarity bonus\s*│\s*(-?[\d.]+)", text)
    assert found, text
    return found.group(1)


def until(predicate: Any, what: str, peer: PeerProc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}:\n{peer.tail()}"


@pytest.fixture
def serving(tmp_path: Path, tiny_llama_export: Path) -> Iterator[tuple[Node, PeerProc]]:
    node = Node("node", tmp_path)
    node.wait()
    peer = PeerProc("peer", tmp_path, tiny_llama_export, [node.url], span="0-4")
    try:
        peer.wait()
        yield node, peer
    finally:
        peer.stop()
        node.stop()


def test_a_receipt_between_two_fresh_identities_credits_nothing(serving: tuple[Node, PeerProc]) -> None:
    node, peer = serving
    bits = int(os.environ["AI4ALL_LEDGER_POW_BITS"])  # the private network's rules (tests/conftest.py)
    now = int(time.time() * 1000)
    # Honest work first, pushed the same way: H (with its grant) paid S for 10 blocks x 500 tokens.
    h, s = Key(), Key()
    h_grant = entry(h, 1, ZEROS, now - 2000, grant(h, bits))
    s_work = entry(s, 1, ZEROS, now - 1000, receipt(h, s, 0, 10, 500, now - 1000))
    asyncio.run(push(node.url, s, peer.peer_id, [h_grant, s_work]))
    until(lambda: balance(peer, s.id) > 0, "the honest receipt never reached the peer", peer)
    before = {who: balance(peer, who) for who in (h.id, s.id, peer.peer_id)}
    s_rarity = rarity(show(peer, s.id))
    assert float(s_rarity) > 0  # S alone served blocks 0-9 today

    # The attack: X and M, fresh, no grant; M logs 2**24 tokens through 30 blocks at seq 1 and pushes it.
    x, m = Key(), Key()
    minted = entry(m, 1, ZEROS, now, receipt(x, m, 0, 30, 1 << 24, now))
    asyncio.run(push(node.url, m, peer.peer_id, [minted]))
    until(lambda: entry_hash(minted)[:12] in show(peer, m.id), "the minted entry was never stored", peer)

    text = show(peer, m.id)
    assert "0: the client had nothing" in text  # stored, counted, and worth nothing
    assert balance(peer, m.id) == 0 and balance(peer, x.id) == 0
    assert {who: balance(peer, who) for who in before} == before
    assert rarity(show(peer, s.id)) == s_rarity  # a receipt that credits nobody dilutes no one's rarity

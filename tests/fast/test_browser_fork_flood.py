"""The browser's ledger core (``core/browser_ledger.py``, what ``web/src/ledger/ledger.js`` calls under
Pyodide) against the two attacks of ``test_fork_flood.py`` and ``test_push_budget.py``: a neighbour's gossip
of a few dozen forks of throwaway identities must not leave the browser unable to push its own log (a
frame's metadata holds 64 KiB; every OPEN of it would be refused everywhere), and a client flooding a
browser span server with pushes (GOSSIP ``push``, OPEN's ``log``) is held to the per-neighbour entry
budget its gossip messages obey, before any pushed signature is checked (``admit_push``)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from python_peer.core import browser_ledger
from python_peer.core import ledger_exchange as lx
from python_peer.core.errors import LedgerError
from python_peer.core.gossip import GossipConfig
from python_peer.core.holds import Hold
from python_peer.core.protocol import CHANNEL_GOSSIP_BYTES, PUSH_BYTES
from python_peer.core.wire import Frame, FrameType, encode_frame
from python_peer.identity import Identity
from python_peer.ledger_store import native_verify
from tests.support.ledger import MODEL, Log

FORKS = 72  # forked throwaway identities: more than one push's worth of proofs


class Browser:
    """What ``ledger.js`` does around the core, with pynacl for WebCrypto and no disk (``persist`` commits)."""

    def __init__(self, bits: int = 4) -> None:
        self.identity = Identity.generate()
        self.peer_id = self.identity.peer_id
        self.core = browser_ledger.BrowserLedgerCore(self.peer_id, bits)

    def call(self, method: str, **args: Any) -> Any:
        out = json.loads(browser_ledger.call_on(self.core, method, json.dumps(args)))
        if "error" in out:
            raise LedgerError(out["error"]["message"], code=out["error"]["code"])
        return out["ok"]

    def verified(self, kind: str, payload: Any) -> list[list[str]]:
        claims = self.call("claims", kind=kind, payload=payload)
        return [c for c in claims if native_verify(c[0], c[1].encode(), c[2])]

    def persist(self, held: dict[str, Any]) -> Any:
        if held["journal"]:
            self.call("commit")
        return held["result"]

    def sign(self, op: str, args: dict[str, Any]) -> Any:
        prepared = self.call("prepare", op=op, args=args, verified=[])
        sigs = [self.identity.sign(m.encode()) for m in prepared["messages"]]
        own = [[self.peer_id, m, s] for m, s in zip(prepared["messages"], sigs, strict=True)]
        args = {**args, "now": prepared["now"]}
        messages = prepared["messages"]
        return self.persist(
            self.call("perform", op=op, args=args, messages=messages, signatures=sigs, verified=own)
        )

    def grant(self) -> None:
        start = 0
        while (nonce := self.call("mine", start=start, limit=1000)) is None:
            start += 1000
        self.sign("grant", {"nonce": nonce})

    def gossip(self, peer: str, message: Any) -> None:
        held = self.call(
            "gossip_receive",
            peer=peer,
            message=message,
            verified=self.verified("gossip", message),
            max_message_bytes=CHANNEL_GOSSIP_BYTES,
        )
        if self.persist(held)["publish"]:
            self.sign("fork_proofs", {})

    def push(self, sender: str, entries: list[Any]) -> int:
        """``BrowserLedger.acceptEntries(entries, sender)``: admitted, checked, stored."""
        self.call("admit_push", sender=sender, count=len(entries))
        held = self.call("accept_entries", entries=entries, verified=self.verified("push", entries))
        return int(self.persist(held)["stored"])


def _holds(author: Identity, server: str, count: int, now: int) -> list[Any]:
    """``count`` valid entries of a new log of ``author`` (holds cost no proof of work), in seq order."""
    log = Log(author)
    return [
        log.add(Hold(os.urandom(16).hex(), server, MODEL, 0, 1, 1_010, now + 600_000), time=now).to_dict()
        for _ in range(count)
    ]


def test_forks_gossiped_by_a_neighbour_leave_the_browser_able_to_push_its_log() -> None:
    victim = Browser()
    victim.grant()
    now = browser_ledger.wall_clock_ms()
    liars = [Identity.generate() for _ in range(FORKS)]
    # each throwaway identity signs two different seq-1 holds: a fork
    pairs = [_holds(liar, victim.peer_id, 1, now) + _holds(liar, victim.peer_id, 1, now) for liar in liars]
    attacker = Identity.generate().peer_id
    for i in range(0, FORKS, 8):  # the node publishes at most 8 proofs per message that reveals forks
        batch = [entry for pair in pairs[i : i + 8] for entry in pair]
        victim.gossip(attacker, {"type": "entries", "v": 1, "entries": batch, "proofs": [], "more": False})
    assert len(victim.call("forks")) == FORKS
    own = victim.call("log", limit=1_000)
    assert len(own) == FORKS + 1 and all(e["body"]["kind"] == "fork_proof" for e in own[:-1])

    # A push (the grant and the latest entries) fits one frame, and says it skips some: the JS client
    # then runs anti-entropy first (``ClientExchange.push``, as Python's ``own_log_fits``).
    pushed = victim.call("own_entries")
    size = sum(len(json.dumps(e, sort_keys=True, separators=(",", ":"))) + 1 for e in pushed)
    assert size <= PUSH_BYTES
    encode_frame(Frame(FrameType.GOSSIP, os.urandom(16), 0, meta=lx.push_request(pushed)))
    seqs = [e["seq"] for e in pushed]
    assert seqs[0] == 1 and seqs[1:] == list(range(FORKS + 2 - (len(seqs) - 1), FORKS + 2))
    assert seqs[-1] > len(seqs)  # the log is longer than one push carries

    # What a push carries is the whole log's tail: a peer holding the rest takes it all.
    peer = Browser()
    head = seqs[1] - 1
    before = list(reversed(victim.call("log", limit=1_000)))[:head]
    for i in range(0, head, 64):
        assert peer.push(victim.peer_id, before[i : i + 64]) == len(before[i : i + 64])
    assert peer.push(victim.peer_id, pushed) == len(pushed) - 1  # all but the grant, held already


def test_pushes_beyond_the_entry_budget_are_refused_before_any_check_until_it_refills(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = browser_ledger.wall_clock_ms()
    clock = [now]
    monkeypatch.setattr(browser_ledger, "wall_clock_ms", lambda: clock[0])
    peer = Browser()
    flooder = Identity.generate()
    budget = int(GossipConfig().entry_burst)
    entries = _holds(flooder, peer.peer_id, budget + 2 * 64, now)

    stored, refused = 0, None
    for i in range(0, len(entries), 64):
        try:
            stored += peer.push(flooder.peer_id, entries[i : i + 64])
        except LedgerError as exc:
            refused = exc
            break
    assert refused is not None and refused.code == "rate_limited" and "rate_limited" in str(refused)
    assert stored <= budget and peer.call("stats")["entries"] == stored  # nothing past the budget stored

    # Another neighbour's budget is its own.
    other = Identity.generate().peer_id
    assert peer.call("admit_push", sender=other, count=64) == 64
    # The refusal is the JSON error ``ledger.js`` turns into LedgerError(code rate_limited).
    out = json.loads(
        browser_ledger.call_on(peer.core, "admit_push", json.dumps({"sender": flooder.peer_id, "count": 64}))
    )
    assert out["error"]["code"] == "rate_limited"

    clock[0] += 1_000  # a second later the budget has refilled by a second's entries
    assert peer.push(flooder.peer_id, entries[stored : stored + 64]) == 64


def test_admit_push_refuses_a_count_no_push_carries() -> None:
    peer = Browser()
    for count in (-1, 65, True, "3"):
        with pytest.raises(LedgerError, match="at most 64 entries"):
            peer.call("admit_push", sender="a" * 64, count=count)
    assert peer.call("admit_push", sender="a" * 64, count=0) == 0

"""Gossip: ten nodes on SQLite stores, random partitions and rejoins (seeded), a cheater showing each
side another history; they converge to identical balances. Plus bounded batches, rate limits, and
malformed messages dropped with a reason. Every message goes through the real GOSSIP frame codec."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_peer.core.balances import compute
from python_peer.core.canonical import canonical_bytes
from python_peer.core.entries import Entry, make_entry
from python_peer.core.gossip import MAX_GOSSIP_MESSAGE_BYTES, GossipConfig, GossipSession
from python_peer.core.wire import MAX_METADATA_BYTES
from python_peer.identity import Identity
from python_peer.ledger_store import LedgerStore
from tests.support.ledger import NOW, RULES, T0, Log, Wire, cosign, grant, ids


class Node:
    """A peer: its identity, its store, one gossip session per neighbour."""

    def __init__(self, identity: Identity, path: Path | None, config: GossipConfig | None = None) -> None:
        self.identity = identity
        self.store = LedgerStore.open(path, rules=RULES, durable=False)
        self.config = config or GossipConfig()
        self.sessions: dict[int, GossipSession] = {}

    def session(self, peer: int) -> GossipSession:
        if peer not in self.sessions:
            self.sessions[peer] = GossipSession(self.store, self.config, peer=str(peer))
        return self.sessions[peer]


def _converged(nodes: list[Node]) -> bool:
    first = nodes[0].store
    return all(n.store.hashes() == first.hashes() and n.store.forks() == first.forks() for n in nodes[1:])


def test_ten_peers_with_partitions_and_rejoins_converge(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    people = ids(10, 2000)
    nodes = [Node(p, tmp_path / f"node{i}.sqlite3") for i, p in enumerate(people)]
    cheater = 9
    created: list[Entry] = []
    for node in nodes:
        created.append(node.store.append(node.identity, grant(node.identity), T0))
    wire = Wire()
    groups: list[set[int]] = []
    links: set[tuple[int, int]] = set()
    fork_tick = 12
    forked_at = 0
    for tick in range(36):
        now = T0 + (tick + 1) * 60_000
        if tick % 8 == 0:  # a new partition: two or three groups, some links inside them down too
            order = list(range(10))
            rng.shuffle(order)
            cut = sorted(rng.sample(range(1, 10), rng.choice((1, 2))))
            groups = [set(order[a:b]) for a, b in zip([0, *cut], [*cut, 10], strict=True)]
            links = {(a, b) for g in groups for a in g for b in g if a < b and rng.random() < 0.8}
        group_of = {n: g for g in groups for n in g}
        for _ in range(5):  # sessions served inside a group, co-signed at their end
            server, client = rng.sample(range(10), 2)
            if client not in group_of[server]:
                continue
            start = rng.choice((0, 10, 20))  # one of three 10-block shards of a 30-block model
            tokens = rng.randint(50, 3000)
            body = cosign(
                people[client], people[server], tokens=tokens, time=now - 1000, start=start, end=start + 10
            )
            for who in (server, client) if rng.random() < 0.3 else (server,):
                if nodes[who].store.forks().get(people[who].peer_id) is None:  # a caught cheater cannot write
                    created.append(nodes[who].store.append_receipt(people[who], body, now))
        if tick == fork_tick:  # the cheater shows another group a different entry at its last seq
            head = nodes[cheater].store.head(people[cheater].peer_id)
            assert head is not None
            forked_at = head.seq
            elsewhere = next(n for n in range(10) if n not in group_of[cheater])
            body = cosign(people[elsewhere], people[cheater], tokens=9999, time=head.time)
            twin = make_entry(head.author, head.seq, head.prev, head.time, body, people[cheater].sign)
            prefix = nodes[cheater].store.entries_from(head.author, 1, head.seq - 1)
            outcomes = nodes[elsewhere].store.insert_many([*prefix, twin], now)
            assert all(o.ok for o in outcomes), outcomes
            created.append(twin)
        for a, b in sorted(links):
            wire.round(nodes, a, b, now)
        for node in nodes:  # an honest node publishes the forks it found
            created.extend(node.store.publish_fork_proofs(node.identity, now))
    assert not _converged(nodes)  # the partitions left the nodes with different ledgers
    # everyone rejoins; count the rounds until every store holds the same entries
    heal = T0 + 40 * 60_000
    rounds = 0
    while not _converged(nodes):
        rounds += 1
        assert rounds <= 6, "the mesh did not converge"
        pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
        rng.shuffle(pairs)
        for a, b in pairs:
            wire.round(nodes, a, b, heal + rounds * 10_000)
    balances = [n.store.balances() for n in nodes]
    assert all(b == balances[0] for b in balances)
    assert nodes[0].store.forks() == {people[cheater].peer_id: forked_at}
    # ... and they are the pure function's balances over every entry ever written, wherever it went
    assert balances[0] == compute(created, rules=RULES).balances
    assert wire.largest <= GossipConfig().max_message_bytes
    assert len(balances[0]) >= 10 and rounds >= 1


def test_a_long_log_travels_in_bounded_batches() -> None:
    writer, reader = Node(ids(1, 2100)[0], None), Node(ids(1, 2101)[0], None)
    client = ids(1, 2102)[0]
    writer.store.claim_grant(writer.identity, T0)
    bodies = [cosign(client, writer.identity, tokens=i + 1, time=T0 + i) for i in range(1200)]
    for start in range(0, 1200, 300):
        writer.store.append_many(writer.identity, bodies[start : start + 300], NOW)
    wire = Wire()
    wire.round([writer, reader], 1, 0, NOW)
    assert len(reader.store) == 1201 and reader.store.balances() == writer.store.balances()
    assert wire.kinds["entries"] >= 1201 // 256 + 1  # at most 256 entries and 60 KiB per message
    assert wire.largest <= 60 * 1024 < MAX_METADATA_BYTES


def test_many_authors_fit_in_bounded_heads_messages() -> None:
    people = ids(700, 3000)
    source = Node(ids(1, 3900)[0], None)
    source.store.insert_many([Log(p).add(grant(p)) for p in people], NOW)
    small = GossipConfig(max_message_bytes=28 * 1024)  # the signaling relay's budget
    reader = Node(ids(1, 3901)[0], None, small)
    source.config = small
    wire = Wire()
    rounds = 0
    while reader.store.heads() != source.store.heads():
        rounds += 1
        assert rounds <= 10
        wire.round([source, reader], 1, 0, NOW + rounds * 10_000)
    assert rounds >= 2  # 700 heads do not fit one 28 KiB message
    assert wire.largest <= small.max_message_bytes


def test_a_fork_found_on_one_link_reaches_a_node_that_saw_one_branch() -> None:
    cheat, client = ids(2, 4000)
    log = Log(cheat)
    shared = [log.add(grant(cheat)), log.add(cosign(client, cheat, tokens=5))]
    branch_a = [log.add(cosign(client, cheat, tokens=n)) for n in (6, 7, 8)]
    other = Log(cheat)
    other.entries = list(shared)
    branch_b = [other.add(cosign(client, cheat, tokens=n)) for n in (60, 70)]
    nodes = [Node(i, None) for i in ids(3, 4010)]
    nodes[0].store.insert_many(shared + branch_a, NOW)
    nodes[1].store.insert_many(shared + branch_b, NOW)
    nodes[2].store.insert_many(shared + branch_a, NOW)
    wire = Wire()
    for n in range(2):  # the first round finds the fork, the second tells the other side
        wire.round(nodes, 0, 1, NOW + n * 10_000)
    assert nodes[0].store.forks() == nodes[1].store.forks() == {cheat.peer_id: 3}
    wire.round(nodes, 2, 0, NOW + 40_000)  # node 2 never talks to node 1
    assert nodes[2].store.forks() == {cheat.peer_id: 3}
    assert nodes[2].store.balances() == nodes[0].store.balances() == nodes[1].store.balances()


# --- limits and bad input -------------------------------------------------------------------------------


def test_rate_limits_drop_floods_with_a_reason() -> None:
    config = GossipConfig(message_rate=1.0, message_burst=5, entry_rate=10.0, entry_burst=20)
    node, peer = Node(ids(1, 4100)[0], None, config), Node(ids(1, 4101)[0], None)
    summary = peer.session(0).start(NOW, force=True)
    problems = [node.session(1).receive(summary, NOW).problem for _ in range(8)]
    assert problems[:5] == [None] * 5
    assert all(p is not None and p.startswith("rate_limited: too many gossip messages") for p in problems[5:])
    assert node.session(1).receive(summary, NOW + 1000).problem is None  # refilled
    writer = ids(1, 4102)[0]
    log = Log(writer)
    batch = [log.add(cosign(ids(1, 4103)[0], writer, tokens=i + 1)) for i in range(30)]
    flood = {"type": "entries", "v": 1, "entries": [e.to_dict() for e in batch], "proofs": [], "more": False}
    fresh = Node(ids(1, 4104)[0], None, config)
    received = fresh.session(1).receive(flood, NOW)
    assert received.problem is not None and received.problem.startswith(
        "rate_limited: too many gossip entries"
    )
    assert len(fresh.store) == 0


BAD_MESSAGES = [
    ("not an object", ["summary"]),
    ("unknown type", {"type": "gimme", "v": 1}),
    ("wrong version", {"type": "summary", "v": 2, "buckets": {}}),
    ("extra field", {"type": "summary", "v": 1, "buckets": {}, "x": 1}),
    ("bad bucket", {"type": "summary", "v": 1, "buckets": {"zz": "0" * 16}}),
    (
        "bad head",
        {"type": "heads", "v": 1, "buckets": [], "heads": {"ab" * 32: [0, "x"]}, "forks": {}, "reply": True},
    ),
    ("heads not a map", {"type": "heads", "v": 1, "buckets": [], "heads": [], "forks": {}, "reply": True}),
    ("too many wants", {"type": "want", "v": 1, "want": [["ab" * 32, 1]] * 500, "forks": []}),
    ("bad want", {"type": "want", "v": 1, "want": [["ab" * 32, 0]], "forks": []}),
    ("entries not a list", {"type": "entries", "v": 1, "entries": {}, "proofs": [], "more": False}),
    ("more not a bool", {"type": "entries", "v": 1, "entries": [], "proofs": [], "more": 1}),
    ("oversized", {"type": "want", "v": 1, "want": [], "forks": ["ab" * 32] * 1100}),
]


@pytest.mark.parametrize(("case", "message"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_malformed_messages_are_dropped_with_a_reason(case: str, message: Any) -> None:
    node = Node(ids(1, 4200)[0], None)
    received = node.session(1).receive(message, NOW)
    assert received.problem is not None and received.problem.startswith("malformed: gossip message"), case
    assert received.replies == []


def test_bad_entries_in_a_batch_are_refused_alone() -> None:
    writer = ids(1, 4300)[0]
    log = Log(writer)
    good = log.add(grant(writer))
    entries = [good.to_dict(), {**good.to_dict(), "seq": "2"}, {"junk": True}]
    node = Node(ids(1, 4301)[0], None)
    message = {"type": "entries", "v": 1, "entries": entries, "proofs": [{"a": 1}], "more": False}
    received = node.session(1).receive(message, NOW)
    assert received.problem is None and received.stored == 1
    assert [r.code for _, r in received.rejected] == ["malformed", "malformed", "malformed"]
    assert len(canonical_bytes(message)) < MAX_GOSSIP_MESSAGE_BYTES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=66),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["summary", "heads", "want", "entries", "other"]),
    fields=st.dictionaries(
        st.sampled_from(["v", "buckets", "heads", "forks", "reply", "want", "entries", "proofs", "more"]),
        json_values,
    ),
)
def test_random_messages_never_raise(kind: str, fields: dict[str, Any]) -> None:
    node = Node(ids(1, 4400)[0], None)
    received = node.session(1).receive({"type": kind, "v": 1, **fields}, NOW)
    assert received.problem is None or received.problem.startswith(("malformed", "rate_limited"))

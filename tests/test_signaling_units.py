"""Signaling without a server: canonical JSON, the announcement schema, identity, directory, rate
limits and message parsing (with Hypothesis fuzzing: nothing but our typed errors may come out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_peer.core.canonical import (
    ANNOUNCE_CONTEXT,
    MAX_MESSAGE_BYTES,
    MAX_TTL_MS,
    Announcement,
    ServedSpan,
    SignalBody,
    canonical_bytes,
    signing_bytes,
)
from python_peer.core.errors import (
    AnnouncementError,
    CanonicalError,
    IdentityError,
    MessageError,
    SignalingError,
    SignatureError,
)
from python_peer.identity import IDENTITY_FILE, Identity, verify, verify_body
from signaling.connection import Connection, Role
from signaling.directory import Directory, Entry, PutResult
from signaling.federation import Federation
from signaling.messages import (
    Announce,
    Gone,
    Gossip,
    Lookup,
    Relay,
    Signal,
    decode_json,
    parse_peer_message,
    parse_sibling_message,
    request_id,
)
from signaling.outbox import Outbox
from signaling.ratelimit import KeyedBuckets, TokenBucket
from tests.support.waiting import wait_for_async

NOW = 1_700_000_000_000
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def body(identity: Identity | None = None, **changes: Any) -> dict[str, Any]:
    peer_id = identity.peer_id if identity else "ab" * 32
    data = Announcement(
        peer_id=peer_id,
        kind="native",
        seq=5,
        issued_ms=NOW,
        expires_ms=NOW + 60_000,
        serves=(ServedSpan("smollm2-135m", 0, 10),),
        throughput_milli=22_000,
        kv_free_tokens=4096,
        signaling=("ws://127.0.0.1:9000",),
    ).to_dict()
    data.update(changes)
    return data


# --- canonical JSON -------------------------------------------------------------------------------------


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [True, None, "é"], "c": {"z": 0, "y": -1}}) == (
        '{"a":[true,null,"é"],"b":1,"c":{"y":-1,"z":0}}'.encode()
    )
    assert signing_bytes("ctx", {"x": 1}) == b'ctx\n{"x":1}'


def test_canonical_golden_announcement() -> None:
    """A fixed body and its exact bytes: the browser implementation must produce the same."""
    expected = (
        '{"expires_ms":1700000060000,"issued_ms":1700000000000,"kind":"native","kv_free_tokens":4096,'
        '"peer_id":"' + "ab" * 32 + '","seq":5,"serves":[{"end":10,"model":"smollm2-135m","start":0}],'
        '"signaling":["ws://127.0.0.1:9000"],"throughput_milli":22000,"v":1}'
    )
    assert canonical_bytes(body()).decode() == expected


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"a": math.nan},
        {1: "x"},
        2**53,
        -(2**53),
        "\ud800",
        {"s": {1, 2}},
        b"x",
    ],
)
def test_canonical_bytes_refuses_values_without_one_form(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(value)


def test_canonical_bytes_refuses_deep_nesting() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CanonicalError, match="deeper"):
        canonical_bytes(deep)


# --- announcement schema --------------------------------------------------------------------------------


def test_announcement_round_trip() -> None:
    ann = Announcement.from_dict(body())
    assert ann.to_dict() == body()
    assert ann.covers("smollm2-135m", 5, 20) and not ann.covers("smollm2-135m", 10, 20)
    assert not ann.covers("other", 0, 10)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"seq": True}, "seq must be an integer"),
        ({"seq": 1.0}, "seq must be an integer"),
        ({"seq": "5"}, "seq must be an integer"),
        ({"seq": -1}, "seq = -1"),
        ({"kind": "robot"}, "kind"),
        ({"peer_id": "AB" * 32}, "peer_id"),
        ({"v": 2}, "version"),
        ({"expires_ms": NOW + MAX_TTL_MS + 1}, "expires_ms"),
        ({"expires_ms": NOW + 10}, "expires_ms"),
        ({"serves": [{"model": "m", "start": 3, "end": 3}]}, "end"),
        ({"serves": [{"model": "bad name", "start": 0, "end": 3}]}, "model"),
        ({"serves": [{"model": "m", "start": 0}]}, "missing"),
        ({"serves": [{"model": "m", "start": 0, "end": 1}] * 33}, "at most 32"),
        ({"signaling": ["http://x"]}, "signaling URL"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_announcement_from_dict_refuses_with_a_reason(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AnnouncementError, match=fragment) as info:
        Announcement.from_dict(body(**changes))
    assert info.value.code == "bad_announcement"


def test_announcement_freshness() -> None:
    ann = Announcement.from_dict(body())
    ann.check_fresh(NOW + 1_000)
    with pytest.raises(AnnouncementError) as expired:
        ann.check_fresh(NOW + 60_000)
    assert expired.value.code == "expired"
    with pytest.raises(AnnouncementError, match="future"):
        ann.check_fresh(NOW - 120_000)


def test_signal_body_bounds() -> None:
    a, b = "aa" * 32, "bb" * 32
    SignalBody.from_dict({"from": a, "to": b, "ts_ms": NOW, "payload": {"sdp": "v=0"}})
    with pytest.raises(MessageError) as big:
        SignalBody(a, b, NOW, {"sdp": "x" * 40_000})
    assert big.value.code == "too_large"
    with pytest.raises(MessageError):
        SignalBody(a, b, NOW, {"x": math.nan})
    with pytest.raises(MessageError) as old:
        SignalBody(a, b, NOW, {}).check_fresh(NOW + 120_000)
    assert old.value.code == "expired"


# --- identity -------------------------------------------------------------------------------------------


def test_identity_persists_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Identity.load_or_create(data_dir)
    again = Identity.load_or_create(data_dir)
    assert first.peer_id == again.peer_id and len(first.peer_id) == 64
    mode = stat.S_IMODE((data_dir / IDENTITY_FILE).stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in data_dir.iterdir()] == [IDENTITY_FILE]  # no temp file left behind
    sig = again.sign(b"hello")
    verify(first.peer_id, b"hello", sig)


def test_identity_created_once_under_concurrency(tmp_path: Path) -> None:
    ids: list[str] = []

    def make() -> None:
        ids.append(Identity.load_or_create(tmp_path).peer_id)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1


def test_identity_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / IDENTITY_FILE
    a, b = Identity.generate(), Identity.generate()
    a.save(path)
    b.save(path)
    assert Identity.load(path).peer_id == b.peer_id


@pytest.mark.parametrize("content", ["zz", "00" * 31, "", "\xff"])
def test_corrupt_identity_is_an_identity_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / IDENTITY_FILE
    path.write_text(content, encoding="latin-1")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError):
        Identity.load_or_create(tmp_path)
    with pytest.raises(IdentityError, match="no identity key"):
        Identity.load(tmp_path / "missing.key")


def test_signatures_refuse_forgery() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    data = body(alice)
    sig = alice.sign_body(ANNOUNCE_CONTEXT, data)
    verify_body(alice.peer_id, ANNOUNCE_CONTEXT, data, sig)
    with pytest.raises(SignatureError):
        verify_body(alice.peer_id, ANNOUNCE_CONTEXT, {**data, "seq": 6}, sig)
    with pytest.raises(SignatureError):
        verify_body(alice.peer_id, ANNOUNCE_CONTEXT, data, mallory.sign_body(ANNOUNCE_CONTEXT, data))
    with pytest.raises(SignatureError):
        verify_body(alice.peer_id, "ai4all/signal/v1", data, sig)  # another context
    with pytest.raises(SignatureError):
        verify(alice.peer_id, b"x", "zz" * 64)
    with pytest.raises(SignatureError):
        verify("not-a-key", b"x", sig)
    with pytest.raises(SignatureError):
        verify_body(alice.peer_id, ANNOUNCE_CONTEXT, {"x": math.nan}, sig)


# --- directory ------------------------------------------------------------------------------------------


def entry(peer: str, seq: int = 1, model: str = "m", start: int = 0, end: int = 4, **kw: Any) -> Entry:
    ann = Announcement(
        peer_id=peer,
        kind="native",
        seq=seq,
        issued_ms=NOW,
        expires_ms=kw.pop("expires_ms", NOW + 60_000),
        serves=(ServedSpan(model, start, end),),
        throughput_milli=kw.pop("throughput", 1000),
    )
    return Entry(ann, ann.to_dict(), "00" * 64, "local")


def test_directory_keeps_newest_and_looks_up_by_overlap() -> None:
    d = Directory(max_entries=10)
    a, b, c = "aa" * 32, "bb" * 32, "cc" * 32
    assert d.put(entry(a, 1, start=0, end=4), NOW) is PutResult.NEW
    assert d.put(entry(a, 1, start=0, end=4), NOW) is PutResult.SAME
    assert d.put(entry(a, 0), NOW) is PutResult.STALE
    assert d.put(entry(a, 2, start=4, end=8), NOW) is PutResult.REPLACED
    d.put(entry(b, 1, start=0, end=8, throughput=5), NOW)
    d.put(entry(c, 1, start=0, end=8, throughput=9), NOW)
    assert [e.peer_id for e in d.lookup("m", 0, 2, NOW, 10)] == [c, b]  # a moved to 4-8
    assert [e.peer_id for e in d.lookup("m", 0, 8, NOW, 10)] == [c, b, a]
    assert [e.peer_id for e in d.lookup("m", 0, 8, NOW, 1)] == [c]
    assert d.lookup("other", 0, 8, NOW, 10) == []


def test_directory_expiry_and_withdrawal() -> None:
    d = Directory(max_entries=10)
    a, b = "aa" * 32, "bb" * 32
    d.put(entry(a, 1, expires_ms=NOW + 1_000), NOW)
    d.put(entry(b, 3), NOW)
    assert [e.peer_id for e in d.lookup("m", 0, 4, NOW + 2_000, 10)] == [b]  # filtered before the sweep
    assert d.expire(NOW + 2_000) == [a]
    assert d.withdraw(b, 3)
    assert d.put(entry(b, 3), NOW) is PutResult.STALE  # a late gossip copy does not bring it back
    assert d.put(entry(b, 4), NOW) is PutResult.NEW
    assert not d.withdraw(b, 3)  # a withdrawal older than what is held changes nothing
    assert len(d) == 1


def test_directory_is_bounded() -> None:
    d = Directory(max_entries=2)
    d.put(entry("aa" * 32, expires_ms=NOW + 1_000), NOW)
    d.put(entry("bb" * 32), NOW)
    with pytest.raises(SignalingError) as full:
        d.put(entry("cc" * 32), NOW)
    assert full.value.code == "table_full"
    assert d.put(entry("cc" * 32), NOW + 5_000) is PutResult.NEW  # the expired one made room


# --- rate limits ----------------------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3


def test_keyed_buckets_are_bounded() -> None:
    now = [0.0]
    buckets = KeyedBuckets(rate=1, burst=1, max_keys=3, clock=lambda: now[0])
    assert buckets.take("a") and not buckets.take("a")
    for key in "bcdef":
        buckets.take(key)
    assert len(buckets) == 3
    assert buckets.take("a")  # forgotten, so a fresh bucket: bounded memory, not a bypass of note


# --- outbox ---------------------------------------------------------------------------------------------


async def test_outbox_keeps_the_newest_state_of_each_peer_in_its_place() -> None:
    box = Outbox(max_messages=4, max_keys=300)
    for seq in range(10):  # a burst: 200 peers x 10 announcements, far more than the FIFO holds
        for peer in range(200):
            assert box.put_latest(f"p{peer}", (seq, 0), f"p{peer}@{seq}")
    assert len(box) == 200 and box.dropped == 0 and box.coalesced == 1800
    assert box.put_latest("p0", (3, 0), "p0@3")  # an older copy (the dump to a new link) changes nothing
    assert box.put_latest("p1", (9, 1), "p1 gone@9")  # a withdrawal outranks the announcement it withdraws
    assert box.put_latest("p1", (9, 0), "p1@9")
    assert [await box.get() for _ in range(3)] == ["p0@9", "p1 gone@9", "p2@9"]  # first queued, first out


async def test_outbox_bounds_messages_and_states_and_counts_drops() -> None:
    box = Outbox(max_messages=2, max_keys=2)
    assert box.put("r1") and box.put("r2") and not box.put("r3")
    assert box.put_latest("a", (1, 0), "a1") and box.put_latest("b", (1, 0), "b1")
    assert not box.put_latest("c", (1, 0), "c1")  # a third peer: the table is full
    assert box.put_latest("a", (2, 0), "a2")  # a known peer always fits
    assert box.dropped == 2
    assert [await box.get() for _ in range(4)] == ["r1", "a2", "r2", "b1"]  # the two take turns
    joined = asyncio.ensure_future(box.join())
    await asyncio.sleep(0)  # one turn of the loop, to prove the join does NOT finish: nothing to poll for
    assert not joined.done()
    for _ in range(4):
        box.task_done()
    async with asyncio.timeout(1):
        await joined
    with pytest.raises(ValueError, match="room"):
        Outbox(max_messages=0, max_keys=1)


# --- sibling links --------------------------------------------------------------------------------------


class FakeTransport:
    """A websocket that records what is written and how it was closed, and never receives."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def receive(self) -> str | bytes | None:
        await asyncio.Event().wait()
        return None

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def link(node_id: str, *, dialed: bool) -> tuple[Connection, FakeTransport]:
    transport = FakeTransport()
    conn = Connection(transport, TokenBucket(100, 100), dialed=dialed, max_states=100)
    conn.role, conn.node_id = Role.SIBLING, node_id
    return conn, transport


def federation(node_id: str) -> Federation:
    async def serve(link: Connection) -> None:
        return None

    return Federation(node_id, f"ws://{node_id}:1", (), serve, lambda: TokenBucket(100, 100))


@pytest.mark.parametrize("own_first", [True, False])
async def test_both_ends_keep_the_link_the_smaller_node_id_dialed(own_first: bool) -> None:
    """``ant`` and ``bee`` dial each other: the link ``ant`` dialed survives on both, whatever came first."""
    ant, bee = federation("ant"), federation("bee")
    (ant_own, _), (ant_in, ant_in_ws) = link("bee", dialed=True), link("bee", dialed=False)
    (bee_own, bee_own_ws), (bee_in, _) = link("ant", dialed=True), link("ant", dialed=False)
    for fed, own, incoming in ((ant, ant_own, ant_in), (bee, bee_own, bee_in)):
        first, second = (own, incoming) if own_first else (incoming, own)
        assert fed.add_link(first)
        assert fed.add_link(second) == (second in (ant_own, bee_in))
    assert ant.links == {"bee": ant_own} and bee.links == {"ant": bee_in}
    # the losers are closed in the background, with a reason
    await wait_for_async(lambda: ant_in_ws.closed and bee_own_ws.closed, 5.0, what="the losing links closed")
    for closed in (ant_in_ws.closed, bee_own_ws.closed):
        assert closed == (1000, "duplicate sibling link; keeping the one ant dialed")
    ant.remove_link(ant_in)  # the end of the loser changes nothing
    assert ant.links == {"bee": ant_own}
    for conn in (ant_own, ant_in, bee_own, bee_in):
        await conn.close()


async def test_a_newer_incoming_link_replaces_a_half_open_one_and_keeps_the_routes() -> None:
    fed = federation("bee")
    old, old_transport = link("ant", dialed=False)
    new, _ = link("ant", dialed=False)
    assert fed.add_link(old)
    fed.learn_route("aa" * 32, old)
    assert fed.add_link(new)  # ant redialed: its old link may be dead without a close yet
    assert fed.links == {"ant": new} and fed.route("aa" * 32) is new
    second_url, _ = link("ant", dialed=True)
    assert not fed.add_link(second_url)  # a second --sibling URL for a node already linked
    fed.remove_link(new)
    assert fed.links == {} and fed.route("aa" * 32) is None
    await wait_for_async(lambda: old_transport.closed, 5.0, what="the half-open link closed")
    assert old_transport.closed is not None and "duplicate" in old_transport.closed[1]
    for conn in (old, new, second_url):
        await conn.close()


async def test_broadcast_skips_the_source_node_and_coalesces_per_peer() -> None:
    fed = federation("ant")
    (bee, on_bee), (cat, on_cat) = link("bee", dialed=True), link("cat", dialed=True)
    assert fed.add_link(bee) and fed.add_link(cat)
    peer = "aa" * 32

    def gossip(seq: int) -> Gossip:
        return Gossip(type="gossip", hops=1, body={"peer_id": peer, "seq": seq}, sig="00" * 64)

    def sent(transport: FakeTransport) -> list[tuple[str, int]]:
        return [(m["type"], m.get("seq") or m["body"]["seq"]) for m in map(json.loads, transport.sent)]

    for seq in range(1, 6):
        fed.broadcast(peer, seq, gossip(seq), skip="bee")  # it came from bee: never sent back there
    await wait_for_async(lambda: on_cat.sent, 5.0, what="the gossip sent to cat")
    assert sent(on_cat) == [("gossip", 5)] and sent(on_bee) == []
    fed.broadcast(peer, 5, Gone(type="gone", hops=1, peer_id=peer, seq=5, sig="00" * 64))
    fed.offer(cat, peer, 4, gossip(4))  # an older copy, from the dump to a new link, loses to it
    await wait_for_async(
        lambda: len(on_cat.sent) >= 2 and on_bee.sent, 5.0, what="the withdrawal sent to cat and bee"
    )
    assert sent(on_cat) == [("gossip", 5), ("gone", 5)] and sent(on_bee) == [("gone", 5)]
    await bee.close()
    await cat.close()


# --- message parsing ------------------------------------------------------------------------------------


def test_parse_valid_messages() -> None:
    sig = "00" * 64
    msg = parse_peer_message(
        decode_json(json.dumps({"type": "lookup", "id": 3, "model": "m", "start": 0, "end": 2}))
    )
    assert isinstance(msg, Lookup) and msg.limit == 32
    ann = parse_peer_message({"type": "announce", "body": body(), "sig": sig, "proof": sig})
    assert isinstance(ann, Announce)
    signal = parse_peer_message(
        {"type": "signal", "from": "aa" * 32, "to": "bb" * 32, "ts_ms": NOW, "payload": {}, "sig": sig}
    )
    assert isinstance(signal, Signal) and signal.from_ == "aa" * 32
    assert '"from":' in signal.encode()
    relay = parse_sibling_message(
        {"type": "relay", "ttl": 1, "from": "aa" * 32, "to": "bb" * 32, "ts_ms": 1, "payload": {}, "sig": sig}
    )
    assert isinstance(relay, Relay)
    assert isinstance(parse_sibling_message({"type": "gossip", "hops": 1, "body": {}, "sig": sig}), Gossip)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"type":"bye"}', "bad_message"),
        ("x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
        ("é" * (MAX_MESSAGE_BYTES // 2 + 1), "too_large"),
        ("{not json", "bad_json"),
        ('{"a": NaN}', "bad_json"),
        ('{"a": 1e999}', "bad_json"),
        ("[" * 50_000 + "]" * 50_000, "too_large"),
        ("[" * 20_000 + "]" * 20_000, "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"text"', "bad_message"),
    ],
)
def test_decode_json_refuses(raw: str | bytes, code: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_json(raw)
    assert info.value.code == code


@pytest.mark.parametrize(
    "data",
    [
        {"type": "nope"},
        {"type": 5},
        {},
        {"type": "lookup", "model": "m", "start": "0", "end": 2},
        {"type": "lookup", "model": "m", "start": 0, "end": True},
        {"type": "lookup", "model": "m", "start": 3, "end": 2},
        {"type": "lookup", "model": "m", "start": 0, "end": 2, "limit": 1000},
        {"type": "lookup", "model": "m", "start": 0, "end": 2, "extra": 1},
        {"type": "lookup", "model": "m", "start": 0, "end": 2.0},
        {"type": "signal", "from": "AA" * 32, "to": "bb" * 32, "ts_ms": 1, "payload": {}, "sig": "00" * 64},
        {"type": "signal", "from": "aa" * 32, "to": "bb" * 32, "ts_ms": 1, "payload": [], "sig": "00" * 64},
        {"type": "announce", "body": "x", "sig": "00" * 64, "proof": "00" * 64},
        {"type": "bye", "id": -1},
        {"type": "gossip", "hops": 1, "body": {}, "sig": "00" * 64},  # a sibling message on a peer link
    ],
)
def test_parse_peer_message_refuses(data: dict[str, Any]) -> None:
    with pytest.raises(MessageError) as info:
        parse_peer_message(data)
    assert info.value.code == "bad_message"


def test_request_id_is_salvaged_only_when_usable() -> None:
    assert request_id({"id": 7}) == 7
    assert request_id({"id": True}) is None
    assert request_id({"id": "7"}) is None
    assert request_id([1]) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
TYPES = st.sampled_from(["announce", "lookup", "signal", "bye", "federate", "gossip", "gone", "relay", "x"])
FIELDS = st.sampled_from(
    ["id", "body", "sig", "proof", "model", "start", "end", "limit", "from", "to", "ts_ms", "payload", "hops"]
)


@FAST
@given(st.text(max_size=300) | st.binary(max_size=100))
def test_fuzz_raw_text_gives_only_message_errors(raw: str | bytes) -> None:
    with contextlib.suppress(MessageError):
        parse_peer_message(decode_json(raw))


@FAST
@given(TYPES, st.dictionaries(FIELDS, JSON, max_size=8))
def test_fuzz_message_shapes_give_only_message_errors(kind: str, fields: dict[str, Any]) -> None:
    data = json.loads(json.dumps({**fields, "type": kind}))
    for parse in (parse_peer_message, parse_sibling_message):
        with contextlib.suppress(MessageError):
            parse(decode_json(json.dumps(data)))


@FAST
@given(st.sampled_from(sorted(body())), JSON)
def test_fuzz_announcement_fields_give_only_announcement_errors(key: str, value: Any) -> None:
    try:
        ann = Announcement.from_dict(body(**{key: value}))
    except AnnouncementError:
        return
    assert canonical_bytes(ann.to_dict())  # whatever validates has a canonical form


@FAST
@given(JSON)
def test_fuzz_any_json_as_announcement_or_signal(value: Any) -> None:
    with contextlib.suppress(AnnouncementError):
        Announcement.from_dict(value)
    with contextlib.suppress(MessageError):
        SignalBody.from_dict(value)
    with contextlib.suppress(CanonicalError):
        canonical_bytes(value)


VALID: dict[str, dict[str, Any]] = {
    "lookup": {"type": "lookup", "id": 1, "model": "m", "start": 0, "end": 2, "limit": 4},
    "signal": {
        "type": "signal",
        "from": "aa" * 32,
        "to": "bb" * 32,
        "ts_ms": 1,
        "payload": {},
        "sig": "00" * 64,
    },
    "announce": {"type": "announce", "body": body(), "sig": "00" * 64, "proof": "00" * 64},
    "federate": {
        "type": "federate",
        "node_id": "n1",
        "url": "ws://127.0.0.1:1",
        "key": "cc" * 32,
        "nonce": "dd" * 16,
        "proof": "00" * 64,
    },
}


@FAST
@given(st.sampled_from(sorted(VALID)), FIELDS | st.sampled_from(["type", "url", "node_id"]), JSON)
def test_fuzz_one_field_of_a_valid_message(kind: str, key: str, value: Any) -> None:
    data = json.loads(json.dumps({**VALID[kind], key: value}))
    try:
        message = parse_peer_message(decode_json(json.dumps(data)))
    except MessageError as exc:
        assert exc.code in ("bad_message", "bad_json", "too_large")
        return
    assert json.loads(message.encode())["type"] == data["type"]  # what parses also encodes

"""Route choice and block selection: pure functions over announcements and measurements."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from python_peer.block_selection import least_served_span, served_counts
from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.errors import PeerError
from python_peer.routing import BanList, Candidate, NoRouteError, choose_route, route_lifting_bans


def test_cheapest_route_mixes_span_sizes() -> None:
    candidates = [
        Candidate("a", 0, 10, throughput=100.0),
        Candidate("b", 10, 30, throughput=100.0),
        Candidate("c", 0, 30, throughput=10.0),  # one hop, but slow
        Candidate("d", 10, 20, throughput=1000.0),
        Candidate("e", 20, 30, throughput=1000.0),
    ]
    route = choose_route(candidates, 0, 30)
    assert [c.peer_id for c in route] == ["a", "d", "e"]


def test_measured_round_trips_count() -> None:
    near = Candidate("near", 0, 4, throughput=100.0, rtt_s=0.001)
    far = Candidate("far", 0, 4, throughput=100.0, rtt_s=0.5)
    assert choose_route([far, near], 0, 4) == [near]


def test_banned_and_full_peers_are_avoided() -> None:
    bans = BanList(seconds=10)
    bans.ban("fast")
    candidates = [
        Candidate("fast", 0, 4, throughput=1000.0, kv_free_tokens=10**6),
        Candidate("full", 0, 4, throughput=1000.0, kv_free_tokens=10),
        Candidate("slow", 0, 4, throughput=1.0, kv_free_tokens=10**6),
    ]
    assert [c.peer_id for c in choose_route(candidates, 0, 4, banned=bans, tokens_needed=64)] == ["slow"]
    bans.ban("fast", now=0.0)
    assert bans.banned("fast", now=9.0) and not bans.banned("fast", now=11.0)


def test_gap_means_no_route_with_a_useful_message() -> None:
    with pytest.raises(NoRouteError, match=r"blocks 0-4 \(usable spans: 0-1, 3-4\)"):
        choose_route([Candidate("a", 0, 1), Candidate("b", 3, 4)], 0, 4)
    with pytest.raises(NoRouteError, match="no usable peers"):
        choose_route([], 0, 4)


def test_ban_list_is_bounded() -> None:
    bans = BanList(seconds=100, max_size=8)
    for i in range(50):
        bans.ban(f"p{i}", now=float(i))
    assert len(bans._until) <= 8 and bans.banned("p49", now=50.0)


def announcement(peer: str, model: str, *spans: tuple[int, int]) -> Announcement:
    return Announcement(peer * 64, "native", 1, 1000, 61000, tuple(ServedSpan(model, a, b) for a, b in spans))


def test_least_served_span(tiny_llama_export: Path) -> None:
    manifest = load_manifest(tiny_llama_export)  # spans 0-1, 1-3, 3-4
    name = manifest.name
    mesh = [
        announcement("a", name, (0, 1)),
        announcement("b", name, (1, 3)),
        announcement("c", name, (1, 4)),
        announcement("d", "other-model", (3, 4)),
    ]
    assert served_counts(manifest, mesh) == {Span(0, 1): 1, Span(1, 3): 2, Span(3, 4): 1}
    one_shard = max(manifest.memory.need(s.span).total for s in manifest.blocks)  # no two shards fit
    assert least_served_span(manifest, mesh, one_shard) == Span(0, 1)  # ties go to the earlier span
    mesh.append(announcement("e", name, (0, 1)))
    assert least_served_span(manifest, mesh, one_shard) == Span(3, 4)
    # a budget for the whole model takes only the least-served shard; on an idle mesh, all of it
    assert least_served_span(manifest, mesh, 2**30) == Span(3, 4)
    assert least_served_span(manifest, [], 2**30) == Span(0, 4)
    smallest = min(manifest.memory.need(s.span).total for s in manifest.blocks)
    with pytest.raises(PeerError, match="fits a memory budget"):
        least_served_span(manifest, mesh, smallest - 1)


def test_only_banned_peers_left_the_oldest_ban_is_lifted_first() -> None:
    bans = BanList(seconds=60)
    bans.ban("old", now=time.monotonic() - 50)
    bans.ban("recent", now=time.monotonic() - 10)
    bans.ban("fast-but-just-failed")
    candidates = [
        Candidate("fast-but-just-failed", 0, 4, throughput=10_000.0),
        Candidate("recent", 0, 4, throughput=100.0),
        Candidate("old", 0, 4, throughput=1.0),
    ]
    assert bans.oldest_first(c.peer_id for c in candidates) == ["old", "recent", "fast-but-just-failed"]
    assert [c.peer_id for c in route_lifting_bans(candidates, 0, 4, banned=bans)] == ["old"]
    # An unbanned peer is still preferred to any banned one; a gap no peer covers is still no route.
    assert [
        c.peer_id for c in route_lifting_bans([*candidates, Candidate("free", 0, 4)], 0, 4, banned=bans)
    ] == ["free"]
    with pytest.raises(NoRouteError):
        route_lifting_bans([Candidate("half", 0, 2), Candidate("recent", 2, 3)], 0, 4, banned=bans)
    # lifted() is a copy: the client's own list keeps its bans.
    assert (
        bans.lifted(["old"]).banned("recent")
        and not bans.lifted(["old"]).banned("old")
        and bans.banned("old")
    )

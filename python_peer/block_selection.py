"""Which span a peer serves when it is not told: the one the mesh serves least, as in Petals.

A peer can only serve whole block shards of the manifest (each shard is one ONNX graph), so the choice
is among the manifest's shards: the shard with the fewest live servers wins, ties going to the earlier
shard, among those whose weights fit the peer's memory budget.
"""

from __future__ import annotations

from collections import Counter

from python_peer.core.canonical import Announcement
from python_peer.core.manifest import Manifest
from python_peer.core.spans import Span

from .errors import PeerError


def served_counts(manifest: Manifest, announcements: list[Announcement]) -> Counter[Span]:
    """How many distinct peers serve each of the manifest's block shards (a wider span counts for each)."""
    counts: Counter[Span] = Counter({shard.span: 0 for shard in manifest.blocks})
    for shard in manifest.blocks:
        servers = {
            a.peer_id
            for a in announcements
            for s in a.serves
            if s.model == manifest.name and s.start <= shard.start and shard.end <= s.end
        }
        counts[shard.span] = len(servers)
    return counts


def least_served_span(
    manifest: Manifest, announcements: list[Announcement], memory_budget_bytes: int
) -> Span:
    """The least-served block shard whose file fits in ``memory_budget_bytes``."""
    counts = served_counts(manifest, announcements)
    fitting = [shard for shard in manifest.blocks if shard.total_bytes <= memory_budget_bytes]
    if not fitting:
        smallest = min(shard.total_bytes for shard in manifest.blocks)
        raise PeerError(
            f"no block shard of {manifest.name} fits a memory budget of {memory_budget_bytes / 2**20:.0f} MiB "
            f"(the smallest needs {smallest / 2**20:.0f} MiB): raise --max-memory-mb or export smaller spans"
        )
    best = min(fitting, key=lambda shard: (counts[shard.span], shard.start))
    return best.span

"""Choosing a route: the chain of peers that covers a model's blocks with the lowest expected latency.

As in Petals' sequence manager, a hop costs its measured round trip plus the time its blocks take
(announced block-tokens per second). Peers with no KV room or banned after a failure are left out.
A route is a shortest path over layer boundaries, so it may mix peers that serve spans of any size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from python_peer.core.errors import AI4AllError

DEFAULT_RTT_S = 0.05  # assumed for peers not yet measured
DEFAULT_BLOCK_S = 0.01  # assumed per block for peers that announce no throughput


class NoRouteError(AI4AllError):
    """No set of reachable peers covers the requested blocks."""


@dataclass(frozen=True)
class Candidate:
    """One peer serving one span, as seen through signaling and our own measurements."""

    peer_id: str
    start: int
    end: int
    throughput: float = 0.0  # block-tokens per second, as announced
    kv_free_tokens: int = 1
    rtt_s: float | None = None
    # this node's own span, reached in process (``hop.LocalHop``): no round trip (and nothing to pay),
    # from the first route on, so a node that serves the API uses its own span unless it is slower
    own: bool = False

    def cost(self) -> float:
        per_block = 1.0 / self.throughput if self.throughput > 0 else DEFAULT_BLOCK_S
        rtt = 0.0 if self.own else self.rtt_s if self.rtt_s is not None else DEFAULT_RTT_S
        return rtt + (self.end - self.start) * per_block


@dataclass
class BanList:
    """Peers that failed recently, avoided until their ban expires."""

    seconds: float = 60.0
    _until: dict[str, float] = field(default_factory=dict)
    max_size: int = 4096

    def ban(self, peer_id: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._until) >= self.max_size:
            self._until = {p: t for p, t in self._until.items() if t > now}
            while len(self._until) >= self.max_size:
                self._until.pop(next(iter(self._until)))
        self._until[peer_id] = now + self.seconds

    def banned(self, peer_id: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._until.get(peer_id, 0.0) > now

    def oldest_first(self, peer_ids: Iterable[str], now: float | None = None) -> list[str]:
        """Those of ``peer_ids`` banned now, the one that failed longest ago first."""
        now = time.monotonic() if now is None else now
        return sorted((p for p in set(peer_ids) if self.banned(p, now)), key=lambda p: (self._until[p], p))

    def lifted(self, peer_ids: Iterable[str]) -> BanList:
        """A copy of this list without the bans of ``peer_ids``."""
        gone = set(peer_ids)
        return BanList(self.seconds, {p: t for p, t in self._until.items() if p not in gone}, self.max_size)


def choose_route(
    candidates: list[Candidate],
    start: int,
    end: int,
    *,
    banned: BanList | None = None,
    tokens_needed: int = 1,
) -> list[Candidate]:
    """The cheapest chain of candidates covering ``[start, end)`` exactly, hop after hop."""
    usable = [
        c
        for c in candidates
        if start <= c.start < c.end <= end
        and c.kv_free_tokens >= tokens_needed
        and not (banned is not None and banned.banned(c.peer_id))
    ]
    best: dict[int, tuple[float, list[Candidate]]] = {start: (0.0, [])}
    for position in range(start, end):
        if position not in best:
            continue
        cost, path = best[position]
        for cand in usable:
            if cand.start != position:
                continue
            total = cost + cand.cost()
            if cand.end not in best or total < best[cand.end][0]:
                best[cand.end] = (total, [*path, cand])
    if end not in best:
        covered = sorted({(c.start, c.end) for c in usable})
        raise NoRouteError(
            f"no reachable peers cover blocks {start}-{end}"
            + (
                f" (usable spans: {', '.join(f'{a}-{b}' for a, b in covered)})"
                if covered
                else " (no usable peers)"
            )
        )
    return best[end][1]


def route_lifting_bans(
    candidates: list[Candidate], start: int, end: int, *, banned: BanList, tokens_needed: int = 1
) -> list[Candidate]:
    """``choose_route`` avoiding banned peers; when only banned peers can cover the span, lift bans one
    peer at a time, the oldest first, so a peer that failed long ago (restarted since, or fine again
    after a burst of load) gets its second chance before one that failed a moment ago and is likely
    still dead. A chaos run found the alternative, retrying every banned peer at once by cost, sending
    session after session to the same dead peer while the others of its span were up."""
    try:
        return choose_route(candidates, start, end, banned=banned, tokens_needed=tokens_needed)
    except NoRouteError:
        waiting = banned.oldest_first(c.peer_id for c in candidates)
        if not waiting:
            raise
    for count in range(1, len(waiting)):
        try:
            relaxed = banned.lifted(waiting[:count])
            return choose_route(candidates, start, end, banned=relaxed, tokens_needed=tokens_needed)
        except NoRouteError:
            continue
    return choose_route(candidates, start, end, banned=banned.lifted(waiting), tokens_needed=tokens_needed)

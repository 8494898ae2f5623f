"""The directory: soft state of who serves what, rebuilt from re-announcements, never persisted.

One entry per peer id, holding the newest verified announcement (highest ``seq``) exactly as signed,
so it can be handed to clients and siblings who check the signature themselves. Entries vanish when
their announcement expires or the peer says ``bye``; the table is bounded in entries, and each entry
is bounded by the announcement schema (at most 32 spans, 8 URLs). A bounded set of tombstones keeps a
late copy of a withdrawn announcement from coming back through gossip.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from python_peer.core.canonical import Announcement
from python_peer.core.errors import SignalingError


class PutResult(enum.Enum):
    """What ``Directory.put`` did with an announcement."""

    NEW = "new"  # first announcement of this peer
    REPLACED = "replaced"  # newer than the one held
    SAME = "same"  # the very announcement already held (a gossip echo, a retry)
    STALE = "stale"  # older than the one held, or withdrawn: dropped


@dataclass(frozen=True)
class Entry:
    """A verified announcement, its JSON body and signature as received, and where it came from."""

    announcement: Announcement
    body: dict[str, Any]
    sig: str
    source: str  # "local" or the id of the sibling link it came over

    @property
    def peer_id(self) -> str:
        return self.announcement.peer_id


class Directory:
    """Announcements by peer id, with a per-model index for lookups."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, Entry] = {}
        self._by_model: dict[str, set[str]] = {}
        self._tombstones: OrderedDict[str, int] = OrderedDict()  # peer id -> withdrawn seq

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, peer_id: str) -> Entry | None:
        return self._entries.get(peer_id)

    def put(self, entry: Entry, now_ms: int) -> PutResult:
        """Keep ``entry`` if it is newer than what is held; the caller has verified its signature."""
        ann = entry.announcement
        withdrawn = self._tombstones.get(ann.peer_id)
        if withdrawn is not None and ann.seq <= withdrawn:
            return PutResult.STALE
        held = self._entries.get(ann.peer_id)
        if held is not None:
            if ann.seq < held.announcement.seq:
                return PutResult.STALE
            if ann.seq == held.announcement.seq:
                return PutResult.SAME if ann == held.announcement else PutResult.STALE
            self._unindex(held)
        elif len(self._entries) >= self.max_entries:
            self.expire(now_ms)
            if len(self._entries) >= self.max_entries:
                raise SignalingError(
                    f"the directory holds its maximum of {self.max_entries} peers; try another node",
                    code="table_full",
                )
        self._entries[ann.peer_id] = entry
        for span in ann.serves:
            self._by_model.setdefault(span.model, set()).add(ann.peer_id)
        return PutResult.REPLACED if held is not None else PutResult.NEW

    def withdraw(self, peer_id: str, seq: int) -> bool:
        """Drop the peer's announcement if it was signed with a seq up to ``seq``; remember the withdrawal,
        so an announcement up to ``seq`` arriving later (one in flight, gossip) is ``stale``. Whether an
        announcement was dropped.

        A peer's bye names a seq at least as large as every announcement it signed before it (its next
        seq): it withdraws them all, even one it re-announced while saying bye. An announcement with a
        larger seq, signed after the bye, is never touched, so a replayed bye withdraws nothing newer.
        The caller bounds ``seq`` by its clock (``node.check_bye_seq``), as announcements are bounded.
        """
        held = self._entries.get(peer_id)
        if held is not None and held.announcement.seq > seq:
            return False
        self._tombstones[peer_id] = max(seq, self._tombstones.get(peer_id, seq))
        self._tombstones.move_to_end(peer_id)
        while len(self._tombstones) > self.max_entries:
            self._tombstones.popitem(last=False)
        if held is None:
            return False
        self._remove(held)
        return True

    def expire(self, now_ms: int) -> list[str]:
        """Remove every expired announcement; return the peer ids removed."""
        gone = [e for e in self._entries.values() if e.announcement.expires_ms <= now_ms]
        for entry in gone:
            self._remove(entry)
        return [e.peer_id for e in gone]

    def lookup(self, model: str, start: int, end: int, now_ms: int, limit: int) -> list[Entry]:
        """Live peers serving any block of ``model`` in ``[start, end)``, best first, at most ``limit``.

        Best: the span starting earliest, then the highest throughput, so a client reads routes in order.
        """
        found = []
        for peer_id in self._by_model.get(model, ()):
            entry = self._entries[peer_id]
            ann = entry.announcement
            if ann.expires_ms > now_ms and ann.covers(model, start, end):
                first = min(s.start for s in ann.serves if s.overlaps(model, start, end))
                found.append((first, -ann.throughput_milli, peer_id, entry))
        found.sort(key=lambda item: item[:3])
        return [item[3] for item in found[:limit]]

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.peer_id]
        self._unindex(entry)

    def _unindex(self, entry: Entry) -> None:
        for span in entry.announcement.serves:
            peers = self._by_model.get(span.model)
            if peers is not None:
                peers.discard(entry.peer_id)
                if not peers:
                    del self._by_model[span.model]

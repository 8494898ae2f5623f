"""The directory: soft state of who serves what, rebuilt from re-announcements, never persisted.

One entry per peer id, holding the newest verified announcement (highest ``seq``) exactly as signed,
so it can be handed to clients and siblings who check the signature themselves. Entries vanish when
their announcement expires or the peer says ``bye``; the table is bounded in entries, and each entry
is bounded by the announcement schema (at most 32 spans, 8 URLs). A bounded set of tombstones keeps a
late copy of a withdrawn announcement from coming back through gossip.

Entries outlive the connection that announced them, so a host making throwaway identities could fill
the table and lock honest peers out (``table_full``) for an announcement's lifetime. The entries this
node took from its own connections are therefore also bounded per source address (``address_group``:
an IPv4 address, an IPv6 /64). Entries learned by gossip are not: a sibling is trusted by its key, and
bounds its own connections.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from python_peer.core.canonical import Announcement
from python_peer.core.errors import SignalingError

MAX_PEERS_PER_ADDRESS = 256  # a NAT full of browser tabs fits; 40 hosts are needed to fill 10 000 entries
IPV6_GROUP_PREFIX = 64  # one host commonly holds a whole /64


def address_group(host: str | None) -> str | None:
    """The source address a connection's announcements count under: an IPv4 address (IPv4-mapped IPv6
    too), the /64 of an IPv6 address, any other host name as it is; ``None`` (not counted) if unknown."""
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), IPV6_GROUP_PREFIX), strict=False))
    return str(ip)


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
    address: str | None = None  # for "local": the ``address_group`` of the connection that announced it

    @property
    def peer_id(self) -> str:
        return self.announcement.peer_id


class Directory:
    """Announcements by peer id, with a per-model index for lookups and a per-address one for the bound."""

    def __init__(self, max_entries: int = 10_000, max_per_address: int = MAX_PEERS_PER_ADDRESS) -> None:
        self.max_entries = max_entries
        self.max_per_address = max_per_address
        self._entries: dict[str, Entry] = {}
        self._by_model: dict[str, set[str]] = {}
        self._by_address: dict[str, set[str]] = {}  # address group -> peer ids of entries announced from it
        self._tombstones: OrderedDict[str, int] = OrderedDict()  # peer id -> withdrawn seq

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, peer_id: str) -> Entry | None:
        return self._entries.get(peer_id)

    def count_from(self, address: str) -> int:
        """How many entries this node holds that were announced from ``address`` (an ``address_group``)."""
        return len(self._by_address.get(address, ()))

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
        if entry.address is not None and (held is None or held.address != entry.address):
            self._check_address(entry.address, now_ms)  # a peer id new to this address adds one
        if held is not None:
            self._unindex(held)
        elif len(self._entries) >= self.max_entries:
            self.expire(now_ms)
            if len(self._entries) >= self.max_entries:
                raise SignalingError(
                    f"the directory holds its maximum of {self.max_entries} peers; try another node",
                    code="table_full",
                )
        self._entries[ann.peer_id] = entry
        self._index(entry)
        return PutResult.REPLACED if held is not None else PutResult.NEW

    def _check_address(self, address: str, now_ms: int) -> None:
        """Refuse one more entry from ``address`` at its bound, once its expired entries are gone."""
        held = self._by_address.get(address, set())
        if len(held) < self.max_per_address:
            return
        for peer_id in [p for p in held if self._entries[p].announcement.expires_ms <= now_ms]:
            self._remove(self._entries[peer_id])  # the sweep would soon: a local entry has no route
        if self.count_from(address) >= self.max_per_address:
            raise SignalingError(
                f"this node lists at most {self.max_per_address} peers announced from one address, and "
                f"{address} has that many; try another node",
                code="table_full",
            )

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

    def _index(self, entry: Entry) -> None:
        for span in entry.announcement.serves:
            self._by_model.setdefault(span.model, set()).add(entry.peer_id)
        if entry.address is not None:
            self._by_address.setdefault(entry.address, set()).add(entry.peer_id)

    def _unindex(self, entry: Entry) -> None:
        """Undo ``_index``: every way an entry leaves (replaced, withdrawn, expired) comes through here."""
        for span in entry.announcement.serves:
            peers = self._by_model.get(span.model)
            if peers is not None:
                peers.discard(entry.peer_id)
                if not peers:
                    del self._by_model[span.model]
        if entry.address is not None:
            peers = self._by_address.get(entry.address)
            if peers is not None:
                peers.discard(entry.peer_id)
                if not peers:
                    del self._by_address[entry.address]

"""The registry table: publisher-signed records of models (``core/registry_record.py``), soft state.

One entry per (publisher, model): the highest ``version`` held, exactly as signed; a lower version is
``stale`` (a replay never rolls a model back, even after the newer record expired: the highest version
seen of each is remembered, in a bounded table), and so is another body with the same version (the
first one seen is kept). Entries are soft state: each has an expiry this node sets (``RECORD_TTL_MS`` after the
last time a serving peer, this node's own ``--model-dir`` or a sibling registered it), and vanishes past it.

Bounds, so a flood of records from throwaway publisher keys can neither grow the table nor push out a
record this node's operator trusts: at most ``max_per_publisher`` models per publisher, at most
``max_untrusted_per_model`` publishers this node does not trust per model name, at most
``max_untrusted`` untrusted records in all, and at most ``max_records`` records in all. A record past a
bound is refused (``table_full``), never swapped in for one held: an attacker fills only the untrusted
slots, and only until its records expire.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from python_peer.core.errors import SignalingError
from python_peer.core.registry_record import RegistryRecord

RECORD_TTL_MS = 600_000  # a record nobody re-registers for this long is dropped
RECORD_REFRESH_MS = 60_000  # a refresh is gossiped on only when it moves the expiry this much


class RecordPut(enum.Enum):
    """What ``RecordTable.put`` did with a record."""

    NEW = "new"  # first record of this (publisher, model)
    REPLACED = "replaced"  # a higher version than the one held
    REFRESHED = "refreshed"  # the record held, its expiry moved by at least RECORD_REFRESH_MS
    SAME = "same"  # the record held, expiry moved less (an echo): nothing to gossip


@dataclass
class RecordEntry:
    """A verified record, as signed, whether this node trusts its publisher, and its expiry here."""

    record: RegistryRecord
    trusted: bool
    expires_ms: int
    gossiped_expiry_ms: int  # the expiry last passed on to siblings

    def view(self) -> dict[str, Any]:
        """What a ``registry`` reply carries for it."""
        return {**self.record.to_dict(), "trusted": self.trusted, "expires_ms": self.expires_ms}


class RecordTable:
    """Records by (publisher, model), with the bounds above."""

    def __init__(
        self,
        trusted: frozenset[str] = frozenset(),
        *,
        max_records: int = 4096,
        max_untrusted: int = 2048,
        max_per_publisher: int = 64,
        max_untrusted_per_model: int = 8,
    ) -> None:
        self.trusted = trusted
        self.max_records = max_records
        self.max_untrusted = max_untrusted
        self.max_per_publisher = max_per_publisher
        self.max_untrusted_per_model = max_untrusted_per_model
        self._entries: dict[tuple[str, str], RecordEntry] = {}
        # the highest version seen of each (publisher, model), kept after its record expires (bounded, the
        # oldest forgotten first), so a replayed older version is refused even once nobody serves the newer
        self._highest: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RecordEntry]:
        return iter(list(self._entries.values()))

    def get(self, publisher: str, model: str) -> RecordEntry | None:
        return self._entries.get((publisher, model))

    def put(self, record: RegistryRecord, expires_ms: int, now_ms: int) -> RecordPut:
        """Keep ``record`` (its signature checked by the caller) until ``expires_ms``; ``SignalingError``
        ``stale`` for an older version or a rival body of the same one, ``table_full`` past a bound."""
        held = self._entries.get(record.key)
        if held is not None and held.expires_ms <= now_ms:
            del self._entries[record.key]
            held = None
        highest = self._highest.get(record.key)
        if held is None and highest is not None and record.version < highest:
            raise SignalingError(
                f"{record.model} version {record.version} of publisher {record.publisher[:12]}… is older "
                f"than version {highest} this node has held",
                code="stale",
            )
        if held is not None:
            if record.version < held.record.version:
                raise SignalingError(
                    f"{record.model} version {record.version} of publisher {record.publisher[:12]}… is "
                    f"older than version {held.record.version} held here",
                    code="stale",
                )
            if record.version == held.record.version:
                if record != held.record:
                    raise SignalingError(
                        f"{record.model} version {record.version} of publisher {record.publisher[:12]}… is "
                        "held here with another body: a publisher signs each version once",
                        code="stale",
                    )
                held.expires_ms = max(held.expires_ms, expires_ms)
                if held.expires_ms - held.gossiped_expiry_ms >= RECORD_REFRESH_MS:
                    held.gossiped_expiry_ms = held.expires_ms
                    return RecordPut.REFRESHED
                return RecordPut.SAME
            self._entries[record.key] = RecordEntry(record, held.trusted, expires_ms, expires_ms)
            self._remember(record)
            return RecordPut.REPLACED
        trusted = record.publisher in self.trusted
        self._check_room(record, trusted, now_ms)
        self._entries[record.key] = RecordEntry(record, trusted, expires_ms, expires_ms)
        self._remember(record)
        return RecordPut.NEW

    def _remember(self, record: RegistryRecord) -> None:
        self._highest[record.key] = max(record.version, self._highest.get(record.key, record.version))
        self._highest.move_to_end(record.key)
        while len(self._highest) > 2 * self.max_records:
            self._highest.popitem(last=False)

    def _check_room(self, record: RegistryRecord, trusted: bool, now_ms: int) -> None:
        self.expire(now_ms)
        entries = list(self._entries.values())
        if sum(1 for e in entries if e.record.publisher == record.publisher) >= self.max_per_publisher:
            raise SignalingError(
                f"publisher {record.publisher[:12]}… has the {self.max_per_publisher} models a node keeps "
                "per publisher",
                code="table_full",
            )
        if not trusted:
            untrusted = [e for e in entries if not e.trusted]
            if sum(1 for e in untrusted if e.record.model == record.model) >= self.max_untrusted_per_model:
                raise SignalingError(
                    f"model {record.model} has the {self.max_untrusted_per_model} records of untrusted "
                    "publishers this node keeps per model",
                    code="table_full",
                )
            if len(untrusted) >= self.max_untrusted:
                raise SignalingError(
                    f"this node holds its {self.max_untrusted} records of untrusted publishers",
                    code="table_full",
                )
        if len(entries) >= self.max_records:
            raise SignalingError(f"this node holds its {self.max_records} records", code="table_full")

    def expire(self, now_ms: int) -> int:
        """Drop every record past its expiry; how many."""
        gone = [key for key, e in self._entries.items() if e.expires_ms <= now_ms]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def records(self, model: str, now_ms: int) -> list[RecordEntry]:
        """The live records of ``model``: trusted publishers first, then the highest version."""
        found = [e for e in self._entries.values() if e.record.model == model and e.expires_ms > now_ms]
        found.sort(key=lambda e: (not e.trusted, -e.record.version, e.record.publisher))
        return found

    def models(self, now_ms: int) -> list[dict[str, Any]]:
        """Every model name held, with how many publishers' records and how many of them trusted."""
        names: dict[str, list[int]] = {}
        for entry in self._entries.values():
            if entry.expires_ms > now_ms:
                counts = names.setdefault(entry.record.model, [0, 0])
                counts[0] += 1
                counts[1] += entry.trusted
        return [{"model": m, "records": c[0], "trusted": c[1]} for m, c in sorted(names.items())]

"""The registry of a signaling node: ``register``, ``manifests`` and the ``record`` gossip between siblings.

A serving peer registers the publisher-signed record (``core/registry_record.py``) of each model it
serves, with its announcements; the node checks the record alone (schema, size, the publisher's
signature), keeps it in its ``RecordTable`` (the highest version per publisher and model, soft state,
bounded) and gossips it to its siblings, which check it again. A node serving ``--model-dir``s registers
their records itself, every ``RECORD_REFRESH_MS``. ``manifests`` answers with the records of a model, or the
model names known. The full signed manifest is never carried here: it is fetched from whoever holds the
model and checked against the record's ``signed_sha256``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from python_peer.core.errors import PublicationError, SignalingError
from python_peer.core.registry_record import RegistryRecord
from python_peer.identity import verify

from .connection import Connection
from .directory import Directory
from .federation import Federation
from .messages import (
    MAX_HOPS,
    MAX_REPLY_BYTES,
    ManifestsQuery,
    RecordGossip,
    Register,
    Registered,
    Registry,
)
from .ratelimit import KeyedBuckets
from .record_table import RECORD_REFRESH_MS, RECORD_TTL_MS, RecordEntry, RecordPut, RecordTable

log = logging.getLogger(__name__)

REGISTERS_PER_PEER_S = 1.0  # per registering peer id, over all its connections
REGISTER_BURST = 40  # a peer registers one record per model it serves, at most 32, at once


def parse_record(body: object, sig: str) -> RegistryRecord:
    """The record of a ``register`` or ``record`` message, checked alone: ``bad_record`` or
    ``bad_signature`` when it is not one, or not its publisher's."""
    try:
        record = RegistryRecord.from_dict({"body": body, "sig": sig})
    except PublicationError as exc:
        raise SignalingError(str(exc), code="bad_record") from exc
    try:
        record.verify(verify)
    except PublicationError as exc:
        raise SignalingError(str(exc), code="bad_signature") from exc
    return record


class NodeRegistry:
    """The registry half of a signaling node; the node hands it the messages and calls ``sweep``."""

    def __init__(
        self,
        table: RecordTable,
        directory: Directory,
        federation: Federation,
        own_records: Sequence[RegistryRecord],
        clock: Callable[[], int],
    ) -> None:
        self.table = table
        self.directory = directory
        self.federation = federation
        self.own_records = tuple(own_records)  # of this node's --model-dir, checked when loaded
        self._buckets = KeyedBuckets(REGISTERS_PER_PEER_S, REGISTER_BURST, directory.max_entries)
        self._clock = clock
        self._refreshed_ms = 0

    def _now(self) -> int:
        return self._clock()

    # --- from peers -----------------------------------------------------------------------------------

    def on_register(self, conn: Connection, msg: Register) -> Registered:
        """Take a serving peer's record of a model its announcement serves."""
        if conn.peer_id is None:
            raise SignalingError(
                "announce before registering records: a record is re-registered by whoever serves the model",
                code="not_announced",
            )
        record = parse_record(msg.body, msg.sig)
        held = self.directory.get(conn.peer_id)
        if held is None or all(span.model != record.model for span in held.announcement.serves):
            raise SignalingError(
                f"this peer's announcement serves no block of {record.model}: register the records of "
                "the models you serve",
                code="bad_record",
            )
        if not self._buckets.take(conn.peer_id):
            raise SignalingError(
                "registering too often; once per model per announcement", code="rate_limited"
            )
        now = self._now()
        entry = self._put(record, now + RECORD_TTL_MS, now, skip=None, hops=0)
        return Registered(
            id=msg.id,
            publisher=record.publisher,
            model=record.model,
            version=record.version,
            expires_ms=entry.expires_ms,
        )

    def on_query(self, msg: ManifestsQuery) -> Registry:
        now = self._now()
        size, truncated = 0, False
        records: list[dict[str, Any]] = []
        models: list[dict[str, Any]] = []
        items = (
            [e.view() for e in self.table.records(msg.model, now)]
            if msg.model is not None
            else self.table.models(now)
        )
        for item in items:
            size += len(json.dumps(item)) + 1
            if size > MAX_REPLY_BYTES:
                truncated = True
                break
            (records if msg.model is not None else models).append(item)
        return Registry(id=msg.id, model=msg.model, records=records, models=models, truncated=truncated)

    # --- from siblings --------------------------------------------------------------------------------

    def on_gossip(self, link: Connection, msg: RecordGossip) -> None:
        """A sibling's record: checked like a peer's; a bad one raises (the node drops it and logs)."""
        now = self._now()
        expires = min(msg.expires_ms, now + RECORD_TTL_MS)  # no sibling keeps a record longer than ours
        if expires <= now:
            return
        held = self.table.get(*_key(msg.body))
        echo = held is not None and held.record.to_dict() == {"body": msg.body, "sig": msg.sig}
        if echo and held is not None and expires - held.gossiped_expiry_ms < RECORD_REFRESH_MS:
            held.expires_ms = max(held.expires_ms, expires)
            return  # an echo: no signature check, nothing to pass on
        record = parse_record(msg.body, msg.sig)
        self._put(record, expires, now, skip=link.node_id, hops=msg.hops)

    def dump(self, link: Connection) -> None:
        """Queue every live record on a new sibling link."""
        now = self._now()
        for entry in self.table:
            if entry.expires_ms > now:
                self._offer(link, entry, hops=1)

    # --- own records ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Expire records; re-register this node's own (its ``--model-dir``s) every ``RECORD_REFRESH_MS``."""
        now = self._now()
        self.table.expire(now)
        if now - self._refreshed_ms < RECORD_REFRESH_MS:
            return
        self._refreshed_ms = now
        for record in self.own_records:
            try:
                self._put(record, now + RECORD_TTL_MS, now, skip=None, hops=0)
            except SignalingError as exc:  # a newer version registered by its serving peers, say
                log.info("own record of %s not registered: %s", record.model, exc)

    # --- internals ------------------------------------------------------------------------------------

    def _put(
        self, record: RegistryRecord, expires: int, now: int, *, skip: str | None, hops: int
    ) -> RecordEntry:
        result = self.table.put(record, expires, now)
        entry = self.table.get(*record.key)
        assert entry is not None
        if result is not RecordPut.SAME and hops < MAX_HOPS:
            for node, link in list(self.federation.links.items()):
                if node != skip:
                    self._offer(link, entry, hops=hops + 1)
            if result is not RecordPut.REFRESHED:
                log.info(
                    "record of %s version %d by %s… %s (%s)",
                    record.model,
                    record.version,
                    record.publisher[:12],
                    result.value,
                    "trusted" if entry.trusted else "untrusted",
                )
        return entry

    def _offer(self, link: Connection, entry: RecordEntry, *, hops: int) -> None:
        record = entry.record
        message = RecordGossip(
            type="record", hops=hops, body=record.body(), sig=record.sig, expires_ms=entry.expires_ms
        )
        link.send_latest(
            f"record/{record.publisher}/{record.model}", (record.version, entry.expires_ms), message
        )


def _key(body: object) -> tuple[str, str]:
    if isinstance(body, dict):
        return str(body.get("publisher")), str(body.get("model"))
    return "", ""

"""The registry's rules without a network: records checked alone, the table's version order, expiry and
bounds (docs/manifest.md, "The registry"). Records are built as the documentation writes them: a body of
eight fields signed under ``ai4all/record/v1``."""

from __future__ import annotations

from typing import Any

import pytest

from python_peer.core.errors import PublicationError, SignalingError
from python_peer.core.publication import Publication, PublishedFile
from python_peer.core.registry_record import RegistryRecord, signed_sha256
from python_peer.identity import Identity, verify
from signaling.record_table import RECORD_REFRESH_MS, RecordPut, RecordTable
from tests.support.registry_records import HASH, NOW, record, record_body, signed


def test_a_record_round_trips_and_verifies() -> None:
    alice = Identity.generate()
    data = signed(record_body(alice), alice)
    parsed = RegistryRecord.from_dict(data)
    parsed.verify(verify)
    assert parsed.to_dict() == data
    assert parsed.key == (alice.peer_id, "m/one")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"model": "x" * 129}, "not a model name"),
        ({"extra": 1}, "unknown fields"),
        ({"v": 2}, "record version"),
        ({"version": -1}, "version"),
        ({"version": "1"}, "integer"),
        ({"files": 0}, "files"),
        ({"signed_sha256": "AB" * 32}, "signed_sha256"),
        ({"total_bytes": 0}, "total_bytes"),
    ],
)
def test_a_malformed_record_is_refused_by_name(changes: dict[str, Any], fragment: str) -> None:
    alice = Identity.generate()
    with pytest.raises(PublicationError, match=fragment):
        RegistryRecord.from_dict(signed(record_body(alice, **changes), alice))


def test_an_oversized_record_is_refused_before_its_signature() -> None:
    alice = Identity.generate()
    data = signed(record_body(alice), alice)
    data["body"]["model"] = "m" * 5000
    with pytest.raises(PublicationError, match="over 1024"):
        RegistryRecord.from_dict(data)


def test_a_forged_or_re_signed_record_does_not_verify() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    forged = RegistryRecord.from_dict(signed(record_body(alice), mallory))  # alice's name, mallory's key
    with pytest.raises(PublicationError, match="valid signature"):
        forged.verify(verify)
    data = signed(record_body(alice), alice)
    data["body"]["version"] = 2  # altered after signing
    with pytest.raises(PublicationError, match="valid signature"):
        RegistryRecord.from_dict(data).verify(verify)


def _publication(publisher: Identity, version: int = 1) -> Publication:
    files = (PublishedFile("a.onnx", 10, HASH, (HASH,)), PublishedFile("tokenizer.json", 5, HASH, (HASH,)))
    unsigned = Publication(publisher.peer_id, "m/one", version, NOW, 100, HASH, files, "0" * 128)
    from python_peer.core.publication import MANIFEST_CONTEXT

    sig = publisher.sign_body(MANIFEST_CONTEXT, unsigned.body())
    return Publication(**{**unsigned.__dict__, "sig": sig})


def test_a_record_pins_exactly_its_signed_manifest() -> None:
    alice = Identity.generate()
    publication = _publication(alice)
    rec = RegistryRecord.sign_publication(publication, alice.sign)
    rec.verify(verify)
    assert rec.signed_sha256 == signed_sha256(publication) and rec.total_bytes == 115 and rec.files == 2
    rec.check_publication(publication)
    with pytest.raises(PublicationError, match="version 2"):
        rec.check_publication(_publication(alice, version=2))
    other = Publication(**{**publication.__dict__, "manifest_sha256": "cd" * 32})
    with pytest.raises(PublicationError, match="not the one its record pins"):
        rec.check_publication(other)


def test_the_table_keeps_the_highest_version_and_refuses_a_replay() -> None:
    alice = Identity.generate()
    table = RecordTable(frozenset({alice.peer_id}))
    assert table.put(record(alice, version=2), NOW + 600_000, NOW) is RecordPut.NEW
    with pytest.raises(SignalingError) as older:
        table.put(record(alice, version=1), NOW + 600_000, NOW)
    assert older.value.code == "stale"
    rival = record(alice, version=2, signed_sha256="cd" * 32)  # same version, another body
    with pytest.raises(SignalingError) as same:
        table.put(rival, NOW + 600_000, NOW)
    assert same.value.code == "stale"
    assert table.put(record(alice, version=3), NOW + 600_000, NOW) is RecordPut.REPLACED
    entry = table.get(alice.peer_id, "m/one")
    assert entry is not None and entry.record.version == 3 and entry.trusted


def test_a_refresh_is_gossiped_only_when_it_moves_the_expiry_enough() -> None:
    alice = Identity.generate()
    table = RecordTable()
    rec = record(alice)
    assert table.put(rec, NOW + 600_000, NOW) is RecordPut.NEW
    assert table.put(rec, NOW + 600_000 + 1_000, NOW + 1_000) is RecordPut.SAME
    later = NOW + RECORD_REFRESH_MS
    assert table.put(rec, later + 600_000, later) is RecordPut.REFRESHED


def test_records_expire_unless_re_registered() -> None:
    alice = Identity.generate()
    table = RecordTable()
    table.put(record(alice), NOW + 1_000, NOW)
    assert [e.record.model for e in table.records("m/one", NOW)] == ["m/one"]
    assert table.records("m/one", NOW + 1_000) == [] and table.models(NOW + 1_000) == []
    table.expire(NOW + 1_000)
    assert len(table) == 0
    # an older version replayed once the newer record expired is still refused: the version is remembered
    table.put(record(alice, version=5), NOW + 3_000, NOW + 2_000)
    with pytest.raises(SignalingError, match="older than version 5 this node has held"):
        table.put(record(alice, version=4), NOW + 700_000, NOW + 4_000)
    assert table.put(record(alice, version=5), NOW + 700_000, NOW + 4_000) is RecordPut.NEW


def test_throwaway_publishers_cannot_crowd_out_a_trusted_one() -> None:
    trusted = Identity.generate()
    table = RecordTable(frozenset({trusted.peer_id}), max_untrusted_per_model=8, max_untrusted=20)
    for _ in range(8):
        table.put(record(Identity.generate()), NOW + 600_000, NOW)
    with pytest.raises(SignalingError) as full:
        table.put(record(Identity.generate()), NOW + 600_000, NOW)
    assert full.value.code == "table_full"
    assert table.put(record(trusted), NOW + 600_000, NOW) is RecordPut.NEW
    listed = table.records("m/one", NOW)
    assert listed[0].record.publisher == trusted.peer_id and listed[0].trusted
    assert sum(not e.trusted for e in listed) == 8
    for i in range(12):  # other model names: bounded by the untrusted total
        table.put(record(Identity.generate(), model=f"m/{i}"), NOW + 600_000, NOW)
    with pytest.raises(SignalingError, match="untrusted"):
        table.put(record(Identity.generate(), model="m/last"), NOW + 600_000, NOW)
    assert table.put(record(trusted, model="m/trusted-2"), NOW + 600_000, NOW) is RecordPut.NEW
    assert [m["model"] for m in table.models(NOW)][:2] == ["m/0", "m/1"]


def test_one_publisher_is_bounded_in_models() -> None:
    alice = Identity.generate()
    table = RecordTable(max_per_publisher=3)
    for i in range(3):
        table.put(record(alice, model=f"m/{i}"), NOW + 600_000, NOW)
    with pytest.raises(SignalingError, match="per publisher"):
        table.put(record(alice, model="m/3"), NOW + 600_000, NOW)

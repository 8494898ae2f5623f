"""The peer's side of the registry (``python_peer/registry_client.py``) against a node that lies: every
record it returns is verified against its publisher's key, so a forged, altered or misfiled record is
dropped, and the node's ``trusted`` view is carried, never taken as the caller's."""

from __future__ import annotations

from typing import Any

import pytest

from python_peer.core.errors import MessageError, RemoteSignalingError
from python_peer.identity import Identity
from python_peer.registry_client import manifests, model_names, register_records
from tests.support.registry_records import record, record_body, signed


class LyingNode:
    """Answers ``manifests`` with what it was given, as a node that lies would (stands in for SignalClient)."""

    url = "ws://liar.test"

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.asked: list[dict[str, Any]] = []

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(message)
        return self.reply


async def test_forged_altered_and_misfiled_records_are_dropped() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    genuine = signed(record_body(alice, version=3), alice)
    forged = signed(record_body(alice, version=9), mallory)
    altered = {"body": {**genuine["body"], "version": 4}, "sig": genuine["sig"]}
    misfiled = signed(record_body(alice, model="m/other"), alice)
    items = [{**r, "trusted": True, "expires_ms": 5} for r in (genuine, forged, altered, misfiled)]
    node = LyingNode(
        {"type": "registry", "id": 1, "model": "m/one", "records": [*items, "junk"], "models": []}
    )
    found = await manifests(node, "m/one")  # type: ignore[arg-type]
    assert [(f.record.version, f.node_trusts) for f in found] == [(3, True)]
    assert node.asked == [{"type": "manifests", "model": "m/one"}]


async def test_a_reply_of_another_shape_is_an_error() -> None:
    with pytest.raises(MessageError):
        await manifests(LyingNode({"type": "peers", "peers": []}), "m/one")  # type: ignore[arg-type]
    node = LyingNode({"type": "registry", "models": [{"model": "b"}, {"model": "a"}, {"model": 5}, "x"]})
    assert await model_names(node) == ["a", "b"]  # type: ignore[arg-type]


async def test_a_refused_registration_is_logged_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = Identity.generate()
    sent: list[dict[str, Any]] = []

    async def ask(message: dict[str, Any]) -> dict[str, Any]:
        sent.append(message)
        if message["body"]["model"] == "m/0":
            raise RemoteSignalingError("older than version 5 held here", code="stale")
        return {"type": "registered"}

    await register_records(ask, [record(alice, model="m/0"), record(alice, model="m/1")], "ws://n.test", 5.0)
    assert [m["body"]["model"] for m in sent] == ["m/0", "m/1"] and all(m["type"] == "register" for m in sent)
    assert "older than version 5" in caplog.text

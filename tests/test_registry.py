"""The registry through real signaling nodes (issue 14, point 1): records registered by serving peers,
gossiped between siblings, looked up by model name with their publishers, and every attack of the issue
spoken in the documented protocol (docs/signaling.md, docs/manifest.md "The registry") over raw
websockets: a forged record, a replayed older version, a record re-signed by a stranger for a trusted
publisher's model, a flood from throwaway publisher keys, an oversized record, a sibling gossiping
garbage. ``ai4all publish`` writes the record, ``ai4all signal --model-dir`` registers it and ``ai4all
models`` prints it, marking untrusted publishers.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from python_peer.core.canonical import signing_bytes
from python_peer.identity import Identity
from tests.support.procs import Node, node_data_dir, node_key, publish_copy, run_cli
from tests.support.raw_signaling import RawPeer, raw_peer
from tests.support.waiting import wait_for, wait_for_async

pytestmark = pytest.mark.timeout(90)

TRUSTED = Identity.generate()  # the publisher both nodes are told to trust
MODEL = "reg/model"


def record_body(publisher: Identity, model: str = MODEL, version: int = 1, **changes: Any) -> dict[str, Any]:
    body = {
        "v": 1,
        "publisher": publisher.peer_id,
        "model": model,
        "version": version,
        "issued_ms": time.time_ns() // 1_000_000,
        "signed_sha256": secrets.token_hex(32),
        "total_bytes": 123_456_789,
        "files": 5,
    }
    return {**body, **changes}


def register_msg(body: dict[str, Any], signer: Identity) -> dict[str, Any]:
    return {"type": "register", "body": body, "sig": signer.sign_body("ai4all/record/v1", body)}


async def serving_peer(url: str, model: str = MODEL) -> Any:
    """A raw peer that announced serving ``model``, as a registering peer must."""
    ctx = raw_peer(url)
    peer = await ctx.__aenter__()
    reply = await peer.announce(model=model)
    assert reply["type"] == "announced", reply
    return ctx, peer


async def records(peer: RawPeer, model: str = MODEL) -> list[dict[str, Any]]:
    reply = await peer.ask({"type": "manifests", "model": model})
    assert reply["type"] == "registry" and reply["model"] == model, reply
    return list(reply["records"])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node, Path]]:
    """Two federated nodes that trust TRUSTED; alpha also accepts a third key (a rogue sibling's)."""
    logs = tmp_path_factory.mktemp("registry")
    trust = ("--trust-publisher", TRUSTED.peer_id)
    alpha = Node("alpha", logs, accept=("beta", "rogue"), extra_args=trust)
    beta = Node("beta", logs, siblings=(alpha,), extra_args=trust)
    try:
        alpha.wait(siblings=1)
        beta.wait(siblings=1)
        yield alpha, beta, logs
    finally:
        codes = (alpha.stop(signal.SIGINT), beta.stop(signal.SIGTERM))
    assert codes == (0, 0)


async def test_a_record_is_registered_gossiped_and_looked_up(nodes: tuple[Node, Node, Path]) -> None:
    alpha, beta, _ = nodes
    ctx, peer = await serving_peer(alpha.url, "reg/gossiped")
    try:
        body = record_body(TRUSTED, "reg/gossiped", version=7)
        reply = await peer.ask(register_msg(body, TRUSTED))
        assert reply["type"] == "registered" and reply["version"] == 7, reply
        assert reply["publisher"] == TRUSTED.peer_id
        async with raw_peer(beta.url) as user:  # a plain user on the sibling: no announce needed

            async def gossiped() -> list[dict[str, Any]]:
                return await records(user, "reg/gossiped")

            found = await wait_for_async(gossiped, timeout=10)
            assert found[0]["body"] == body and found[0]["trusted"] is True
            names = await user.ask({"type": "manifests"})
            assert names["type"] == "registry" and names["records"] == []
            assert {"model": "reg/gossiped", "records": 1, "trusted": 1} in names["models"]
    finally:
        await ctx.__aexit__(None, None, None)


async def test_a_forged_record_is_refused(nodes: tuple[Node, Node, Path]) -> None:
    alpha, _, _ = nodes
    mallory = Identity.generate()
    ctx, peer = await serving_peer(alpha.url, "reg/forged")
    try:
        body = record_body(TRUSTED, "reg/forged")
        forged = register_msg(body, mallory)  # TRUSTED's name, mallory's key
        reply = await peer.ask(forged)
        assert reply["type"] == "error" and reply["code"] == "bad_signature", reply
        altered = register_msg(body, TRUSTED)
        altered["body"] = {**body, "total_bytes": 1}  # changed after signing
        reply = await peer.ask(altered)
        assert reply["type"] == "error" and reply["code"] == "bad_signature", reply
        assert await records(peer, "reg/forged") == []
    finally:
        await ctx.__aexit__(None, None, None)


async def test_an_older_version_never_replaces_a_newer_one(nodes: tuple[Node, Node, Path]) -> None:
    alpha, beta, _ = nodes
    ctx, peer = await serving_peer(alpha.url, "reg/versions")
    try:
        v1 = register_msg(record_body(TRUSTED, "reg/versions", version=1), TRUSTED)
        v2 = register_msg(record_body(TRUSTED, "reg/versions", version=2), TRUSTED)
        assert (await peer.ask(v1))["type"] == "registered"
        assert (await peer.ask(v2))["type"] == "registered"
        replay = await peer.ask(v1)
        assert replay["type"] == "error" and replay["code"] == "stale", replay
        assert "older than version 2" in replay["message"]
        rival = register_msg(record_body(TRUSTED, "reg/versions", version=2), TRUSTED)  # another body, v2
        reply = await peer.ask(rival)
        assert reply["type"] == "error" and reply["code"] == "stale", reply
        async with raw_peer(beta.url) as user:

            async def newest() -> bool:
                found = await records(user, "reg/versions")
                return len(found) == 1 and found[0]["body"]["version"] == 2

            await wait_for_async(newest, timeout=10)
        assert [r["body"]["version"] for r in await records(peer, "reg/versions")] == [2]
    finally:
        await ctx.__aexit__(None, None, None)


async def test_a_stranger_cannot_pass_for_a_trusted_publisher(nodes: tuple[Node, Node, Path]) -> None:
    alpha, _, _ = nodes
    stranger = Identity.generate()
    ctx, peer = await serving_peer(alpha.url, "reg/named")
    try:
        genuine = record_body(TRUSTED, "reg/named", version=3)
        assert (await peer.ask(register_msg(genuine, TRUSTED)))["type"] == "registered"
        # re-signed by the stranger under the trusted publisher's id: a bad signature
        reply = await peer.ask(register_msg({**genuine, "version": 4}, stranger))
        assert reply["code"] == "bad_signature", reply
        # signed by the stranger as itself, for the same model name: kept, shown as untrusted, listed after
        own = record_body(stranger, "reg/named", version=99)
        assert (await peer.ask(register_msg(own, stranger)))["type"] == "registered"
        found = await records(peer, "reg/named")
        assert [(r["body"]["publisher"], r["trusted"]) for r in found] == [
            (TRUSTED.peer_id, True),
            (stranger.peer_id, False),
        ]
        assert found[0]["body"] == genuine
    finally:
        await ctx.__aexit__(None, None, None)


async def test_a_flood_of_throwaway_publishers_is_bounded(nodes: tuple[Node, Node, Path]) -> None:
    alpha, _, _ = nodes
    ctx, peer = await serving_peer(alpha.url, "reg/flooded")
    try:
        codes = []
        for _ in range(12):
            throwaway = Identity.generate()
            reply = await peer.ask(register_msg(record_body(throwaway, "reg/flooded"), throwaway))
            codes.append(reply.get("code", reply["type"]))
        assert codes[:8] == ["registered"] * 8 and set(codes[8:]) == {"table_full"}, codes
        reply = await peer.ask(register_msg(record_body(TRUSTED, "reg/flooded"), TRUSTED))
        assert reply["type"] == "registered", reply  # the trusted publisher still gets in
        found = await records(peer, "reg/flooded")
        assert found[0]["body"]["publisher"] == TRUSTED.peer_id and len(found) == 9
    finally:
        await ctx.__aexit__(None, None, None)


async def test_oversized_malformed_and_unserved_records_are_refused(nodes: tuple[Node, Node, Path]) -> None:
    alpha, _, _ = nodes
    async with raw_peer(alpha.url) as lurker:  # not announced: registers nothing
        reply = await lurker.ask(register_msg(record_body(TRUSTED), TRUSTED))
        assert reply["code"] == "not_announced", reply
    ctx, peer = await serving_peer(alpha.url, "reg/bounds")
    try:
        unserved = await peer.ask(register_msg(record_body(TRUSTED, "reg/other"), TRUSTED))
        assert unserved["code"] == "bad_record" and "serves no block" in unserved["message"], unserved
        cases: list[dict[str, Any]] = [
            {"model": "reg/" + "x" * 200},
            {"extra": "x" * 2000},
            {"v": 2},
            {"files": -1},
        ]
        for changes in cases:
            body = record_body(TRUSTED, **{"model": "reg/bounds", **changes})
            reply = await peer.ask(register_msg(body, TRUSTED))
            assert reply["type"] == "error" and reply["code"] == "bad_record", (changes, reply)
        huge = register_msg(record_body(TRUSTED, "reg/bounds"), TRUSTED)
        huge["body"]["model"] = "m" * 70_000
        await peer.send(huge)
        reply = await peer.recv()  # refused before it is read far enough to echo an id
        assert reply["code"] == "too_large" and reply["id"] is None, reply
        assert await records(peer, "reg/bounds") == []
        ok = await peer.ask(register_msg(record_body(TRUSTED, "reg/bounds"), TRUSTED))
        assert ok["type"] == "registered", ok  # the connection survived every refusal
    finally:
        await ctx.__aexit__(None, None, None)


async def test_a_sibling_gossiping_garbage_changes_nothing(nodes: tuple[Node, Node, Path]) -> None:
    """A configured sibling (alpha accepts the rogue's key) federates by the handshake of
    docs/signaling.md, then gossips forged, malformed and over-long records: all dropped, the link
    stays, and a valid record it carries afterwards is taken."""
    alpha, _, logs = nodes
    rogue = Identity.load_or_create(node_data_dir(logs, "rogue"))
    assert rogue.peer_id == node_key(logs, "rogue")
    async with connect(alpha.url, proxy=None, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        nonce = secrets.token_hex(16)
        claim = {"from": "rogue", "key": rogue.peer_id, "to": hello["node_id"], "nonce": hello["nonce"]}
        proof = rogue.sign(signing_bytes("ai4all/federate/v1", claim))
        await ws.send(
            json.dumps(
                {
                    "type": "federate",
                    "node_id": "rogue",
                    "key": rogue.peer_id,
                    "nonce": nonce,
                    "proof": proof,
                }
            )
        )
        answer = json.loads(await ws.recv())
        assert answer["type"] == "federated", answer
        far = (time.time_ns() // 1_000_000) + 600_000
        mallory = Identity.generate()
        forged = record_body(TRUSTED, "reg/rogue", version=50)
        garbage = [
            "not json",
            json.dumps({"type": "record", "hops": 1, "body": forged, "sig": "00" * 64, "expires_ms": far}),
            json.dumps(
                {
                    "type": "record",
                    "hops": 1,
                    "body": forged,
                    "sig": mallory.sign_body("ai4all/record/v1", forged),
                    "expires_ms": far,
                }
            ),
            json.dumps({"type": "record", "hops": 1, "body": {"v": 1}, "sig": "00" * 64, "expires_ms": far}),
            json.dumps({"type": "record", "hops": 99, "body": forged, "sig": "00" * 64, "expires_ms": far}),
            json.dumps(
                {
                    "type": "record",
                    "hops": 1,
                    "body": {"model": "x" * 5000},
                    "sig": "0" * 128,
                    "expires_ms": 1,
                }
            ),
        ]
        for text in garbage:
            await ws.send(text)
        valid = record_body(TRUSTED, "reg/rogue", version=1)
        await ws.send(
            json.dumps(
                {
                    "type": "record",
                    "hops": 1,
                    "body": valid,
                    "sig": TRUSTED.sign_body("ai4all/record/v1", valid),
                    "expires_ms": far + 10**9,  # beyond the node's own bound: clamped
                }
            )
        )
        async with raw_peer(alpha.url) as user:

            async def taken() -> list[dict[str, Any]]:
                return await records(user, "reg/rogue")

            found = await wait_for_async(taken, timeout=10)
            assert [r["body"] for r in found] == [valid]
            assert found[0]["expires_ms"] <= time.time_ns() // 1_000_000 + 600_000
        siblings = alpha.health() or {}
        assert any(s["node_id"] == "rogue" for s in siblings["siblings"]), siblings


# --- the commands: publish writes the record, signal registers it, models prints it -----------------


@pytest.fixture(scope="module")
def published(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return publish_copy(tiny_llama_export, tmp_path_factory.mktemp("registry-published"))


def test_publish_writes_a_small_record_of_the_signed_manifest(published: tuple[Path, str]) -> None:
    from python_peer.core.publication import read_publication
    from python_peer.core.registry_record import RegistryRecord
    from python_peer.identity import verify

    model, publisher = published
    text = (model / "manifest.record.json").read_bytes()
    assert len(text) < 1024
    record = RegistryRecord.from_dict(json.loads(text))
    record.verify(verify)
    publication = read_publication(model)
    assert publication is not None and record.publisher == publisher
    record.check_publication(publication)


def test_signal_registers_its_model_dir_and_models_prints_it(
    published: tuple[Path, str], tmp_path: Path
) -> None:
    model, publisher = published
    node = Node("solo", tmp_path, model_dirs=(model,), extra_args=("--trust-publisher", publisher))
    try:
        node.wait()
        name = json.loads((model / "manifest.json").read_text())["model"]["name"]

        def listed_once() -> Any:
            result = run_cli(["models", "--signal", node.url], timeout=60)
            assert result.returncode == 0, result.stderr
            return result if publisher in result.stdout else None

        listed = wait_for(listed_once, timeout=30)
        line = listed.stdout.strip()
        assert "version" in line and publisher in line and "UNTRUSTED" in line, line
        assert f"--trust-publisher {publisher}" in line
        trusted = run_cli(["models", "--signal", node.url, "--trust-publisher", publisher], timeout=60)
        assert trusted.returncode == 0 and "UNTRUSTED" not in trusted.stdout and " trusted" in trusted.stdout
        as_json = run_cli(["models", name, "--signal", node.url, "--json"], timeout=60)
        assert as_json.returncode == 0, as_json.stderr
        rows = json.loads(as_json.stdout)["records"]
        assert [(r["body"]["model"], r["body"]["publisher"], r["trusted"]) for r in rows] == [
            (name, publisher, False)
        ]
        assert rows[0]["node_trusts"] is True  # the node's view, shown beside ours, never used
        bad = run_cli(["models", "--signal", node.url, "--trust-publisher", "nope"], timeout=60)
        assert bad.returncode != 0 and "--trust-publisher" in bad.stderr
    finally:
        assert node.stop(signal.SIGTERM) == 0


async def test_a_serving_peer_registers_its_records_with_each_announcement(
    nodes: tuple[Node, Node, Path],
) -> None:
    """The Python client: ``SignalClientConfig.records`` are registered after the announcement, on the node
    it is connected to; the sibling learns them by gossip, and ``registry_client`` reads them verified."""
    from python_peer.core.canonical import ServedSpan
    from python_peer.core.registry_record import RegistryRecord
    from python_peer.registry_client import manifests, model_names
    from python_peer.signal_client import SignalClient, SignalClientConfig

    alpha, beta, _ = nodes
    body = record_body(TRUSTED, "reg/client", version=11)
    rec = RegistryRecord.from_dict({"body": body, "sig": TRUSTED.sign_body("ai4all/record/v1", body)})
    serving = SignalClientConfig(
        urls=(alpha.url,), serves=(ServedSpan("reg/client", 0, 4),), records=(rec,), request_timeout_s=5.0
    )
    async with await SignalClient.create(Identity.generate(), serving):
        user_config = SignalClientConfig(urls=(beta.url,), request_timeout_s=5.0)
        async with await SignalClient.create(Identity.generate(), user_config) as user:

            async def listed() -> list[Any]:
                return await manifests(user, "reg/client")

            found = await wait_for_async(listed, timeout=10)
            assert [(f.record, f.node_trusts) for f in found] == [(rec, True)]
            assert "reg/client" in await model_names(user)


def test_a_model_dir_whose_record_is_not_its_publication_is_refused(
    published: tuple[Path, str], tmp_path: Path
) -> None:
    model, publisher = published
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    data = json.loads((copy / "manifest.record.json").read_text())
    stranger = Identity.generate()
    data["body"]["version"] += 1  # a record of another publication, re-signed so only the pin differs
    data["body"]["publisher"] = stranger.peer_id
    data["sig"] = stranger.sign_body("ai4all/record/v1", data["body"])
    (copy / "manifest.record.json").write_text(json.dumps(data))
    args = ["signal", "--port", "1", "--model-dir", str(copy), "--trust-publisher", publisher]
    result = run_cli(args, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "manifest.record.json" in result.stderr and "the record names" in result.stderr, result.stderr


def test_a_native_peer_registers_the_record_of_the_model_it_serves(
    published: tuple[Path, str], tmp_path: Path
) -> None:
    """``ai4all peer --model DIR`` of a published model: the node (no ``--model-dir`` of its own) learns the
    model's record from the peer alone, and ``ai4all models`` shows it."""
    from tests.support.procs import PeerProc

    model, publisher = published
    node = Node("bare", tmp_path)
    peer = None
    try:
        node.wait()
        peer = PeerProc(
            "server", tmp_path, model, [node.url], span="0-1", extra=["--trust-publisher", publisher]
        )
        peer.wait()

        def registered() -> Any:
            result = run_cli(["models", "--signal", node.url, "--trust-publisher", publisher], timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout if publisher in result.stdout else None

        line = wait_for(registered, timeout=60)
        assert " trusted" in line and "UNTRUSTED" not in line, line
    finally:
        if peer is not None:
            peer.stop()
        node.stop()

"""The peer's side of the registry (``docs/manifest.md``, "The registry"): records registered with
signaling nodes, and the records and model names a node knows, each record checked here.

A serving peer registers the publisher-signed record (``core/registry_record.py``) of each model it
serves after each announcement (``SignalClient`` calls ``register_records``). ``manifests`` and
``model_names`` ask a node what its registry holds, ``mesh_models`` which models its peers serve
(the ``models`` summary, ``core/model_summary.py``); every record is verified against its publisher's
key, so a lying node can hide records but not forge or alter one. Whether a publisher is trusted is
the caller's choice, never the node's (``ListedRecord.node_trusts`` is shown, not used).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import MessageError, PublicationError, RemoteSignalingError
from python_peer.core.model_summary import MAX_MODELS, ModelSummary, parse_model_list
from python_peer.core.registry_record import RegistryRecord
from python_peer.identity import verify

if TYPE_CHECKING:
    from python_peer.signal_client import SignalClient

log = logging.getLogger(__name__)

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ListedRecord:
    """A registry record a node returned, its signature checked here; ``node_trusts`` is the node's view
    only: whether to use the model is the caller's own choice of publishers."""

    record: RegistryRecord
    node_trusts: bool
    expires_ms: int


async def register_records(ask: Ask, records: Sequence[RegistryRecord], url: str, timeout_s: float) -> None:
    """Register ``records`` on one node (after this peer's announcement, which must serve their models);
    a refusal (a newer version held there, a full table) is logged, and the next announcement retries."""
    for record in records:
        try:
            async with asyncio.timeout(timeout_s):
                await ask({"type": "register", **record.to_dict()})
        except RemoteSignalingError as exc:
            log.warning("registering %s version %d on %s: %s", record.model, record.version, url, exc)


async def manifests(signal: SignalClient, model: str) -> list[ListedRecord]:
    """The registry records of ``model`` the node holds, each verified against its publisher's key (a
    forged or altered one, or one of another model, is dropped with a warning), in the node's order."""
    reply = await signal.call({"type": "manifests", "model": model})
    items = reply.get("records")
    if reply.get("type") != "registry" or not isinstance(items, list):
        raise MessageError(f"manifests reply without a records list from {signal.url}")
    found = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise PublicationError("a record item is not an object")
            record = RegistryRecord.from_dict({"body": item.get("body"), "sig": item.get("sig")})
            record.verify(verify)
            if record.model != model:
                raise PublicationError(f"a record of {record.model} in the answer for {model}")
        except PublicationError as exc:
            log.warning("dropping a record from a manifests reply: %s", exc)
            continue
        expires = item.get("expires_ms")
        node_trusts = item.get("trusted") is True
        found.append(ListedRecord(record, node_trusts, expires if isinstance(expires, int) else 0))
    return found


async def model_names(signal: SignalClient) -> list[str]:
    """The model names the node's registry knows, sorted."""
    reply = await signal.call({"type": "manifests"})
    items = reply.get("models")
    if reply.get("type") != "registry" or not isinstance(items, list):
        raise MessageError(f"manifests reply without a models list from {signal.url}")
    return sorted({i["model"] for i in items if isinstance(i, dict) and isinstance(i.get("model"), str)})


async def mesh_models(signal: SignalClient, *, limit: int = MAX_MODELS) -> tuple[list[ModelSummary], bool]:
    """The models peers known to the connected node serve, most peers first, and whether the node left
    some out."""
    return parse_model_list(await signal.call({"type": "models", "limit": limit}), limit)

"""Opening a generation's sessions along a route: every hop at once, then the replay in route order.

``open_route`` asks the client for the cheapest route over ``[start, end)``, writes the holds that pay
for its hops together (with a ledger: ``MeshClient.write_holds``, one thread trip; a chat opened at the
same time writes its holds before or after them, not between), then opens a session on each hop
concurrently (``MeshSession.open_hop``: the link, our log pushed, ``OPEN``), so opening a route costs
about one hop's open rather than the sum of them. If any hop fails to open (signaling cannot reach it,
its link does not open, an ``ERROR`` or no answer to ``OPEN``), the sessions that did open on that
route are closed, every peer that failed is banned, and a new route is tried, as when the hops were
opened one after another. A payment refusal (our own ledger refusing a hold before any peer is asked,
or a peer refusing it) closes them too and ends the generation (``MeshError``).

After a failover, what the failed hop was sent is replayed through the new route hop after hop, in
route order: each hop's replay input is the previous hop's output.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from python_peer.core.errors import PaymentRequiredError
from python_peer.core.wire import FrameFlags

from .errors import MeshError
from .hop import HOP_FAILURES
from .routing import NoRouteError

if TYPE_CHECKING:
    from .mesh_client import MeshSession, RouteHop

log = logging.getLogger(__name__)

Inputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # hidden states, attention mask, position ids


async def open_route(session: MeshSession, start: int, end: int, replay: list[Inputs]) -> list[RouteHop]:
    """Sessions on a route over ``[start, end)``, opened concurrently; ``replay`` (inputs to ``start``)
    replayed through them in route order."""
    client = session.client
    while True:
        try:
            route = await client.route(start, end, session.batch * session.max_length)
        except NoRouteError as exc:
            why = f"; last failure: {session.last_failure}" if session.last_failure else ""
            raise MeshError(f"{exc}{why}") from exc
        ids = [os.urandom(16) for _ in route]
        tokens = session.batch * session.max_length
        try:  # before any peer is asked: our own ledger refuses holds our balance has no room for
            holds = await client.write_holds(
                [(c.peer_id, i, c.start, c.end) for c, i in zip(route, ids, strict=True)], tokens
            )
        except PaymentRequiredError as exc:
            raise MeshError(
                f"no peer would serve this route: our ledger refused to hold its price: {exc}"
            ) from exc
        results = await asyncio.gather(
            *(
                session.open_hop(c.peer_id, c.start, c.end, session=i, hold=h)
                for c, i, h in zip(route, ids, holds, strict=True)
            ),
            return_exceptions=True,
        )
        hops = [r for r in results if not isinstance(r, BaseException)]
        failed = [(c.peer_id, r) for c, r in zip(route, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await _close_all(session, hops)
            for peer_id, error in failed:
                if isinstance(error, PaymentRequiredError):
                    raise MeshError(f"peer {peer_id[:16]} refused to serve: {error}") from error
            for _, error in failed:
                if not isinstance(error, HOP_FAILURES):
                    raise error  # not the peer's doing (a bug, our ledger, cancellation): not routed around
            for peer_id, error in failed:
                session.note_failure(peer_id, error)
            continue
        current = hops[0].peer_id
        try:
            inputs = concat_inputs(replay)
            for hop in hops:
                current = hop.peer_id
                if inputs is not None:
                    inputs = await _replay(session, hop, inputs)
            return hops
        except HOP_FAILURES as exc:
            await _close_all(session, hops)  # before giving up too: the sessions opened are closed
            session.note_failure(current, exc)


async def _replay(session: MeshSession, hop: RouteHop, inputs: Inputs) -> Inputs:
    """Rebuild ``hop``'s KV cache with ``inputs``; the inputs of the next hop."""
    log.info(
        "replaying %d tokens to %s for blocks %d-%d", inputs[0].shape[1], hop.peer_id[:8], hop.start, hop.end
    )
    out = await hop.forward(*inputs, session.client.config.request_timeout_s, FrameFlags.REPLAY)
    hop.history.append(inputs)
    return (out, inputs[1], inputs[2])


async def _close_all(session: MeshSession, hops: list[RouteHop]) -> None:
    await asyncio.gather(*(session.close_hop(h) for h in hops))


def concat_inputs(parts: list[Inputs]) -> Inputs | None:
    """The steps of ``parts`` as one (each tensor concatenated along the sequence), or None if none."""
    if not parts:
        return None
    return (
        np.concatenate([p[0] for p in parts], axis=1),
        np.concatenate([p[1] for p in parts], axis=1),
        np.concatenate([p[2] for p in parts], axis=1),
    )

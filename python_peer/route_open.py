"""Opening a generation's sessions along a route: every hop at once, then the replay in route order.

``open_route`` asks the client for the cheapest route over ``[start, end)``, writes the holds that pay
for its hops together (with a ledger: ``MeshClient.write_holds``, one thread trip; a chat opened at the
same time writes its holds before or after them, not between), then opens a session on each hop
concurrently (``MeshSession.open_hop``: the link, our log pushed, ``OPEN``), so opening a route costs
about one hop's open rather than the sum of them. If any hop fails to open (signaling cannot reach it,
its link does not open, an ``ERROR`` or no answer to ``OPEN``), every peer that failed is banned and a
new route is tried, as when the hops were opened one after another.

A peer that refuses our payment (``payment_required`` to ``OPEN``, though our own ledger held the price)
is a failure of that peer too: banned, routed around, and not asked again while this route is opened. Its
view of our balance may lag behind ours, or it may refuse everyone to keep chats off the peers behind it
(a throwaway identity advertising the cheapest price): either way another peer for its blocks may serve.
If the route needs it again (no other peer covers its blocks), the generation ends with its refusal
(``MeshError`` from the ``PaymentRequiredError``: a 402 on the API).

The sessions that did open on a failed try have run nothing, so they are kept as spares: a later try
whose route has a hop with the same peer and span takes the spare (same session, same hold) instead of
writing a new hold and opening a new session. Closing them would not give their holds back: a session
closed before any ``FORWARD`` has no receipt, so its hold binds our credit until it expires, and a
client retrying around a dead peer would run out of room for holds. A spare whose link has closed
since is not taken (its session went with the link). The spares the returned route does not use are
closed, and so is every spare when the generation gives up: a payment refusal (our own ledger refusing a
hold before any peer is asked, or the only peer left for some blocks refusing it: ``MeshError``), too many
failures, cancellation or an unexpected error.

After a failover, what the failed hop was sent is replayed through the new route hop after hop, in
route order: each hop's replay input is the previous hop's output. If a hop fails during the replay,
the hops that were sent replay input (their KV cache holds it) are closed; the ones after it have run
nothing and are spares.
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
from .routing import Candidate, NoRouteError

if TYPE_CHECKING:
    from .mesh_session import MeshSession
    from .route_hop import Inputs, RouteHop

log = logging.getLogger(__name__)


async def open_route(session: MeshSession, start: int, end: int, replay: list[Inputs]) -> list[RouteHop]:
    """Sessions on a route over ``[start, end)``, opened concurrently (reusing the sessions of failed
    tries); ``replay`` (inputs to ``start``) replayed through them in route order."""
    opened: list[RouteHop] = []  # every session opened here and neither returned nor closed yet
    try:
        hops = await _open_and_replay(session, start, end, replay, opened)
        _forget(opened, hops)
        return hops
    finally:
        await _close_all(session, opened)  # the spares left, or everything when giving up


async def _open_and_replay(
    session: MeshSession, start: int, end: int, replay: list[Inputs], opened: list[RouteHop]
) -> list[RouteHop]:
    """Try routes until one opens and takes the replay; ``opened`` holds the sessions opened so far
    (spares between tries: nothing run on them)."""
    client = session.client
    refused: dict[str, PaymentRequiredError] = {}  # peers that refused our payment: not asked again
    while True:
        try:
            route = await client.route(start, end, session.batch * session.max_length)
        except NoRouteError as exc:
            why = f"; last failure: {session.last_failure}" if session.last_failure else ""
            raise MeshError(f"{exc}{why}") from exc
        again = next((c.peer_id for c in route if c.peer_id in refused), None)
        if again is not None:  # no other peer covers its blocks: the chat ends with its refusal
            raise MeshError(f"peer {again[:16]} refused to serve: {refused[again]}") from refused[again]
        spares = [_spare(opened, c) for c in route]
        fresh = [c for c, spare in zip(route, spares, strict=True) if spare is None]
        results = iter(await _open_new(session, fresh, opened))
        outcomes = [spare if spare is not None else next(results) for spare in spares]
        failed = [
            (c.peer_id, r) for c, r in zip(route, outcomes, strict=True) if isinstance(r, BaseException)
        ]
        if failed:
            for peer_id, error in failed:
                if isinstance(error, PaymentRequiredError):  # our ledger held the price: routed around
                    refused[peer_id] = error
                elif not isinstance(error, HOP_FAILURES):
                    raise error  # not the peer's doing (a bug, our ledger, cancellation): not routed around
            for peer_id, error in failed:
                session.note_failure(peer_id, error)
            continue
        hops = [h for h in outcomes if not isinstance(h, BaseException)]
        inputs = concat_inputs(replay)
        fed: list[RouteHop] = []  # sent replay input, so their KV caches hold it: not spares
        try:
            if inputs is not None:
                for hop in hops:
                    fed.append(hop)
                    inputs = await _replay(session, hop, inputs)
            return hops
        except HOP_FAILURES as exc:
            _forget(opened, fed)
            await _close_all(session, fed)
            session.note_failure(fed[-1].peer_id, exc)


def _forget(opened: list[RouteHop], hops: list[RouteHop]) -> None:
    """Drop ``hops`` (these very objects) from ``opened``."""
    gone = {id(h) for h in hops}
    opened[:] = [h for h in opened if id(h) not in gone]


def _spare(opened: list[RouteHop], hop: Candidate) -> RouteHop | None:
    """A session opened on an earlier try for ``hop``'s peer and span whose link is still open."""
    wanted = (hop.peer_id, hop.start, hop.end)
    for spare in opened:
        if (spare.peer_id, spare.start, spare.end) == wanted and not spare.rpc.closed:
            return spare
    return None


async def _open_new(
    session: MeshSession, route: list[Candidate], opened: list[RouteHop]
) -> list[RouteHop | BaseException]:
    """A new session on each hop of ``route`` (written holds paying for them together), at once: each
    the hop or what its open raised; the ones that opened are added to ``opened``."""
    if not route:
        return []
    client = session.client
    ids = [os.urandom(16) for _ in route]
    try:  # before any peer is asked: our own ledger refuses holds our balance has no room for
        holds = await client.write_holds(
            [(c.peer_id, i, c.start, c.end) for c, i in zip(route, ids, strict=True)],
            session.batch * session.max_length,
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
    opened += [r for r in results if not isinstance(r, BaseException)]
    return results


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

"""A client's step along its route, pushed from peer to peer wherever the hops allow (docs/mesh.md, "Push").

The route is cut into runs of consecutive hops that said at OPEN that they push (``relay.PushRelay``); a hop
outside such a run (a browser peer, this node's own span reached in process) is called as before. For a
run, the client expects an answer from every hop of it on that hop's own link, then sends the step to the
run's first peer with the rest of the run (``core/push_route.py``); each peer pushes its output to the next
and answers the client. Each answer is checked as a direct one is: its signature covers the input chain
the client computes from the previous hop's answer, so what a peer pushed must be what it returned.

Irregularities of the push itself never ban an honest peer: a hop whose answer has not come
``push_grace_s`` after the previous one's, a pushed step the next peer refused (``pushed_by``), or a peer
that could not push (``push_error``) get the step from the client itself, the next peers still pushed. A
signed answer over an input other than what the previous peer returned cannot say which of the two lied:
the session stops pushing and re-opens that hop's span (no ban), so the hop-by-hop steps that follow
attribute any lie. A hop that fails for real (dead link, ERROR to a step the client sent itself, timeout)
is a hop failure as before: banned, its span and the rest of the run (whose state this step may or may
not have reached) re-opened and replayed, and the step goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from python_peer.core.push_route import KEEP_KEY, PUSH_ERROR_KEY, PUSH_KEY, PUSHED_BY_KEY, PushTarget
from python_peer.core.wire import Frame, FrameType, raise_for_error

from .hop import HOP_FAILURES
from .route_hop import Hidden, KeptOutputError, ReplayLostError, RouteHop, StepInputs, resolve
from .rpc import RpcClient
from .spot_check import BadAnswerError

if TYPE_CHECKING:
    from .mesh_session import MeshSession

log = logging.getLogger(__name__)


def push_run(session: MeshSession, index: int) -> int:
    """How many hops from ``index`` on one pushed step covers (1: call that hop alone)."""
    hops = session.hops
    if not session.pushing or not _pushes(hops[index]):
        return 1
    end = index + 1
    while end < len(hops) and _pushes(hops[end]):
        end += 1
    return end - index


def _pushes(hop: RouteHop) -> bool:
    return hop.pushes and isinstance(hop.rpc, RpcClient) and not hop.rpc.closed


def _target(hop: RouteHop) -> PushTarget:
    return PushTarget(hop.peer_id, hop.session, hop.next_step, hop.start, hop.end)


async def pushed_step(
    session: MeshSession, index: int, count: int, hidden: np.ndarray, mask: np.ndarray, positions: np.ndarray
) -> tuple[int, np.ndarray]:
    """Run the step through ``session.hops[index : index + count]``, pushed; how many of them answered
    (the others were replaced, to be run again) and the last output."""
    timeout = session.client.config.request_timeout_s
    hops = session.hops[index : index + count]
    rpcs = [_rpc(h) for h in hops]
    keys = [(h.session, h.next_step) for h in hops]
    waits = [rpc.expect(*key) for rpc, key in zip(rpcs, keys, strict=True)]
    # Pushing peers keep their outputs (the client fetches one when it needs it): signed answers only.
    keep = session.keeping and all(h.check is not None for h in hops)
    inputs: Hidden = hidden
    j, direct, sent = 0, True, True
    loop = asyncio.get_running_loop()
    began = loop.time()
    grace = session.client.config.push_grace_s
    try:
        for j, hop in enumerate(hops):
            route = [_target(h).to_meta() for h in hops[j + 1 :]]
            meta: dict[str, object] | None = None
            if route:
                meta = {PUSH_KEY: route, KEEP_KEY: True} if keep else {PUSH_KEY: route}
            rpc = rpcs[j]
            request = _Request(hop, (inputs, mask, positions), meta, timeout)
            if direct:
                await rpc.send(await request.frame())
                answer = await rpc.wait(waits[j], timeout, "FORWARD")
                sent = True
            else:
                answer, sent = await _pushed_answer(session, rpc, waits[j], request, grace)
            if answer.type is FrameType.ERROR and answer.meta.get(PUSHED_BY_KEY) is not None:
                # The peer refused what was pushed to it: the client sends the step itself (or, having
                # sent it already, waits for that answer).
                log.info("%s refused a pushed step: %s", hop.peer_id[:8], answer.meta.get("message"))
                rpc.forget(*keys[j])
                waits[j] = rpc.expect(*keys[j])
                if not sent:
                    await rpc.send(await request.frame())
                    sent = True
                answer = await rpc.wait(waits[j], timeout, "FORWARD")
            raise_for_error(answer)
            out = hop.accept((inputs, mask, positions), answer)
            rpc.forget(*keys[j])  # answered: the key is free for a FETCH of this output
            hop.history.append((inputs, mask, positions))
            inputs = out
            # A long prefill takes long on the next peer too: its grace is twice what this one took.
            grace = max(session.client.config.push_grace_s, 2 * (loop.time() - began))
            began = loop.time()
            direct = PUSH_ERROR_KEY in answer.meta
            if direct:
                log.info("peer %s could not push: %s", hop.peer_id[:8], answer.meta[PUSH_ERROR_KEY])
        # The run's last peer pushes nothing: it answers in full, or keeps it if a pusher asked (fetched).
        last, _, _ = await resolve((inputs, mask, positions), timeout)
        return count, last
    except HOP_FAILURES as exc:
        for rpc, key in zip(rpcs, keys, strict=True):
            rpc.forget(*key)  # before CLOSE, which asks on the same key
        failed = hops[j]
        if isinstance(exc, KeptOutputError):  # the previous peer would not hand over what it kept
            session.note_failure(exc.peer_id, exc)
            raise ReplayLostError(str(exc)) from exc
        if isinstance(exc, BadAnswerError) and not sent:
            # Signed over an input other than its predecessor's answer: one of the two lied, and the
            # hop-by-hop steps from now on show which (signed answers, spot checks). No ban.
            session.pushing = False
            session.failovers += 1
            log.warning("pushed step on %s disagrees with its predecessor: %s", failed.peer_id[:8], exc)
        else:
            session.note_failure(failed.peer_id, exc)
        await session.replace_hops(index + j, count - j)
        try:  # the failed hop's input, which the peer before it may have kept
            resumed, _, _ = await resolve((inputs, mask, positions), timeout)
        except KeptOutputError as lost:
            session.note_failure(lost.peer_id, lost)
            raise ReplayLostError(str(lost)) from lost
        return j, resumed
    finally:
        for rpc, key in zip(rpcs, keys, strict=True):
            rpc.forget(*key)


class _Request:
    """A hop's FORWARD for this step, built when the client sends it itself: its input may be an output the
    previous peer kept, fetched then."""

    def __init__(self, hop: RouteHop, inputs: StepInputs, meta: dict[str, object] | None, timeout: float):
        self.hop, self.inputs, self.meta, self.timeout = hop, inputs, meta, timeout

    async def frame(self) -> Frame:
        return self.hop.request(*await resolve(self.inputs, self.timeout), meta=self.meta)


def _rpc(hop: RouteHop) -> RpcClient:
    if not isinstance(hop.rpc, RpcClient):
        raise TypeError("only hops over a link are pushed")
    return hop.rpc


async def _pushed_answer(
    session: MeshSession, rpc: RpcClient, wait: asyncio.Future[Frame], request: _Request, grace: float
) -> tuple[Frame, bool]:
    """A hop's answer to the step its predecessor pushed, and whether the client sent the step too: it
    does when no answer came within ``grace`` seconds of the predecessor's (``push_grace_s``, or twice
    the predecessor's own time if more): a push lost or refused where we cannot hear it, or a slow peer,
    which then answers one of the two and refuses the other as out of order, an answer nobody waits for."""
    try:
        return await rpc.wait(wait, grace, "a pushed FORWARD"), False
    except TimeoutError:
        pass
    log.info("no pushed answer from %s in %.1f s: sending the step itself", rpc.link.remote_id[:8], grace)
    await rpc.send(await request.frame())
    return await rpc.wait(wait, session.client.config.request_timeout_s, "FORWARD"), True


__all__ = ["push_run", "pushed_step"]

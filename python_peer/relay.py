"""A serving peer's side of push routing: run a step, push its output on to the next peer, answer the client.

A ``PushRelay`` wraps the peer's ``FrameHandler`` (its ``SpanGate``) and is what ``rpc.serve_link`` feeds
every link to (docs/mesh.md, "Push along the route"):

- its answer to OPEN says ``push: true``, so a client knows it may push through this peer;
- a FORWARD from a client with ``push`` (the rest of the route, ``core/push_route.py``) runs as usual; the
  output then goes as a FORWARD to the route's next peer, over a link this peer opens on demand and keeps
  (at most ``max_links``, the least recently used closed first), with ``client`` and the rest of the
  route; the client gets its RESULT as today (signed), with ``push_error`` when the push could not be
  sent. The push leaves before the RESULT, as soon as the blocks ran and before the answer is digested
  and signed (``hop.STEP_OUTPUT``, which the span server calls with its encoded output): it is the critical
  path, the RESULT is for the client's replay, spot checks and receipts. A handler that does not call
  the hook has its output pushed from its answer, after it.
- a FORWARD pushed here by another peer (``client`` set) runs in that client's session, which must be
  open here (the 16-byte session id is the client's secret; anything else is ``unknown_session``), and is
  answered on the client's own link to this peer; refused, its ERROR says ``pushed_by`` so the client
  resends the step itself instead of blaming this peer. With no link from that client the refusal goes
  back to the pusher.

- a FORWARD with ``keep`` that this peer pushes on is answered with the signed answer alone, its output
  kept for the client (docs/mesh.md, "Kept outputs") until the session's CLOSE, the client's last link
  closing or the session id opened again; the push carries ``keep`` on. A FETCH of ``(session, step)`` from the client gets that output
  back as a RESULT. Kept outputs take ``max_kept_bytes`` at most: when that is reached, what was kept for
  sessions no longer open here (evicted idle) goes first; beyond, and when the push failed or the answer
  is not signed, the output is answered in full as without ``keep``.

What a client can make a peer send: one push per FORWARD it pays for, of that FORWARD's output size, to the
peer named next; a route is checked before anything runs (spans chaining to the model's end, no peer
twice, not the peer itself, the client or the pusher). What it can make a peer hold: its kept outputs, at
most the outputs of the steps it paid for and within the peer's bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from typing import Protocol

from python_peer.core import manifest as names
from python_peer.core.answers import ANSWER_META_KEY
from python_peer.core.canonical import is_peer_id
from python_peer.core.errors import AI4AllError, WireError
from python_peer.core.push_route import (
    KEEP_KEY,
    PUSH_CLIENT_KEY,
    PUSH_ERROR_KEY,
    PUSH_KEY,
    PUSHED_BY_KEY,
    PushTarget,
    parse_route,
)
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, WireTensor, error_frame

from .errors import LinkClosedError
from .hop import STEP_OUTPUT, FrameHandler, FrameLink, LinkConnector
from .rpc import RpcClient

log = logging.getLogger(__name__)

MAX_PUSH_LINKS = 16  # links a peer keeps to the peers it pushes to
MAX_KEPT_BYTES = 256 * 2**20  # the outputs a peer keeps for its clients to fetch, at most
PUSH_CONNECT_TIMEOUT_S = 10.0  # a next peer not reached this long: the push fails, the client takes over
PUSH_SEND_TIMEOUT_S = 30.0  # a push not taken by the next peer this long: the same (below the client's 60 s)


class SpanHandler(FrameHandler, Protocol):
    """The handler a relay wraps: it also says which span a client's session is open for."""

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        """The span of ``client``'s open session and its model's number of layers, or None."""
        ...


class PushRelay:
    """The ``hop.LinkHandler`` of a peer that pushes: see the module."""

    def __init__(
        self,
        handler: SpanHandler,
        peer_id: str,
        connector: LinkConnector,
        *,
        max_links: int = MAX_PUSH_LINKS,
        connect_timeout_s: float = PUSH_CONNECT_TIMEOUT_S,
        send_timeout_s: float = PUSH_SEND_TIMEOUT_S,
        max_kept_bytes: int = MAX_KEPT_BYTES,
    ) -> None:
        self.handler = handler
        self.peer_id = peer_id
        self.connector = connector
        self.max_links = max_links
        self.connect_timeout_s = connect_timeout_s
        self.send_timeout_s = send_timeout_s
        self.pushed = 0  # pushes sent, for tests and status
        self._clients: dict[str, list[FrameLink]] = {}  # remote id -> its links to us, newest last
        self._next: OrderedDict[str, RpcClient] = OrderedDict()  # next peers, least recently used first
        self._connecting: dict[str, asyncio.Lock] = {}
        self._replies: set[asyncio.Future[None]] = set()  # pushed steps answering their clients
        self.max_kept_bytes = max_kept_bytes
        self.kept_bytes = 0
        self._kept: dict[tuple[str, bytes], dict[int, WireTensor]] = {}  # (client, session) -> step -> output

    # --- FrameHandler (in-process hops) ---------------------------------------------------------

    async def handle(self, client: str, frame: Frame) -> Frame:
        return await self.handler.handle(client, frame)

    def close_client(self, client: str) -> None:
        for key in [k for k in self._kept if k[0] == client]:
            self._drop(*key)
        self.handler.close_client(client)

    # --- LinkHandler --------------------------------------------------------------------------------

    def link_opened(self, link: FrameLink) -> None:
        self._clients.setdefault(link.remote_id, []).append(link)

    def link_closed(self, link: FrameLink) -> bool:
        links = self._clients.get(link.remote_id, [])
        with contextlib.suppress(ValueError):
            links.remove(link)
        if links:
            return False
        self._clients.pop(link.remote_id, None)
        return True

    async def answer(self, link: FrameLink, frame: Frame) -> Frame | None:
        if frame.type is FrameType.FETCH:
            return self._fetch(link.remote_id, frame)
        if frame.type is FrameType.CLOSE:
            self._drop(link.remote_id, frame.session)
        if frame.type is FrameType.OPEN:
            answer = await self.handler.handle(link.remote_id, frame)
            if answer.type is FrameType.RESULT:
                self._drop(link.remote_id, frame.session)  # a session id opened again: nothing kept yet
                answer = dataclasses.replace(answer, meta={**answer.meta, PUSH_KEY: True})
            return answer
        if frame.type is not FrameType.FORWARD or not ({PUSH_KEY, PUSH_CLIENT_KEY} & frame.meta.keys()):
            return await self.handler.handle(link.remote_id, frame)
        if PUSH_CLIENT_KEY not in frame.meta:
            return await self._run(link.remote_id, None, frame)
        client = frame.meta[PUSH_CLIENT_KEY]
        if not is_peer_id(client) or client in (link.remote_id, self.peer_id):
            return error_frame(
                frame.session, frame.step, ErrorCode.BAD_FRAME, f"{PUSH_CLIENT_KEY} must be another peer's id"
            )
        reply_link = self._client_link(client)
        if reply_link is None:
            return error_frame(
                frame.session,
                frame.step,
                ErrorCode.UNKNOWN_SESSION,
                f"client {client[:16]} has no link to this peer: no session of it to push into",
            )
        # Answered on the client's link even if the pusher's link closes meanwhile (a pusher closes the
        # least recently used of its links): the step runs on regardless (``SpanServer``), and a client
        # that got no answer would resend it, to be refused as ``out_of_order``.
        reply = asyncio.ensure_future(self._answer_pushed(client, link.remote_id, frame, reply_link))
        self._replies.add(reply)
        reply.add_done_callback(self._replies.discard)
        await asyncio.shield(reply)
        return None

    async def _answer_pushed(self, client: str, pusher: str, frame: Frame, reply_link: FrameLink) -> None:
        answer = await self._run(client, pusher, frame)
        with contextlib.suppress(LinkClosedError):
            await reply_link.send(answer)

    def _client_link(self, client: str) -> FrameLink | None:
        links = self._clients.get(client)
        return links[-1] if links else None

    async def _run(self, client: str, pusher: str | None, frame: Frame) -> Frame:
        """Run a FORWARD in ``client``'s session, push its output along the route it carries; the answer."""
        opened = self.handler.session_span(client, frame.session)
        route: list[PushTarget] = []
        if opened is not None and PUSH_KEY in frame.meta:
            span, num_layers = opened
            excluded = {self.peer_id, client} | ({pusher} if pusher is not None else set())
            try:
                route = parse_route(
                    frame.meta[PUSH_KEY], end=span.end, num_layers=num_layers, excluded=excluded
                )
            except WireError as exc:
                return self._refused(
                    frame, pusher, error_frame(frame.session, frame.step, exc.code, str(exc))
                )
        keep = frame.meta.get(KEEP_KEY) is True
        meta = {k: v for k, v in frame.meta.items() if k not in (PUSH_KEY, PUSH_CLIENT_KEY, KEEP_KEY)}
        pushed: list[str | None] = []  # what the push said, once it left (None: sent)

        async def push_output(output: WireTensor) -> None:
            hidden = dataclasses.replace(output, name=names.HIDDEN_IN)
            pushed.append(await self._push(client, route, frame, hidden))

        hook = STEP_OUTPUT.set(push_output if route else None)
        try:
            answer = await self.handler.handle(client, dataclasses.replace(frame, meta=meta))
        finally:
            STEP_OUTPUT.reset(hook)
        if answer.type is not FrameType.RESULT:
            return self._refused(frame, pusher, answer)
        if route:
            if pushed:
                problem = pushed[0]
            else:  # a handler that does not call the hook: its output is pushed from its answer
                output = dataclasses.replace(answer.tensor(names.HIDDEN_OUT), name=names.HIDDEN_IN)
                problem = await self._push(client, route, frame, output)
            if problem is not None:
                log.warning("%s", problem)
                answer = dataclasses.replace(answer, meta={**answer.meta, PUSH_ERROR_KEY: problem[:1024]})
            elif keep:
                answer = self._keep(client, frame, answer)
        return answer

    def _keep(self, client: str, frame: Frame, answer: Frame) -> Frame:
        """``answer`` without its output, which is kept for a FETCH; unchanged when not signed or no room."""
        output = answer.tensor(names.HIDDEN_OUT)
        if ANSWER_META_KEY not in answer.meta:
            return answer
        if self.kept_bytes + len(output.data) > self.max_kept_bytes:
            self._drop_ended()
            if self.kept_bytes + len(output.data) > self.max_kept_bytes:
                return answer
        kept = self._kept.setdefault((client, frame.session), {})
        replaced = kept.get(frame.step)
        kept[frame.step] = output
        self.kept_bytes += len(output.data) - (len(replaced.data) if replaced is not None else 0)
        return dataclasses.replace(answer, tensors=tuple(t for t in answer.tensors if t is not output))

    def _fetch(self, client: str, frame: Frame) -> Frame:
        """The answer to a FETCH: the output of ``frame.step`` kept in the client's session, or an ERROR."""
        output = self._kept.get((client, frame.session), {}).get(frame.step)
        if output is None:
            return error_frame(
                frame.session,
                frame.step,
                ErrorCode.UNKNOWN_SESSION,
                f"no output of step {frame.step} kept in this session for this client",
            )
        return Frame(FrameType.RESULT, frame.session, frame.step, tensors=(output,))

    def _drop_ended(self) -> None:
        """Forget what was kept for sessions no longer open here: evicted idle, never closed by a client
        whose link stays open (else kept until that link closed, taking room from every other client)."""
        for key in [k for k in self._kept if self.handler.session_span(*k) is None]:
            self._drop(*key)

    def _drop(self, client: str, session: bytes) -> None:
        for output in self._kept.pop((client, session), {}).values():
            self.kept_bytes -= len(output.data)

    @staticmethod
    def _refused(frame: Frame, pusher: str | None, answer: Frame) -> Frame:
        if pusher is None or answer.type is not FrameType.ERROR:
            return answer
        return dataclasses.replace(answer, meta={**answer.meta, PUSHED_BY_KEY: pusher})

    async def _push(
        self, client: str, route: list[PushTarget], frame: Frame, hidden: WireTensor
    ) -> str | None:
        """Send the step's output ``hidden`` to the route's next peer; None, or why it could not be sent."""
        target, rest = route[0], route[1:]
        meta: dict[str, object] = {PUSH_CLIENT_KEY: client}
        if rest:
            meta[PUSH_KEY] = [t.to_meta() for t in rest]
            if frame.meta.get(KEEP_KEY) is True:
                meta[KEEP_KEY] = True
        tensors = (hidden, frame.tensor(names.ATTENTION_MASK), frame.tensor(names.POSITION_IDS))
        push = Frame(FrameType.FORWARD, target.session, target.step, frame.flags, meta=meta, tensors=tensors)
        try:
            rpc = await self._link(target.peer)
        except (AI4AllError, TimeoutError) as exc:
            return f"could not push to {target.peer[:16]}: {type(exc).__name__}: {exc}"
        try:
            # A next peer that never takes the frame (its transport stalled) must not hold this step's
            # answer, and the session, for good: the push fails and the link goes.
            async with asyncio.timeout(self.send_timeout_s):
                await rpc.send(push)
        except (AI4AllError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and self._next.get(target.peer) is rpc:
                del self._next[target.peer]
                await rpc.aclose()
            return f"could not push to {target.peer[:16]}: {type(exc).__name__}: {exc}"
        self.pushed += 1
        return None

    async def _link(self, peer: str) -> RpcClient:
        """The link to ``peer``, opened on first use and kept (``max_links`` at most)."""
        lock = self._connecting.setdefault(peer, asyncio.Lock())
        async with lock:
            rpc = self._next.get(peer)
            if rpc is not None and not rpc.closed:
                self._next.move_to_end(peer)
                return rpc
            if rpc is not None:
                del self._next[peer]
                await rpc.aclose()
            while len(self._next) >= self.max_links:
                _, old = self._next.popitem(last=False)
                await old.aclose()
            for gone in [p for p, lk in self._connecting.items() if p not in self._next and not lk.locked()]:
                del self._connecting[gone]
            async with asyncio.timeout(self.connect_timeout_s):
                link = await self.connector.connect(peer)
            rpc = RpcClient(link)  # reads what the next peer sends back (refusals), dropping it
            self._next[peer] = rpc
            return rpc

    async def aclose(self) -> None:
        for rpc in list(self._next.values()):
            await rpc.aclose()
        self._next.clear()


__all__ = [
    "MAX_KEPT_BYTES",
    "MAX_PUSH_LINKS",
    "PUSH_CONNECT_TIMEOUT_S",
    "PUSH_SEND_TIMEOUT_S",
    "PushRelay",
    "SpanHandler",
]

"""The handler of a peer that serves spans of several models: each session goes to its model's gate.

OPEN names its model (``meta.model``, docs/wire.md); the router hands it to that model's ``SpanGate``
and remembers which gate opened the session, so every later frame of the session (FORWARD, CLOSE,
GOSSIP) reaches the same gate. An OPEN for a model this peer does not serve is refused with
``session_refused`` naming the models it does serve, so the client opens the session elsewhere.
"""

from __future__ import annotations

from collections import OrderedDict

from python_peer.core.ledger_exchange import RECEIPT
from python_peer.core.spans import Span
from python_peer.core.wire import ErrorCode, Frame, FrameType, error_frame

from .span_gate import MAX_ROUTES, SpanGate


class ModelRouter:
    """A ``hop.FrameHandler`` over one ``SpanGate`` per model; the first is the peer's primary model."""

    def __init__(self, gates: dict[str, SpanGate]) -> None:
        if not gates:
            raise ValueError("a model router needs at least one model's gate")
        self.gates = gates
        self._routes: OrderedDict[tuple[str, bytes], SpanGate] = OrderedDict()

    @property
    def primary(self) -> SpanGate:
        return next(iter(self.gates.values()))

    async def handle(self, client: str, frame: Frame) -> Frame:
        """Answer a frame: OPEN through its model's gate, the rest of a session through the gate that
        opened it."""
        key = (client, frame.session)
        if frame.type is FrameType.OPEN:
            model = frame.meta.get("model")
            gate = self.gates.get(model) if isinstance(model, str) else None
            if gate is None:
                served = ", ".join(sorted(self.gates))
                return error_frame(
                    frame.session,
                    frame.step,
                    ErrorCode.SESSION_REFUSED,
                    f"this peer serves no blocks of model {model!r} (it serves {served}); "
                    "open the session on a peer that announces it",
                )
            answer = await gate.handle(client, frame)
            if answer.type is FrameType.RESULT:
                self._routes[key] = gate
                self._routes.move_to_end(key)
                while len(self._routes) > MAX_ROUTES:
                    self._routes.popitem(last=False)
            return answer
        answer = await self._routes.get(key, self.primary).handle(client, frame)
        if frame.type is FrameType.GOSSIP and frame.meta.get("kind") == RECEIPT:
            self._routes.pop(key, None)  # the session's last frame
        return answer

    def session_span(self, client: str, session: bytes) -> tuple[Span, int] | None:
        """What the push relay asks (relay.SpanHandler): the span of a session, from the gate that opened it."""
        gate = self._routes.get((client, session))
        return gate.session_span(client, session) if gate is not None else None

    def close_client(self, client: str) -> None:
        """A link is gone: drop its sessions on every model's gate."""
        for gate in self.gates.values():
            gate.close_client(client)
        for key in [k for k in self._routes if k[0] == client]:
            del self._routes[key]


__all__ = ["ModelRouter"]

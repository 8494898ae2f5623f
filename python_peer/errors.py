"""Exceptions of the native peer (``python_peer/core/errors.py`` draws every package's tree).

Hierarchy::

    AI4AllError                  (python_peer.core.errors)
    └── PeerError
        ├── ShardError           a shard file that is missing, altered (sha256) or that onnxruntime refuses
        ├── ShardInputError      inputs of the wrong name, dtype or shape for a shard, or NaN/Inf in them
        ├── SessionError         an unknown, closed or over-budget inference session
        └── TransportError       a WebRTC link that cannot be made or used (transport.py, link.py)
            ├── LinkClosedError      the link is closed: locally, by the remote, or its connection failed
            │   └── LinkOverflowError    closed because frames arrived faster than the consumer read them
            ├── LinkTimeoutError     no answer, no open channel or no PONG within the timeout
            └── SignalPayloadError   a signaling payload that is malformed or names no pending link
    MeshError                    generation through the mesh could not go on (no route left, too many failures)
    UpError                      ``ai4all up`` could not start its local mesh

onnxruntime's own exceptions are translated at the boundary (``raise ShardError(...) from exc``).
aiortc's are translated the same way in ``transport.py`` and ``link.py``.
"""

from __future__ import annotations

from python_peer.core.errors import AI4AllError


class PeerError(AI4AllError):
    """Base class of the native peer's errors."""


class ShardError(PeerError):
    """A shard cannot be loaded or run."""


class ShardInputError(PeerError, ValueError):
    """The inputs given to a shard do not fit its graph."""


class SessionError(PeerError):
    """An inference session is unknown, closed, or cannot be opened."""


class TransportError(PeerError):
    """A WebRTC link to another peer cannot be made or used; the message names the remote peer."""


class LinkClosedError(TransportError):
    """The link is closed (by us, by the remote, or its connection failed); open a new one or reroute."""


class LinkOverflowError(LinkClosedError):
    """The link was closed because frames arrived faster than the local consumer called ``recv()``."""


class LinkTimeoutError(TransportError, TimeoutError):
    """The remote did not answer, the data channel did not open, or no PONG came back in time."""


class SignalPayloadError(TransportError, ValueError):
    """A signaling payload is malformed, of an unknown type, or names a link that is not pending."""


class TemplateError(PeerError):
    """The chat template cannot render these messages."""


class MeshError(AI4AllError):
    """Generation through the mesh could not go on (no route left, too many failures)."""


class UpError(AI4AllError):
    """``ai4all up`` could not start its local mesh (a process did not start, the export failed)."""

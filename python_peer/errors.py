"""Exceptions of the native peer.

Hierarchy::

    AI4AllError                  (python_peer.core.errors)
    └── PeerError
        ├── ShardError           a shard file that is missing, altered (sha256) or that onnxruntime refuses
        ├── ShardInputError      inputs of the wrong name, dtype or shape for a shard, or NaN/Inf in them
        └── SessionError         an unknown, closed or over-budget inference session

onnxruntime's own exceptions are translated at the boundary (``raise ShardError(...) from exc``).
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

"""Exceptions of the signaling node.

The signaling protocol's own errors (``SignalingError`` and its subclasses: bad messages, bad
announcements, a remote ``error``) are shared with peers and live in ``python_peer/core/errors.py``,
which draws the whole tree. This module holds what only a signaling node raises::

    AI4AllError                  (python_peer.core.errors)
    └── CoreError
        └── ManifestError
            └── SiteError        a --model-dir that cannot be served: no valid manifest, a file missing, a clash
"""

from __future__ import annotations

from python_peer.core.errors import ManifestError


class SiteError(ManifestError):
    """A model directory that cannot be served: no valid manifest, a listed file missing, a clash."""

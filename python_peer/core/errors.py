"""Exceptions of the stdlib-only core.

Every error a user can act on, in every package, derives from ``AI4AllError``; the CLI prints
it as one line and exits non-zero. Hierarchy of the core::

    AI4AllError
    └── CoreError
        ├── SpanError          a block span that is malformed, overlaps, leaves a gap or runs past the model
        └── ManifestError      a manifest.json that is missing, malformed or names an unknown format

Every message names the offending value so a user can act on it.
"""

from __future__ import annotations


class AI4AllError(Exception):
    """Root of every AI4All error that carries a message meant for a user."""


class CoreError(AI4AllError):
    """Base class of every error raised by ``python_peer.core``."""


class SpanError(CoreError, ValueError):
    """A block span or a list of spans is not valid for the model."""


class ManifestError(CoreError):
    """A manifest cannot be read or does not describe a usable set of shards."""

"""Exceptions of the exporter.

Hierarchy::

    AI4AllError                 (python_peer.core.errors)
    └── ExportError
        ├── ModelSourceError    the model directory, GGUF file or hub id is missing, corrupt or unreachable
        ├── UnsupportedModelError  an architecture or setting the exporter does not handle
        ├── OutputDirError      the output directory holds files that are not ours
        └── ExportFailedError   torch -> ONNX, quantization or verification of a shard failed

Span problems are ``python_peer.core.errors.SpanError``, shared with the peers.
"""

from __future__ import annotations

from python_peer.core.errors import AI4AllError


class ExportError(AI4AllError):
    """Base class of the exporter's errors."""


class ModelSourceError(ExportError):
    """The model to export cannot be found or read."""


class UnsupportedModelError(ExportError):
    """The model's architecture or configuration is not one the exporter handles."""


class OutputDirError(ExportError):
    """The output directory cannot be used (it holds foreign files, or is not a directory)."""


class ExportFailedError(ExportError):
    """A step of the export itself failed."""

"""Exceptions of the stdlib-only core, and the map of every AI4All exception.

Every error a user can act on, in every package, derives from ``AI4AllError``; the CLI prints it as one
line (``ai4all COMMAND: error: ...``) and exits 1. Third-party errors (onnxruntime, aiortc, websockets,
pynacl, pydantic) are translated where they are caught (``raise ShardError(...) from exc``). Each
package keeps its own errors in one module: the core's here, the peer's in ``python_peer/errors.py``, the
API's in ``python_peer/api/errors.py``, the exporter's in ``exporter/errors.py`` and the signaling node's
in ``signaling/errors.py``. The whole tree::

    AI4AllError
    ├── CoreError                          (this module)
    │   ├── SpanError          a block span that is malformed, overlaps, leaves a gap or runs past the model
    │   ├── ManifestError      a manifest.json that is missing, malformed or names an unknown format
    │   │   ├── SiteError          (signaling/errors.py) a --model-dir a signaling node cannot serve
    │   │   ├── AdmissionError     a manifest or shard that breaks an admission rule (``rule`` names it)
    │   │   └── PublicationError   a signed manifest that is missing, malformed, forged or altered
    │   │       └── UntrustedPublisherError  a valid signature by a publisher this node does not trust
    │   ├── WireError          bytes from a peer that are not a valid frame or chunk (wire.py); ``code``
    │   │   │                  is the error code a peer sends back in its ERROR frame
    │   │   ├── TruncatedFrameError     the bytes end before the header or the lengths it declares
    │   │   ├── FrameHeaderError        a header field that this version does not know
    │   │   │   ├── BadMagicError           the frame does not start with the magic bytes
    │   │   │   ├── UnsupportedVersionError a wire version other than ours
    │   │   │   ├── UnknownFrameTypeError   a frame type number we do not know
    │   │   │   └── UnknownFlagsError       flag bits we do not know
    │   │   ├── FrameLayoutError        lengths, offsets or padding that disagree with the bytes
    │   │   ├── LimitExceededError      a frame, metadata, tensor count, rank or buffer over its bound
    │   │   ├── MetadataError           metadata that is not canonical JSON of an object we accept
    │   │   │   └── DuplicateTensorError    two tensors with the same name in one frame
    │   │   ├── TensorError             unknown dtype, bad dims, shape disagreeing with byte length
    │   │   │   └── NonFiniteError          NaN or Inf in a floating point tensor
    │   │   └── ChunkError              a data channel chunk that is malformed or inconsistent
    │   ├── RemoteError        a peer answered with an ERROR frame; ``code`` says why
    │   │   ├── RemoteBadFrameError     bad_frame: the peer could not decode our frame
    │   │   ├── RemoteBadShapeError     bad_shape: the peer refused a tensor's dtype or shape
    │   │   ├── RemoteNonFiniteError    non_finite: the peer found NaN or Inf in our tensors
    │   │   ├── UnknownSessionError     unknown_session: the peer holds no such session
    │   │   ├── OutOfOrderError         out_of_order: a step arrived before the one it expected
    │   │   ├── SessionRefusedError     session_refused: the peer will not open this session
    │   │   ├── OverloadedError         overloaded: the peer has no room now; try another
    │   │   ├── RemoteInternalError     internal: the peer failed while running the step
    │   │   ├── RemoteTimeoutError      timeout: the peer gave up waiting
    │   │   └── PaymentRequiredError    payment_required: the caller's balance does not cover the request
    │   ├── CanonicalError     a value with no canonical JSON form: NaN/Inf, a non-string key, a lone surrogate
    │   ├── IdentityError      an identity key file that cannot be read or written, or malformed key material
    │   │   └── SignatureError     a signature that does not verify: forged, altered, or made by another key
    │   ├── SignalingError     a signaling failure; ``code`` is the code of the ``error`` message on the wire
    │   │   ├── MessageError           a message that is not JSON, too large, of unknown type or malformed
    │   │   ├── AnnouncementError      an announcement body that is malformed, out of bounds or expired
    │   │   ├── RemoteSignalingError   a signaling node answered with an ``error`` message; ``code`` says why
    │   │   └── SignalClientError      the signal client is closed, timed out or reached no signaling node
    │   ├── LedgerError        a ledger entry, rule set, gossip message or store that is malformed or refused;
    │   │   │                  ``code`` names the rejection (``malformed``, ``bad_signature``, ``forked`` ...)
    │   │   └── ExchangeError      (ledger_exchange.py) ledger metadata on a session link that is malformed
    │   └── SettingsError      a configuration value that is not valid (``ice.py``); ``field`` names it
    ├── CommandError           (this module) a bad flag or argument of the ``ai4all`` command
    ├── PeerError                          (python_peer/errors.py)
    │   ├── ShardError             a shard file that is missing, altered (sha256) or that onnxruntime refuses
    │   ├── ShardInputError        inputs of the wrong name, dtype or shape for a shard, or NaN/Inf in them
    │   ├── SessionError           an unknown, closed or over-budget inference session
    │   ├── Refusal                (python_peer/hop.py) a request a serving side refuses: sent as an ERROR frame
    │   ├── BadAnswerError         (python_peer/spot_check.py) an answer unsigned or signed over something else
    │   ├── KeptOutputError        (python_peer/route_hop.py) a kept output withheld, or another handed over
    │   ├── DownloadError          (python_peer/download.py) model files no usable seeder could give
    │   ├── TransportError         a WebRTC link that cannot be made or used (transport.py, link.py)
    │   │   ├── LinkClosedError        the link is closed: locally, by the remote, or its connection failed
    │   │   │   └── LinkOverflowError      closed because frames arrived faster than the consumer read them
    │   │   ├── LinkTimeoutError       no answer, no open channel or no PONG within the timeout
    │   │   └── SignalPayloadError     a signaling payload that is malformed or names no pending link
    │   └── TemplateError          the chat template cannot render the messages (tokenizer.py)
    ├── UpError                            (python_peer/errors.py) ``ai4all up`` could not start its mesh
    ├── NoRouteError                       (python_peer/routing.py) no reachable peers cover the blocks
    ├── MeshError                          (python_peer/errors.py) generation through the mesh gave up
    ├── ReplayLostError                    (python_peer/route_hop.py) a failover's replay inputs lost: the
    │                                      session replays its whole route instead
    ├── ApiError                           (python_peer/api/errors.py) status, type and code of the OpenAI body
    │   ├── InvalidRequestError        400 a request the models cannot refuse alone
    │   │   └── ContextLengthError     400 prompt + max_tokens over the model's context
    │   ├── AuthenticationError        401 the node wants an API key and got another
    │   ├── ForbiddenHostError         403 a settings change through a host name, not an address
    │   ├── ModelNotFoundError         404 this node has no such model
    │   ├── NotFoundError              404 no such endpoint or page
    │   ├── MethodNotAllowedError      405
    │   ├── BodyTooLargeError          413
    │   ├── UnsupportedMediaTypeError  415 settings not sent as JSON
    │   ├── RateLimitedError           429 too many requests, or generations waiting
    │   ├── LedgerUnavailableError     503 this node keeps no ledger yet
    │   ├── NotServingError            409 (python_peer/api/control.py) the node serves no span
    │   ├── SpanLoadError              500 (python_peer/api/control.py) a span this machine failed to load
    │   └── SettingsBusyError          409 (python_peer/api/control.py) another settings change is under way
    ├── ApiListenError                     (python_peer/api/errors.py) the API cannot listen on its address
    └── ExportError                        (exporter/errors.py)
        ├── ModelSourceError       the model directory, GGUF file or hub id is missing, corrupt or unreachable
        ├── UnsupportedModelError  an architecture or setting the exporter does not handle
        ├── OutputDirError         the output directory holds files that are not ours
        └── ExportFailedError      torch -> ONNX, quantization or verification of a shard failed

Every message names the offending value so a user can act on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class AI4AllError(Exception):
    """Root of every AI4All error that carries a message meant for a user."""


class CoreError(AI4AllError):
    """Base class of every error raised by ``python_peer.core``."""


class SpanError(CoreError, ValueError):
    """A block span or a list of spans is not valid for the model."""


class ManifestError(CoreError):
    """A manifest cannot be read or does not describe a usable set of shards."""


class AdmissionError(ManifestError):
    """A manifest or a shard file breaks an admission rule (``core/admission.py``): nothing of it is loaded,
    served or relayed. ``rule`` is the rule's name (``onnx_only``, ``operator_allowed`` ...), and the
    message starts with it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"admission rule {rule}: {message}")
        self.rule = rule
        self.detail = message


class PublicationError(ManifestError):
    """A model's signed manifest (``core/publication.py``) is missing, malformed, not signed by its
    publisher, or does not match the manifest and files beside it."""


class UntrustedPublisherError(PublicationError):
    """A signed manifest whose signature is valid but whose publisher this node was not told to trust."""

    def __init__(self, message: str, publisher: str) -> None:
        super().__init__(message)
        self.publisher = publisher


class WireError(CoreError, ValueError):
    """Bytes from a peer are not a valid frame or chunk; the frame is refused, nothing else is affected.

    ``code`` is the error code a peer puts in the ERROR frame it sends back for this error.
    """

    code: ClassVar[str] = "bad_frame"


class TruncatedFrameError(WireError):
    """The bytes end before the fixed header, or before the lengths the header declares."""


class FrameHeaderError(WireError):
    """A header field holds a value this version of the wire format does not know."""


class BadMagicError(FrameHeaderError):
    """The bytes do not start with the frame magic: not an AI4All frame at all."""


class UnsupportedVersionError(FrameHeaderError):
    """The frame uses another wire version; the peers must upgrade to talk."""


class UnknownFrameTypeError(FrameHeaderError):
    """The frame type number is not one this version defines."""


class UnknownFlagsError(FrameHeaderError):
    """Flag bits are set that this version does not define."""


class FrameLayoutError(WireError):
    """Declared lengths, offsets or padding disagree with the bytes actually present."""


class LimitExceededError(WireError):
    """A frame, its metadata, its tensor count or rank, or a reassembly buffer is over its bound."""


class MetadataError(WireError):
    """The metadata is not canonical UTF-8 JSON of an object holding only values the format allows."""


class DuplicateTensorError(MetadataError):
    """Two tensors in one frame have the same name, so a receiver could not tell them apart."""


class TensorError(WireError):
    """A tensor's dtype is unknown, a dim is negative or too large, or shape and byte length disagree."""

    code: ClassVar[str] = "bad_shape"


class NonFiniteError(TensorError):
    """A floating point tensor holds NaN or Inf, which would poison every later step."""

    code: ClassVar[str] = "non_finite"


class ChunkError(WireError):
    """A data channel chunk is malformed, or disagrees with the other chunks of its message."""


class RemoteError(CoreError):
    """A peer answered with an ERROR frame: ``code`` says why, the message is the peer's own words."""

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteBadFrameError(RemoteError):
    """The peer could not decode a frame we sent."""

    code = "bad_frame"


class RemoteBadShapeError(RemoteError):
    """The peer refused a tensor we sent for its dtype or shape."""

    code = "bad_shape"


class RemoteNonFiniteError(RemoteError):
    """The peer found NaN or Inf in a tensor we sent."""

    code = "non_finite"


class UnknownSessionError(RemoteError):
    """The peer holds no session with that id: it restarted, or the session expired."""

    code = "unknown_session"


class OutOfOrderError(RemoteError):
    """A step reached the peer before the step it expected."""

    code = "out_of_order"


class SessionRefusedError(RemoteError):
    """The peer will not open the session (wrong model or span, bad parameters, or a ban)."""

    code = "session_refused"


class OverloadedError(RemoteError):
    """The peer has no compute or KV-cache room now; route around it."""

    code = "overloaded"


class RemoteInternalError(RemoteError):
    """The peer failed while running the step; the failure is on its side."""

    code = "internal"


class RemoteTimeoutError(RemoteError):
    """The peer gave up waiting (for the next step, or for a peer further down the chain)."""

    code = "timeout"


class PaymentRequiredError(RemoteError):
    """The caller's ledger balance does not cover the request."""

    code = "payment_required"


class CanonicalError(CoreError, ValueError):
    """A value has no canonical JSON form (NaN/Inf, a non-string key, a lone surrogate, a foreign type)."""


class IdentityError(CoreError):
    """An identity key file cannot be read or written, or key material is malformed."""


class SignatureError(IdentityError):
    """A signature does not verify: the signed bytes were altered, or another key made it."""


class SignalingError(CoreError):
    """Base of signaling failures; ``code`` is the code a signaling node puts in its ``error`` message."""

    code: str = "bad_message"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MessageError(SignalingError, ValueError):
    """A signaling message is not JSON (``bad_json``), too large (``too_large``) or malformed."""


class AnnouncementError(SignalingError, ValueError):
    """An announcement body is malformed or out of bounds (``bad_announcement``), or ``expired``."""

    code = "bad_announcement"


class RemoteSignalingError(SignalingError):
    """A signaling node answered with an ``error`` message: ``code`` says why, the message is its own."""

    code = "internal"


class SignalClientError(SignalingError):
    """The signal client is closed, a request timed out, or no signaling node could be reached."""

    code = "client"


class LedgerError(CoreError, ValueError):
    """A ledger entry, rule set, gossip message or store is malformed or refused; ``code`` says why."""

    code: str = "malformed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class SettingsError(CoreError, ValueError):
    """A configuration value that is not valid; ``field`` names it.

    The message is a template whose ``{field}`` placeholders are filled with how the reader knows each
    field: ``str()`` uses the names given at construction (the domain's), and a command line calls
    ``render`` with its flag names, so the same check speaks of ``username`` in a library and of
    ``--ice-username`` on the command line.
    """

    def __init__(
        self, field: str, template: str, values: Mapping[str, object], names: Mapping[str, str]
    ) -> None:
        self.field = field
        self.template = template
        self.values = dict(values)
        super().__init__(self.render(names))

    def render(self, names: Mapping[str, str]) -> str:
        """The message, each field named as ``names`` says."""
        return self.template.format(**names, **self.values)


class CommandError(AI4AllError):
    """A failure a user of the ``ai4all`` command can act on: printed as one line on stderr, exit status 1."""

"""The API's own errors, each with the HTTP status, type and code of the OpenAI error body it becomes.

``translate.error_body`` turns them (and the mesh's errors) into responses. Hierarchy::

    AI4AllError                      (python_peer.core.errors)
    ├── ApiError                     status, type and code of the OpenAI error body; ``param``: the field
    │   ├── InvalidRequestError      400 invalid_request_error: a request the models cannot refuse alone
    │   │   └── ContextLengthError   400 context_length_exceeded: prompt + max_tokens over the context
    │   ├── AuthenticationError      401 invalid_api_key: the node wants an API key and got another
    │   ├── ForbiddenHostError       403 forbidden_host: no API key, and a host name in Host (or a POST's Origin)
    │   ├── ModelNotFoundError       404 model_not_found: this node has no such model
    │   ├── NotFoundError            404 not_found: no such endpoint
    │   ├── MethodNotAllowedError    405 method_not_allowed
    │   ├── BodyTooLargeError        413 request_too_large
    │   ├── UnsupportedMediaTypeError  415 unsupported_media_type: settings not sent as JSON
    │   ├── RateLimitedError         429 rate_limit_exceeded: too many requests, or generations waiting
    │   └── LedgerUnavailableError   503 ledger_disabled: this node keeps no ledger yet
    └── ApiListenError               the API cannot listen on the address it was given

``control.py`` adds ``NotServingError`` (409), ``SpanLoadError`` (500) and ``SettingsBusyError`` (409)
for the node's settings.
"""

from __future__ import annotations

from typing import ClassVar

from python_peer.core.errors import AI4AllError


class ApiError(AI4AllError):
    """An error the API answers with its own status; ``param`` names the request field at fault."""

    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidRequestError(ApiError):
    """The request is well formed but cannot be served as asked."""


class ContextLengthError(InvalidRequestError):
    """The prompt, plus the tokens asked for, does not fit the model's context."""

    code = "context_length_exceeded"


class AuthenticationError(ApiError):
    status = 401
    code = "invalid_api_key"


class ModelNotFoundError(ApiError):
    status = 404
    code = "model_not_found"


class NotFoundError(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowedError(ApiError):
    status = 405
    code = "method_not_allowed"


class BodyTooLargeError(ApiError):
    status = 413
    code = "request_too_large"


class RateLimitedError(ApiError):
    """Too many requests from one client, or too many generations waiting; ``retry_after`` in seconds."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LedgerUnavailableError(ApiError):
    status = 503
    type = "service_unavailable_error"
    code = "ledger_disabled"


class UnsupportedMediaTypeError(ApiError):
    """A settings change that is not sent as JSON."""

    status = 415
    code = "unsupported_media_type"


class ForbiddenHostError(ApiError):
    """Without an API key: a request naming this node by a host name, or a POST from a page of one."""

    status = 403
    type = "permission_error"
    code = "forbidden_host"


class ApiListenError(AI4AllError):
    """The API cannot listen on the address it was given."""

"""The boundary between the mesh and OpenAI's shapes, both ways, errors included.

Inbound: messages -> prompt ids through the model's chat template, a plain prompt -> ids, a request ->
``SamplingParams`` checked against the model's context. Outbound: a ``Generation`` -> a response, text
pieces -> server-sent events in OpenAI's chunk format, and any exception -> an HTTP status and OpenAI's
error body. The API's own errors (``ApiError``, each with its status) are in ``errors.py``.

Errors of the mesh map as: ``PaymentRequiredError`` (raised by the ledger, or the cause of a mesh
failure) -> 402 insufficient_balance; ``MeshError``, ``NoRouteError`` -> 503 no_route; a signaling
failure -> 503 signaling_unavailable; pydantic validation -> 400 with ``param`` naming the field.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from python_peer.core.errors import AI4AllError, PaymentRequiredError, SignalingError
from python_peer.errors import MeshError, PeerError
from python_peer.generate import MIN_TEMPERATURE, Generation, SamplingParams
from python_peer.routing import NoRouteError
from python_peer.tokenizer import ModelTokenizer, TemplateError

from .errors import ApiError, ContextLengthError, InvalidRequestError
from .types import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    Usage,
)

DEFAULT_MAX_TOKENS = 256  # when a request names none, capped by what is left of the context
SSE_DONE = b"data: [DONE]\n\n"


# --- inbound ----------------------------------------------------------------------------------------


def chat_prompt_ids(tokenizer: ModelTokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """The messages through the model's chat template, as token ids."""
    try:
        text = tokenizer.render_chat([{"role": m.role, "content": m.text} for m in messages])
    except TemplateError as exc:
        raise InvalidRequestError(str(exc), param="messages") from exc
    ids = tokenizer.encode(text)
    if not ids:
        raise InvalidRequestError("the messages render to an empty prompt", param="messages")
    return ids


def completion_prompt_ids(
    tokenizer: ModelTokenizer, request: CompletionRequest, vocab_size: int
) -> list[int]:
    """A plain prompt as token ids: text is encoded as is, ids are checked against the vocabulary."""
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = [int(i) for i in prompt]
        bad = next((i for i in ids if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"token id {bad} is outside this model's vocabulary (0..{vocab_size - 1})", param="prompt"
            )
    else:
        text = prompt if isinstance(prompt, str) else str(prompt[0])
        ids = tokenizer.encode(text)
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return ids


def sampling_params(
    request: ChatCompletionRequest | CompletionRequest, prompt_tokens: int, context_length: int
) -> SamplingParams:
    """The request's sampling settings, with ``max_tokens`` checked against what the context has left."""
    room = context_length - prompt_tokens
    if room < 1:
        raise ContextLengthError(
            f"the prompt is {prompt_tokens} tokens; this model's context holds {context_length}",
            param="messages" if isinstance(request, ChatCompletionRequest) else "prompt",
        )
    asked = request.requested_max_tokens
    if asked is not None and asked > room:
        raise ContextLengthError(
            f"the prompt is {prompt_tokens} tokens and {asked} more were asked for; this model's context "
            f"holds {context_length}: ask for at most {room}",
            param="max_tokens",
        )
    # Both limits are greedy: top_p -> 0 keeps only the likeliest token, and a temperature below
    # MIN_TEMPERATURE would overflow the scaled logits to inf (and the probabilities to NaN) in sample().
    greedy = request.temperature < MIN_TEMPERATURE or request.top_p == 0.0
    try:
        return SamplingParams(
            max_tokens=asked if asked is not None else min(DEFAULT_MAX_TOKENS, room),
            temperature=0.0 if greedy else request.temperature,
            top_p=1.0 if greedy else request.top_p,
            seed=None if request.seed is None else request.seed % 2**64,
            stop=request.stops,
        )
    except PeerError as exc:  # the request models bound every field; this only guards their drift
        raise InvalidRequestError(str(exc)) from exc


# --- outbound ---------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(result: Generation) -> Usage:
    completion = len(result.token_ids)
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=completion,
        total_tokens=result.prompt_tokens + completion,
    )


def finish_reason(result: Generation) -> Any:
    return "stop" if result.finish_reason == "stop" else "length"


def chat_completion(result: Generation, *, model: str, id: str, created: int) -> ChatCompletion:
    return ChatCompletion(
        id=id,
        created=created,
        model=model,
        choices=[
            ChatChoice(message=AssistantMessage(content=result.text), finish_reason=finish_reason(result))
        ],
        usage=usage(result),
    )


def completion(result: Generation, *, model: str, id: str, created: int) -> Completion:
    return Completion(
        id=id,
        created=created,
        model=model,
        choices=[CompletionChoice(text=result.text, finish_reason=finish_reason(result))],
        usage=usage(result),
    )


def sse(event: BaseModel) -> bytes:
    """One server-sent event; ``None`` fields are left out, as OpenAI leaves them out of deltas."""
    return b"data: " + event.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def chat_events(
    pieces: AsyncIterator[str],
    first: str | None,
    result: Generation,
    *,
    model: str,
    id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """A streamed chat completion: a role chunk, one chunk per text piece, the finish reason, [DONE].

    ``first`` is the piece already taken from ``pieces`` (None when the reply ended before any text), so
    that a mesh that cannot serve fails with a status code before the stream starts.
    """

    def chunk(delta: ChatDelta, finish: Any = None, usage_: Usage | None = None) -> bytes:
        choices = [] if usage_ is not None else [ChatChunkChoice(delta=delta, finish_reason=finish)]
        return sse(ChatCompletionChunk(id=id, created=created, model=model, choices=choices, usage=usage_))

    try:
        yield chunk(ChatDelta(role="assistant", content=""))
        if first is not None:
            yield chunk(ChatDelta(content=first))
            async for piece in pieces:
                yield chunk(ChatDelta(content=piece))
        yield chunk(ChatDelta(), finish_reason(result))
        if include_usage:
            yield chunk(ChatDelta(), usage_=usage(result))
        yield SSE_DONE
    except Exception as exc:  # headers are gone: the error travels as an event, as OpenAI sends it
        yield error_event(exc)
    finally:
        await _close(pieces)


async def completion_events(
    pieces: AsyncIterator[str],
    first: str | None,
    result: Generation,
    *,
    model: str,
    id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """A streamed plain completion: one chunk per text piece, then the finish reason, then [DONE]."""

    def chunk(text: str, finish: Any = None, usage_: Usage | None = None) -> bytes:
        choices = [] if usage_ is not None else [CompletionChoice(text=text, finish_reason=finish)]
        return sse(Completion(id=id, created=created, model=model, choices=choices, usage=usage_))

    try:
        if first is not None:
            yield chunk(first)
            async for piece in pieces:
                yield chunk(piece)
        yield chunk("", finish_reason(result))
        if include_usage:
            yield chunk("", usage_=usage(result))
        yield SSE_DONE
    except Exception as exc:
        yield error_event(exc)
    finally:
        await _close(pieces)


async def _close(pieces: AsyncIterator[str]) -> None:
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        await aclose()


# --- errors -----------------------------------------------------------------------------------------


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of kind ``kind`` in its chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "constrained-str"})


def _type_tag(part: object) -> bool:
    """Whether a part of pydantic's error location names a branch of a union rather than a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or any(c in part for c in "[](),"))


def validation_error(errors: Sequence[Any]) -> ErrorResponse:
    """A 400 body for pydantic's (or FastAPI's) list of errors: the first one, with its field as param."""
    if not errors:
        return error_body("the request is not valid", "invalid_request_error")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return error_body(f"the body is not valid JSON: {detail}".rstrip(": "), "invalid_request_error")
    param = _param(first)
    if param is None and first.get("type") == "missing":
        return error_body("the request has no body: send a JSON object", "invalid_request_error")
    message = str(first.get("msg", "invalid value"))
    others = len({_param(e) for e in errors} - {param})  # a union's branches each report the same field
    more = f" ({others} other fields are wrong too)" if others > 1 else " (1 other field is wrong too)"
    where = f"{param}: " if param else "the body: "
    return error_body(
        f"{where}{message}{more if others else ''}",
        "invalid_request_error",
        param=param,
        code="invalid_value",
    )


def _param(error: Any) -> str | None:
    loc = [str(part) for part in error.get("loc", ()) if part != "body" and not _type_tag(part)]
    return ".".join(loc) or None


def error_response(exc: BaseException) -> tuple[int, ErrorResponse]:
    """The HTTP status and OpenAI error body for any exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(str(exc), exc.type, param=exc.param, code=exc.code)
    if isinstance(exc, ValidationError):
        return 400, validation_error(exc.errors())
    payment = _cause(exc, PaymentRequiredError)
    if payment is not None:
        return 402, error_body(str(payment), "insufficient_quota", code="insufficient_balance")
    if isinstance(exc, MeshError | NoRouteError):
        return 503, error_body(
            f"no route through the mesh: {exc}", "service_unavailable_error", code="no_route"
        )
    if isinstance(exc, SignalingError):
        return 503, error_body(
            f"the signaling nodes cannot be reached: {exc}",
            "service_unavailable_error",
            code="signaling_unavailable",
        )
    if isinstance(exc, AI4AllError):
        return 500, error_body(str(exc), "server_error", code="internal_error")
    return 500, error_body(
        f"internal error ({type(exc).__name__}); the node's log has the details",
        "server_error",
        code="internal_error",
    )


def error_event(exc: BaseException) -> bytes:
    """An error inside a stream that has started, as the event OpenAI's clients raise from."""
    _, body = error_response(exc)
    return b"data: " + json.dumps(body.model_dump()).encode() + b"\n\n"

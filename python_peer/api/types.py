"""Wire types of the OpenAI-compatible API: what clients send, what they get back, errors included.

Requests are parsed into these models, so anything out of bounds is refused with a 400 naming the field
before it reaches the mesh. Field names and shapes follow OpenAI's; fields that OpenAI clients commonly
send but this node cannot honour are accepted at their neutral value and refused otherwise, and unknown
fields are ignored, as many OpenAI-compatible servers do. Extensions of ours (``coverage`` on models,
the node status, the balance) are additive.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_MODEL_ID_CHARS = 256
MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 65_536
MAX_PROMPT_CHARS = 262_144  # all messages, or the plain prompt, together
MAX_PROMPT_IDS = 32_768  # a prompt given as token ids
MAX_STOP = 4
MAX_STOP_CHARS = 128
MAX_TOKENS = 32_768  # the most any span server accepts for one session; the model's context is checked too
INT64 = 2**63

FinishReason = Literal["stop", "length"]


def _utf8(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``), which no tokenizer or UTF-8 encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text holds a character that is not valid Unicode at {exc.start}") from None
    return text


def _null_is_default(model: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """OpenAI takes null for its optional fields (its clients send ``None`` as null): the default then."""
    if value is None and info.field_name is not None:
        return model.model_fields[info.field_name].default
    return value


Text = Annotated[str, AfterValidator(_utf8)]
MessageText = Annotated[Text, Field(max_length=MAX_MESSAGE_CHARS)]
PromptText = Annotated[Text, Field(max_length=MAX_PROMPT_CHARS)]
TokenId = Annotated[int, Field(ge=0, lt=INT64)]
Role = Literal["system", "developer", "user", "assistant", "tool"]


class _Request(BaseModel):
    # strict: no coercion of strings or booleans to numbers, nor of "yes" to a boolean, as OpenAI answers
    model_config = ConfigDict(extra="ignore", str_max_length=MAX_PROMPT_CHARS, strict=True)


class TextPart(_Request):
    """One part of a message's content; only text parts exist on a text-only model."""

    type: Literal["text"]
    text: MessageText


class ChatMessage(_Request):
    """One message of the conversation, as OpenAI's chat API takes it."""

    role: Role
    content: MessageText | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)]
    name: Text | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _bounded(self) -> ChatMessage:
        if isinstance(self.content, list) and len(self.text) > MAX_MESSAGE_CHARS:  # parts, each within it
            raise ValueError(f"a message holds at most {MAX_MESSAGE_CHARS} characters, its parts together")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by chat and plain completions; defaults are OpenAI's, except greedy is not."""

    model: Text = Field(min_length=1, max_length=MAX_MODEL_ID_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    n: int = 1
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = Field(default=None, max_length=256)
    frequency_penalty: float | None = Field(default=None, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None

    @field_validator("temperature", "top_p", "n", "stream", mode="before")
    @classmethod
    def _null_sampling(cls, value: object, info: ValidationInfo) -> object:
        return _null_is_default(cls, value, info)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"this node returns one choice per request: n must be 1, not {n}")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, not {len(stops)}")
        for item in stops:
            if not 1 <= len(item) <= MAX_STOP_CHARS:
                raise ValueError(f"each stop string must hold 1 to {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported by this node; leave them at 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported by this node")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: the messages go through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs:
            raise ValueError("logprobs are not supported by this node")
        if self.tools:
            raise ValueError("tools are not supported by this node")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported by this node")
        if sum(len(m.text) for m in self.messages) > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold more than {MAX_PROMPT_CHARS} characters together")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a plain prompt (text, or token ids), no chat template."""

    prompt: (
        PromptText
        | Annotated[list[PromptText], Field(max_length=MAX_MESSAGES)]
        | Annotated[list[TokenId], Field(max_length=MAX_PROMPT_IDS)]
    )
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("echo", mode="before")
    @classmethod
    def _null_echo(cls, value: object, info: ValidationInfo) -> object:
        return _null_is_default(cls, value, info)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) and len(prompt) != 1:
            raise ValueError(f"this node takes one prompt per request, not {len(prompt)}")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt is empty")
        return prompt

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported by this node")
        if self.suffix:
            raise ValueError("suffix is not supported by this node")
        if self.best_of not in (None, 1):
            raise ValueError("best_of must be 1 on this node")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this node")
        return self


# --- responses --------------------------------------------------------------------------------------


class Usage(BaseModel):
    """Tokens of the templated prompt and of the reply (the end-of-sequence token is not counted)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Completion(BaseModel):
    """A plain completion, and (with ``usage`` left out until the end) each chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class SpanCoverage(BaseModel):
    """A span of blocks announced on the mesh, and how many peers serve it."""

    start: int
    end: int
    peers: int


class Coverage(BaseModel):
    """How much of a model the mesh serves now, as its peers announce it: servable when every block has
    a peer. ``blocks`` and ``servable`` are None for a model this node has no manifest of (its block
    count is unknown here); ``peers`` counts distinct peers serving any block of it."""

    blocks: int | None
    covered_blocks: int
    servable: bool | None
    peers: int
    spans: list[SpanCoverage]


class ModelCard(BaseModel):
    """A model of the mesh. ``chat``: this node chats with it, since it holds the model's embedding, head
    and tokenizer and the mesh covers every block; other models are listed with their coverage only."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ai4all"
    chat: bool
    coverage: Coverage


class ModelList(BaseModel):
    """``GET /v1/models``: every model the mesh covers (at least one block announced), bounded: at most
    ``core.model_summary.MAX_MODELS`` from signaling plus this node's own models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ServedSpanStatus(BaseModel):
    model: str
    start: int
    end: int
    open_sessions: int
    tokens_served: int
    kv_free_tokens: int


class SignalingStatus(BaseModel):
    state: str
    connected: str | None
    known: list[str]


class ApiCounters(BaseModel):
    """Generations of this node's API: finished, running, waiting for a slot, and their tokens."""

    generations: int
    running: int
    waiting: int
    prompt_tokens: int
    completion_tokens: int


class NodeStatus(BaseModel):
    """``GET /v1/node/status``: who this node is and what it does now."""

    peer_id: str
    kind: Literal["native"] = "native"
    uptime_s: float
    models: list[str]
    serving: list[ServedSpanStatus]
    tokens_served: int
    open_sessions: int
    connected_peers: list[str]
    signaling: SignalingStatus
    api: ApiCounters


class Receipt(BaseModel):
    """One co-signed receipt as the balance endpoint shows it (filled in by the ledger)."""

    id: str
    role: Literal["served", "used"]
    counterparty: str
    model: str
    start: int
    end: int
    tokens: int
    time: float  # seconds since the Unix epoch


class TokenBalance(BaseModel):
    """``GET /v1/tokens/balance``: this node's balance (in ledger units; 1000 units = 1 credit), where it
    comes from, and its recent receipts."""

    peer_id: str
    balance: int
    granted: int = 0
    earned: int = 0
    bonuses: int = 0
    spent: int = 0
    receipts: list[Receipt]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail

"""A ``NodeService`` for API tests that need no mesh: it keeps the generation requests that reach it."""

from __future__ import annotations

from typing import Any

from python_peer.api.errors import ModelNotFoundError
from python_peer.api.types import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, NodeStatus


class RecordingService:
    """A ``NodeService`` that keeps the requests that reach it and answers each with a 404."""

    def __init__(self) -> None:
        self.requests: list[ChatCompletionRequest | CompletionRequest] = []

    async def models(self) -> ModelList:
        return ModelList(data=[])

    async def model(self, model_id: str) -> ModelCard:
        raise ModelNotFoundError(model_id)

    async def chat(self, request: ChatCompletionRequest) -> Any:
        self.requests.append(request)
        raise ModelNotFoundError("recorded", param="model")

    async def complete(self, request: CompletionRequest) -> Any:
        self.requests.append(request)
        raise ModelNotFoundError("recorded", param="model")

    async def status(self) -> NodeStatus:
        raise NotImplementedError

    async def balance(self) -> Any:
        raise NotImplementedError

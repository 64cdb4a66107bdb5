"""From a normalised request to a stream of chunks: route, check capabilities, post-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmrelay import reasoning
from llmrelay.providers.base import ModelInfo, check_request
from llmrelay.request import ChatRequest
from llmrelay.routing.router import Router
from llmrelay.stream import Chunk


class Gateway:
    def __init__(self, router: Router) -> None:
        self.router = router

    def prepare(self, request: ChatRequest) -> ModelInfo:
        """Resolve the model and refuse what it cannot honour, before any response starts."""
        _, info = self.router.resolve(request.model)
        check_request(request, info)
        return info

    async def stream(self, request: ChatRequest, info: ModelInfo) -> AsyncIterator[Chunk]:
        provider, _ = self.router.resolve(info.id)
        chunks = provider.stream(request, info)
        separate = (
            info.separate_reasoning
            if request.separate_reasoning is None
            else (request.separate_reasoning)
        )
        if separate:
            chunks = reasoning.separate(chunks, request.n)
        else:
            chunks = reasoning.inline(chunks, request.n)
        async for chunk in chunks:
            yield chunk

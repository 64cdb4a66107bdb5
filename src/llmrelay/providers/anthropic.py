"""The ``anthropic`` provider type: Anthropic's Messages API behind a channel.

Its stream is ``message_start``, then per content block ``content_block_start``,
``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``,
``signature_delta``) and ``content_block_stop``, then ``message_delta`` (stop reason, output
tokens) and ``message_stop``; each becomes typed chunks as it arrives. Thinking pieces carry
their block's place and signature (and ``redacted_thinking`` its data) for ``reasoning_details``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from llmrelay.providers.anthropic_json import answer_tool_name, structured_answer
from llmrelay.providers.anthropic_wire import ANTHROPIC_VERSION, REASONING_FORMAT, build_body
from llmrelay.providers.base import ALL_SAMPLING, Capabilities, ModelInfo
from llmrelay.providers.http import HTTPPool
from llmrelay.providers.profiles import apply_overrides
from llmrelay.providers.transport import ChannelProvider
from llmrelay.request import ChatRequest
from llmrelay.settings import ChannelConfig
from llmrelay.stream import (
    Chunk,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningDetail,
    TextDelta,
    ToolCallDelta,
    Usage,
)

CAPABILITIES = Capabilities(
    input_modalities=("text", "image"),
    logprobs=False,
    json_schema=True,  # as a forced tool (anthropic_json)
    max_n=1,
    sampling=ALL_SAMPLING & {"temperature", "top_p", "top_k", "stop"},
    reasoning=True,
    context_length=200_000,
)
_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


class AnthropicProvider(ChannelProvider):
    def __init__(
        self, config: ChannelConfig, pool: HTTPPool, estimate: Callable[[str], int]
    ) -> None:
        super().__init__(config, pool, estimate, apply_overrides(CAPABILITIES, config.capabilities))
        base = config.base_url.rstrip("/")
        self.url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "x-api-key": self.next_key(),
            "anthropic-version": ANTHROPIC_VERSION,
        }

    def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[Chunk]:
        chunks = self._stream(request, model)
        tool = answer_tool_name(request)
        return chunks if tool is None else structured_answer(chunks, request, tool, self.name)

    async def _stream(self, request: ChatRequest, model: ModelInfo) -> AsyncGenerator[Chunk, None]:
        body = build_body(request, self.upstream_name(model))
        response = await self.http.post(self.url, body, self._headers())
        try:
            decoder = _Decoder(request, self.estimate)
            async for payload in self.http.payloads(response):
                if payload is None:
                    break
                for chunk in decoder.feed(payload):
                    yield chunk
                if decoder.stopped:
                    break
            if not decoder.stopped:
                raise self.http.broken("the stream ended before message_stop")
            yield decoder.usage()
        finally:
            response.release()


class _Decoder:
    def __init__(self, request: ChatRequest, estimate: Callable[[str], int]) -> None:
        self.request = request
        self.estimate = estimate
        self.calls: dict[int, int] = {}  # content block index -> tool call index
        self.thoughts: dict[int, int] = {}  # content block index -> reasoning block index
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cache_created = 0
        self.stopped = False
        self.finished = False

    def feed(self, payload: dict[str, Any]) -> list[Chunk]:
        kind = payload.get("type")
        if kind == "message_start":
            self._count((payload.get("message") or {}).get("usage") or {})
        elif kind == "content_block_start":
            return self._block_start(
                int(payload.get("index", 0)), payload.get("content_block") or {}
            )
        elif kind == "content_block_delta":
            return self._delta(int(payload.get("index", 0)), payload.get("delta") or {})
        elif kind == "message_delta":
            self._count(payload.get("usage") or {})
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.finished = True
                return [Finish(0, _STOP.get(str(reason), "stop"))]
        elif kind == "message_stop":
            self.stopped = True
            if not self.finished:
                self.finished = True
                return [Finish(0, "stop")]
        return []

    def _count(self, usage: dict[str, Any]) -> None:
        if "input_tokens" in usage:
            self.input_tokens = int(usage["input_tokens"] or 0)
        if "output_tokens" in usage:  # cumulative in message_delta
            self.output_tokens = int(usage["output_tokens"] or 0)
        cached = usage.get("cache_read_input_tokens")
        if cached is not None:
            self.cached_tokens = int(cached)
        created = usage.get("cache_creation_input_tokens")
        if created is not None:
            self.cache_created = int(created)

    def _block_start(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        kind = block.get("type")
        if kind == "tool_use":
            self.calls[index] = len(self.calls)
            return [ToolCallDelta(0, self.calls[index], block.get("id"), block.get("name"), "")]
        if kind == "text" and block.get("text"):
            return [TextDelta(0, str(block["text"]))]
        if kind in ("thinking", "redacted_thinking"):
            self.thoughts[index] = len(self.thoughts)
            if kind == "redacted_thinking":
                return [self._thought(index, data=str(block.get("data", "")))]
            if block.get("thinking"):
                return [self._thought(index, str(block["thinking"]))]
        return []

    def _thought(
        self, index: int, text: str = "", *, signature: str | None = None, data: str | None = None
    ) -> ReasoningDelta:
        detail = ReasoningDetail(
            self.thoughts.get(index, 0), REASONING_FORMAT, signature=signature, data=data
        )
        return ReasoningDelta(0, text, detail)

    def _delta(self, index: int, delta: dict[str, Any]) -> list[Chunk]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(0, str(delta.get("text", "")))]
        if kind == "input_json_delta" and index in self.calls:
            return [
                ToolCallDelta(0, self.calls[index], arguments=str(delta.get("partial_json", "")))
            ]
        if kind == "thinking_delta":
            return [self._thought(index, str(delta.get("thinking", "")))]
        if kind == "signature_delta":
            return [self._thought(index, signature=str(delta.get("signature", "")))]
        return []  # future kinds carry nothing to relay

    def usage(self) -> Usage:
        # Anthropic's input_tokens exclude cache reads; OpenAI's prompt_tokens include them.
        return Usage(
            self.input_tokens + self.cached_tokens,
            self.output_tokens,
            cached_tokens=self.cached_tokens,
        )

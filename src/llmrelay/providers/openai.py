"""The ``openai`` provider type: any OpenAI-compatible server behind a channel.

Upstream requests always stream (with usage), and are relayed chunk by chunk: nothing is
buffered whole. Connect, first-byte and idle timeouts are separate. Upstream failures are mapped
into llmrelay's errors here, each marked retryable when another channel may do better.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import orjson

from llmrelay.media import FetchPolicy, MediaFetcher
from llmrelay.providers.base import ModelInfo
from llmrelay.providers.http import HTTPPool
from llmrelay.providers.openai_wire import build_body
from llmrelay.providers.profiles import PROFILES, capabilities_for
from llmrelay.providers.transport import ChannelProvider
from llmrelay.request import ChatRequest, ImagePart
from llmrelay.settings import ChannelConfig
from llmrelay.stream import (
    Chunk,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

Estimate = Callable[[str], int]
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
    "end_turn": "stop",
}


class OpenAIProvider(ChannelProvider):
    """One channel of type ``openai``."""

    def __init__(
        self,
        config: ChannelConfig,
        pool: HTTPPool,
        estimate: Estimate,
        media: MediaFetcher | None = None,
    ) -> None:
        super().__init__(
            config, pool, estimate, capabilities_for(config.flavor, config.capabilities)
        )
        self.media = media or MediaFetcher(FetchPolicy())
        self.profile = PROFILES[config.flavor]
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = self.next_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[Chunk]:
        if self.profile.inline_images:
            request = await self._inline_images(request)
        body = build_body(request, self.upstream_name(model), self.profile)
        response = await self.http.post(self.url, body, self._headers())
        try:
            decoder = _Decoder(request, self.estimate)
            done = False
            async for batch in self.http.batches(response):
                for payload in batch:
                    if payload is None:
                        done = True  # [DONE] is the last of its batch and of the stream
                        break
                    for chunk in decoder.feed(payload):
                        yield chunk
            if not done and len(decoder.finished) < request.n:
                # A connection that closes without [DONE] or a finish_reason was cut.
                raise self.http.broken("the stream ended before it was complete")
            for chunk in decoder.finish():
                yield chunk
        finally:
            response.release()

    async def _inline_images(self, request: ChatRequest) -> ChatRequest:
        """A copy of the request whose image URLs are data: URIs (this upstream needs them)."""
        jobs: dict[tuple[int, int], Any] = {}
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart) and not part.url.startswith("data:"):
                    jobs[(i, j)] = self.media.data_uri(
                        part.url, param=f"messages[{i}].content[{j}]", media="image"
                    )
        if not jobs:
            return request
        fetched = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        messages = [
            replace(
                m,
                content=[
                    replace(p, url=fetched[(i, j)]) if (i, j) in fetched else p
                    for j, p in enumerate(m.content)
                ],
            )
            for i, m in enumerate(request.messages)
        ]
        return replace(request, messages=messages)


class _Decoder:
    """OpenAI stream chunks (or one whole completion) into typed chunks."""

    def __init__(self, request: ChatRequest, estimate: Estimate) -> None:
        self.request = request
        self.estimate = estimate
        self.usage: Usage | None = None
        self.text: list[str] = []
        self.finished: set[int] = set()

    def feed(self, payload: dict[str, Any]) -> list[Chunk]:
        out: list[Chunk] = []
        for choice in payload.get("choices") or []:
            index = int(choice.get("index") or 0)
            if not 0 <= index < self.request.n:
                continue
            part = choice.get("delta") or choice.get("message") or {}
            out += self._delta(index, part, choice.get("logprobs"))
            reason = choice.get("finish_reason")
            if reason and index not in self.finished:
                self.finished.add(index)
                out.append(Finish(index, _FINISH.get(str(reason), "stop")))
        usage = payload.get("usage")
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            self.usage = _usage(usage)
        return out

    def _delta(self, index: int, delta: dict[str, Any], logprobs: Any) -> list[Chunk]:
        out: list[Chunk] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out.append(ReasoningDelta(index, reasoning))
            self.text.append(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(TextDelta(index, content, _logprobs(logprobs)))
            self.text.append(content)
        for position, call in enumerate(delta.get("tool_calls") or []):
            fn = call.get("function") or {}
            arguments = fn.get("arguments") or ""
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            out.append(
                ToolCallDelta(
                    index,
                    int(call.get("index", position)),
                    call.get("id"),
                    fn.get("name"),
                    arguments,
                )
            )
            self.text.append(arguments)
        return out

    def finish(self) -> list[Chunk]:
        out: list[Chunk] = [
            Finish(i, "stop") for i in range(self.request.n) if i not in self.finished
        ]
        out.append(self.usage or self._estimated())
        return out

    def _estimated(self) -> Usage:
        prompt = "\n".join(m.text() for m in self.request.messages)
        return Usage(self.estimate(prompt), self.estimate("".join(self.text)), estimated=True)


def _usage(raw: dict[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    entries = []
    for item in raw["content"]:
        token = str(item.get("token", ""))
        entries.append(
            TokenLogprob(
                token,
                float(item.get("logprob", 0.0)),
                list(item.get("bytes") or token.encode()),
                [
                    TopLogprob(
                        str(t.get("token", "")),
                        float(t.get("logprob", 0.0)),
                        list(t.get("bytes") or str(t.get("token", "")).encode()),
                    )
                    for t in item.get("top_logprobs") or []
                ],
            )
        )
    return entries

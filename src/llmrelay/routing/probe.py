"""A real round trip to a channel: latency, the answer, usage, and what the channel supports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmrelay.errors import LLMRelayError
from llmrelay.media import FetchPolicy, MediaFetcher
from llmrelay.providers.http import HTTPPool
from llmrelay.request import ChatRequest, Message, TextPart
from llmrelay.settings import ChannelConfig
from llmrelay.stream import Chunk, collect


@dataclass(slots=True)
class ProbeResult:
    channel: str
    model: str
    upstream_model: str
    ok: bool
    error: str | None = None
    first_chunk_ms: float | None = None
    total_ms: float | None = None
    answer: str = ""
    usage: dict[str, Any] | None = None
    supports: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


async def probe(
    config: ChannelConfig, pool: HTTPPool, estimate: Callable[[str], int]
) -> ProbeResult:
    from llmrelay.routing.channels import build_provider

    provider = build_provider(config, pool, estimate, MediaFetcher(FetchPolicy()))
    if provider is None:
        raise ValueError(f"channel {config.name!r}: provider type {config.type!r} is unavailable")
    info = provider.models()[0]
    caps = info.capabilities
    result = ProbeResult(
        config.name,
        info.id,
        config.upstream_model(info.id),
        ok=False,
        supports={
            "input_modalities": list(caps.input_modalities),
            "tools": caps.tools,
            "json_schema": caps.json_schema,
            "logprobs": caps.logprobs,
            "reasoning": caps.reasoning,
            "parameters": caps.supported_parameters(),
        },
    )
    request = ChatRequest(
        model=info.id,
        max_tokens=16,
        messages=[Message("user", [TextPart("Reply with the single word OK.")])],
    )
    started = time.perf_counter()

    async def timed() -> AsyncIterator[Chunk]:
        async for chunk in provider.stream(request, info):
            if result.first_chunk_ms is None:
                result.first_chunk_ms = round((time.perf_counter() - started) * 1000, 1)
            yield chunk

    try:
        completion = await asyncio.wait_for(collect(timed(), 1), config.first_byte_timeout + 30)
    except LLMRelayError as exc:
        result.error = exc.message
        return result
    except TimeoutError:
        result.error = "the channel did not finish in time"
        return result
    result.ok = True
    result.total_ms = round((time.perf_counter() - started) * 1000, 1)
    result.answer = completion.choices[0].text.strip()[:200]
    if completion.usage is not None:
        usage = completion.usage
        result.usage = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "estimated": usage.estimated,
        }
    return result

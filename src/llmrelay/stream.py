"""Typed chunks a provider streams, and collecting them into a whole completion.

A provider yields these from an async iterator; the non-streaming answer is built by
:func:`collect`, so streaming and non-streaming share one code path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class TextDelta:
    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class ReasoningDelta:
    index: int
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    call_index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Finish:
    index: int
    reason: FinishReason


Chunk = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish


@dataclass(slots=True)
class CollectedToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Choice:
    index: int
    text: str = ""
    reasoning: str = ""
    tool_calls: list[CollectedToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason = "stop"


@dataclass(slots=True)
class Completion:
    choices: list[Choice]
    usage: Usage | None


async def collect(chunks: AsyncIterator[Chunk], n: int) -> Completion:
    """Fold a chunk stream into whole choices."""
    choices = [Choice(index=i) for i in range(n)]
    usage: Usage | None = None
    async for chunk in chunks:
        match chunk:
            case TextDelta():
                choice = choices[chunk.index]
                choice.text += chunk.text
                if chunk.logprobs is not None:
                    choice.logprobs = (choice.logprobs or []) + chunk.logprobs
            case ReasoningDelta():
                choices[chunk.index].reasoning += chunk.text
            case ToolCallDelta():
                calls = choices[chunk.index].tool_calls
                if chunk.call_index >= len(calls):
                    calls.append(CollectedToolCall(chunk.id or "", chunk.name or "", ""))
                call = calls[chunk.call_index]
                if chunk.id:
                    call.id = chunk.id
                if chunk.name:
                    call.name = chunk.name
                call.arguments += chunk.arguments
            case Usage():
                usage = chunk
            case Finish():
                choices[chunk.index].finish_reason = chunk.reason
    return Completion(choices=choices, usage=usage)

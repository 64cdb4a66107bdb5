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
class ReasoningDetail:
    """One reasoning block as the upstream signed or encrypted it (OpenRouter's
    ``reasoning_details`` entry), which a client sends back unchanged in a tool loop.

    ``block`` orders the blocks of one answer; ``data`` set means an encrypted block (Anthropic's
    ``redacted_thinking``) with no text. On a stream the piece's text is the carrying
    :class:`ReasoningDelta`'s; in a collected :class:`Choice` ``text`` is the whole block's.
    """

    block: int
    format: str
    text: str = ""
    signature: str | None = None
    data: str | None = None


@dataclass(slots=True)
class ReasoningDelta:
    index: int
    text: str
    detail: ReasoningDetail | None = None  # where the piece belongs, for reasoning_details


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    call_index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class ImageDelta:
    """An image the model produced (Gemini image output): base64 ``data`` of ``mime_type``."""

    index: int
    image_index: int
    mime_type: str
    data: str

    def data_uri(self) -> str:
        return f"data:{self.mime_type};base64,{self.data}"


@dataclass(slots=True)
class CitationDelta:
    """A source the answer cites (search grounding): characters ``start``–``end`` of content."""

    index: int
    url: str
    title: str
    start: int
    end: int


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


Chunk = TextDelta | ReasoningDelta | ToolCallDelta | ImageDelta | CitationDelta | Usage | Finish


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
    reasoning_details: list[ReasoningDetail] = field(default_factory=list)
    tool_calls: list[CollectedToolCall] = field(default_factory=list)
    images: list[ImageDelta] = field(default_factory=list)
    citations: list[CitationDelta] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason = "stop"


@dataclass(slots=True)
class Completion:
    choices: list[Choice]
    usage: Usage | None


class Collector:
    """Folds chunks into whole choices, one :meth:`add` at a time."""

    def __init__(self, n: int) -> None:
        self.choices = [Choice(index=i) for i in range(n)]
        self.usage: Usage | None = None

    def result(self) -> Completion:
        return Completion(choices=self.choices, usage=self.usage)

    def add(self, chunk: Chunk) -> None:
        choices = self.choices
        match chunk:
            case TextDelta():
                choice = choices[chunk.index]
                choice.text += chunk.text
                if chunk.logprobs is not None:
                    choice.logprobs = (choice.logprobs or []) + chunk.logprobs
            case ReasoningDelta():
                choices[chunk.index].reasoning += chunk.text
                if chunk.detail is not None:
                    _fold_detail(choices[chunk.index].reasoning_details, chunk)
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
            case ImageDelta():
                choices[chunk.index].images.append(chunk)
            case CitationDelta():
                choices[chunk.index].citations.append(chunk)
            case Usage():
                self.usage = chunk
            case Finish():
                choices[chunk.index].finish_reason = chunk.reason


async def collect(chunks: AsyncIterator[Chunk], n: int) -> Completion:
    """Fold a chunk stream into whole choices."""
    collector = Collector(n)
    async for chunk in chunks:
        collector.add(chunk)
    return collector.result()


def _fold_detail(details: list[ReasoningDetail], chunk: ReasoningDelta) -> None:
    piece = chunk.detail
    assert piece is not None
    detail = next((d for d in details if d.block == piece.block), None)
    if detail is None:
        detail = ReasoningDetail(piece.block, piece.format)
        details.append(detail)
    detail.text += chunk.text
    if piece.signature is not None:
        detail.signature = piece.signature
    if piece.data is not None:
        detail.data = piece.data

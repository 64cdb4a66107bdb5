"""The one internal chat request every dialect is normalised into."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from llmrelay.stream import ReasoningDetail

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    url: str
    detail: str | None = None


@dataclass(slots=True)
class VideoPart:
    url: str


@dataclass(slots=True)
class AudioPart:
    data: str
    format: str


Part = TextPart | ImagePart | VideoPart | AudioPart


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part]
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    # Signed or encrypted reasoning blocks a client sends back (OpenRouter's reasoning_details).
    reasoning_details: list[ReasoningDetail] = field(default_factory=list)

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(slots=True)
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


SAMPLING_PARAMETERS = frozenset(f.name for f in fields(Sampling))


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[FunctionTool] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    web_search: bool = False
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    reasoning_effort: str | None = None
    separate_reasoning: bool | None = None
    enable_thinking: bool | None = None
    truncate_on_overflow: bool = True
    user: str | None = None
    # Set by the legacy /v1/completions route: the prompt is sent as raw text, no chat template.
    raw_prompt: str | None = None
    echo: bool = False

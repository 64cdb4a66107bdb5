"""The provider interface and the capability profile that describes what a model accepts.

A provider's differences are data: a :class:`Capabilities` per model says which inputs,
parameters and features it honours, and :func:`check_request` refuses what it cannot honour
with a 400 naming the parameter, so nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmrelay.errors import InvalidRequest, UnsupportedContent
from llmrelay.request import (
    SAMPLING_PARAMETERS,
    AudioPart,
    ChatRequest,
    ImagePart,
    Part,
    VideoPart,
)
from llmrelay.stream import Chunk

ALL_SAMPLING = SAMPLING_PARAMETERS


@dataclass(frozen=True, slots=True)
class Capabilities:
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("text",)
    tools: bool = True
    json_schema: bool = True
    logprobs: bool = True
    max_n: int = 128
    sampling: frozenset[str] = ALL_SAMPLING
    reasoning: bool = False
    context_length: int = 8192

    def supported_parameters(self) -> list[str]:
        params = set(self.sampling) | {"max_tokens", "max_completion_tokens", "stream", "n"}
        if self.tools:
            params |= {"tools", "tool_choice", "parallel_tool_calls"}
        if self.json_schema:
            params |= {"response_format", "structured_outputs"}
        if self.logprobs:
            params |= {"logprobs", "top_logprobs"}
        if self.reasoning:
            params |= {"reasoning_effort", "enable_thinking", "separate_reasoning"}
        return sorted(params)


@dataclass(slots=True)
class ModelInfo:
    id: str
    owned_by: str
    capabilities: Capabilities
    created: int = 0
    description: str = ""
    pricing: dict[str, str] = field(default_factory=dict)
    # Whether reasoning goes to reasoning_content when a request does not say.
    separate_reasoning: bool = True

    def to_wire(self) -> dict[str, Any]:
        caps = self.capabilities
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "description": self.description,
            "context_length": caps.context_length,
            "architecture": {
                "input_modalities": list(caps.input_modalities),
                "output_modalities": list(caps.output_modalities),
            },
            "supported_parameters": caps.supported_parameters(),
            "pricing": self.pricing or {"prompt": "0", "completion": "0"},
        }


class Provider(Protocol):
    """A model backend: it lists its models and streams typed chunks for a request."""

    def models(self) -> list[ModelInfo]: ...

    def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[Chunk]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


_MEDIA: tuple[tuple[type[Part], str, str], ...] = (
    (ImagePart, "image", "images"),
    (VideoPart, "video", "video"),
    (AudioPart, "audio", "audio"),
)


def check_request(request: ChatRequest, model: ModelInfo) -> None:
    """Refuse, with a 400 naming the parameter, what ``model`` cannot honour."""
    caps = model.capabilities
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.content):
            for kind, modality, plural in _MEDIA:
                if isinstance(part, kind) and modality not in caps.input_modalities:
                    raise UnsupportedContent(
                        f"The model '{model.id}' does not accept {plural}: it takes "
                        f"{', '.join(caps.input_modalities)} input only. Remove the {modality} "
                        "part or choose a model that accepts it.",
                        param=f"messages[{i}].content[{j}]",
                        code=f"{modality}_not_supported",
                    )
    if request.n > caps.max_n:
        raise InvalidRequest(
            f"The model '{model.id}' supports n up to {caps.max_n}.",
            param="n",
            code="unsupported_parameter",
        )
    if (request.tools or request.tool_choice.mode != "auto") and not caps.tools:
        raise InvalidRequest(
            f"The model '{model.id}' does not support tools.",
            param="tools",
            code="unsupported_parameter",
        )
    if request.response_format.type == "json_schema" and not caps.json_schema:
        raise InvalidRequest(
            f"The model '{model.id}' does not support json_schema output.",
            param="response_format",
            code="unsupported_parameter",
        )
    if request.logprobs and not caps.logprobs:
        raise InvalidRequest(
            f"The model '{model.id}' does not return logprobs.",
            param="logprobs",
            code="unsupported_parameter",
        )
    sampling = request.sampling
    for name in sorted(ALL_SAMPLING - caps.sampling):
        value = getattr(sampling, name)
        if value not in (None, [], {}):
            raise InvalidRequest(
                f"The model '{model.id}' does not support '{name}'.",
                param=name,
                code="unsupported_parameter",
            )

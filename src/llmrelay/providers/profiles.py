"""How each kind of OpenAI-compatible server differs from the OpenAI API — as data.

A channel's ``flavor`` picks one :class:`WireProfile`; its ``capabilities`` overrides adjust
the resulting :class:`~llmrelay.providers.base.Capabilities`. ``docs/providers.md`` shows
this table for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from llmrelay.providers.base import Capabilities
from llmrelay.request import SAMPLING_PARAMETERS
from llmrelay.settings import CapabilityOverrides, Flavor

Thinking = Literal["enable_thinking", "chat_template_kwargs", "thinking_object", "none"]
# how a JSON Schema for the answer is sent: OpenAI's json_schema, or llama-cpp-python's
# {"type": "json_object", "schema": ...}
SchemaStyle = Literal["json_schema", "json_object_schema"]
_OPENAI_SAMPLING = frozenset(
    {"temperature", "top_p", "frequency_penalty", "presence_penalty", "logit_bias", "seed", "stop"}
)


@dataclass(frozen=True, slots=True)
class WireProfile:
    sampling: frozenset[str] = SAMPLING_PARAMETERS
    # internal parameter name -> the field this server reads it from
    renames: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # where enable_thinking goes ("none": the server has no such switch -> 400 if sent)
    thinking: Thinking = "enable_thinking"
    reasoning_effort: bool = True
    # reasoning models take max_completion_tokens and refuse max_tokens (OpenAI o-series, gpt-5)
    max_tokens_field: str = "max_tokens"
    reasoning_max_tokens_field: str = "max_completion_tokens"
    reasoning_model_prefixes: tuple[str, ...] = ()
    forward_reasoning_content: bool = True
    native_separate_reasoning: bool = False
    schema_style: SchemaStyle = "json_schema"
    inline_images: bool = False
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(input_modalities=("text", "image"))
    )


PROFILES: dict[Flavor, WireProfile] = {
    "openai": WireProfile(
        sampling=_OPENAI_SAMPLING,
        thinking="none",
        max_tokens_field="max_completion_tokens",
        reasoning_model_prefixes=("o1", "o3", "o4", "gpt-5"),
        forward_reasoning_content=False,
        capabilities=Capabilities(input_modalities=("text", "image", "audio")),
    ),
    "deepseek": WireProfile(
        sampling=_OPENAI_SAMPLING - {"logit_bias", "seed"},
        thinking="thinking_object",
        reasoning_effort=False,
        capabilities=Capabilities(
            input_modalities=("text",), logprobs=True, max_n=1, reasoning=True
        ),
    ),
    "vllm": WireProfile(
        thinking="chat_template_kwargs",
        capabilities=Capabilities(input_modalities=("text", "image", "video"), reasoning=True),
    ),
    "sglang": WireProfile(
        thinking="chat_template_kwargs",
        native_separate_reasoning=True,
        capabilities=Capabilities(input_modalities=("text", "image", "video"), reasoning=True),
    ),
    "llamacpp": WireProfile(
        renames=MappingProxyType({"repetition_penalty": "repeat_penalty"}),
        thinking="chat_template_kwargs",
        inline_images=True,
        capabilities=Capabilities(input_modalities=("text", "image"), reasoning=True),
    ),
    # llama-cpp-python's own server (python -m llama_cpp.server), not llama.cpp's llama-server.
    "llama-cpp-python": WireProfile(
        renames=MappingProxyType({"repetition_penalty": "repeat_penalty"}),
        thinking="none",
        inline_images=True,
        schema_style="json_object_schema",
        capabilities=Capabilities(input_modalities=("text",)),
    ),
    "ollama": WireProfile(
        sampling=_OPENAI_SAMPLING - {"logit_bias"},
        thinking="none",
        inline_images=True,
        capabilities=Capabilities(input_modalities=("text", "image"), logprobs=False),
    ),
    # Another OpenAI-compatible relay (the seed platforms, another llmrelay): pass through.
    "relay": WireProfile(
        capabilities=Capabilities(
            input_modalities=("text", "image", "video", "audio"), reasoning=True
        ),
    ),
}


def capabilities_for(flavor: Flavor, overrides: CapabilityOverrides) -> Capabilities:
    profile = PROFILES[flavor]
    caps = replace(profile.capabilities, sampling=profile.sampling & profile.capabilities.sampling)
    return apply_overrides(caps, overrides)


def apply_overrides(caps: Capabilities, overrides: CapabilityOverrides) -> Capabilities:
    """A channel's capability overrides on top of its provider's profile."""
    modalities = list(caps.input_modalities)
    for name, flag in (
        ("image", overrides.vision),
        ("video", overrides.video),
        ("audio", overrides.audio),
    ):
        if flag is True and name not in modalities:
            modalities.append(name)
        if flag is False and name in modalities:
            modalities.remove(name)
    changes: dict[str, object] = {"input_modalities": tuple(modalities)}
    for name in ("tools", "json_schema", "logprobs", "reasoning", "max_n", "context_length"):
        value = getattr(overrides, name)
        if value is not None:
            changes[name] = value
    return replace(caps, **changes)  # type: ignore[arg-type]

"""The internal request as an OpenAI-compatible request body, shaped by a wire profile."""

from __future__ import annotations

from typing import Any

from llmrelay.errors import InvalidRequest
from llmrelay.providers.profiles import WireProfile
from llmrelay.request import (
    AudioPart,
    ChatRequest,
    ImagePart,
    Message,
    Part,
    TextPart,
    VideoPart,
)


def _part(part: Part) -> dict[str, Any]:
    match part:
        case TextPart():
            return {"type": "text", "text": part.text}
        case ImagePart():
            image: dict[str, Any] = {"url": part.url}
            if part.detail:
                image["detail"] = part.detail
            return {"type": "image_url", "image_url": image}
        case VideoPart():
            return {"type": "video_url", "video_url": {"url": part.url}}
        case AudioPart():
            return {
                "type": "input_audio",
                "input_audio": {"data": part.data, "format": part.format},
            }
    raise AssertionError(part)


def _message(message: Message, profile: WireProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if all(isinstance(p, TextPart) for p in message.content):
        out["content"] = message.text()
    else:
        out["content"] = [_part(p) for p in message.content]
    if message.role == "assistant" and message.tool_calls:
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.name and message.role != "tool":
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_content and profile.forward_reasoning_content:
        out["reasoning_content"] = message.reasoning_content
    return out


def _tools(request: ChatRequest) -> list[dict[str, Any]]:
    tools = []
    for tool in request.tools:
        fn: dict[str, Any] = {"name": tool.name}
        if tool.description:
            fn["description"] = tool.description
        fn["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        if tool.strict:
            fn["strict"] = True
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(request: ChatRequest) -> Any:
    choice = request.tool_choice
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _response_format(request: ChatRequest, profile: WireProfile) -> dict[str, Any] | None:
    fmt = request.response_format
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if profile.schema_style == "json_object_schema":
        return {"type": "json_object", "schema": fmt.schema}
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema}
    if fmt.strict:
        schema["strict"] = True
    return {"type": "json_schema", "json_schema": schema}


def _thinking(body: dict[str, Any], request: ChatRequest, profile: WireProfile) -> None:
    if request.enable_thinking is None:
        return
    match profile.thinking:
        case "enable_thinking":
            body["enable_thinking"] = request.enable_thinking
        case "chat_template_kwargs":
            body["chat_template_kwargs"] = {"enable_thinking": request.enable_thinking}
        case "thinking_object":
            body["thinking"] = {"type": "enabled" if request.enable_thinking else "disabled"}
        case "none":
            raise InvalidRequest(
                "This model's upstream has no switch for thinking mode; remove 'enable_thinking'.",
                param="enable_thinking",
                code="unsupported_parameter",
            )


def build_body(request: ChatRequest, upstream_model: str, profile: WireProfile) -> dict[str, Any]:
    """Always a streaming request with usage: the non-streaming answer is the collected stream."""
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_message(m, profile) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sampling = request.sampling
    for name in sorted(profile.sampling):
        value = getattr(sampling, name)
        if value in (None, [], {}):
            continue
        if name == "logit_bias":
            value = {str(k): v for k, v in value.items()}
        body[profile.renames.get(name, name)] = value
    if request.max_tokens is not None:
        reasoning = upstream_model.lower().startswith(profile.reasoning_model_prefixes or ("\0",))
        field = profile.reasoning_max_tokens_field if reasoning else profile.max_tokens_field
        body[field] = request.max_tokens
    if request.n != 1:
        body["n"] = request.n
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs:
            body["top_logprobs"] = request.top_logprobs
    if request.tools:
        body["tools"] = _tools(request)
        body["tool_choice"] = _tool_choice(request)
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if (fmt := _response_format(request, profile)) is not None:
        body["response_format"] = fmt
    if request.reasoning_effort is not None:
        if not profile.reasoning_effort:
            raise InvalidRequest(
                "This model's upstream does not take 'reasoning_effort'.",
                param="reasoning_effort",
                code="unsupported_parameter",
            )
        body["reasoning_effort"] = request.reasoning_effort
    _thinking(body, request, profile)
    if profile.native_separate_reasoning:
        body["separate_reasoning"] = True  # llmrelay re-inlines it if the client wants that
    if request.user:
        body["user"] = request.user
    return body

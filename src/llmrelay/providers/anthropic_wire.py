"""The internal request as an Anthropic Messages API body.

System and developer messages become ``system``; tool results become ``tool_result`` blocks in
a user turn; consecutive turns of one role are merged; ``enable_thinking`` and
``reasoning_effort`` become extended thinking with a token budget. An assistant message's
``reasoning_details`` become its signed ``thinking`` and ``redacted_thinking`` blocks again,
first in the turn, as Anthropic requires in a tool loop with thinking on.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmrelay.errors import InvalidRequest
from llmrelay.providers.anthropic_json import add_answer_tool
from llmrelay.request import ChatRequest, ImagePart, Message, TextPart

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16000, "xhigh": 32000}
REASONING_FORMAT = "anthropic-claude-v1"  # OpenRouter's name for Claude's reasoning_details
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def _image(part: ImagePart) -> dict[str, Any]:
    match = _DATA_URI.match(part.url)
    if match:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": match["mime"], "data": match["data"]},
        }
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _thinking_blocks(message: Message) -> list[dict[str, Any]]:
    """Signed and redacted thinking as it came; unsigned reasoning is left out (Anthropic
    refuses a thinking block without its signature)."""
    blocks: list[dict[str, Any]] = []
    for detail in sorted(message.reasoning_details, key=lambda d: d.block):
        if detail.format not in (REASONING_FORMAT, ""):
            continue  # another provider's reasoning
        if detail.data is not None:
            blocks.append({"type": "redacted_thinking", "data": detail.data})
        elif detail.signature:
            blocks.append(
                {"type": "thinking", "thinking": detail.text, "signature": detail.signature}
            )
    return blocks


def _blocks(message: Message, index: int) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}
        ]
    blocks = _thinking_blocks(message) if message.role == "assistant" else []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image(part))
    for j, call in enumerate(message.tool_calls):
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            raise InvalidRequest(
                "Tool call arguments must be JSON for this model's upstream.",
                param=f"messages[{index}].tool_calls[{j}].function.arguments",
                code="invalid_value",
            ) from None
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _conversation(request: ChatRequest) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            system.append(message.text())
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message, i)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic wants turns to alternate
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _thinking(request: ChatRequest, body: dict[str, Any]) -> bool:
    effort = request.reasoning_effort
    wanted = request.enable_thinking
    if wanted is False or (wanted is None and effort in (None, "none", "minimal")):
        return False
    budget = THINKING_BUDGETS.get(effort or "medium", 4096)
    if request.max_tokens is None:
        body["max_tokens"] = budget + DEFAULT_MAX_TOKENS
    elif request.max_tokens <= budget:
        raise InvalidRequest(
            f"With thinking on, max_tokens must be larger than the thinking budget ({budget} "
            f"tokens for reasoning_effort {effort or 'medium'!r}).",
            param="max_tokens",
            code="invalid_value",
        )
    for name in ("temperature", "top_k"):
        if getattr(request.sampling, name) is not None:
            raise InvalidRequest(
                f"'{name}' cannot be set while thinking is on for this model.",
                param=name,
                code="unsupported_parameter",
            )
    if request.tools and request.tool_choice.mode in ("required", "function"):
        raise InvalidRequest(
            "With thinking on, this model's upstream (Anthropic) takes tool_choice 'auto' or "
            "'none' only.",
            param="tool_choice",
            code="unsupported_parameter",
        )
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return True


def _tools(request: ChatRequest, body: dict[str, Any]) -> None:
    body["tools"] = [
        {
            "name": t.name,
            "description": t.description or "",
            "input_schema": t.parameters or {"type": "object", "properties": {}},
        }
        for t in request.tools
    ]
    choice = request.tool_choice
    mapped: dict[str, Any] = {
        "auto": {"type": "auto"},
        "none": {"type": "none"},
        "required": {"type": "any"},
    }.get(choice.mode) or {"type": "tool", "name": choice.name}
    if not request.parallel_tool_calls and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    body["tool_choice"] = mapped


def build_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    temperature = request.sampling.temperature
    if temperature is not None and temperature > 1:
        raise InvalidRequest(
            "This model's upstream (Anthropic) takes temperature 0-1.",
            param="temperature",
            code="invalid_value",
        )
    system, messages = _conversation(request)
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = system
    for name, field in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        value = getattr(request.sampling, name)
        if value is not None:
            body[field] = value
    if request.sampling.stop:
        body["stop_sequences"] = request.sampling.stop
    if request.tools:
        _tools(request, body)
    add_answer_tool(request, body, thinking=_thinking(request, body))
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body

"""The internal request as a Gemini ``generateContent`` body, and thought signatures in call ids.

System and developer messages become ``systemInstruction``; assistant turns are role ``model``
and consecutive turns of one role are merged; tool results become ``functionResponse`` parts
named after the call they answer; images and audio are ``inlineData`` (image URLs are fetched
beforehand, under the SSRF rules); tools are ``functionDeclarations`` whose JSON Schema goes
as is in ``parametersJsonSchema``; ``reasoning_effort`` and ``enable_thinking`` become
``thinkingConfig``.

Gemini signs its function calls (``thoughtSignature``) and wants the signature back on the next
turn. OpenAI clients keep nothing but the tool call id, so the signature rides in it:
``call_<24 hex>.<signature as unpadded base64url>``; :func:`signature_of` restores it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from llmrelay.errors import InvalidRequest
from llmrelay.request import AudioPart, ChatRequest, ImagePart, Message, TextPart, VideoPart

# reasoning_effort -> thinkingBudget (Gemini 2.x); Google maps low/medium/high the same way in
# its own OpenAI-compatible endpoint. 0 switches thinking off where a model allows it.
THINKING_BUDGETS = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}
# reasoning_effort -> thinkingLevel (Gemini 3, which cannot switch thinking off entirely)
THINKING_LEVELS = {
    "none": "minimal",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}
# Google's documented stand-in for a function call that has no signature (history written by
# another model); only Gemini 3 validates signatures.
DUMMY_SIGNATURE = "skip_thought_signature_validator"
_SIGNATURE_SEPARATOR = "."
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}
_SAMPLING = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)


def new_call_id(signature: str | None) -> str:
    """A tool call id for the client; it carries ``signature`` when Gemini sent one."""
    call_id = "call_" + secrets.token_hex(12)
    if not signature:
        return call_id
    try:
        raw = base64.b64decode(
            _padded(signature.replace("-", "+").replace("_", "/")), validate=True
        )
    except (binascii.Error, ValueError):
        return call_id  # not base64 (Gemini's are): nothing we could carry faithfully
    packed = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return call_id + _SIGNATURE_SEPARATOR + packed if packed else call_id


def signature_of(call_id: str) -> str | None:
    """The thought signature a :func:`new_call_id` id carries, as standard base64."""
    prefix, separator, packed = call_id.partition(_SIGNATURE_SEPARATOR)
    if not separator or not prefix.startswith("call_") or not packed:
        return None
    try:
        raw = base64.urlsafe_b64decode(_padded(packed))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode() or None


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def uses_thinking_levels(upstream_model: str) -> bool:
    return upstream_model.removeprefix("models/").startswith("gemini-3")


def _inline(uri: str, param: str) -> dict[str, Any]:
    match = _DATA_URI.match(uri)
    if match is None:
        raise InvalidRequest("Expected a base64 data: URI.", param=param, code="invalid_value")
    return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}


def _media(part: ImagePart | VideoPart | AudioPart, param: str, fetched: Mapping[str, str]) -> Any:
    if isinstance(part, AudioPart):
        return {"inlineData": {"mimeType": f"audio/{part.format}", "data": part.data}}
    if part.url.startswith("data:"):
        return _inline(part.url, param)
    if isinstance(part, VideoPart):
        return {"fileData": {"fileUri": part.url}}  # YouTube URLs; Gemini fetches them itself
    return _inline(fetched[part.url], param)


def _call_part(message: Message, index: int, j: int) -> dict[str, Any]:
    call = message.tool_calls[j]
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            "Tool call arguments must be a JSON object for this model's upstream (Gemini).",
            param=f"messages[{index}].tool_calls[{j}].function.arguments",
            code="invalid_value",
        )
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": arguments}}
    signature = signature_of(call.id)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response(message: Message, index: int, names: Mapping[str, str]) -> dict[str, Any]:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            "This tool message answers no tool call of an earlier assistant message; the "
            "upstream (Gemini) needs the function's name.",
            param=f"messages[{index}].tool_call_id",
            code="invalid_value",
        )
    text = message.text()
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        result = None
    response = result if isinstance(result, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _parts(
    message: Message, index: int, names: Mapping[str, str], fetched: Mapping[str, str]
) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [_function_response(message, index, names)]
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        else:
            parts.append(_media(part, f"messages[{index}].content[{j}]", fetched))
    parts += [_call_part(message, index, j) for j in range(len(message.tool_calls))]
    return parts


def _conversation(
    request: ChatRequest, fetched: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            if message.text():
                system.append({"text": message.text()})
            continue
        role = "model" if message.role == "assistant" else "user"
        parts = _parts(message, i, names, fetched)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # parallel tool results go in one turn
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _sign_unsigned_turns(contents: list[dict[str, Any]]) -> None:
    for content in contents:
        calls = [p for p in content["parts"] if "functionCall" in p]
        if content["role"] == "model" and calls and not any("thoughtSignature" in p for p in calls):
            calls[0]["thoughtSignature"] = DUMMY_SIGNATURE


def _thinking(request: ChatRequest, upstream_model: str) -> dict[str, Any] | None:
    effort = request.reasoning_effort
    wanted = request.enable_thinking
    if wanted is None and effort is None:
        return None  # the model's own default; its thoughts are not returned
    levels = uses_thinking_levels(upstream_model)
    if wanted is False or (wanted is None and effort == "none"):
        return {"thinkingLevel": "minimal"} if levels else {"thinkingBudget": 0}
    config: dict[str, Any] = {"includeThoughts": True}
    if effort is not None and effort != "none":
        if levels:
            config["thinkingLevel"] = THINKING_LEVELS.get(effort, "high")
        else:
            config["thinkingBudget"] = THINKING_BUDGETS.get(effort, 8192)
    return config


def _generation_config(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, field in _SAMPLING:
        value = getattr(request.sampling, name)
        if value is not None:
            config[field] = value
    if request.sampling.stop:
        config["stopSequences"] = request.sampling.stop
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.n > 1:
        config["candidateCount"] = request.n
    if request.logprobs:
        config["responseLogprobs"] = True
        if request.top_logprobs:
            config["logprobs"] = request.top_logprobs
    if request.response_format.type != "text":
        config["responseMimeType"] = "application/json"
        if request.response_format.type == "json_schema" and request.response_format.schema:
            config["responseJsonSchema"] = request.response_format.schema
    thinking = _thinking(request, upstream_model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _tools(request: ChatRequest, body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = []
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parametersJsonSchema"] = tool.parameters
            declarations.append(declaration)
        tools.append({"functionDeclarations": declarations})
        choice = request.tool_choice
        config: dict[str, Any] = {"mode": _TOOL_MODES[choice.mode]}
        if choice.mode == "function" and choice.name:
            config["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": config}
    if request.web_search:
        tools.append({"googleSearch": {}})
    if tools:
        body["tools"] = tools


def build_body(
    request: ChatRequest, upstream_model: str, fetched: Mapping[str, str]
) -> dict[str, Any]:
    """The ``streamGenerateContent`` body; ``fetched`` maps image URLs to data: URIs."""
    system, contents = _conversation(request, fetched)
    if uses_thinking_levels(upstream_model):
        _sign_unsigned_turns(contents)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    _tools(request, body)
    config = _generation_config(request, upstream_model)
    if config:
        body["generationConfig"] = config
    return body

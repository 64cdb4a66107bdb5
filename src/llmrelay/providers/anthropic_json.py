"""``response_format`` on Anthropic channels: the answer is the input of a tool the model calls.

The Messages API's classic JSON mode, which works on every Claude model: one more tool whose
``input_schema`` is the requested schema (``{"type": "object"}`` for ``json_object``), forced
with ``tool_choice``. Its ``input_json_delta`` pieces become the answer's text, and a turn that
stops for it ends with ``stop``, not ``tool_calls``. Extended thinking refuses a forced tool, so
with thinking on the choice stays ``auto`` and the system prompt asks for the tool instead;
text the model writes around the answer tool is dropped. The answer is checked at the end: it
must be a JSON object, and with ``strict`` match the schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import jsonschema

from llmrelay.errors import InvalidRequest, UpstreamError
from llmrelay.request import ChatRequest, ResponseFormat
from llmrelay.stream import Chunk, Finish, TextDelta, ToolCallDelta

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
ANSWER_DESCRIPTION = (
    "Give your final answer by calling this tool: its input is the answer, a JSON object "
    "matching the input schema."
)


def answer_tool_name(request: ChatRequest) -> str | None:
    """The tool that carries the answer, or None when there is none to add.

    A ``required`` or named ``tool_choice`` makes this turn a call of the client's own tools,
    so no answer tool is offered then.
    """
    if request.response_format.type == "text":
        return None
    if request.tool_choice.mode in ("required", "function"):
        return None
    base = _NAME_CHARS.sub("_", request.response_format.name or "response")[:64]
    taken = {t.name for t in request.tools}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base[:60]}_{n}"
    return name


def _schema(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema" or not fmt.schema:
        return {"type": "object"}
    if fmt.schema.get("type") != "object":
        raise InvalidRequest(
            "This model's upstream (Anthropic) takes a response_format schema whose root is "
            '{"type": "object"}.',
            param="response_format.json_schema.schema",
            code="invalid_value",
        )
    return fmt.schema


def add_answer_tool(request: ChatRequest, body: dict[str, Any], *, thinking: bool) -> None:
    """Offer the answer tool in ``body`` and make the model call it (or a tool of the client's)."""
    name = answer_tool_name(request)
    if name is None:
        return
    tool = {
        "name": name,
        "description": ANSWER_DESCRIPTION,
        "input_schema": _schema(request.response_format),
    }
    body.setdefault("tools", []).append(tool)
    choice: dict[str, Any]
    if thinking:  # Anthropic refuses a forced tool_choice with extended thinking
        choice = {"type": "auto"}
        ask = f"Give your final answer by calling the tool `{name}`; do not write it as text."
        body["system"] = f"{body['system']}\n\n{ask}" if body.get("system") else ask
    elif request.tools and request.tool_choice.mode == "auto":
        choice = {"type": "any"}  # one of the client's tools, or the answer
    else:
        choice = {"type": "tool", "name": name, "disable_parallel_tool_use": True}
    if not request.parallel_tool_calls:
        choice["disable_parallel_tool_use"] = True
    body["tool_choice"] = choice


def check_answer(fmt: ResponseFormat, text: str, channel: str) -> None:
    """A JSON object, and with ``strict`` one that matches the schema; else a 502."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    problem = None if isinstance(value, dict) else "it is not a JSON object"
    if problem is None and fmt.type == "json_schema" and fmt.strict and fmt.schema:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(fmt.schema).iter_errors(value)
        )
        problem = None if error is None else f"it does not match the schema: {error.message}"
    if problem is not None:
        raise UpstreamError(
            f"The upstream channel '{channel}' gave an answer that response_format refuses: "
            f"{problem}.",
            code="invalid_structured_output",
        )


class _Answer:
    """Turns the answer tool's call into text; the client's own tool calls pass, renumbered."""

    def __init__(self, request: ChatRequest, tool: str, channel: str) -> None:
        self.format = request.response_format
        self.tool = tool
        self.channel = channel
        self.answer_call: int | None = None
        self.answer: list[str] = []
        self.calls: dict[int, int] = {}  # upstream call index -> the client's call index
        self.held: list[TextDelta] = []  # text around the answer; shown only if none came

    def feed(self, chunk: Chunk) -> list[Chunk]:
        if isinstance(chunk, ToolCallDelta):
            return self._call(chunk)
        if isinstance(chunk, TextDelta):
            self.held.append(chunk)
            return []
        if isinstance(chunk, Finish):
            return self._finish(chunk)
        return [chunk]

    def _call(self, chunk: ToolCallDelta) -> list[Chunk]:
        if chunk.name is not None:  # the first piece of a call
            if chunk.name != self.tool:
                self.calls[chunk.call_index] = len(self.calls)
            elif self.answer_call is None:
                self.answer_call = chunk.call_index
        if chunk.call_index == self.answer_call:
            self.answer.append(chunk.arguments)
            return [TextDelta(chunk.index, chunk.arguments)] if chunk.arguments else []
        if chunk.call_index not in self.calls:
            return []  # a second answer: the first one stands
        chunk.call_index = self.calls[chunk.call_index]
        return [chunk]

    def _finish(self, chunk: Finish) -> list[Chunk]:
        out: list[Chunk] = []
        text = "".join(self.answer)
        if self.answer_call is None:
            out.extend(self.held)
            text = "".join(t.text for t in self.held)
        reason = chunk.reason
        if reason == "tool_calls" and not self.calls:
            reason = "stop"
        if reason == "stop" and not self.calls:
            check_answer(self.format, text, self.channel)
        out.append(Finish(chunk.index, reason))
        return out


async def structured_answer(
    chunks: AsyncGenerator[Chunk, None], request: ChatRequest, tool: str, channel: str
) -> AsyncIterator[Chunk]:
    answer = _Answer(request, tool, channel)
    try:
        async for chunk in chunks:
            for out in answer.feed(chunk):
                yield out
    finally:
        await chunks.aclose()

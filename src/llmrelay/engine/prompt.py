"""Render a chat request into the model's prompt with the chat template stored in the GGUF.

Templates that know nothing of tools (SmolLM2's does not) get the tool definitions in the
system message, and past calls and results as text, in the widely trained Hermes format
(``<tool_call>{"name": ..., "arguments": ...}</tool_call>``), which :mod:`.tools` parses back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmrelay.errors import InvalidRequest
from llmrelay.request import ChatRequest, FunctionTool, Message

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def tool_wire(tool: FunctionTool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description:
        fn["description"] = tool.description
    fn["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


class ChatTemplate:
    def __init__(self, source: str | None, *, bos: str, eos: str) -> None:
        self.source = source or _FALLBACK_TEMPLATE
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        self.template = env.from_string(self.source)
        self.bos = bos
        self.eos = eos
        self.knows_tools = "tools" in self.source

    def render(self, request: ChatRequest, *, instructions: str | None = None) -> str:
        """The prompt text; ``instructions`` (tool or JSON guidance) join the system message."""
        messages = [self._message(m) for m in request.messages]
        extra = [s for s in (instructions,) if s]
        tools = [tool_wire(t) for t in request.tools] if request.tools else None
        if tools and request.tool_choice.mode != "none" and not self.knows_tools:
            extra.insert(0, tools_instructions(request.tools))
            tools = None
        if extra:
            messages = _merge_system(messages, "\n\n".join(extra))
        try:
            return self.template.render(
                messages=messages,
                tools=tools if request.tool_choice.mode != "none" else None,
                add_generation_prompt=True,
                bos_token=self.bos,
                eos_token=self.eos,
                enable_thinking=request.enable_thinking,
                reasoning_effort=request.reasoning_effort,
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template refused these messages: {exc}",
                param="messages",
                code="invalid_messages",
            ) from None

    def _message(self, message: Message) -> dict[str, Any]:
        role = "system" if message.role == "developer" else message.role
        content = message.text()
        if message.role == "assistant" and message.tool_calls:
            calls = "\n".join(
                f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(c.name)}, "arguments": '
                f"{c.arguments or '{}'}}}\n{TOOL_CALL_CLOSE}"
                for c in message.tool_calls
            )
            content = f"{content}\n{calls}" if content else calls
        if message.role == "tool" and not self.knows_tools:
            return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
        out: dict[str, Any] = {"role": role, "content": content}
        if message.name:
            out["name"] = message.name
        return out


def _merge_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}" if first["content"] else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def tools_instructions(tools: list[FunctionTool]) -> str:
    listing = "\n".join(json.dumps(tool_wire(t), ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to help with the user's request. "
        "The available functions are described by these JSON Schemas:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call a function, reply with a JSON object naming the function and its arguments "
        f'inside tags, like this:\n{TOOL_CALL_OPEN}\n{{"name": "function_name", "arguments": '
        f"{{}}}}\n{TOOL_CALL_CLOSE}"
    )

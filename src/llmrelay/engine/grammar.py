"""GBNF grammars that constrain generation: JSON output and forced tool calls."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmrelay.errors import InvalidRequest
from llmrelay.request import ChatRequest, FunctionTool

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@lru_cache(maxsize=256)
def _schema_to_gbnf(schema_json: str, order: tuple[str, ...]) -> str:
    return str(json_schema_to_gbnf(schema_json, prop_order=list(order)))


def schema_grammar(schema: dict[str, Any], param: str, order: tuple[str, ...] = ()) -> str:
    try:
        return _schema_to_gbnf(json.dumps(schema), order)
    except Exception as exc:  # the converter raises bare exceptions for what it cannot express
        raise InvalidRequest(
            f"This JSON Schema cannot be enforced by the local model's grammar: {exc}",
            param=param,
            code="unsupported_schema",
        ) from None


def call_schema(tools: list[FunctionTool]) -> dict[str, Any]:
    """One call object, ``{"name": ..., "arguments": {...}}``, for any of ``tools``."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": t.parameters or _EMPTY_PARAMETERS,
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_tools(request: ChatRequest) -> list[FunctionTool] | None:
    """The tools a call must be chosen from when the request forces a call, else None."""
    choice = request.tool_choice
    if choice.mode == "required":
        return request.tools
    if choice.mode == "function":
        return [t for t in request.tools if t.name == choice.name]
    return None


def request_grammar(request: ChatRequest) -> str | None:
    forced = forced_tools(request)
    if forced:
        return schema_grammar(call_schema(forced), "tools", ("name", "arguments"))
    fmt = request.response_format
    if fmt.type == "json_schema" and fmt.schema is not None:
        return schema_grammar(fmt.schema, "response_format.json_schema.schema")
    if fmt.type == "json_object":
        return schema_grammar({"type": "object"}, "response_format")
    return None


def check_grammar(vocab: Any, gbnf: str, param: str) -> None:
    """llama.cpp returns NULL for a grammar it cannot parse; refuse it before it reaches a chain."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise InvalidRequest(
            "The JSON Schema produced a grammar the local model cannot use.",
            param=param,
            code="unsupported_schema",
        )
    llama_cpp.llama_sampler_free(sampler)

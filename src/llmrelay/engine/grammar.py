"""GBNF grammars that constrain generation: JSON output and forced tool calls."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import RESERVED_NAMES, BuiltinRule, SchemaConverter

from llmrelay.engine.ranges import integer_range
from llmrelay.errors import InvalidRequest
from llmrelay.request import ChatRequest, FunctionTool

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


# Assertion keywords the grammar cannot enforce. Refused rather than hoped for; "format"
# is an annotation in JSON Schema and is enforced only where the converter knows it.
_UNENFORCEABLE = frozenset(
    [
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
    ]
)
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


# A JSON string's character: llama-cpp-python's rule lets raw control characters (a newline)
# into strings, which makes the output invalid JSON; this is llama.cpp's own rule.
_JSON_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ' + " ".join(["[0-9a-fA-F]"] * 4) + ")",
    [],
)


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, plus integer bounds (which it ignores) and strings without
    raw control characters."""

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return str(super()._add_primitive(name, _JSON_CHAR if name == "char" else rule))

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") == "integer":
            low, high = _integer_bounds(schema)
            if low is not None or high is not None:
                rule = name + "-" if name in RESERVED_NAMES else name or "root"
                return str(self._add_rule(rule, f"({integer_range(low, high)}) space"))
        return str(super().visit(schema, name))


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    low = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    high = [math.floor(schema["maximum"])] if "maximum" in schema else []
    if "exclusiveMinimum" in schema:
        low.append(math.floor(schema["exclusiveMinimum"]) + 1)
    if "exclusiveMaximum" in schema:
        high.append(math.ceil(schema["exclusiveMaximum"]) - 1)
    return (max(low) if low else None), (min(high) if high else None)


def _unenforceable(schema: Any, path: str) -> str | None:
    """The first keyword (with its path) that the grammar would silently ignore."""
    if not isinstance(schema, dict):
        return None
    for key in schema:
        if key in _UNENFORCEABLE:
            return f"{path}.{key}"
        if key in _BOUNDS and schema.get("type") != "integer":
            return f"{path}.{key}"
    subschemas: list[tuple[str, Any]] = []
    for key in _SUBSCHEMA_LISTS:
        subschemas += [(f"{path}.{key}[{i}]", s) for i, s in enumerate(schema.get(key) or [])]
    for key in _SUBSCHEMA_MAPS:
        subschemas += [(f"{path}.{key}.{k}", s) for k, s in (schema.get(key) or {}).items()]
    for key in ("items", "additionalProperties"):
        subschemas.append((f"{path}.{key}", schema.get(key)))
    for where, sub in subschemas:
        found = _unenforceable(sub, where)
        if found:
            return found
    return None


def _inline_root_ref(schema: dict[str, Any]) -> dict[str, Any]:
    """The converter cannot start from a bare ``$ref``; start from what it points at."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/") or len(schema) == 1:
        return schema
    target: Any = schema
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        return schema
    rest = {k: v for k, v in schema.items() if k != "$ref"}
    return {**rest, **target}


@lru_cache(maxsize=256)
def _schema_to_gbnf(schema_json: str, order: tuple[str, ...]) -> str:
    converter = _Converter(
        prop_order={name: i for i, name in enumerate(order)},
        allow_fetch=False,
        dotall=False,
        raw_pattern=False,
    )
    schema = converter.resolve_refs(json.loads(schema_json), "stdin")
    converter.visit(schema, "")
    return str(converter.format_grammar())


def schema_grammar(schema: dict[str, Any], param: str, order: tuple[str, ...] = ()) -> str:
    found = _unenforceable(schema, param)
    if found is not None:
        keyword = found.rsplit(".", 1)[-1]
        raise InvalidRequest(
            f"The local model enforces JSON Schemas with a grammar, and '{keyword}' (at "
            f"{found}) cannot be enforced that way. Remove it, or use a model served upstream.",
            param=param,
            code="unsupported_schema",
        )
    try:
        return _schema_to_gbnf(json.dumps(_inline_root_ref(schema)), order)
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

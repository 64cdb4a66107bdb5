"""Parse a chat-completions body of any accepted dialect into one :class:`ChatRequest`.

Every dialect rule of SPEC section 2 lives here: where the model comes from, seed 002's
``{}`` placeholders and sampling ranges, seed 000's web-search tool, duplicate tool definitions
(seed 001 sends one twice), legacy ``functions``. Unknown fields are ignored.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

import jsonschema
import orjson

from llmrelay.dialects.fields import Fields, invalid_value, join, missing, wrong_type
from llmrelay.dialects.messages import parse_messages
from llmrelay.request import (
    SAMPLING_PARAMETERS,
    ChatRequest,
    FunctionTool,
    ResponseFormat,
    Sampling,
    ToolChoice,
)

log = logging.getLogger(__name__)

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_WEB_SEARCH_TOOL_TYPES = ("web_search", "web_search_preview", "web_search_2025_08_26")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
KNOWN_FIELDS = SAMPLING_PARAMETERS | frozenset(
    [
        "model",
        "messages",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "web_search_options",
        "reasoning_effort",
        "separate_reasoning",
        "enable_thinking",
        "response_format",
        "context_length_exceeded_behavior",
        "user",
        "metadata",
        "store",
    ]
)


def parse_chat_request(body: Any, *, path_model: str | None, default_model: str) -> ChatRequest:
    f = Fields(body, "", empty_object_is_null=True)
    unknown = [k for k in f.obj if k not in KNOWN_FIELDS]
    if unknown:
        log.debug("ignoring unknown request fields: %s", ", ".join(sorted(unknown)))
    messages = parse_messages(f.raw("messages"), empty_object_is_null=True)
    req = ChatRequest(model=_model(f, path_model, default_model), messages=messages)
    req.sampling = parse_sampling(f)
    req.max_tokens = _max_tokens(f)
    req.n = f.integer("n", ge=1, le=128) or 1
    _parse_stream(f, req)
    _parse_logprobs(f, req)
    req.tools, req.web_search = _parse_tools(f)
    req.tool_choice = _parse_tool_choice(f, req.tools)
    req.parallel_tool_calls = _bool(f, "parallel_tool_calls", True)
    if f.raw("web_search_options") is not None:  # OpenAI documents {} as "search on"
        f.object("web_search_options")  # type check only
        req.web_search = True
    req.reasoning_effort = f.choice("reasoning_effort", REASONING_EFFORTS)
    req.separate_reasoning = f.boolean("separate_reasoning")
    req.enable_thinking = f.boolean("enable_thinking")
    req.response_format = _parse_response_format(f)
    behavior = f.choice("context_length_exceeded_behavior", ("truncate", "error"))
    req.truncate_on_overflow = behavior != "error"
    req.user = f.string("user")
    return req


def _model(f: Fields, path_model: str | None, default_model: str) -> str:
    body_model = f.string("model")
    return (
        path_model
        or (body_model.strip() if body_model and body_model.strip() else None)
        or (default_model)
    )


def _bool(f: Fields, key: str, default: bool) -> bool:
    value = f.boolean(key)
    return default if value is None else value


def parse_sampling(f: Fields) -> Sampling:
    top_k = f.integer("top_k", ge=0, le=128)
    return Sampling(
        temperature=f.number("temperature", ge=0, le=2),
        top_p=f.number("top_p", gt=0, le=1),
        top_k=top_k or None,
        min_p=f.number("min_p", ge=0, le=1),
        frequency_penalty=f.number("frequency_penalty", ge=-2, le=2),
        presence_penalty=f.number("presence_penalty", ge=-2, le=2),
        repetition_penalty=f.number("repetition_penalty", gt=0, lt=2),
        logit_bias=_logit_bias(f),
        seed=f.integer("seed", ge=-(2**63), le=2**64 - 1),
        stop=_stop(f),
    )


def _logit_bias(f: Fields) -> dict[int, float]:
    raw = f.object("logit_bias")
    if raw is None:
        return {}
    bias: dict[int, float] = {}
    for key in raw.obj:
        param = raw.param(key)
        if not str(key).isdigit():
            raise invalid_value(
                param, f"the key {key!r} is not a token id (a non-negative integer)."
            )
        value = raw.number(key, ge=-100, le=100)
        if value is None:
            raise wrong_type(param, "a number", None)
        bias[int(key)] = value
    if len(bias) > 1024:
        raise invalid_value("logit_bias", "at most 1024 tokens may be biased.")
    return bias


def _stop(f: Fields) -> list[str]:
    raw = f.scalar("stop")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if not isinstance(raw, list):
        raise wrong_type("stop", "a string or an array of strings", raw)
    if len(raw) > 4:
        raise invalid_value("stop", f"at most 4 stop sequences are allowed, got {len(raw)}.")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise wrong_type(join("stop", i), "a string", item)
    return [s for s in raw if s]


def _max_tokens(f: Fields) -> int | None:
    legacy = f.integer("max_tokens", ge=1)
    current = f.integer("max_completion_tokens", ge=1)
    if legacy is not None and current is not None and legacy != current:
        raise invalid_value(
            "max_completion_tokens",
            f"contradicts max_tokens ({current} vs {legacy}); send only one of them.",
        )
    return current if current is not None else legacy


def _parse_stream(f: Fields, req: ChatRequest) -> None:
    req.stream = _bool(f, "stream", False)
    options = f.object("stream_options")
    if options is not None:
        include = options.boolean("include_usage")
        # stream_options without stream is ignored rather than refused: seed 002's
        # template sends it with a placeholder for stream.
        req.include_usage = bool(include) and req.stream


def _parse_logprobs(f: Fields, req: ChatRequest) -> None:
    req.logprobs = _bool(f, "logprobs", False)
    top = f.integer("top_logprobs", ge=0, le=20)
    if top is not None and top > 0 and not req.logprobs:
        raise invalid_value("top_logprobs", "requires 'logprobs' to be true.")
    req.top_logprobs = top or 0


def _parse_tools(f: Fields) -> tuple[list[FunctionTool], bool]:
    tools: dict[str, FunctionTool] = {}
    web_search = False
    raw_tools = f.array("tools", single_object=True) or []
    for i, raw in enumerate(raw_tools):
        tf = Fields(raw, join("tools", i))
        kind = tf.string("type") or "function"
        if kind in _WEB_SEARCH_TOOL_TYPES:
            web_search = True
            continue
        if kind != "function":
            raise invalid_value(
                tf.param("type"),
                f"unsupported tool type {kind!r}; expected 'function' or 'web_search'.",
            )
        fn = tf.object("function")
        if fn is None:
            raise missing(tf.param("function"))
        tool = _function_tool(fn)
        if tool.name == "web_search" and not tool.parameters:
            web_search = True  # seed 000's switch for server-side search
            continue
        _add_tool(tools, tool, fn.param("name"))
    for i, raw in enumerate(f.array("functions") or []):
        _add_tool(
            tools,
            _function_tool(Fields(raw, join("functions", i))),
            join(join("functions", i), "name"),
        )
    if len(tools) > 128:
        raise invalid_value("tools", f"at most 128 tools are allowed, got {len(tools)}.")
    return list(tools.values()), web_search


def _add_tool(tools: dict[str, FunctionTool], tool: FunctionTool, param: str) -> None:
    existing = tools.get(tool.name)
    if existing is not None and existing != tool:
        raise invalid_value(param, f"two different tools are named {tool.name!r}.")
    tools[tool.name] = tool  # identical duplicates (seed 001) collapse into one


def _function_tool(fn: Fields) -> FunctionTool:
    name = fn.string("name", required=True)
    assert name is not None
    if not _TOOL_NAME.match(name):
        raise invalid_value(
            fn.param("name"),
            f"{name!r} is not a valid function name (1-64 letters, digits, '_', '-', '.', ':').",
        )
    params_raw = fn.raw("parameters")
    parameters: dict[str, Any] | None = None
    if params_raw is not None:
        if not isinstance(params_raw, dict):
            raise wrong_type(fn.param("parameters"), "a JSON Schema object", params_raw)
        _check_schema(fn.param("parameters"), params_raw)
        parameters = params_raw or None
    return FunctionTool(
        name=name,
        description=fn.string("description"),
        parameters=parameters,
        strict=bool(fn.boolean("strict")),
    )


def _check_schema(param: str, schema: dict[str, Any]) -> None:
    problem = _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if problem is not None:
        raise invalid_value(param, f"not a valid JSON Schema: {problem}")


@lru_cache(maxsize=1024)
def _schema_problem(canonical: bytes) -> str | None:
    """Checking a schema costs about a millisecond; clients resend the same tools every turn."""
    try:
        jsonschema.Draft202012Validator.check_schema(orjson.loads(canonical))
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def _parse_tool_choice(f: Fields, tools: list[FunctionTool]) -> ToolChoice:
    raw = f.scalar("tool_choice")
    if raw is None:
        raw = f.scalar("function_call")  # legacy
        if isinstance(raw, dict):
            raw = {"type": "function", "function": raw}
    if raw is None:
        return ToolChoice("auto")
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise invalid_value(
                "tool_choice",
                f"{raw!r} is not one of 'auto', 'none', 'required', or a named function object.",
            )
        if raw == "required" and not tools:
            raise invalid_value("tool_choice", "'required' needs at least one function in 'tools'.")
        return ToolChoice(raw)  # type: ignore[arg-type]
    tc = Fields(raw, "tool_choice")
    fn = tc.object("function")
    name = fn.string("name", required=True) if fn else tc.string("name", required=True)
    if name not in {t.name for t in tools}:
        raise invalid_value("tool_choice", f"names the function {name!r}, which is not in 'tools'.")
    return ToolChoice("function", name)


def _parse_response_format(f: Fields) -> ResponseFormat:
    rf = f.object("response_format")
    if rf is None:
        return ResponseFormat()
    kind = rf.choice("type", ("text", "json_object", "json_schema")) or "text"
    if kind != "json_schema":
        return ResponseFormat(kind)  # type: ignore[arg-type]
    js = rf.object("json_schema")
    if js is None:
        raise missing("response_format.json_schema")
    schema = js.raw("schema")
    if schema is None:
        raise missing("response_format.json_schema.schema")
    if not isinstance(schema, dict):
        raise wrong_type(js.param("schema"), "a JSON Schema object", schema)
    _check_schema(js.param("schema"), schema)
    return ResponseFormat(
        "json_schema",
        name=js.string("name") or "response",
        schema=schema,
        strict=bool(js.boolean("strict")),
    )

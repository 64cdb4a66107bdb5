"""Every generation parameter of the embedded engine really changes what it produces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import chat, sse_events
from tests.schemas import check_completion, check_error

POEM = "Write a short poem about the sea."
FRUITS = "List ten fruits, one per line."


def complete(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    check_completion(response.json())
    return response.json()


def text(http: httpx.Client, prompt: str = POEM, **params: Any) -> str:
    params.setdefault("max_tokens", 24)
    content = complete(http, chat(prompt, **params))["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    from llama_cpp import Llama

    from llmrelay.engine.model_files import bundled_model_path

    model = Llama(str(bundled_model_path()), vocab_only=True, verbose=False)
    yield model
    model.close()


def token_id(vocab: Any, piece: str) -> int:
    ids = vocab.tokenize(piece.encode(), add_bos=False, special=False)
    assert len(ids) == 1, f"{piece!r} is {len(ids)} tokens"
    return int(ids[0])


# -- seed and the samplers -----------------------------------------------------------------


def test_same_seed_same_text_and_other_seeds_differ(http: httpx.Client) -> None:
    first = text(http, temperature=1.2, seed=7)
    assert text(http, temperature=1.2, seed=7) == first
    others = {text(http, temperature=1.2, seed=s) for s in (8, 9, 10)}
    assert others - {first}


def test_temperature(http: httpx.Client) -> None:
    greedy = text(http, temperature=0)
    assert text(http, temperature=0) == greedy  # greedy decoding is deterministic
    hot = {text(http, temperature=1.8, seed=s) for s in (1, 2, 3)}
    assert hot - {greedy}


def test_top_k_one_is_greedy(http: httpx.Client) -> None:
    greedy = text(http, temperature=0)
    assert text(http, temperature=1.8, seed=3, top_k=1) == greedy
    assert text(http, temperature=1.8, seed=3) != greedy


def test_top_p_tiny_is_greedy(http: httpx.Client) -> None:
    greedy = text(http, temperature=0)
    assert text(http, temperature=1.8, seed=3, top_p=0.01) == greedy
    assert text(http, temperature=1.8, seed=3, top_p=1.0) != greedy


def test_min_p_one_is_greedy(http: httpx.Client) -> None:
    greedy = text(http, temperature=0)
    assert text(http, temperature=1.8, seed=3, min_p=1.0) == greedy
    assert text(http, temperature=1.8, seed=3, min_p=0.0) != greedy


@pytest.mark.parametrize(
    "penalty",
    [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"repetition_penalty": 1.9},
        {"frequency_penalty": -2.0},
        {"repetition_penalty": 0.5},
    ],
)
def test_penalties(http: httpx.Client, penalty: dict[str, float]) -> None:
    base = text(http, FRUITS, temperature=0, max_tokens=40)
    assert text(http, FRUITS, temperature=0, max_tokens=40, **penalty) != base


def test_positive_penalties_reduce_repetition(http: httpx.Client) -> None:
    base = text(http, FRUITS, temperature=0, max_tokens=40)
    penalised = text(http, FRUITS, temperature=0, max_tokens=40, presence_penalty=2.0)

    def repeats(s: str) -> int:
        lines = [line.split(". ", 1)[-1] for line in s.splitlines() if line.strip()]
        return len(lines) - len(set(lines))

    assert repeats(penalised) < repeats(base)


def test_logit_bias_ban_and_force(http: httpx.Client, vocab: Any) -> None:
    prompt = "What is the capital of France?"
    body = chat(prompt, temperature=0, max_tokens=12, logprobs=True)
    tokens = [t["token"] for t in complete(http, body)["choices"][0]["logprobs"]["content"]]
    banned = tokens[0]
    banned_id = token_id(vocab, banned)
    body["logit_bias"] = {str(banned_id): -100}
    for seed in (1, 2):
        body.update(seed=seed, temperature=1.0)
        result = complete(http, body)["choices"][0]["logprobs"]["content"]
        assert banned not in [t["token"] for t in result]
    forced = token_id(vocab, " banana")
    content = text(http, prompt, max_tokens=5, logit_bias={str(forced): 100})
    assert content.strip() == "banana banana banana banana banana"


# -- stop, length, n ----------------------------------------------------------------------


def test_stop_sequence(http: httpx.Client) -> None:
    base = text(http, FRUITS, temperature=0, max_tokens=30)
    stop = "3."
    assert stop in base
    result = complete(http, chat(FRUITS, temperature=0, max_tokens=30, stop=[stop, "zzz"]))
    choice = result["choices"][0]
    assert choice["message"]["content"] == base[: base.index(stop)]
    assert choice["finish_reason"] == "stop"
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=chat(FRUITS, temperature=0, max_tokens=30, stop=stop, stream=True),
    ) as r:
        events = sse_events(r)
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == base[: base.index(stop)]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_inside_a_token(http: httpx.Client) -> None:
    base = text(http, FRUITS, temperature=0, max_tokens=30)
    stop = "anana"  # part of the token " Banana"
    result = complete(http, chat(FRUITS, temperature=0, max_tokens=30, stop=stop, logprobs=True))[
        "choices"
    ][0]
    assert result["message"]["content"] == base[: base.index(stop)]
    assert (
        "".join(t["token"] for t in result["logprobs"]["content"]) == result["message"]["content"]
    )


def test_max_tokens_gives_length(http: httpx.Client) -> None:
    result = complete(http, chat(POEM, max_tokens=5))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5
    result = complete(http, chat(POEM, max_completion_tokens=3))
    assert result["usage"]["completion_tokens"] == 3


def test_n_independent_choices(http: httpx.Client) -> None:
    result = complete(http, chat(POEM, n=3, temperature=1.2, seed=5, max_tokens=12))
    choices = result["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) > 1
    assert result["usage"]["completion_tokens"] == sum(12 for _ in choices)


def test_n_streaming(http: httpx.Client) -> None:
    body = chat(POEM, n=2, temperature=1.0, max_tokens=6, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    firsts: dict[int, dict[str, Any]] = {}
    finishes: dict[int, str] = {}
    for event in events:
        choice = event["choices"][0]
        firsts.setdefault(choice["index"], choice["delta"])
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert firsts[0] == firsts[1] == {"role": "assistant", "content": ""}
    assert finishes == {0: "length", 1: "length"}


# -- logprobs -----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [POEM, "用中文写一句话。"])
def test_logprobs(http: httpx.Client, prompt: str) -> None:
    result = complete(http, chat(prompt, max_tokens=16, logprobs=True, top_logprobs=3))
    choice = result["choices"][0]
    entries = choice["logprobs"]["content"]
    content = choice["message"]["content"]
    assert len(entries) == result["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == content
    assert b"".join(bytes(e["bytes"]) for e in entries) == content.encode()
    for entry in entries:
        assert entry["logprob"] <= 0
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert all(t["logprob"] <= 0 and isinstance(t["bytes"], list) for t in tops)
        assert entry["logprob"] <= tops[0]["logprob"] + 1e-6


def test_logprobs_streamed(http: httpx.Client) -> None:
    body = chat(POEM, max_tokens=6, logprobs=True, top_logprobs=1, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    deltas = [e["choices"][0] for e in events if e["choices"][0]["delta"].get("content")]
    assert deltas and all(d["logprobs"]["content"] for d in deltas)
    for d in deltas:
        assert "".join(t["token"] for t in d["logprobs"]["content"]) == d["delta"]["content"]


def test_no_logprobs_unless_asked(http: httpx.Client) -> None:
    assert complete(http, chat(POEM, max_tokens=2))["choices"][0]["logprobs"] is None


# -- structured output --------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["colour", "tags"],
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"],
            },
            "ok": {"type": "boolean"},
        },
        "required": ["point", "ok"],
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output(http: httpx.Client, schema: dict[str, Any], stream: bool) -> None:
    body = chat(
        "Describe something.",
        max_tokens=120,
        temperature=1.0,
        seed=11,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "thing", "schema": schema, "strict": True},
        },
    )
    if stream:
        body["stream"] = True
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            events = sse_events(r)
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        finish = events[-1]["choices"][0]["finish_reason"]
    else:
        choice = complete(http, body)["choices"][0]
        content, finish = choice["message"]["content"], choice["finish_reason"]
    assert finish == "stop", content
    jsonschema.validate(json.loads(content), schema)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_integer_bounds_are_enforced(http: httpx.Client, seed: int) -> None:
    schema = {
        "type": "object",
        "properties": {
            "year": {"type": "integer", "minimum": 1990, "maximum": 2030},
            "score": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 4},
            "count": {"type": "integer", "minimum": 7},
        },
        "required": ["year", "score", "count"],
    }
    content = text(
        http,
        "Describe a film.",
        max_tokens=60,
        seed=seed,
        temperature=1.0,
        response_format={"type": "json_schema", "json_schema": {"name": "film", "schema": schema}},
    )
    jsonschema.validate(json.loads(content), schema)


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "number", "minimum": 0}, "minimum"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 3}}},
            "multipleOf",
        ),
    ],
)
def test_unenforceable_schema_keywords_are_refused(
    http: httpx.Client, schema: dict[str, Any], keyword: str
) -> None:
    body = chat(
        "x", response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    )
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = check_error(response.json())
    assert error["code"] == "unsupported_schema" and f"'{keyword}'" in error["message"]


def test_json_object_output(http: httpx.Client) -> None:
    for seed in (1, 2, 3):
        content = text(
            http,
            "Give me a JSON object about a cat.",
            max_tokens=100,
            seed=seed,
            temperature=1.0,
            response_format={"type": "json_object"},
        )
        assert isinstance(json.loads(content), dict)


# -- tools --------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


def _check_call(call: dict[str, Any], tools: list[dict[str, Any]]) -> None:
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] in declared
    jsonschema.validate(
        json.loads(call["function"]["arguments"]), declared[call["function"]["name"]]
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_tool_choice_required(http: httpx.Client, seed: int) -> None:
    tools = [WEATHER, TIME]
    result = complete(
        http,
        chat(
            "What's the weather in Paris?",
            tools=tools,
            seed=seed,
            temperature=1.0,
            tool_choice="required",
            max_tokens=80,
        ),
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert not choice["message"]["content"]
    assert len(choice["message"]["tool_calls"]) == 1
    _check_call(choice["message"]["tool_calls"][0], tools)


def test_tool_choice_named(http: httpx.Client) -> None:
    tools = [WEATHER, TIME]
    named = {"type": "function", "function": {"name": "get_time"}}
    result = complete(
        http, chat("What's the weather in Paris?", tools=tools, tool_choice=named, max_tokens=80)
    )
    call = result["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_time"
    _check_call(call, tools)


def test_tool_call_arguments_stream_incrementally(http: httpx.Client) -> None:
    body = chat(
        "Weather in Paris?", tools=[WEATHER], tool_choice="required", max_tokens=80, stream=True
    )
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    calls = [
        e["choices"][0]["delta"]["tool_calls"][0]
        for e in events
        if e["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    argument_deltas = [c["function"]["arguments"] for c in calls if c["function"]["arguments"]]
    assert len(argument_deltas) >= 3
    arguments = "".join(c["function"]["arguments"] for c in calls)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_auto_parses_calls_the_model_emits(http: httpx.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    messages: list[dict[str, Any]] = []
    for city in ("Paris", "Rome", "Oslo"):  # a few-shot history the small model imitates
        messages.append({"role": "user", "content": f"What is the weather in {city}?"})
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{city}",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": json.dumps({"city": city}),
                        },
                    }
                ],
            }
        )
    messages.append({"role": "user", "content": "What is the weather in London?"})
    body = chat(messages, tools=[tool], temperature=0, max_tokens=40)
    choice = complete(http, body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "London"}
    body["stream"] = True
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    streamed = "".join(
        d["function"].get("arguments", "")
        for e in events
        for d in e["choices"][0]["delta"].get("tool_calls") or []
    )
    assert json.loads(streamed) == {"city": "London"}


def test_tool_round_trip(http: httpx.Client) -> None:
    first = complete(
        http, chat("Weather in Paris?", tools=[WEATHER], tool_choice="required", max_tokens=80)
    )
    call = first["choices"][0]["message"]["tool_calls"][0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"},
    ]
    answer = complete(http, chat(messages, tools=[WEATHER], max_tokens=16))
    assert answer["choices"][0]["message"]["content"]


def test_tool_choice_none_ignores_tools(http: httpx.Client) -> None:
    result = complete(
        http, chat("Weather in Paris?", tools=[WEATHER], tool_choice="none", max_tokens=10)
    )
    assert "tool_calls" not in result["choices"][0]["message"]


# -- context length -----------------------------------------------------------------------


def test_context_length_truncate_and_error(http: httpx.Client) -> None:
    long_prompt = "word " * 1950  # about 1950 tokens of the 2048-token test context
    truncated = complete(http, chat(long_prompt, max_tokens=500))
    usage = truncated["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 2048
    assert usage["prompt_tokens"] > 1900
    response = http.post(
        "/v1/chat/completions",
        json=chat(long_prompt, max_tokens=500, context_length_exceeded_behavior="error"),
    )
    assert response.status_code == 400
    error = check_error(response.json())
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    too_long = http.post("/v1/chat/completions", json=chat("word " * 2100, max_tokens=5))
    assert too_long.status_code == 400
    assert check_error(too_long.json())["code"] == "context_length_exceeded"

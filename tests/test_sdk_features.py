"""The official SDK's own helpers and typed features against llmrelay."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pydantic

from tests.conftest import MODEL, SECOND_MODEL


class Address(pydantic.BaseModel):
    city: str
    floor: int = pydantic.Field(ge=0, le=40)


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=18, le=99)
    role: Literal["pilot", "chef", "poet"]
    home: Address  # a nested model: pydantic writes it as a $defs entry and a $ref


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format=Person,
        max_tokens=120,
        seed=4,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert parsed.role in ("pilot", "chef", "poet")
    assert 18 <= parsed.age <= 99 and 0 <= parsed.home.floor <= 40


class GetWeather(pydantic.BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


def test_pydantic_function_tool_is_called_with_parsed_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=60,
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_stream_helper_events(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "developer", "content": "Use plain words."},
            {"role": "user", "content": "What is rain? One sentence."},
        ],
        max_tokens=200,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert {"chunk", "content.delta", "content.done"} <= kinds
    assert final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"


def test_sampling_extras_and_features_through_the_sdk(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_completion_tokens=6,
        temperature=1.5,
        seed=3,
    )
    greedy = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_completion_tokens=6,
        temperature=0,
    )
    top_k_one = client.chat.completions.create(**kwargs, extra_body={"top_k": 1})  # type: ignore[call-overload]
    assert top_k_one.choices[0].message.content == greedy.choices[0].message.content
    many = client.chat.completions.create(
        **kwargs,
        n=2,
        logprobs=True,
        top_logprobs=2,  # type: ignore[call-overload]
        stop=["\n\n"],
        frequency_penalty=0.5,
        presence_penalty=0.5,
        logit_bias={"28": -100},
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert all(c.logprobs and c.logprobs.content for c in many.choices)


def test_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].finish_reason == "length"


def test_a_further_gguf_model_and_its_alias(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert SECOND_MODEL in ids
    for name in (SECOND_MODEL, "gpt-4o-mini"):
        completion = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}]
        )
        assert completion.model == SECOND_MODEL
        assert completion.usage is not None and completion.usage.completion_tokens <= 8
    info = client.models.retrieve(SECOND_MODEL).model_dump()
    assert info["context_length"] == 512


def test_legacy_function_calling_shapes(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        functions=[
            {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }
        ],
        function_call={"name": "get_weather"},
        max_tokens=40,
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)

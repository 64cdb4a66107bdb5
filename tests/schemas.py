"""Validate wire payloads against OpenAI's own JSON schemas and the SDK's types."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion

_SCHEMAS = Path(__file__).parent / "data" / "openai-chat-schemas.json"


@cache
def _document() -> dict[str, Any]:
    return json.loads(_SCHEMAS.read_text())


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    doc = _document()
    schema = {"$ref": f"#/components/schemas/{name}", **doc}
    return jsonschema.Draft202012Validator(schema)


def check_schema(name: str, payload: Any) -> None:
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
        raise AssertionError(f"payload does not match {name}: {details}\n{payload}")


def check_completion(payload: dict[str, Any]) -> ChatCompletion:
    check_schema("CreateChatCompletionResponse", payload)
    return ChatCompletion.model_validate(payload)


def check_chunk(payload: dict[str, Any]) -> ChatCompletionChunk:
    check_schema("CreateChatCompletionStreamResponse", payload)
    return ChatCompletionChunk.model_validate(payload)


def check_error(payload: dict[str, Any]) -> dict[str, Any]:
    check_schema("ErrorResponse", payload)
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] is None or isinstance(error["code"], str), error
    assert error["message"], error
    return error


def check_text_completion(payload: dict[str, Any]) -> Completion:
    check_schema("CreateCompletionResponse", payload)
    return Completion.model_validate(payload)


def check_model_list(payload: dict[str, Any]) -> list[Model]:
    check_schema("ListModelsResponse", payload)
    return [Model.model_validate(m) for m in payload["data"]]

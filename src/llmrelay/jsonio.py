"""JSON for the request path: orjson for speed, clear line/column messages on bad input."""

from __future__ import annotations

import json
from typing import Any

import orjson

from llmrelay.errors import InvalidJSON

_CLOSERS = "}]"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _explain(text: str) -> InvalidJSON:
    """Re-parse with the stdlib, whose messages name what was expected, and spot trailing commas."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        pos = exc.pos
        if pos < len(text) and text[pos] in _CLOSERS:
            before = text[:pos].rstrip()
            if before.endswith(","):
                comma = len(before) - 1
                line, col = _line_col(text, comma)
                return InvalidJSON(
                    f"Invalid JSON in request body: trailing comma at line {line} column {col} "
                    f"(before '{text[pos]}'). Remove the comma, or enable relaxed JSON on the "
                    "server (relaxed_json: true).",
                )
        return InvalidJSON(
            f"Invalid JSON in request body: {exc.msg} at line {exc.lineno} column {exc.colno}."
        )
    except RecursionError:
        return InvalidJSON("Invalid JSON in request body: nesting is too deep.")
    return InvalidJSON("Invalid JSON in request body.")


def parse_body(body: bytes, *, relaxed: bool = False) -> Any:
    """Parse a request body; raise :class:`InvalidJSON` with line and column when it is bad."""
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid UTF-8 (bad byte at offset {exc.start})."
        ) from None
    if relaxed:
        import json5

        try:
            return json5.loads(text)
        except (ValueError, RecursionError):
            pass
    raise _explain(text) from None

"""Normalise ``messages`` of every dialect (seeds 000, 001, 002, OpenAI, legacy functions)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, cast

from llmrelay import jsonio
from llmrelay.dialects.fields import Fields, invalid_value, join, missing, wrong_type
from llmrelay.dialects.reasoning_details import parse_reasoning_details
from llmrelay.request import (
    AudioPart,
    ImagePart,
    Message,
    Part,
    Role,
    TextPart,
    ToolCall,
    VideoPart,
)

ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "function")
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)"
    r"(?P<b64>;base64)?,(?P<data>.*)$",
    re.DOTALL,
)
_DETAILS = ("auto", "low", "high")
_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "m4a", "webm", "pcm16")


def parse_messages(raw: Any, *, empty_object_is_null: bool) -> list[Message]:
    if raw is None:
        raise missing("messages")
    if not isinstance(raw, list):
        raise wrong_type("messages", "an array", raw)
    if not raw:
        raise invalid_value("messages", "the array is empty; send at least one message.")
    return [
        _parse_message(Fields(m, f"messages[{i}]", empty_object_is_null=empty_object_is_null))
        for i, m in enumerate(raw)
    ]


def _parse_message(f: Fields) -> Message:
    role = f.string("role", required=True)
    assert role is not None
    if role not in ROLES:
        options = ", ".join(repr(r) for r in ROLES)
        raise invalid_value(f.param("role"), f"unknown role {role!r}; expected one of {options}.")
    name = f.string("name")
    tool_calls = _parse_tool_calls(f) if role == "assistant" else []
    content_required = role in ("system", "developer", "user") or (
        role == "assistant" and not tool_calls
    )
    content = _parse_content(f, required=content_required)
    if role == "function":
        # Legacy function results become tool results, matched to calls by function name.
        if not name:
            raise missing(f.param("name"), "a 'function' message names its function")
        return Message("tool", content, name=name, tool_call_id=name)
    tool_call_id = None
    if role == "tool":
        tool_call_id = f.string("tool_call_id", required=True, nonempty=True)
    reasoning = f.string("reasoning_content") if role == "assistant" else None
    if reasoning is None and role == "assistant":
        reasoning = f.string("reasoning")
    return Message(
        cast(Role, role),
        content,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        reasoning_content=reasoning,
        reasoning_details=parse_reasoning_details(f) if role == "assistant" else [],
    )


def _parse_content(f: Fields, *, required: bool) -> list[Part]:
    raw = f.scalar("content")
    param = f.param("content")
    if raw is None:
        if required:
            raise missing(param)
        return []
    if isinstance(raw, str):
        return [TextPart(raw)]
    if isinstance(raw, dict):  # seed 002 sends one part object instead of an array
        return [_parse_part(Fields(raw, param))]
    if isinstance(raw, list):
        if not raw and required:
            raise invalid_value(param, "the array is empty; send at least one content part.")
        return [_parse_part(Fields(p, join(param, i))) for i, p in enumerate(raw)]
    raise wrong_type(param, "a string or an array of content parts", raw)


def _parse_part(f: Fields) -> Part:
    kind = f.string("type")
    if kind is None:
        kind = _infer_part_type(f)
    if kind in ("text", "input_text", "output_text"):
        text = f.string("text", required=True)
        assert text is not None
        return TextPart(text)
    if kind in ("image_url", "input_image"):
        return _parse_image(f)
    if kind in ("video_url", "input_video"):
        url = _url_field(f, "video_url")
        _check_url(join(f.path, "video_url"), url, media="video")
        return VideoPart(url)
    if kind == "input_audio":
        audio = f.object("input_audio")
        if audio is None:
            raise missing(f.param("input_audio"))
        data = audio.string("data", required=True)
        fmt = audio.choice("format", _AUDIO_FORMATS) or "wav"
        assert data is not None
        return AudioPart(data, fmt)
    allowed = "'text', 'image_url', 'video_url', 'input_text', 'input_image', 'input_audio'"
    raise invalid_value(f.param("type"), f"unknown content part type {kind!r}; expected {allowed}.")


def _infer_part_type(f: Fields) -> str:
    for key in ("text", "image_url", "video_url", "input_audio"):
        if f.has(key):
            return key
    raise missing(f.param("type"))


def _url_field(f: Fields, key: str) -> str:
    """``{"url": ...}`` or, as seed 000 and the Responses API allow, a bare string."""
    raw = f.required(key)
    if isinstance(raw, str):
        return raw
    inner = Fields(raw, f.param(key))
    url = inner.string("url", required=True, nonempty=True)
    assert url is not None
    return url


def _parse_image(f: Fields) -> ImagePart:
    url = _url_field(f, "image_url")
    detail_holder = f.object("image_url") if isinstance(f.raw("image_url"), dict) else None
    detail = (
        detail_holder.choice("detail", _DETAILS) if detail_holder else f.choice("detail", _DETAILS)
    )
    param = f.param("image_url")
    _check_url(
        param if isinstance(f.raw("image_url"), str) else join(param, "url"), url, media="image"
    )
    return ImagePart(url, detail)


def _check_url(param: str, url: str, *, media: str) -> None:
    if url.startswith(("https://", "http://")):
        if len(url) > 8192:
            raise invalid_value(param, "the URL is longer than 8192 characters.")
        return
    if url.startswith("data:"):
        match = _DATA_URI.match(url)
        if match is None or not match.group("b64"):
            raise invalid_value(param, "a data: URI must look like 'data:<mime>;base64,<data>'.")
        mime = match.group("mime") or ""
        if not mime.startswith(f"{media}/"):
            raise invalid_value(param, f"the data: URI has type {mime!r}; expected {media}/*.")
        try:
            base64.b64decode(match.group("data"), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_value(param, "the data: URI's base64 payload is not valid.") from None
        return
    raise invalid_value(param, f"expected an http(s) URL or a data: URI for the {media}.")


def _parse_tool_calls(f: Fields) -> list[ToolCall]:
    calls: list[ToolCall] = []
    for i, raw in enumerate(f.array("tool_calls") or []):
        call = Fields(raw, join(f.param("tool_calls"), i))
        fn = call.object("function")
        if fn is None:
            raise missing(call.param("function"))
        calls.append(_tool_call(fn, call.string("id") or f"call_{i}"))
    legacy = f.object("function_call")
    if legacy is not None and not calls:
        calls.append(_tool_call(legacy, legacy.string("name") or "call_0"))
    return calls


def _tool_call(fn: Fields, call_id: str) -> ToolCall:
    name = fn.string("name", required=True, nonempty=True)
    arguments = fn.raw("arguments")
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        if not isinstance(arguments, dict):
            raise wrong_type(fn.param("arguments"), "a JSON string", arguments)
        arguments = jsonio.dumps(arguments).decode()
    assert name is not None
    return ToolCall(call_id, name, arguments)

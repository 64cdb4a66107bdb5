"""Parse a legacy ``/v1/completions`` body (seed 001's "补全") into the internal request."""

from __future__ import annotations

from typing import Any

from llmrelay.dialects.fields import Fields, invalid_value, join, wrong_type
from llmrelay.dialects.openai_chat import parse_sampling
from llmrelay.request import ChatRequest, Message, TextPart


def parse_completion_request(body: Any, *, default_model: str) -> ChatRequest:
    f = Fields(body, "", empty_object_is_null=True)
    prompt = _prompt(f)
    suffix = f.string("suffix")
    if suffix:
        raise invalid_value("suffix", "is not supported by this server (no fill-in-the-middle).")
    n = f.integer("n", ge=1, le=128) or 1
    best_of = f.integer("best_of", ge=1, le=128)
    if best_of is not None and best_of != n:
        raise invalid_value("best_of", "only best_of equal to n is supported.")
    logprobs = f.integer("logprobs", ge=0, le=20)
    model = (f.string("model") or "").strip() or default_model
    req = ChatRequest(model=model, messages=[Message("user", [TextPart(prompt)])])
    req.raw_prompt = prompt
    req.sampling = parse_sampling(f)
    req.max_tokens = f.integer("max_tokens", ge=1) or 16  # OpenAI's documented default
    req.n = n
    req.stream = bool(f.boolean("stream"))
    options = f.object("stream_options")
    req.include_usage = bool(options and options.boolean("include_usage")) and req.stream
    req.logprobs = logprobs is not None
    req.top_logprobs = logprobs or 0
    req.echo = bool(f.boolean("echo"))
    req.user = f.string("user")
    return req


def _prompt(f: Fields) -> str:
    raw = f.required("prompt")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        if len(raw) != 1:
            raise invalid_value("prompt", "send one prompt per request (an array of one string).")
        if not isinstance(raw[0], str):
            raise wrong_type(join("prompt", 0), "a string", raw[0])
        return str(raw[0])
    raise wrong_type("prompt", "a string", raw)

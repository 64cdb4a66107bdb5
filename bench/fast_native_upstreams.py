"""Canned stream bodies in Anthropic's and Gemini's native wire formats, for bench.fast_upstream.

Each stream carries ``chunks`` text pieces (one word each), as the OpenAI one does, in the event
shapes of tests/anthropic_upstream.py and tests/gemini_upstream.py (the shapes the real APIs
send), so the provider adapters do their full decoding work on every event.
"""

from __future__ import annotations

import json
from typing import Any


def _anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


_ANTHROPIC_START = (
    _anthropic_event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-bench",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1},
            },
        },
    )
    + _anthropic_event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    + _anthropic_event("ping", {"type": "ping"})
)

_ANTHROPIC_DELTA = _anthropic_event(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " word"}},
)


def _anthropic_end(chunks: int) -> bytes:
    return b"".join(
        [
            _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _anthropic_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": chunks},
                },
            ),
            _anthropic_event("message_stop", {"type": "message_stop"}),
        ]
    )


def anthropic_sse(chunks: int) -> bytes:
    """A Messages API stream: message_start, one text block of ``chunks`` deltas, the end."""
    return _ANTHROPIC_START + _ANTHROPIC_DELTA * chunks + _anthropic_end(chunks)


def _gemini_event(text: str, finish: str | None = None, output: int = 0) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    usage: dict[str, Any] = {"promptTokenCount": 10, "totalTokenCount": 10}
    if finish:
        candidate["finishReason"] = finish
        usage = {"promptTokenCount": 10, "candidatesTokenCount": output, "totalTokenCount": 10}
        usage["totalTokenCount"] += output
    payload = {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mSpVaNLnK8WjnvgPuvyY8Qk",
    }
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"


_GEMINI_DELTA = _gemini_event(" word")


def gemini_sse(chunks: int) -> bytes:
    """A ``streamGenerateContent?alt=sse`` stream: ``chunks`` events, the last with STOP."""
    return _GEMINI_DELTA * (chunks - 1) + _gemini_event(" word", "STOP", chunks)

"""A local server speaking Anthropic's Messages API, its streaming events as the docs show them.

The ``x-api-key`` picks the answer: ``text``, ``tool``, ``think``, ``max``, ``overloaded``
(529), ``invalid`` (400), ``cut`` (an error event mid-stream); ``loop``: signed thinking, a
redacted thinking block and a tool call, then text once a tool result came back; ``json``: a
call of the last tool offered (llmrelay's answer tool), as a forced tool_choice makes Claude
answer. Requests are recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tests.netutil import serve_in_thread

Event = tuple[str, dict[str, Any]]
# Anthropic's extended-thinking docs: the streaming example's thinking and signature_delta, and
# the redacted_thinking block of its "Thinking redaction" example.
THOUGHTS = [
    "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147",
    "\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\n\nSo GCD(1071, 462) = 21",
]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."
REDACTED = (
    "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9U"
    "Rj2pLmN3kF8/dW5hR7xJ0aP1oLs9yTcMnKVf2wRpEGjH9XZaBt4UvDcPrQ..."
)
TOOL_ID = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"


def _events(*pairs: Event) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
        for name, data in pairs
    )


def _start(model: str) -> Event:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 5,
                    "cache_creation_input_tokens": 0,
                },
            },
        },
    )


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[Event]:
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *[
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            for delta in deltas
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def _text_block(index: int, pieces: list[str]) -> list[Event]:
    events = _block(
        index, {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]
    )
    return [events[0], ("ping", {"type": "ping"}), *events[1:]]


def _thinking_block(index: int, pieces: list[str], signature: str = SIGNATURE) -> list[Event]:
    deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
    deltas.append({"type": "signature_delta", "signature": signature})
    return _block(index, {"type": "thinking", "thinking": ""}, deltas)


def _redacted_block(index: int) -> list[Event]:
    return _block(index, {"type": "redacted_thinking", "data": REDACTED}, [])


def _tool_block(index: int, name: str, pieces: list[str], tool_id: str = TOOL_ID) -> list[Event]:
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return _block(index, start, [{"type": "input_json_delta", "partial_json": p} for p in pieces])


def _end(reason: str, output: int = 15) -> list[Event]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def _last_user_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content)


def _loop(body: dict[str, Any]) -> list[Event]:
    """A tool loop with thinking: thinking, redacted thinking, a call; after its result, text."""
    last = body["messages"][-1]["content"]
    if isinstance(last, list) and last[0].get("type") == "tool_result":
        return [*_text_block(0, ["It is 18C in Paris."]), *_end("end_turn")]
    return [
        *_thinking_block(0, THOUGHTS),
        *_redacted_block(1),
        *_tool_block(2, body["tools"][0]["name"], ['{"location": ', '"Paris"}']),
        *_end("tool_use", 89),
    ]


def _json(body: dict[str, Any]) -> list[Event]:
    """The answer tool's call; ``wrong`` in the prompt answers off-schema, ``plain`` in text,
    ``weather`` calls the client's first tool instead; with thinking, thinking and a preamble."""
    prompt = _last_user_text(body)
    if "plain" in prompt:
        return [*_text_block(0, ['{"name": "Ada", ', '"age": 36}']), *_end("end_turn")]
    tool = body["tools"][0 if "weather" in prompt else -1]["name"]
    pieces = ['{"name": 7}'] if "wrong" in prompt else ["", '{"name": "Ada",', ' "age": 36}']
    events: list[Event] = []
    if "thinking" in body:
        events += [*_thinking_block(0, THOUGHTS[:1]), *_text_block(1, ["I will answer now."])]
    return [*events, *_tool_block(2 if events else 0, tool, pieces), *_end("tool_use")]


def answer(key: str, body: dict[str, Any]) -> tuple[int, bytes]:
    model = body.get("model", "")
    if key == "text":
        return 200, _events(_start(model), *_text_block(0, ["Hello", "!"]), *_end("end_turn"))
    if key == "max":
        return 200, _events(_start(model), *_text_block(0, ["Hel"]), *_end("max_tokens"))
    if key == "tool":
        return 200, _events(
            _start(model),
            *_text_block(0, ["Okay, let me check."]),
            *_tool_block(
                1, body["tools"][0]["name"], ["", '{"location":', ' "San Fra', 'ncisco, CA"}']
            ),
            *_end("tool_use", 89),
        )
    if key == "think":
        return 200, _events(
            _start(model),
            *_thinking_block(0, ["Let me solve this step by step."], SIGNATURE[:28]),
            *_text_block(1, ["The answer is 42."]),
            *_end("end_turn"),
        )
    if key in ("loop", "json"):
        return 200, _events(_start(model), *(_loop(body) if key == "loop" else _json(body)))
    if key == "cut":
        return 200, _events(
            _start(model),
            *_text_block(0, ["Part"])[:3],
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ),
        )
    if key == "overloaded":
        return 529, json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        ).encode()
    return 400, json.dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"},
        }
    ).encode()


@dataclass
class FakeAnthropic:
    port: int = 0
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def last(self, key: str) -> tuple[dict[str, str], dict[str, Any]]:
        return [r for r in self.requests if r[0].get("x-api-key") == key][-1]

    def start(self) -> FakeAnthropic:
        self.port = serve_in_thread(self._handle)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = {
            k.lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
        }
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.requests.append((headers, body))
        status, data = answer(headers.get("x-api-key", ""), body)
        kind = "text/event-stream" if status == 200 else "application/json"
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: "
            f"{len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

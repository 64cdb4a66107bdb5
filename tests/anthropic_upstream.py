"""A local server speaking Anthropic's Messages API, its streaming events as the docs show them.

The ``x-api-key`` picks the answer: ``text``, ``tool``, ``think``, ``max``, ``overloaded``
(529), ``invalid`` (400), ``cut`` (an error event mid-stream). Requests are recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tests.netutil import serve_in_thread


def _events(*pairs: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in pairs)


def _start(model: str) -> tuple[str, dict[str, Any]]:
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


def _text_block(index: int, pieces: list[str]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": p},
                },
            )
            for p in pieces
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def _end(reason: str, output: int = 15) -> list[tuple[str, dict[str, Any]]]:
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


def answer(key: str, body: dict[str, Any]) -> tuple[int, bytes]:
    model = body.get("model", "")
    if key == "text":
        return 200, _events(_start(model), *_text_block(0, ["Hello", "!"]), *_end("end_turn"))
    if key == "max":
        return 200, _events(_start(model), *_text_block(0, ["Hel"]), *_end("max_tokens"))
    if key == "tool":
        tool = body["tools"][0]["name"]
        return 200, _events(
            _start(model),
            *_text_block(0, ["Okay, let me check."]),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "name": tool,
                        "input": {},
                    },
                },
            ),
            *[
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": p},
                    },
                )
                for p in ["", '{"location":', ' "San Fra', 'ncisco, CA"}']
            ],
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            *_end("tool_use", 89),
        )
    if key == "think":
        return 200, _events(
            _start(model),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {
                        "type": "thinking_delta",
                        "thinking": "Let me solve this step by step.",
                    },
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {
                        "type": "signature_delta",
                        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
                    },
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            *_text_block(1, ["The answer is 42."]),
            *_end("end_turn"),
        )
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

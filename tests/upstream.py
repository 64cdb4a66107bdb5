"""A fault-injecting OpenAI-compatible upstream, for the channel and failover tests.

A raw asyncio HTTP/1.1 server, so it can do what a framework would not: hang, reset a socket
before or during a response, send malformed SSE, drip chunks. The upstream key picks the
behaviour (``Authorization: Bearer <behaviour>``); every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tests.netutil import serve_in_thread


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # keys whose client went away mid-answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self, key: str) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.headers.get("authorization") == f"Bearer {key}"]

    def start(self) -> FakeUpstream:
        self.port = serve_in_thread(self._handle)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {
                k.lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else {}
            self.requests.append(Recorded(path, headers, body))
            behaviour = headers.get("authorization", "Bearer ok").removeprefix("Bearer ")
            try:
                await BEHAVIOURS.get(behaviour.split(":")[0], _ok)(writer, body, behaviour)
            except ConnectionError:
                self.aborted.append(behaviour)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()


def _sse_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")


def _event(writer: asyncio.StreamWriter, payload: Any) -> None:
    writer.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _json(writer: asyncio.StreamWriter, status: int, payload: Any, extra: str = "") -> None:
    data = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )


def _json_pretty(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    data = json.dumps(payload, indent=2).encode()
    writer.write(
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )


def chunk(
    body: dict[str, Any],
    delta: dict[str, Any],
    index: int = 0,
    finish: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "finish_reason": finish, **extra}
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body.get("model"),
        "choices": [choice],
    }


def answer_words(body: dict[str, Any]) -> list[str]:
    return ["Hello", " from", f" {body.get('model')}", "."]


def _usage(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body.get("model"),
        "choices": [],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


async def _stream(
    writer: asyncio.StreamWriter,
    body: dict[str, Any],
    *,
    usage: bool = True,
    reasoning_field: str | None = None,
    think_inline: bool = False,
    gap: float = 0.0,
) -> None:
    _sse_head(writer)
    for index in range(body.get("n", 1)):
        _event(writer, chunk(body, {"role": "assistant", "content": ""}, index))
        if reasoning_field:
            _event(writer, chunk(body, {reasoning_field: "Let me think."}, index))
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            name = tools[0]["function"]["name"]
            _event(
                writer,
                chunk(
                    body,
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_up1",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    },
                    index,
                ),
            )
            for piece in ('{"city"', ': "Pa', 'ris"}'):
                _event(
                    writer,
                    chunk(
                        body,
                        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                        index,
                    ),
                )
            _event(writer, chunk(body, {}, index, "tool_calls"))
            continue
        words = list("<think>plan</think>answer") if think_inline else answer_words(body)
        for word in words:
            extra = {}
            if body.get("logprobs"):
                extra["logprobs"] = {
                    "content": [
                        {
                            "token": word,
                            "logprob": -0.5,
                            "bytes": list(word.encode()),
                            "top_logprobs": [],
                        }
                    ]
                }
            _event(writer, chunk(body, {"content": word}, index, **extra))
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        _event(writer, chunk(body, {}, index, "stop"))
    if usage:
        _event(writer, _usage(body))
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _ok(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body)


async def _nousage(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body, usage=False)


async def _reasoning(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body, reasoning_field="reasoning_content")


async def _reasoning_alt(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body, reasoning_field="reasoning")


async def _think(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body, think_inline=True)


async def _drip(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await _stream(writer, body, gap=float(key.split(":")[1]) if ":" in key else 2.0)


async def _whole_json(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    # Pretty-printed over many lines, as some servers that ignore "stream" answer.
    _json_pretty(
        writer,
        200,
        {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Whole answer."},
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
    )


def _status(code: int, extra: str = "") -> Any:
    async def respond(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
        _json(
            writer,
            code,
            {
                "error": {
                    "message": f"upstream says {code}",
                    "type": "x",
                    "param": None,
                    "code": None,
                }
            },
            extra,
        )
        await writer.drain()

    return respond


async def _hang(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await asyncio.sleep(3600)


async def _slow_first(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    await asyncio.sleep(3)
    await _stream(writer, body)


async def _reset(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    writer.transport.abort()


async def _cut(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    _sse_head(writer)
    _event(writer, chunk(body, {"role": "assistant", "content": ""}))
    _event(writer, chunk(body, {"content": "Partial"}))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def _malformed(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    _sse_head(writer)
    writer.write(b"data: {this is not json\n\n")
    await writer.drain()


async def _malformed_late(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    _sse_head(writer)
    _event(writer, chunk(body, {"role": "assistant", "content": ""}))
    _event(writer, chunk(body, {"content": "Partial"}))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"data: {this is not json\n\n")
    await writer.drain()


async def _error_event(writer: asyncio.StreamWriter, body: dict[str, Any], key: str) -> None:
    _sse_head(writer)
    _event(writer, chunk(body, {"content": "Partial"}))
    await writer.drain()
    await asyncio.sleep(0.2)
    _event(writer, {"error": {"message": "model overloaded mid-stream", "type": "server_error"}})
    await writer.drain()


BEHAVIOURS: dict[str, Any] = {
    "ok": _ok,
    "nousage": _nousage,
    "reasoning": _reasoning,
    "reasoning-alt": _reasoning_alt,
    "think": _think,
    "drip": _drip,
    "json": _whole_json,
    "hang": _hang,
    "slow-first": _slow_first,
    "reset": _reset,
    "cut": _cut,
    "malformed": _malformed,
    "malformed-late": _malformed_late,
    "error-event": _error_event,
    "429": _status(429, "Retry-After: 30\r\n"),
    "500": _status(500),
    "503": _status(503),
    "400": _status(400),
    "401": _status(401),
}


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)

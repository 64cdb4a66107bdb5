"""A fast OpenAI-compatible upstream for relay benchmarks: raw asyncio on uvloop, keep-alive.

Answers every POST with a fixed completion: JSON, or SSE with ``max_tokens`` content chunks
(one word each) when the body asks to stream. It speaks the native APIs too, always streaming:
Anthropic's ``POST /v1/messages`` (``max_tokens`` text deltas) and Gemini's
``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (``maxOutputTokens`` events),
from bench.fast_native_upstreams. Whole responses are built once per shape and cached.

    python -m bench.fast_upstream PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import uvloop

from bench.fast_native_upstreams import anthropic_sse, gemini_sse

_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }
).encode()


def _chunk(delta: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": finish}
    return (
        b"data: "
        + json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "bench",
                "choices": [choice],
            }
        ).encode()
        + b"\n\n"
    )


_USAGE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,'
    b'"model":"bench","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,'
    b'"total_tokens":13}}\n\n'
)


def sse_body(chunks: int) -> bytes:
    return b"".join(
        [
            _chunk("", None).replace(b'"delta": {}', b'"delta": {"role": "assistant"}'),
            *(_chunk(" word") for _ in range(chunks)),
            _chunk("", "stop"),
            _USAGE,
            b"data: [DONE]\n\n",
        ]
    )


async def drip(writer: asyncio.StreamWriter, chunks: int) -> None:
    """A slow stream (a chunk every 20 ms) in chunked encoding, to hold many streams open."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for part in [_chunk(" word") for _ in range(chunks)] + [
        _chunk("", "stop"),
        _USAGE,
        b"data: [DONE]\n\n",
    ]:
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
    writer.write(b"0\r\n\r\n")


def _http(kind: bytes, payload: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )


_BUILDERS = {"openai": sse_body, "anthropic": anthropic_sse, "gemini": gemini_sse}
_RESPONSES: dict[tuple[str, int], bytes] = {("json", 0): _http(b"application/json", _JSON)}


def _shape(path: bytes, body: dict[str, Any]) -> tuple[str, int]:
    """Which wire format the request asks for, and how many chunks."""
    if path.endswith(b"/messages"):
        return "anthropic", int(body.get("max_tokens") or 3)
    if b":streamGenerateContent" in path:
        return "gemini", int((body.get("generationConfig") or {}).get("maxOutputTokens") or 3)
    if body.get("stream"):
        return "openai", int(body.get("max_tokens") or body.get("max_completion_tokens") or 3)
    return "json", 0


def response(path: bytes, body: dict[str, Any]) -> bytes:
    shape = _shape(path, body)
    cached = _RESPONSES.get(shape)
    if cached is None:
        cached = _RESPONSES[shape] = _http(b"text/event-stream", _BUILDERS[shape[0]](shape[1]))
    return cached


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = json.loads(await reader.readexactly(length)) if length else {}
            if body.get("stream") and body.get("model") == "drip":
                await drip(writer, int(body.get("max_tokens") or 100))
            else:
                writer.write(response(head.split(b" ", 2)[1], body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))

"""Request bodies in, JSON and SSE out, client disconnects noticed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from llmrelay import jsonio
from llmrelay.dialects.render import DONE, sse_error
from llmrelay.errors import LLMRelayError, PayloadTooLarge, internal_error
from llmrelay.stream import Chunk

log = logging.getLogger(__name__)
T = TypeVar("T")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ClientGone(Exception):
    """The client closed the connection; there is nobody to answer."""


async def read_json(request: Request, *, limit: int, relaxed: bool) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise ClientGone() from None
    return jsonio.parse_body(bytes(body), relaxed=relaxed)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the server's limit of {limit} bytes (max_body_bytes)."
    )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled():
        raise ClientGone()
    return task.result()


class ChunkRenderer(Protocol):
    def start(self) -> bytes: ...

    def render(self, chunk: Chunk) -> bytes: ...


def event_stream(renderer: ChunkRenderer, chunks: AsyncIterator[Chunk]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            yield renderer.start()
            async for chunk in chunks:
                data = renderer.render(chunk)
                if data:
                    yield data
            yield DONE
        except LLMRelayError as exc:
            yield sse_error(exc)
        except Exception:
            log.exception("stream failed after it started")
            yield sse_error(internal_error())
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

"""Request bodies in, JSON and SSE out, client disconnects noticed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from llmrelay import jsonio
from llmrelay.accounting.limits import RateStatus
from llmrelay.corking import HEAD_LINES
from llmrelay.dialects.render import DONE, sse_error
from llmrelay.errors import LLMRelayError, PayloadTooLarge, internal_error
from llmrelay.gateway import OpenStream
from llmrelay.stream import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage

log = logging.getLogger(__name__)
T = TypeVar("T")


class JSONResponse(Response):
    """A JSON answer; with ``rate``, a metered key's ``x-ratelimit-*`` headers."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        rate: RateStatus | None = None,
    ) -> None:
        super().__init__(content, status_code, headers)
        self.rate = rate

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.raw_headers = with_rate_headers(scope, self.raw_headers, self.rate)
        await super().__call__(scope, receive, send)


def with_rate_headers(
    scope: Scope, headers: list[tuple[bytes, bytes]], rate: RateStatus | None
) -> list[tuple[bytes, bytes]]:
    """``headers`` and the ``x-ratelimit-*`` headers of ``rate``, for the response about to
    start: given to the server as finished lines where it takes them (:data:`HEAD_LINES`),
    else added to the list."""
    if rate is None or (rate.rpm is None and rate.tpm is None):
        return headers
    extensions = scope.get("extensions")
    add_to_head = extensions.get(HEAD_LINES) if extensions is not None else None
    if add_to_head is None:
        return headers + rate.raw_headers()
    add_to_head(rate.head_lines())
    return headers


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


class DisconnectWatch:
    """Cancel the current task when the client disconnects.

    Watching needs a task waiting on ``receive()``; most relayed requests finish within a few
    milliseconds, so the task is only started after ``grace`` seconds (a timer costs far less
    than a task). A client that leaves is noticed within ``grace`` seconds at worst.
    """

    def __init__(self, receive: Receive, grace: float = 0.02) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.receive = receive
        self.gone = False
        self._loop = asyncio.get_running_loop()
        self._watcher: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(grace, self._start)

    def _start(self) -> None:
        self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.task.cancel()

    def close(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first."""
    watch = DisconnectWatch(request.receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone:
            watch.task.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watch.close()


class ChunkRenderer(Protocol):
    usage: Usage | None  # the stream's usage once it went by

    def start(self) -> bytes: ...

    def render(self, chunk: Chunk) -> bytes: ...


class StreamMeter(Protocol):
    """What accounts for a stream (see ``accounting.meter.Meter``)."""

    closed: bool  # already ended (or accounting is off): nothing left to account
    rate: RateStatus | None  # the key's rate-limit state, for the x-ratelimit-* headers

    def finished(
        self, usage: Usage | None, generated: list[str], error: LLMRelayError | None
    ) -> None:
        """The stream is about to end (before its last bytes): settle and record."""

    def abandoned(self, usage: Usage | None, generated: list[str]) -> None:
        """The client left: charge what was generated, without waiting."""


class SSEResponse(Response):
    """Server-sent events rendered from a chunk stream, on plain asyncio.

    Starlette's StreamingResponse opens an anyio task group per response to notice a client
    leaving (uvicorn speaks ASGI 2.3); a :class:`DisconnectWatch` that cancels the stream does
    the same job at a fraction of the cost. Rendering happens here rather than in a generator
    of its own: one async layer less per chunk. An error after the stream started ends it with
    an SSE error event; the chunk stream is always closed, which closes the upstream. With a
    ``meter``, the request is settled and its ledger row recorded before the last bytes go
    out, and a stream the client cut is charged for what was generated.
    """

    def __init__(
        self,
        renderer: ChunkRenderer,
        stream: OpenStream,
        meter: StreamMeter | None = None,
    ) -> None:
        # No Response.__init__: it would declare Content-Length for the empty initial body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.rate = meter.rate if meter is not None else None
        self.renderer = renderer
        self.stream = stream
        self.meter = meter if meter is not None and not meter.closed else None
        self.generated: list[str] = []  # text relayed so far, for a stream cut short

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = DisconnectWatch(receive)
        ended = False
        try:
            headers = with_rate_headers(scope, self.raw_headers, self.rate)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            tail = await self._relay(send)
            ended = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.task.uncancel()
        except OSError:
            pass  # the client went away while we were writing
        finally:
            watch.close()
            if not ended and self.meter is not None:
                self.meter.abandoned(self.renderer.usage, self.generated)
            await self.stream.aclose()

    async def _relay(self, send: Send) -> bytes:
        """Send every chunk; returns what ends the stream: ``[DONE]`` or an error event.

        Each ASGI send costs a few microseconds, so events that carry nothing to read yet ride
        with the next one: the role event with the first chunk (which is already here), and a
        choice's finish and the usage with whatever follows (for one choice: ``[DONE]``)."""
        render = self.renderer.render
        generated = self.generated if self.meter is not None else None
        stream = self.stream
        transform, more = stream.transform, stream.rest.__anext__
        error: LLMRelayError | None = None
        held = self.renderer.start()
        raw = stream.first
        try:
            while raw is not None:  # None: the route produced no chunk at all
                for chunk in transform(raw):
                    if generated is not None:
                        if isinstance(chunk, TextDelta | ReasoningDelta):
                            generated.append(chunk.text)
                        elif isinstance(chunk, ToolCallDelta):
                            generated.append(chunk.arguments)
                    data = render(chunk)
                    if isinstance(chunk, Finish | Usage):
                        held += data
                    elif data:
                        await send(_more(held + data if held else data))
                        held = b""
                try:
                    raw = await more()
                except StopAsyncIteration:
                    break
        except LLMRelayError as exc:
            stream.failed(exc)
            error = exc
        except Exception:
            log.exception("stream failed after it started")
            error = internal_error()
        if self.meter is not None:
            try:
                self.meter.finished(self.renderer.usage, self.generated, error)
            except LLMRelayError as exc:
                error = error or exc
        return held + (DONE if error is None else sse_error(error))


def _more(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}

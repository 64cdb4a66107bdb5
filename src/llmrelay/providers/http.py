"""The upstream HTTP/1.1 client: pooled keep-alive connections, parsed by httptools (llhttp).

Why not aiohttp's client: at concurrency 32 a relay is CPU-bound, and aiohttp's client took
about a sixth of llmrelay's CPU per request (request objects, the payload registry, its stream
reader, a timeout context per read). This client does only what a channel needs: POST a body,
wait for the status line under a first-byte deadline, then hand over body bytes as they arrive
under an idle deadline. The parser is llhttp (Node.js's), through httptools, which uvicorn
already uses for the server side.

Failures are :class:`HTTPFailure` (``ConnectFailed`` or ``ConnectionBroken``) or the builtin
``TimeoutError``; the channel transport maps them to llmrelay's errors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

USER_AGENT = "llmrelay"
# Stop reading from a connection while this much body waits unread (a slow client downstream).
HIGH_WATER = 256 * 1024
# Pooled connections idle for longer are closed rather than reused: servers drop idle
# keep-alive connections (uvicorn after 5 s, nginx after 75 s) and a reused dead one costs a retry.
IDLE_REUSE_SECONDS = 4.0


class HTTPFailure(Exception):
    """The exchange failed below HTTP: no answer, or an answer that broke off."""


class ConnectFailed(HTTPFailure):
    """No connection could be made (refused, unreachable, DNS, TLS handshake)."""


class ConnectionBroken(HTTPFailure):
    """The connection closed or sent something that is not HTTP before the answer was whole."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _split(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectFailed(f"not an http(s) URL: {url[:100]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise ConnectFailed("the upstream path holds spaces or line breaks")
    return Origin(parts.scheme, parts.hostname, port), target


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """One answer: status and headers at once, the body as it arrives."""

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}  # names in lower case
        self._connection = connection
        self._loop = connection.loop
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._error: HTTPFailure | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def _wait(self, limit: float) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(limit, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_head(self, limit: float) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(limit)

    async def readany(self, limit: float) -> bytes:
        """The body bytes that have arrived (waiting up to ``limit`` s for some); b"" at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait(limit)
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > HIGH_WATER:
            self._connection.resume()
        self._buffered = 0
        return data

    async def read(self, limit: float) -> bytes:
        """The whole body, each wait for more bytes at most ``limit`` seconds."""
        parts = []
        while data := await self.readany(limit):
            parts.append(data)
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    def release(self) -> None:
        """Give the connection back to the pool if the answer was read whole, else close it."""
        if self._released:
            return
        self._released = True
        self._connection.finished(self._complete and self._keep_alive and self._error is None)

    # Called by the connection's parser.
    def _on_head(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._head_done = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _on_failure(self, error: HTTPFailure) -> None:
        if not self._complete:
            self._error = error
        self._wake()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; httptools calls the ``on_*`` methods while parsing."""

    def __init__(self, pool: HTTPPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self._response: Response | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._received = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._response is None:
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._response._on_failure(ConnectionBroken(f"it answered with malformed HTTP ({exc})"))
            self._close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is None:
            return
        if response._head_done and exc is None and _ends_at_close(response.headers):
            response._on_complete(False)  # a body without a length ends when the server closes
        else:
            response._on_failure(self._lost_error(exc))

    def _lost_error(self, exc: Exception | None) -> ConnectionBroken:
        why = type(exc).__name__ if exc is not None else "closed"
        if not self._received:
            return _ClosedUnanswered(f"the connection closed before an answer ({why})")
        return ConnectionBroken(f"the connection broke off ({why})")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self._headers = {}
            return
        assert self._response is not None
        self._response._on_head(status, self._headers)

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._on_body(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        assert self._response is not None
        self._response._on_complete(self._parser.should_keep_alive())

    # Used by the pool and the response.
    def send(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        self._response = Response(self)
        self._headers = {}
        self._received = False
        self.exchanges += 1
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self._response

    def finished(self, reusable: bool) -> None:
        self._response = None
        if reusable and not self.closed:
            self.idle_since = time.monotonic()
            self.pool._put(self)
        else:
            self._close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _ends_at_close(headers: dict[str, str]) -> bool:
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")


class _ClosedUnanswered(ConnectionBroken):
    """A reused connection the server had already closed: the request never reached it."""


class HTTPPool:
    """Keep-alive connections per origin, shared by every channel of a server."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._targets: dict[str, tuple[Origin, str]] = {}
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        connect_timeout: float,
        first_byte_timeout: float,
    ) -> Response:
        """Send; returns once the status line and headers are in (the body may still come)."""
        split = self._targets.get(url)
        if split is None:
            split = self._targets[url] = _split(url)
        origin, target = split
        head = _head(origin, target, headers, len(body))
        connection = self._take(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, head, body, first_byte_timeout)
            except _ClosedUnanswered:
                pass  # the server dropped the idle connection: send once more on a new one
        connection = await self._connect(origin, connect_timeout)
        return await self._exchange(connection, head, body, first_byte_timeout)

    async def _exchange(
        self, connection: _Connection, head: bytes, body: bytes, limit: float
    ) -> Response:
        response = connection.send(head, body)
        try:
            await response._wait_head(limit)
        except BaseException:
            response.release()
            raise
        return response

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_REUSE_SECONDS:
                return connection
            connection._close()
        return None

    def _put(self, connection: _Connection) -> None:
        if self._closed:
            connection._close()
            return
        self._idle.setdefault(connection.origin, []).append(connection)

    async def _connect(self, origin: Origin, limit: float) -> _Connection:
        loop = asyncio.get_running_loop()
        factory: Callable[[], _Connection] = lambda: _Connection(self, origin)  # noqa: E731
        tls = self._tls() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    factory,
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {limit:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        return connection

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection._close()
        self._idle.clear()


def _head(origin: Origin, target: str, headers: dict[str, str], length: int) -> bytes:
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {origin.host_header}",
        f"User-Agent: {USER_AGENT}",
        "Accept-Encoding: identity",
        f"Content-Length: {length}",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ConnectFailed(f"the header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ConnectFailed("a header holds characters HTTP/1.1 cannot carry") from None

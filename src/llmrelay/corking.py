"""Write coalescing for uvicorn's HTTP protocols: one system call per response burst.

uvicorn writes a response's status line and headers, then each body part, with a
``transport.write`` each: a JSON answer costs two system calls and a short SSE stream one per
event. On loopback a write also runs the receiver's side of TCP, so those calls were the largest
single cost of a relayed request. :class:`CorkedTransport` holds what is written during one turn
of the event loop and writes it at once at the start of the next turn, the same way
aiohttp's server sends headers together with the first body part. What is ready together
(headers and a whole JSON body, or several SSE events decoded from one upstream read) leaves in
one write; a stream whose events arrive one by one still sends each as soon as it arrives.
A burst is written as soon as it holds ``FLUSH_BYTES``: a fast upstream's read may carry
hundreds of events, and the client should not wait for the last of them to see the first.

Header lines llmrelay makes itself. uvicorn checks every response header with two regular
expressions and a ``lower()`` (about 0.6 µs a header here); the six ``x-ratelimit-*`` headers of
a metered answer were the largest part of what accounting added to a relayed request. Their
names are constants and their values digits, so the httptools protocol offers the ASGI scope
extension :data:`HEAD_LINES`: a callable that takes finished header lines (``name: value\r\n``
each), which the transport writes into the next response head it sees, before the blank line
that ends it. An app calls it right before it sends ``http.response.start``; where the
extension is missing (the h11 protocol, an in-process test client) it sends the headers in the
message as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

FLUSH_BYTES = 4096
HEAD_LINES = "llmrelay.head_lines"  # the ASGI scope extension (see above)


class CorkedTransport:
    """A transport proxy that coalesces the writes of one event-loop turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._size = 0
        self._loop = asyncio.get_running_loop()
        self._head_lines = b""

    def add_to_head(self, lines: bytes) -> None:
        """Have the next response head carry ``lines`` (complete header lines), unchecked."""
        self._head_lines = lines

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        data = bytes(data)
        if self._head_lines:
            data = self._with_head_lines(data)
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self._flush()  # the call_soon above then finds nothing to do

    def _with_head_lines(self, data: bytes) -> bytes:
        # A final response's status line and headers, written in one piece by uvicorn; an
        # interim "100 Continue" head is left alone.
        final_head = data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1"
        if not (final_head and data.endswith(b"\r\n\r\n")):
            return data
        lines, self._head_lines = self._head_lines, b""
        return b"".join((data[:-2], lines, b"\r\n"))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, set_protocol, …) is the
        # real transport's.
        return getattr(self._transport, name)


def corked(protocol: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``protocol`` with its transport wrapped in a :class:`CorkedTransport`, and where it is
    uvicorn's httptools protocol, the :data:`HEAD_LINES` extension in each request's scope."""

    class Corked(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports implement asyncio.Transport without subclassing it.
            wrapped = CorkedTransport(cast(asyncio.Transport, transport))
            self._add_to_head = wrapped.add_to_head
            super().connection_made(wrapped)

        if hasattr(protocol, "on_message_begin"):  # httptools: the parser's callback makes
            # the scope; h11's protocol makes it inside its event loop, out of reach.

            def on_message_begin(self) -> None:
                super().on_message_begin()
                scope = self.scope
                extensions = scope.get("extensions")
                if extensions is None:
                    scope["extensions"] = {HEAD_LINES: self._add_to_head}
                else:
                    extensions[HEAD_LINES] = self._add_to_head

    Corked.__name__ = Corked.__qualname__ = f"Corked{protocol.__name__}"
    return Corked

"""Run a raw asyncio server on a background thread, for the tests' fake upstreams."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve_in_thread(handler: Handler, host: str = "127.0.0.1") -> int:
    """Start serving ``handler`` on a free port of ``host``; returns the port once listening."""
    sock = socket.socket()
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(handler, sock=sock))
        ready.set()
        loop.run_until_complete(server.serve_forever())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return port

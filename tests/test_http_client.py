"""The upstream HTTP client (providers/http.py) against raw asyncio servers that write bytes."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from llmrelay.providers.http import ConnectFailed, ConnectionBroken, HTTPPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body, or None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def run(
    handler: Handler, client: Callable[[str, HTTPPool], Awaitable[None]], **server: object
) -> None:
    async def main() -> None:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0, **server)  # type: ignore[arg-type]
        port = srv.sockets[0].getsockname()[1]
        scheme = "https" if server.get("ssl") else "http"
        pool = HTTPPool(ssl_context=CLIENT_TLS.get("context"))
        try:
            await asyncio.wait_for(client(f"{scheme}://localhost:{port}/v1/x?y=1", pool), 20)
        finally:
            await pool.close()
            srv.close()

    asyncio.run(main())


CLIENT_TLS: dict[str, ssl.SSLContext] = {}


async def post(pool: HTTPPool, url: str, body: bytes = b"{}", first_byte: float = 5.0):  # type: ignore[no-untyped-def]
    return await pool.post(
        url, body, {"Authorization": "Bearer k"}, connect_timeout=2, first_byte_timeout=first_byte
    )


def test_keep_alive_reuses_one_connection_and_sends_a_proper_request() -> None:
    connections: list[int] = []
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while (request := await read_request(reader)) is not None:
            heads.append(request[0])
            writer.write(answer(b'{"n": %d}' % len(request[1])))
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        for body in (b"{}", b'{"a": 1}', b"x" * 100_000):
            response = await post(pool, url, body)
            assert response.status == 200 and response.content_type == "application/json"
            assert await response.read(2) == b'{"n": %d}' % len(body)
            response.release()

    run(handler, client)
    assert len(connections) == 1
    first = heads[0].decode()
    assert first.startswith("POST /v1/x?y=1 HTTP/1.1\r\n")
    assert "\r\nHost: localhost:" in first and "\r\nAuthorization: Bearer k\r\n" in first
    assert "\r\nContent-Length: 2\r\n" in first


def test_chunked_body_arrives_piece_by_piece() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    async def client(url: str, pool: HTTPPool) -> None:
        response = await post(pool, url)
        assert response.content_type == "text/event-stream"
        assert await response.readany(2) == b"data: 1\n\n"
        assert await response.readany(2) == b"data: 2\n\n"
        assert await response.readany(2) == b""
        assert response.at_eof()
        response.release()

    run(handler, client)


def test_a_body_without_length_ends_when_the_server_closes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        response = await post(pool, url)
        assert await response.read(2) == b"all of it"
        response.release()

    run(handler, client)


def test_a_body_cut_short_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        response = await post(pool, url)
        with pytest.raises(ConnectionBroken, match="broke off"):
            await response.read(2)
        response.release()

    run(handler, client)


def test_a_pooled_connection_the_server_dropped_is_replaced_transparently() -> None:
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        served.append(1)
        writer.write(answer(b"{}"))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: drop it unanswered
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        for _ in range(3):
            response = await post(pool, url)
            assert await response.read(2) == b"{}"
            response.release()

    run(handler, client)
    assert len(served) == 3


def test_timeouts_for_the_first_byte_and_a_stalled_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if request and b"stall" in request[1]:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await asyncio.sleep(3)
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        with pytest.raises(TimeoutError):
            await post(pool, url, b"hang", first_byte=0.2)
        response = await post(pool, url, b"stall", first_byte=0.5)
        assert await response.readany(0.5) == b"half"
        with pytest.raises(TimeoutError):
            await response.readany(0.2)
        response.release()

    run(handler, client)


def test_refused_connection_malformed_answer_and_header_injection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        with pytest.raises(ConnectionBroken, match="malformed HTTP"):
            await post(pool, url)
        with pytest.raises(ConnectFailed):
            await pool.post(
                url, b"", {"X": "a\r\nEvil: 1"}, connect_timeout=1, first_byte_timeout=1
            )
        with pytest.raises(ConnectFailed):
            await post(pool, "http://127.0.0.1:1/v1")

    run(handler, client)


def test_interim_answers_are_skipped_and_big_bodies_flow() -> None:
    big = b"z" * 3_000_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(answer(big))
        await writer.drain()
        await read_request(reader)

    async def client(url: str, pool: HTTPPool) -> None:
        response = await post(pool, url)
        assert response.status == 200
        await asyncio.sleep(0.3)  # let far more than the high-water mark arrive unread
        assert await response.read(2) == big
        response.release()

    run(handler, client)


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    CLIENT_TLS["context"] = ssl.create_default_context(cafile=str(cert))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(b'{"tls": true}'))
        writer.close()

    async def client(url: str, pool: HTTPPool) -> None:
        assert url.startswith("https://")
        response = await post(pool, url)
        assert await response.read(2) == b'{"tls": true}'
        response.release()
        untrusting = HTTPPool()  # the system's roots do not know this certificate
        with pytest.raises(ConnectFailed, match=r"CERTIFICATE_VERIFY_FAILED|SSL"):
            await post(untrusting, url)
        await untrusting.close()

    try:
        run(handler, client, ssl=server_tls)
    finally:
        CLIENT_TLS.clear()

"""CorkedTransport: the writes of one event-loop turn leave together, a large burst at once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from llmrelay.corking import FLUSH_BYTES, CorkedTransport


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def corked() -> tuple[CorkedTransport, Recorder]:
    recorder = Recorder()
    return CorkedTransport(cast(Any, recorder)), recorder


def test_writes_of_one_turn_leave_in_one_write() -> None:
    async def main() -> list[bytes]:
        transport, recorder = corked()
        for part in (b"head", b"er", b"body"):
            transport.write(part)
        assert recorder.writes == []  # held until the turn ends
        assert transport.get_write_buffer_size() == 10
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        return recorder.writes

    assert asyncio.run(main()) == [b"header" + b"body", b"next"]


def test_a_burst_is_written_once_it_reaches_the_threshold() -> None:
    async def main() -> tuple[list[bytes], int]:
        transport, recorder = corked()
        event = b"x" * 200
        count = FLUSH_BYTES // len(event) + 1
        for _ in range(count):
            transport.write(event)
        first = list(recorder.writes)  # already out, before the turn ended
        transport.write(b"tail")
        await asyncio.sleep(0)
        return first + recorder.writes[len(first) :], count

    writes, count = asyncio.run(main())
    assert writes[0] == b"x" * 200 * count
    assert writes[1:] == [b"tail"]


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
LINES = b"x-ratelimit-limit-requests: 6\r\nx-ratelimit-remaining-requests: 5\r\n"


def test_head_lines_go_into_the_next_response_head_once() -> None:
    async def main() -> list[bytes]:
        transport, recorder = corked()
        transport.add_to_head(LINES)
        transport.write(HEAD)
        transport.write(b"{}")
        await asyncio.sleep(0)
        transport.write(HEAD)  # the next response on the connection: its own head
        transport.write(b"{}")
        await asyncio.sleep(0)
        return recorder.writes

    first, second = asyncio.run(main())
    assert first == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + LINES + b"\r\n{}"
    assert second == HEAD + b"{}"


def test_head_lines_skip_an_interim_head_and_body_bytes() -> None:
    async def main() -> list[bytes]:
        transport, recorder = corked()
        transport.add_to_head(LINES)
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        transport.write(b"data: x\r\n\r\n")  # not a head, though it ends like one
        await asyncio.sleep(0)
        transport.write(HEAD)
        await asyncio.sleep(0)
        return recorder.writes

    interim, body, head = asyncio.run(main())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert body == b"data: x\r\n\r\n"
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + LINES + b"\r\n"

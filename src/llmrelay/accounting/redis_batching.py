"""Sending a Lua script's calls to Redis in batches (``redis_limits.py`` uses it).

:class:`Batcher` gathers the calls of one script into batches and sends them one EVALSHA at a
time; :class:`Evalsha` is that EVALSHA, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from llmrelay.errors import ServiceUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 64  # items in one script call: it blocks Redis while it runs
Script = Callable[..., Awaitable[Any]]  # called with keys= and args=


def unreachable(exc: RedisError) -> ServiceUnavailable:
    error = ServiceUnavailable(
        "The rate-limit and budget store is unavailable; retry shortly.",
        headers={"Retry-After": "1"},
        retry_after=1.0,
    )
    error.__cause__ = exc
    return error


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Evalsha:
    """One script, called with EVALSHA on a connection of its own (one call at a time: its
    batcher's sender is the only caller), without redis-py's work per command (a pool checkout,
    encoding each argument, response callbacks: about 50 µs of CPU a call). The connection is
    redis-py's, with its settings (password, database, TLS, timeouts). A call that fails on the
    connection is not retried (the script may have run: a second run would hold a reservation
    twice), so its batch gets 503 with Retry-After; the next call reconnects. A Redis that lost
    the script (a restart, SCRIPT FLUSH) is given it again."""

    def __init__(self, redis: Redis, lua: str) -> None:
        self.redis = redis
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest().encode()
        self._connection: Any = None

    def _pack(self, keys: list[bytes], args: list[Any]) -> bytes:
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), b"$7\r\nEVALSHA\r\n", _bulk(self.sha)]
        parts.append(_bulk(b"%d" % len(keys)))
        parts += [_bulk(name) for name in keys]
        # Inline, without a call per item: a batch carries up to MAX_BATCH of them.
        encoded = [arg.encode() if type(arg) is str else str(arg).encode() for arg in args]
        parts += [b"$%d\r\n%b\r\n" % (len(value), value) for value in encoded]
        return b"".join(parts)

    async def __call__(self, *, keys: list[bytes], args: list[Any]) -> Any:
        if self._connection is None:
            self._connection = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        packed = self._pack(keys, args)
        try:
            return await self._exchange(packed)
        except NoScriptError:
            await self.redis.script_load(self.lua)
            return await self._exchange(packed)

    async def _exchange(self, packed: bytes) -> Any:
        connection = self._connection
        try:
            await connection.send_packed_command(packed, check_health=False)
            return await connection.read_response()
        except ResponseError:
            raise
        except BaseException:
            await connection.disconnect()  # a reply may be on its way: start afresh
            raise

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


class Batch:
    __slots__ = ("args", "futures", "groups", "keys")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.groups: dict[tuple[bytes, ...], int] = {}  # a group of names → where it begins
        self.args: list[str] = []
        self.futures: list[asyncio.Future[str] | None] = []  # None: nobody waits for it

    def place(self, group: tuple[bytes, ...] | None) -> str:
        """The 1-based position of ``group`` in KEYS, added on first use ("_": none)."""
        if group is None:
            return "_"
        start = self.groups.get(group)
        if start is None:
            start = self.groups[group] = len(self.keys) + 1
            self.keys += group
        return str(start)


class Batcher:
    """The calls of one script, sent as few EVALSHAs as may be.

    One sender task per event loop sends, one call at a time, the batch that formed while it
    was idle (the calls of one event-loop turn) or while its previous call was under way, so
    batches grow with the load instead of the number of calls in flight. No caller's
    cancellation leaves the others without answers: the sender is a task of its own.
    """

    def __init__(self, script: Script, header: Callable[[], list[int]], delay: float = 0.0) -> None:
        self.script = script
        self.header = header  # the ARGV before the items, taken when the batch is sent
        self.delay = delay  # seconds a batch stays open for more items (0: one loop turn)
        self.sent = 0  # script calls, for tests and measurements
        self._open: Batch | None = None  # taking items
        self._full: deque[Batch] = deque()  # closed at MAX_BATCH items, not sent yet
        self._current: Batch | None = None  # under way
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()  # the sender task, while it runs

    def add(
        self, key: tuple[bytes, ...], user: tuple[bytes, ...] | None, item: str
    ) -> asyncio.Future[str]:
        """Queue one item about the key and user whose names are ``key`` and ``user``; the
        future gets its answer, or the batch's error."""
        loop = asyncio.get_running_loop()  # (a system call in Python 3.11: getpid())
        future: asyncio.Future[str] = loop.create_future()
        self._queue(loop, key, user, item, future)
        return future

    def add_quiet(self, key: tuple[bytes, ...], user: tuple[bytes, ...] | None, item: str) -> None:
        """:meth:`add` for an item nobody waits for (no future: it is on the hot path); a
        failure is logged."""
        self._queue(asyncio.get_running_loop(), key, user, item, None)

    def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[bytes, ...],
        user: tuple[bytes, ...] | None,
        item: str,
        future: asyncio.Future[str] | None,
    ) -> None:
        if self._loop is not loop or not self._sending:
            self._start(loop)
        batch = self._open
        if batch is None:
            batch = self._open = Batch()
            self._idle.clear()
            self._wake.set()
        batch.args.append(f"{batch.place(key)} {batch.place(user)} {item}")
        batch.futures.append(future)
        if len(batch.futures) >= MAX_BATCH:
            self._full.append(batch)
            self._open = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # (A loop that ended took its sender and its callers with it.)
        self._open, self._current = None, None
        self._full.clear()
        self._loop = loop
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        sender = loop.create_task(self._run())
        self._sending = {sender}
        sender.add_done_callback(self._stopped)

    def _next(self) -> Batch | None:
        if self._full:
            return self._full.popleft()
        batch, self._open = self._open, None
        return batch

    async def _run(self) -> None:
        while True:
            if self._open is None and not self._full:  # (the call that started it added one)
                self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            if self.delay:
                await asyncio.sleep(self.delay)
            while (batch := self._next()) is not None:
                self._current = batch
                await self._send(batch)
                self._current = None

    async def _send(self, batch: Batch) -> None:
        self.sent += 1
        futures = batch.futures
        try:
            found = await self.script(keys=batch.keys, args=[*self.header(), *batch.args])
            answers = (found.decode() if isinstance(found, bytes) else str(found)).split(" ")
            if len(answers) != len(futures):
                raise RuntimeError(f"{len(answers)} answers to {len(futures)} limiter calls")
        except Exception as exc:
            for future in futures:
                if future is not None and not future.done():
                    error = unreachable(exc) if isinstance(exc, RedisError) else exc
                    future.set_exception(error)
            if None in futures:  # the reservations lapse after their ttl; the ledger has the cost
                log.warning("%d limiter updates failed in Redis: %s", futures.count(None), exc)
            return
        for future, answer in zip(futures, answers, strict=True):
            if future is not None and not future.done():  # its caller may have been cancelled
                future.set_result(answer)

    def _stopped(self, sender: asyncio.Task[None]) -> None:
        """The sender was cancelled: nobody will answer what it held."""
        self._sending.discard(sender)
        left = [*self._full, self._current, self._open]
        self._open, self._current = None, None
        self._full.clear()
        for batch in left:
            for future in batch.futures if batch is not None else ():
                if future is not None:
                    future.cancel()

    async def wait(self) -> None:
        """Until what was queued so far is answered."""
        if self._sending and self._loop is asyncio.get_running_loop():
            await self._idle.wait()

    async def close(self) -> None:
        await self.wait()
        for sender in list(self._sending):
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    batcher's sender is the only caller), without redis-py's work per command. The connection
    is redis-py's, with its settings (password, database, TLS, socket timeout), and so is the
    reply parser; a call writes the packed command to the connection's stream and reads the
    reply with that parser. redis-py's own ``send_packed_command`` and ``read_response`` wrap
    every call in a timeout each (a task for ``wait_for``, a timer), about 40 µs of CPU a call,
    nearly as much as the exchange itself (45-60 µs, kernel included); here one watchdog timer
    per timeout period bounds the call under way (:meth:`_watch`). A call that fails on the
    connection is not retried (the script may have run: a second run would hold a reservation
    twice), so its batch gets 503 with Retry-After; the next call reconnects. A Redis that
    lost the script (a restart, SCRIPT FLUSH) is given it again."""

    def __init__(self, redis: Redis, lua: str) -> None:
        self.redis = redis
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest().encode()
        self._connection: Any = None
        self._deadline: float | None = None  # loop time by which the call under way must end
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False

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
            if not connection.is_connected:
                await connection.connect()
            self._watch(connection.socket_timeout)
            connection._writer.write(packed)
            reply = await connection._parser.read_response()
        except BaseException as exc:
            timed_out, self._deadline, self._timed_out = self._timed_out, None, False
            await connection.disconnect()  # a reply may be on its way: start afresh
            if timed_out:
                raise RedisTimeoutError("Timeout reading from the Redis server") from exc
            if isinstance(exc, OSError | asyncio.IncompleteReadError):
                raise RedisConnectionError(f"Error talking to the Redis server: {exc}") from exc
            raise
        self._deadline = None
        if isinstance(reply, ResponseError):  # the parser returns Redis's error replies
            raise reply
        return reply

    def _watch(self, timeout: float | None) -> None:
        """Bound the call about to start by ``timeout`` seconds (None: no bound, as redis-py).
        The watchdog timer is armed only when none is: calls end long before it fires, and
        when it does, it looks at the call under way then."""
        if not timeout:
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._deadline, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        deadline = self._deadline
        if deadline is None:  # idle: the next call arms it again
            return
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check, loop)
            return
        self._timed_out = True  # the read under way fails at once
        self._connection._writer.transport.abort()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


class Batch:
    __slots__ = ("args", "futures", "groups", "keys", "urgent")

    def __init__(self) -> None:
        self.urgent = False  # holds an item somebody waits for at once: send it this turn
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
    batches grow with the load instead of the number of calls in flight. An urgent item (one
    its caller waits for before going on) has its batch sent once the turn's callbacks have
    run; a batch of items that can wait stays open ``delay`` seconds for company, and leaves
    earlier with the next urgent item. No caller's cancellation leaves the others without
    answers: the sender is a task of its own.
    """

    def __init__(self, script: Script, header: Callable[[], list[int]], delay: float = 0.0) -> None:
        self.script = script
        self.header = header  # the ARGV before the items, taken when the batch is sent
        self.delay = delay  # seconds a batch of items that can wait stays open for more
        self.sent = 0  # script calls, for tests and measurements
        self._open: Batch | None = None  # taking items
        self._full: deque[Batch] = deque()  # closed at MAX_BATCH items, not sent yet
        self._current: Batch | None = None  # under way
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()  # the sender task, while it runs

    def add(
        self,
        key: tuple[bytes, ...],
        user: tuple[bytes, ...] | None,
        item: str,
        *,
        urgent: bool = True,
    ) -> asyncio.Future[str]:
        """Queue one item about the key and user whose names are ``key`` and ``user``; the
        future gets its answer, or the batch's error."""
        loop = asyncio.get_running_loop()  # (a system call in Python 3.11: getpid())
        future: asyncio.Future[str] = loop.create_future()
        self._queue(loop, key, user, item, future, urgent)
        return future

    def add_quiet(self, key: tuple[bytes, ...], user: tuple[bytes, ...] | None, item: str) -> None:
        """:meth:`add` for an item nobody waits for (no future: it is on the hot path), which
        can wait; a failure is logged."""
        self._queue(asyncio.get_running_loop(), key, user, item, None, False)

    def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[bytes, ...],
        user: tuple[bytes, ...] | None,
        item: str,
        future: asyncio.Future[str] | None,
        urgent: bool,
    ) -> None:
        if self._loop is not loop or not self._sending:
            self._start(loop)
        batch = self._open
        if batch is None:
            batch = self._open = Batch()
            self._idle.clear()
            if not urgent:  # (a timer left by an earlier batch may send it sooner: fine)
                loop.call_later(self.delay, self._wake.set)
        if urgent and not batch.urgent:
            batch.urgent = True
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

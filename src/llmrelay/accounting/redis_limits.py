"""The :class:`~llmrelay.accounting.limits.Limiter` for many processes: state in Redis.

Every operation runs in a Lua script (``redis_scripts.py``), so a check and its update are
atomic across every process that shares the Redis. The rules are those of ``limits.py``.

Batching. redis-py spends tens of microseconds of CPU on each command, more than the rest of a
request's accounting, so calls are grouped: the :meth:`~RedisLimiter.admit` calls (rate check
and reservation; :meth:`~RedisLimiter.check_rate` and :meth:`~RedisLimiter.reserve` too) made
during one turn of the event loop go to Redis as one EVALSHA of the admit script, and the
:meth:`~RedisLimiter.finish` and :meth:`~RedisLimiter.finish_soon` calls (settlements and token
corrections; :meth:`~RedisLimiter.settle` and :meth:`~RedisLimiter.add_tokens` too) as one of
the finish script. The first call of a turn opens a batch and starts the task that sends it,
whose first step runs, like a ``call_soon`` callback, once the callbacks ready in this turn
have run: an admission never waits for a timer, and a lone call costs no latency. Later calls
of the turn join the batch, up to :data:`MAX_BATCH` items. Settlements, which nobody waits for,
stay open longer, :data:`FINISH_DELAY` seconds, so that a batch carries more of them. The
script handles its items in order, each with the rules of one call, so items for one key or
user behave as consecutive calls, and answers each caller alone: a refusal (``RateLimited``,
``InsufficientQuota``) is that item's, while a Redis error fails every item of the batch (503;
what the script did before the error stays done, and a reservation nobody learned of lapses
after ``reservation_ttl``).

The keys, all under one hash tag so a Redis Cluster keeps them in one slot (``P`` is
``{prefix}``, by default ``{llmrelay}``):

``P:key:<id>``, ``P:user:<id>`` (hash)
    ``spent``: settled spend (picodollars), first learned with HSETNX from the database value
    the caller passed, raised whenever a later snapshot shows more, and increased by each
    settle; ``reserved``: the sum of unsettled reservations. Expire after ``state_ttl`` idle.
``P:key:<id>:held``, ``P:user:<id>:held`` (sorted set)
    One member ``<reservation id>:<amount>`` per unsettled reservation, scored by its deadline
    (ms since the epoch). A settle removes the member and subtracts the amount only if the
    member was still there, so a reservation is released exactly once; members past their
    deadline (a process killed mid-request) are released by the next reserve.
``P:rate:<key id>:req``, ``P:rate:<key id>:tok`` (hash)
    Token buckets: ``level`` (units of 1/60000 request or token), ``at`` (ms), ``limit``
    (rpm or tpm). They expire when they would be full again, so nothing is lost.

Money can exceed 2**53 picodollars (about 9000 USD), beyond what Lua's doubles hold exactly,
so the scripts add and compare money as two base-1e9 limbs and store it with HINCRBY (exact
64-bit integers); bucket levels stay below 2**53 and use plain numbers. The time is the
caller's clock (ms) when a batch is sent, so processes should keep their clocks in sync (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from llmrelay.accounting.limits import (
    RESERVATION_TTL,
    STATE_TTL,
    Clock,
    RateStatus,
    Reservation,
    check_money,
    quota_error,
    rate_error,
    refused_outright,
)
from llmrelay.accounting.money import Money
from llmrelay.accounting.redis_scripts import ADMIT_LUA, FINISH_LUA, FORGET_LUA
from llmrelay.errors import ServiceUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 64  # items in one script call: it blocks Redis while it runs
# Seconds a batch of settlements waits for more: nobody waits for a settlement (the
# reservation holds the worst case until then), and each script call costs tens of µs of CPU.
FINISH_DELAY = 0.005
_NAMES_KEPT = 100_000  # key names cached per kind (ids are few; this only bounds a surprise)
_KEY_NAMES = ("rate:{}:req", "rate:{}:tok", "key:{}", "key:{}:held")
_USER_NAMES = ("user:{}", "user:{}:held")
Script = Callable[..., Awaitable[Any]]  # redis-py's AsyncScript: keys=, args=


def _unreachable(exc: RedisError) -> ServiceUnavailable:
    error = ServiceUnavailable(
        "The rate-limit and budget store is unavailable; retry shortly.",
        headers={"Retry-After": "1"},
        retry_after=1.0,
    )
    error.__cause__ = exc
    return error


def _log_failure(future: asyncio.Future[str]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None:  # the reservation lapses after its ttl; the ledger has the cost
        log.warning("Settling a request in Redis failed: %s", error)


def _field(value: int | None) -> str | int:
    return "_" if value is None else value


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _Evalsha:
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
        parts += [_bulk(str(arg).encode()) for arg in args]
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


class _Batch:
    __slots__ = ("args", "futures", "groups", "keys", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.keys: list[bytes] = []
        self.groups: dict[tuple[bytes, ...], int] = {}  # a group of names → where it begins
        self.args: list[str] = []
        self.futures: list[asyncio.Future[str]] = []

    def place(self, group: tuple[bytes, ...] | None) -> str:
        """The 1-based position of ``group`` in KEYS, added on first use ("_": none)."""
        if group is None:
            return "_"
        start = self.groups.get(group)
        if start is None:
            start = self.groups[group] = len(self.keys) + 1
            self.keys += group
        return str(start)


class _Batcher:
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
        self._open: _Batch | None = None  # taking items
        self._full: deque[_Batch] = deque()  # closed at MAX_BATCH items, not sent yet
        self._current: _Batch | None = None  # under way
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()  # the sender task, while it runs

    def add(
        self, key: tuple[bytes, ...], user: tuple[bytes, ...] | None, item: str
    ) -> asyncio.Future[str]:
        """Queue one item about the key and user whose names are ``key`` and ``user``; the
        future gets its answer, or the batch's error."""
        loop = asyncio.get_running_loop()
        if not self._sending or self._loop is not loop:
            self._start(loop)
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(loop)
            self._idle.clear()
            self._wake.set()
        batch.args.append(f"{batch.place(key)} {batch.place(user)} {item}")
        future: asyncio.Future[str] = loop.create_future()
        batch.futures.append(future)
        if len(batch.futures) >= MAX_BATCH:
            self._full.append(batch)
            self._open = None
        return future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # (A loop that ended took its sender and its callers with it.)
        self._open, self._current = None, None
        self._full.clear()
        self._loop = loop
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        sender = loop.create_task(self._run())
        self._sending = {sender}
        sender.add_done_callback(self._stopped)

    def _next(self) -> _Batch | None:
        if self._full:
            return self._full.popleft()
        batch, self._open = self._open, None
        return batch

    async def _run(self) -> None:
        while True:
            self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            if self.delay:
                await asyncio.sleep(self.delay)
            while (batch := self._next()) is not None:
                self._current = batch
                await self._send(batch)
                self._current = None

    async def _send(self, batch: _Batch) -> None:
        self.sent += 1
        futures = batch.futures
        try:
            found = await self.script(keys=batch.keys, args=[*self.header(), *batch.args])
            answers = (found.decode() if isinstance(found, bytes) else str(found)).split(" ")
            if len(answers) != len(futures):
                raise RuntimeError(f"{len(answers)} answers to {len(futures)} limiter calls")
        except Exception as exc:
            for future in futures:
                if not future.done():
                    error = _unreachable(exc) if isinstance(exc, RedisError) else exc
                    future.set_exception(error)
            return
        for future, answer in zip(futures, answers, strict=True):
            if not future.done():  # its caller may have been cancelled
                future.set_result(answer)

    def _stopped(self, sender: asyncio.Task[None]) -> None:
        """The sender was cancelled: nobody will answer what it held."""
        self._sending.discard(sender)
        left = [*self._full, self._current, self._open]
        self._open, self._current = None, None
        self._full.clear()
        for batch in left:
            for future in batch.futures if batch is not None else ():
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


class RedisLimiter:
    """Budgets and rate limits in a Redis shared by every llmrelay process."""

    def __init__(
        self,
        redis: str | Redis,
        *,
        prefix: str = "llmrelay",
        clock: Clock = time.time,
        reservation_ttl: float = RESERVATION_TTL,
        state_ttl: float = STATE_TTL,
    ) -> None:
        self._owned = isinstance(redis, str)
        self.redis: Redis = (
            Redis.from_url(redis, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
            if isinstance(redis, str)
            else redis
        )
        self.prefix = "{" + prefix + "}"
        self._clock = clock
        self._reservation_ms = int(reservation_ttl * 1000)
        # State outlives every reservation it holds.
        self._state_ms = max(int(state_ttl * 1000), self._reservation_ms + 60_000)
        self._scripts = (_Evalsha(self.redis, ADMIT_LUA), _Evalsha(self.redis, FINISH_LUA))
        self._admits = _Batcher(self._scripts[0], self._admit_header)
        self._finishes = _Batcher(self._scripts[1], self._finish_header, FINISH_DELAY)
        self._forget = self.redis.register_script(FORGET_LUA)
        options = self.redis.connection_pool.connection_kwargs  # redis-py's encoding of names
        self._encoding: tuple[str, str] = (
            options.get("encoding", "utf-8"),
            options.get("encoding_errors", "strict"),
        )
        self._key_names: dict[int, tuple[bytes, ...]] = {}
        self._user_names: dict[int, tuple[bytes, ...]] = {}

    @property
    def batches(self) -> int:
        """Admit and finish script calls sent so far (each carries up to MAX_BATCH items)."""
        return self._admits.sent + self._finishes.sent

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _admit_header(self) -> list[int]:
        now = self._now()
        return [now, now + self._reservation_ms, self._state_ms]

    def _finish_header(self) -> list[int]:
        return [self._now(), self._state_ms]

    def _names(
        self, cache: dict[int, tuple[bytes, ...]], forms: tuple[str, ...], ident: int
    ) -> tuple[bytes, ...]:
        """A key's (request bucket, token bucket, hash, held set) or a user's (hash, held set),
        encoded once: redis-py would encode a str on every call."""
        names = cache.get(ident)
        if names is None:
            if len(cache) >= _NAMES_KEPT:
                cache.clear()
            forms = tuple(f"{self.prefix}:{form.format(ident)}" for form in forms)
            names = cache[ident] = tuple(name.encode(*self._encoding) for name in forms)
        return names

    async def _admit(
        self,
        key_id: int,
        user_id: int,
        rate: tuple[int | None, int | None, int] | None,
        reservation: Reservation | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> RateStatus:
        """One admit item: the rate check (``rate``: rpm, tpm, tokens; None: none) and/or the
        reservation. Raises the item's refusal, or returns the rate status."""
        rpm, tpm, tokens = rate if rate is not None else (None, None, None)
        funded = None if user_balance is None else user_balance + user_spent
        if reservation is None:
            money = "_ _ _ _ _ _"
        else:
            money = (
                f"{reservation.amount} {_field(key_credit)} {max(0, key_spent)} "
                f"{_field(funded)} {max(0, user_spent)} {reservation.member}"
            )
        item = f"{_field(rpm)} {_field(tpm)} {_field(tokens)} {money}"
        key = self._names(self._key_names, _KEY_NAMES, key_id)
        user = self._names(self._user_names, _USER_NAMES, user_id)
        answer = await self._admits.add(key, user, item)
        rl, tl, rw, tw, money_short = (int(v) for v in answer.split(","))
        status = RateStatus()
        if rate is not None:
            status = RateStatus(
                rpm=rpm,
                requests_level=rl if rpm is not None else 0,
                tpm=tpm,
                tokens_level=tl if tpm is not None else 0,
            )
            if rw or tw:
                short = ["requests"] if rw else []
                raise rate_error(status, max(rw, tw), short + (["tokens"] if tw else []))
        if money_short:
            raise quota_error("key" if money_short == 1 else "user")
        return status

    async def admit(
        self,
        key_id: int,
        user_id: int,
        *,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        amount: Money | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> tuple[RateStatus, Reservation | None]:
        tokens = max(0, tokens)
        error = refused_outright(rpm, tpm, tokens)
        if error is not None:
            raise error
        if amount is None and rpm is None and tpm is None:
            return RateStatus(), None
        reservation = None
        if amount is not None:
            check_money(amount)
            reservation = Reservation(key_id, user_id, amount)
        status = await self._admit(
            key_id,
            user_id,
            (rpm, tpm, tokens),
            reservation,
            key_credit,
            key_spent,
            user_balance,
            user_spent,
        )
        return status, reservation

    async def reserve(
        self,
        key_id: int,
        user_id: int,
        amount: Money,
        *,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> Reservation:
        check_money(amount)
        reservation = Reservation(key_id, user_id, amount)
        await self._admit(
            key_id, user_id, None, reservation, key_credit, key_spent, user_balance, user_spent
        )
        return reservation

    async def check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateStatus:
        status, _ = await self.admit(
            key_id,
            0,
            rpm=rpm,
            tpm=tpm,
            tokens=tokens,
            amount=None,
            key_credit=None,
            key_spent=0,
            user_balance=None,
            user_spent=0,
        )
        return status

    def _finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> asyncio.Future[str] | None:
        """Queue one finish item (None: nothing to do)."""
        check_money(actual_cost, "actual_cost")
        key = self._names(self._key_names, _KEY_NAMES, key_id)
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            user = self._names(self._user_names, _USER_NAMES, reservation.user_id)
            item = f"{reservation.member} {reservation.amount} {actual_cost}"
            if reservation.key_id != key_id:  # (no caller does this) an item for each key
                held_by = self._names(self._key_names, _KEY_NAMES, reservation.key_id)
                self._finishes.add(held_by, user, f"{item} 0").add_done_callback(_log_failure)
                return self._finishes.add(key, None, f"_ _ _ {token_delta}")
            return self._finishes.add(key, user, f"{item} {token_delta}")
        if token_delta:
            return self._finishes.add(key, None, f"_ _ _ {token_delta}")
        return None

    async def finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        future = self._finish(reservation, actual_cost, key_id, token_delta)
        if future is not None:
            await future

    def finish_soon(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        # The batch's own task sends the item: no task per call, and no caller to cancel it.
        future = self._finish(reservation, actual_cost, key_id, token_delta)
        if future is not None:
            future.add_done_callback(_log_failure)

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        await self.finish(reservation, actual_cost, reservation.key_id, 0)

    async def add_tokens(self, key_id: int, delta: int) -> None:
        await self.finish(None, 0, key_id, delta)

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        keys = [f"{self.prefix}:key:{key_id}"] if key_id is not None else []
        keys += [f"{self.prefix}:user:{user_id}"] if user_id is not None else []
        if keys:
            try:
                await self._forget(keys=keys, args=[])
            except RedisError as exc:
                raise _unreachable(exc) from exc

    async def close(self) -> None:
        await self._admits.close()
        await self._finishes.close()
        for script in self._scripts:
            await script.close()
        if self._owned:
            await self.redis.aclose()

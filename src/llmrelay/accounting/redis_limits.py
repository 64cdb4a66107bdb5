"""The :class:`~llmrelay.accounting.limits.Limiter` for many processes: state in Redis.

Every operation runs in a Lua script (``redis_scripts.py``), so a check and its update are
atomic across every process that shares the Redis. The rules are those of ``limits.py``.

Batching. A script call costs tens of microseconds of CPU (more with redis-py's own command
path), more than the rest of a request's accounting, so calls are grouped into batches of one
script, ``STEP_LUA``: the :meth:`~RedisLimiter.admit` calls (rate check and reservation;
:meth:`~RedisLimiter.check_rate` and :meth:`~RedisLimiter.reserve` too) and the
:meth:`~RedisLimiter.finish` and :meth:`~RedisLimiter.finish_soon` calls (settlements and token
corrections; :meth:`~RedisLimiter.settle` and :meth:`~RedisLimiter.add_tokens` too). An
admission opens a batch, or joins the open one, and has it sent once the callbacks ready in
this turn of the event loop have run: an admission never waits for a timer, and a lone call
costs no latency. A settlement, which nobody waits for, joins the open batch too, or opens one
that waits up to :data:`FINISH_DELAY` seconds for company, so under load settlements ride along
with admissions and cost no call of their own. A batch holds up to :data:`MAX_BATCH` items.
The script handles its items in order, each with the rules of one call, so items for one key
or user behave as consecutive calls, and answers each caller alone: a refusal
(``RateLimited``, ``InsufficientQuota``) is that item's, while a Redis error fails every item
of the batch (503; what the script did before the error stays done, and a reservation nobody
learned of lapses after ``reservation_ttl``).

Leases. A key this process sends many requests for gets a lease (``redis_leases.py``): a share
of its buckets and money, taken in Redis by one item a period, from which
:meth:`~RedisLimiter.admit_now` admits and :meth:`~RedisLimiter.finish_soon` settles without
items of their own. A lease is granted only far from the key's limits, so near them every
request is still one admit item.

The keys, all under one hash tag so a Redis Cluster keeps them in one slot (``P`` is
``{prefix}``, by default ``{llmrelay}``):

``P:key:<id>``, ``P:user:<id>`` (hash)
    ``spent``: settled spend (picodollars), first learned with HSETNX from the database value
    the caller passed, raised whenever a later snapshot shows more, and increased by each
    settle; ``reserved``: the sum of unsettled reservations. Expire after ``state_ttl`` idle.
``P:key:<id>:held``, ``P:user:<id>:held`` (sorted set)
    One member ``<reservation id>:<amount>`` per unsettled reservation (and one
    ``L<id>:<amount>`` per lease holding money), scored by its deadline
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
import functools
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmrelay.accounting.limits import (
    RESERVATION_TTL,
    STATE_TTL,
    Clock,
    RateStatus,
    Reservation,
    check_money,
    new_reservation_id,
    quota_error,
    rate_error,
    refused_outright,
)
from llmrelay.accounting.money import Money
from llmrelay.accounting.redis_batching import Batcher, Evalsha, unreachable
from llmrelay.accounting.redis_leases import LEASE_PERIOD, Leases
from llmrelay.accounting.redis_scripts import FORGET_LUA, STEP_LUA

log = logging.getLogger(__name__)
# Seconds a batch of settlements waits for more: nobody waits for a settlement (the
# reservation holds the worst case until then), and each script call costs tens of µs of CPU.
FINISH_DELAY = 0.005
_NAMES_KEPT = 100_000  # key names cached per kind (ids are few; this only bounds a surprise)
_KEY_NAMES = ("rate:{}:req", "rate:{}:tok", "key:{}", "key:{}:held")
_USER_NAMES = ("user:{}", "user:{}:held")


def _reservation(key_id: int, user_id: int, amount: Money) -> Reservation:
    """A new reservation with its Redis member, ``<id>:<amount>``, made once."""
    ident = new_reservation_id()
    return Reservation(key_id, user_id, amount, ident, member=f"{ident}:{amount}")


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
        lease_period: float = LEASE_PERIOD,
    ) -> None:
        """``lease_period``: seconds between lease renewals (``redis_leases.py``); 0: no leases,
        every request is admitted and settled in Redis."""
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
        self._script = Evalsha(self.redis, STEP_LUA)
        self._batcher = Batcher(self._script, self._header, FINISH_DELAY)
        self._forget = self.redis.register_script(FORGET_LUA)
        options = self.redis.connection_pool.connection_kwargs  # redis-py's encoding of names
        self._encoding: tuple[str, str] = (
            options.get("encoding", "utf-8"),
            options.get("encoding_errors", "strict"),
        )
        self._key_names: dict[int, tuple[bytes, ...]] = {}
        self._user_names: dict[int, tuple[bytes, ...]] = {}
        self.leases = None
        if lease_period:
            self.leases = Leases(self._batcher, self._both_names, lease_period)
            # On every metered request: the leases' own method, without a call in between.
            self.admit_now = self.leases.admit  # type: ignore[method-assign]

    @property
    def batches(self) -> int:
        """Script calls sent so far (each carries up to MAX_BATCH items)."""
        return self._batcher.sent

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _header(self) -> list[int]:
        now = self._now()
        return [now, now + self._reservation_ms, self._state_ms]

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

    def _both_names(self, key_id: int, user_id: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        return (
            self._names(self._key_names, _KEY_NAMES, key_id),
            self._names(self._user_names, _USER_NAMES, user_id),
        )

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
        # Formatted inline, without helper calls: this runs for every metered request.
        rpm, tpm, tokens = rate if rate is not None else (None, None, None)
        if reservation is None:
            money = "_ _ _ _ _ _"
        else:
            funded = "_" if user_balance is None else user_balance + user_spent
            money = (
                f"{reservation.amount} {'_' if key_credit is None else key_credit} "
                f"{key_spent if key_spent > 0 else 0} {funded} "
                f"{user_spent if user_spent > 0 else 0} {reservation.member}"
            )
        item = (
            f"a {'_' if rpm is None else rpm} {'_' if tpm is None else tpm} "
            f"{'_' if tokens is None else tokens} {money}"
        )
        key = self._key_names.get(key_id) or self._names(self._key_names, _KEY_NAMES, key_id)
        user = self._user_names.get(user_id) or self._names(self._user_names, _USER_NAMES, user_id)
        answer = await self._batcher.add(key, user, item)
        rl, tl, rw, tw, money_short = map(int, answer.split(","))
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

    def admit_now(
        self,
        key_id: int,
        user_id: int,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        amount: Money | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> tuple[RateStatus, Reservation] | None:
        """From the key's lease when it has one that holds enough; None otherwise (the
        state is in Redis: admission takes a round trip)."""
        if self.leases is None:
            return None
        return self.leases.admit(
            key_id,
            user_id,
            rpm,
            tpm,
            tokens,
            amount,
            key_credit,
            key_spent,
            user_balance,
            user_spent,
        )

    async def admit(
        self,
        key_id: int,
        user_id: int,
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
            reservation = _reservation(key_id, user_id, amount)
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
        reservation = _reservation(key_id, user_id, amount)
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
        self,
        reservation: Reservation | None,
        actual_cost: Money,
        key_id: int,
        token_delta: int,
        quiet: bool = False,
    ) -> asyncio.Future[str] | None:
        """Queue one finish item (None: nothing to do, or ``quiet``: nobody waits)."""
        if type(actual_cost) is not int or actual_cost < 0:
            check_money(actual_cost, "actual_cost")
        if reservation is not None and reservation.lease is not None:
            reservation.lease.settle(reservation, actual_cost, token_delta)
            return None
        key = self._key_names.get(key_id) or self._names(self._key_names, _KEY_NAMES, key_id)
        batcher = self._batcher
        add = batcher.add_quiet if quiet else functools.partial(batcher.add, urgent=False)
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            user_id = reservation.user_id
            user = self._user_names.get(user_id) or self._names(
                self._user_names, _USER_NAMES, user_id
            )
            if reservation.key_id != key_id:  # (no caller does this) an item for each key
                item = f"f {reservation.member} {reservation.amount} {actual_cost} 0"
                held_by = self._names(self._key_names, _KEY_NAMES, reservation.key_id)
                batcher.add_quiet(held_by, user, item)
                return add(key, None, f"f _ _ _ {token_delta}")
            item = f"f {reservation.member} {reservation.amount} {actual_cost} {token_delta}"
            return add(key, user, item)
        if token_delta:
            return add(key, None, f"f _ _ _ {token_delta}")
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
        self._finish(reservation, actual_cost, key_id, token_delta, quiet=True)

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        await self.finish(reservation, actual_cost, reservation.key_id, 0)

    async def add_tokens(self, key_id: int, delta: int) -> None:
        await self.finish(None, 0, key_id, delta)

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        if self.leases is not None and key_id is not None:
            self.leases.forget(key_id)
        keys = [f"{self.prefix}:key:{key_id}"] if key_id is not None else []
        keys += [f"{self.prefix}:user:{user_id}"] if user_id is not None else []
        if keys:
            try:
                await self._forget(keys=keys, args=[])
            except RedisError as exc:
                raise unreachable(exc) from exc

    def counts(self) -> dict[str, int]:
        found = {"script_calls": self._batcher.sent}
        if self.leases is not None:
            found |= {"lease_renewals": self.leases.renewals, "leased": self.leases.admitted}
        return found

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.close()
        await self._batcher.close()
        await self._script.close()
        if self._owned:
            await self.redis.aclose()

"""The :class:`~llmrelay.accounting.limits.Limiter` for many processes: state in Redis.

Every operation is one Lua script (registered once with ``register_script``, run by EVALSHA),
so a check and its update are atomic across every process that shares the Redis. The rules
are those of ``limits.py``; the keys, all under one hash tag so a Redis Cluster keeps them in
one slot (``P`` is ``{prefix}``, by default ``{llmrelay}``):

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
caller's clock (ms), so processes should keep their clocks in sync (NTP).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmrelay.accounting.limits import (
    RESERVATION_TTL,
    STATE_TTL,
    WINDOW_MS,
    Clock,
    RateStatus,
    Reservation,
    check_money,
    quota_error,
    rate_error,
    refused_outright,
)
from llmrelay.accounting.money import Money
from llmrelay.errors import ServiceUnavailable

_MONEY_LUA = """
local B = 1000000000
local function big(s)
  s = tostring(s or '0')
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = string.len(s)
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi = tonumber(string.sub(s, 1, n - 9))
    lo = tonumber(string.sub(s, n - 8))
  end
  if neg then
    if lo > 0 then return {-hi - 1, B - lo} end
    return {-hi, 0}
  end
  return {hi, lo}
end
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then hi, lo = hi + 1, lo - B end
  return {hi, lo}
end
local function cmp(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] and -1 or 1 end
  if a[2] ~= b[2] then return a[2] < b[2] and -1 or 1 end
  return 0
end
local function release(hash, amount)
  if amount == '0' then return end
  redis.call('HINCRBY', hash, 'reserved', '-' .. amount)
  if big(redis.call('HGET', hash, 'reserved'))[1] < 0 then
    redis.call('HSET', hash, 'reserved', 0)
  end
end
"""

_RESERVE_LUA = (
    _MONEY_LUA
    + """
local function lapse(hash, held, now)
  local gone = redis.call('ZRANGEBYSCORE', held, '-inf', now)
  for _, member in ipairs(gone) do
    release(hash, string.match(member, ':(%d+)$'))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', held, '-inf', now) end
end
local function learn(hash, spent)
  redis.call('HSETNX', hash, 'spent', spent)
  redis.call('HSETNX', hash, 'reserved', 0)
  if cmp(big(spent), big(redis.call('HGET', hash, 'spent'))) > 0 then
    redis.call('HSET', hash, 'spent', spent)
  end
  local state = redis.call('HMGET', hash, 'spent', 'reserved')
  return add(big(state[1]), big(state[2]))
end
-- ARGV: amount, key credit or '', key spent, user funded or '', user spent, now, deadline,
-- member, state ttl (ms). Returns 0 (held), 1 (key credit short), 2 (user balance short).
local amount = big(ARGV[1])
lapse(KEYS[1], KEYS[2], ARGV[6])
lapse(KEYS[3], KEYS[4], ARGV[6])
local key_used = learn(KEYS[1], ARGV[3])
local user_used = learn(KEYS[3], ARGV[5])
local result = 0
if ARGV[2] ~= '' and cmp(add(key_used, amount), big(ARGV[2])) > 0 then
  result = 1
elseif ARGV[4] ~= '' and cmp(add(user_used, amount), big(ARGV[4])) > 0 then
  result = 2
else
  for i = 1, 3, 2 do
    redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[1])
    redis.call('ZADD', KEYS[i + 1], ARGV[7], ARGV[8])
  end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[9]) end
return result
"""
)

_SETTLE_LUA = (
    _MONEY_LUA
    + """
-- ARGV: member, amount, actual cost, state ttl (ms).
for i = 1, 3, 2 do
  if redis.call('ZREM', KEYS[i + 1], ARGV[1]) == 1 then release(KEYS[i], ARGV[2]) end
  if ARGV[3] ~= '0' and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[3])
  end
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[4])
  end
end
return 0
"""
)

_FORGET_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'spent', 0) end
end
return 0
"""

_BUCKET_LUA = """
local now = tonumber(ARGV[1])
local W = tonumber(ARGV[2])
local function level(key, limit)
  local v = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(v[1]), tonumber(v[2])
  if lvl == nil then return limit * W end
  if now > at then lvl = lvl + (now - at) * limit end
  if lvl > limit * W then lvl = limit * W end
  return lvl
end
local function save(key, lvl, limit)
  redis.call('HSET', key, 'level', string.format('%d', lvl), 'at', ARGV[1], 'limit', limit)
  redis.call('PEXPIRE', key, math.ceil((limit * W - lvl) / limit) + 1000)
end
"""

_RATE_LUA = (
    _BUCKET_LUA
    + """
-- ARGV: now, W, rpm or '', tpm or '', tokens. Returns the levels (-1: no limit) and the
-- waits (ms) of the request and token buckets; both are taken only when neither must wait.
local function wait(lvl, need, limit)
  if lvl >= need then return 0 end
  return math.ceil((need - lvl) / limit)
end
local rpm, tpm, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rl, tl, rw, tw = -1, -1, 0, 0
if rpm then rl = level(KEYS[1], rpm); rw = wait(rl, W, rpm) else redis.call('DEL', KEYS[1]) end
if tpm then
  tl = level(KEYS[2], tpm); tw = wait(tl, tokens * W, tpm)
else
  redis.call('DEL', KEYS[2])
end
if rw == 0 and tw == 0 then
  if rpm then rl = rl - W; save(KEYS[1], rl, rpm) end
  if tpm then tl = tl - tokens * W; save(KEYS[2], tl, tpm) end
end
return {rl, tl, rw, tw}
"""
)

_ADD_TOKENS_LUA = (
    _BUCKET_LUA
    + """
-- ARGV: now, W, delta (tokens). The level stays within one minute's allowance either way.
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
if limit == nil then return 0 end
local lvl = level(KEYS[1], limit) - tonumber(ARGV[3]) * W
if lvl < -limit * W then lvl = -limit * W end
if lvl > limit * W then lvl = limit * W end
save(KEYS[1], lvl, limit)
return 0
"""
)


def _unreachable(exc: RedisError) -> ServiceUnavailable:
    return ServiceUnavailable(
        "The rate-limit and budget store is unavailable; retry shortly.",
        headers={"Retry-After": "1"},
        retry_after=1.0,
    )


def _optional(value: int | None) -> str:
    return "" if value is None else str(value)


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
        self._reserve = self.redis.register_script(_RESERVE_LUA)
        self._settle = self.redis.register_script(_SETTLE_LUA)
        self._forget = self.redis.register_script(_FORGET_LUA)
        self._rate = self.redis.register_script(_RATE_LUA)
        self._add_tokens = self.redis.register_script(_ADD_TOKENS_LUA)

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _budget_keys(self, key_id: int, user_id: int) -> list[str]:
        key, user = f"{self.prefix}:key:{key_id}", f"{self.prefix}:user:{user_id}"
        return [key, f"{key}:held", user, f"{user}:held"]

    def _rate_keys(self, key_id: int) -> list[str]:
        return [f"{self.prefix}:rate:{key_id}:req", f"{self.prefix}:rate:{key_id}:tok"]

    async def _run(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise _unreachable(exc) from exc

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
        now = self._now()
        reservation = Reservation(key_id, user_id, amount)
        funded = None if user_balance is None else user_balance + user_spent
        args: list[str | int] = [
            str(amount),
            _optional(key_credit),
            str(max(0, key_spent)),
            _optional(funded),
            str(max(0, user_spent)),
            now,
            now + self._reservation_ms,
            reservation.member,
            self._state_ms,
        ]
        result = await self._run(self._reserve, self._budget_keys(key_id, user_id), args)
        if int(result) == 1:
            raise quota_error("key")
        if int(result) == 2:
            raise quota_error("user")
        return reservation

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        check_money(actual_cost, "actual_cost")
        if reservation.settled:
            return
        reservation.settled = True
        keys = self._budget_keys(reservation.key_id, reservation.user_id)
        args: list[str | int] = [
            reservation.member,
            str(reservation.amount),
            str(actual_cost),
            self._state_ms,
        ]
        await self._run(self._settle, keys, args)

    async def check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateStatus:
        tokens = max(0, tokens)
        error = refused_outright(rpm, tpm, tokens)
        if error is not None:
            raise error
        if rpm is None and tpm is None:
            return RateStatus()
        args: list[str | int] = [self._now(), WINDOW_MS, _optional(rpm), _optional(tpm), tokens]
        found = await self._run(self._rate, self._rate_keys(key_id), args)
        levels, waits = [int(v) for v in found[:2]], [int(v) for v in found[2:]]
        status = RateStatus(rpm=rpm, requests_level=levels[0], tpm=tpm, tokens_level=levels[1])
        short = [kind for kind, wait in zip(("requests", "tokens"), waits, strict=True) if wait]
        if short:
            raise rate_error(status, max(waits), short)
        return status

    async def add_tokens(self, key_id: int, delta: int) -> None:
        if delta:
            keys = self._rate_keys(key_id)[1:]
            await self._run(self._add_tokens, keys, [self._now(), WINDOW_MS, delta])

    async def finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        check_money(actual_cost, "actual_cost")
        pipe = self.redis.pipeline(transaction=False)  # one round trip for both scripts
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            keys = self._budget_keys(reservation.key_id, reservation.user_id)
            args: list[str | int] = [
                reservation.member,
                str(reservation.amount),
                str(actual_cost),
                self._state_ms,
            ]
            await self._settle(keys=keys, args=args, client=pipe)
        if token_delta:
            keys = self._rate_keys(key_id)[1:]
            await self._add_tokens(
                keys=keys, args=[self._now(), WINDOW_MS, token_delta], client=pipe
            )
        if len(pipe):
            try:
                await pipe.execute()
            except RedisError as exc:
                raise _unreachable(exc) from exc

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        keys = [f"{self.prefix}:key:{key_id}"] if key_id is not None else []
        keys += [f"{self.prefix}:user:{user_id}"] if user_id is not None else []
        if keys:
            await self._run(self._forget, keys, [])

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()

"""Leases of the Redis limiter, against a real Redis: a busy key's requests are admitted and
settled in the process, and what Redis ends up with is exactly what was used; no lease is
granted near a limit, several processes never admit more than the limits allow, and a lease
that cannot be given back (a failed renewal, a killed process) stays held until it lapses."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from llmrelay.accounting.limits import WINDOW_MS, RateStatus, Reservation
from llmrelay.accounting.redis_leases import BUSY
from llmrelay.accounting.redis_limits import RedisLimiter
from llmrelay.errors import InsufficientQuota, RateLimited
from tests.limiters import REDIS_URL, Backend, limiter_backend

Admitted = tuple[RateStatus, Reservation | None]


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


@pytest.fixture
def backend() -> Iterator[Backend]:
    with limiter_backend("redis") as found:
        yield found


def make(backend: Backend) -> RedisLimiter:
    """A limiter whose leases are renewed only when a test calls ``renew`` (the clock is the
    backend's fake one, which moves only when told to: buckets do not refill by themselves)."""
    return RedisLimiter(REDIS_URL, prefix=backend.prefix, clock=backend.clock, lease_period=3600)


async def renew(*limiters: RedisLimiter) -> None:
    """End a lease period on each limiter, and wait for the renewals' answers (and for the
    renewals those answers start: a refused lease is given back at once)."""
    for limiter in limiters:
        assert limiter.leases is not None
        await asyncio.gather(*limiter.leases.tick(), return_exceptions=True)
        for _ in range(3):  # the renewals started by answers
            await asyncio.sleep(0)
            await limiter._batcher.wait()


class Key:
    """Admission arguments of one key (id 1, user 1 unless told)."""

    def __init__(self, **limits: Any) -> None:
        self.key_id = limits.pop("key_id", 1)
        self.user_id = limits.pop("user_id", 1)
        self.values = {"rpm": None, "tpm": None, "tokens": 10, "amount": None}
        self.values |= {"key_credit": None, "key_spent": 0, "user_balance": None, "user_spent": 0}
        self.values |= limits

    def args(self) -> tuple[Any, ...]:
        v = self.values
        return (
            self.key_id, self.user_id, v["rpm"], v["tpm"], v["tokens"], v["amount"],
            v["key_credit"], v["key_spent"], v["user_balance"], v["user_spent"],
        )  # fmt: skip

    async def admit(self, limiter: RedisLimiter) -> tuple[Admitted | Exception, bool]:
        """(The admission or its refusal, whether it came from a lease), as the request path
        does it: ``admit_now``, else a round trip."""
        try:
            found = limiter.admit_now(*self.args())
            if found is not None:
                return found, True
            return await limiter.admit(*self.args()), False
        except (RateLimited, InsufficientQuota) as exc:
            return exc, False


async def budget(limiter: RedisLimiter, kind: str, ident: int = 1) -> dict[str, str]:
    state = await limiter.redis.hgetall(f"{limiter.prefix}:{kind}:{ident}")
    return {str(k): str(v) for k, v in state.items()}


async def members(limiter: RedisLimiter, kind: str, ident: int = 1) -> list[str]:
    found = await limiter.redis.zrange(f"{limiter.prefix}:{kind}:{ident}:held", 0, -1)
    return [str(m) for m in found]


async def lease_up(limiter: RedisLimiter, key: Key, cost: int = 0) -> None:
    """Make the key busy for one period and end it: the next admissions come from a lease."""
    for _ in range(BUSY):
        found, _ = await key.admit(limiter)
        assert isinstance(found, tuple)
        limiter.finish_soon(found[1], cost, key.key_id, 0)
    await renew(limiter)


def test_a_busy_key_is_admitted_and_settled_without_round_trips(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        key = Key(rpm=10_000, tpm=1_000_000, amount=50, key_credit=10**9)
        found, leased = await key.admit(limiter)
        assert not leased  # a key is not busy at its first request
        assert isinstance(found, tuple)
        limiter.finish_soon(found[1], 20, 1, 0)
        await lease_up(limiter, key, 20)
        calls = limiter.batches
        levels = []
        for _ in range(BUSY):  # the lease holds twice the period's traffic
            found, leased = await key.admit(limiter)
            assert leased and isinstance(found, tuple)
            status, reservation = found
            assert reservation is not None and reservation.amount == 50
            levels.append(int(status.headers()["x-ratelimit-remaining-requests"]))
            limiter.finish_soon(reservation, 20, 1, -4)
        assert limiter.batches == calls  # no script call per request
        assert levels == sorted(levels, reverse=True) and levels[0] - levels[-1] == BUSY - 1
        # Redis holds the lease's money as one member of each held set.
        assert [m.split(":")[0][0] for m in await members(limiter, "key")] == ["L"]
        assert [m.split(":")[0][0] for m in await members(limiter, "user")] == ["L"]
        await limiter.close()

    run(work())


def test_what_leases_used_is_what_redis_counts(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        key = Key(rpm=10_000, tpm=1_000_000, tokens=30, amount=50, key_credit=10**9)
        key.values |= {"user_balance": 10**9}
        used = leased = 0
        for period in range(6):
            for i in range(20 + 10 * (period % 2)):
                found, from_lease = await key.admit(limiter)
                assert isinstance(found, tuple)
                leased += from_lease
                cost = 7 + i % 5
                used += cost
                limiter.finish_soon(found[1], cost, 1, -12)  # 18 tokens used of 30 counted
            await renew(limiter)
        await limiter.close()
        assert leased > 100
        requests = sum(20 + 10 * (period % 2) for period in range(6))
        assert await budget(limiter, "key") == {"spent": str(used), "reserved": "0"}
        assert await budget(limiter, "user") == {"spent": str(used), "reserved": "0"}
        assert await members(limiter, "key") == [] and await members(limiter, "user") == []
        # The clock stood still: the buckets are down by exactly what was used.
        requests_level = await limiter.redis.hget(f"{limiter.prefix}:rate:1:req", "level")
        assert int(requests_level) == (10_000 - requests) * WINDOW_MS
        tokens_level = await limiter.redis.hget(f"{limiter.prefix}:rate:1:tok", "level")
        assert int(tokens_level) == (1_000_000 - 18 * requests) * WINDOW_MS

    run(work())


def test_two_processes_spend_exactly_a_credit_and_never_more(backend: Backend) -> None:
    async def work() -> None:
        first, second = make(backend), make(backend)
        key = Key(amount=1000, key_credit=300 * 1000)  # 300 requests, each costing its worst
        admitted = leased = 0
        for _ in range(20):
            for limiter in (first, second):
                for _ in range(12):
                    found, from_lease = await key.admit(limiter)
                    if isinstance(found, tuple):
                        admitted += 1
                        leased += from_lease
                        limiter.finish_soon(found[1], 1000, 1, 0)
            await renew(first, second)
            assert admitted <= 300
        assert leased > 50  # leases did most of the work while far from the limit
        # Whatever leases held when refusals began, they gave back: the rest is admitted now.
        await first.close()
        await second.close()
        third = make(backend)
        while isinstance((await key.admit(third))[0], tuple):
            admitted += 1
        assert admitted == 300
        await third.close()
        assert await budget(third, "key") == {"spent": str(300 * 1000), "reserved": "0"}

    run(work())


def test_requests_per_minute_hold_across_processes(backend: Backend) -> None:
    async def work() -> None:
        first, second = make(backend), make(backend)
        key = Key(rpm=400)
        admitted = 0
        for _ in range(15):
            for limiter in (first, second):
                for _ in range(10):
                    found, _ = await key.admit(limiter)
                    if isinstance(found, tuple):
                        admitted += 1
                        limiter.finish_soon(found[1], 0, 1, 0)
            await renew(first, second)
            assert admitted <= 400
        await first.close()
        await second.close()
        third = make(backend)
        while isinstance((await key.admit(third))[0], tuple):
            admitted += 1
        assert admitted == 400  # the clock stood still: not one request more, or less
        await third.close()

    run(work())


def test_no_lease_is_granted_near_a_limit(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        # A credit of 30 requests: a lease of twice a period's 8 would leave less than it takes.
        key = Key(amount=1000, key_credit=30 * 1000)
        await lease_up(limiter, key)
        found, leased = await key.admit(limiter)
        assert isinstance(found, tuple) and not leased
        assert not any(m.startswith("L") for m in await members(limiter, "key"))
        # The same with a small RPM.
        rpm = Key(key_id=2, rpm=20)
        await lease_up(limiter, rpm)
        assert not (await rpm.admit(limiter))[1]
        await limiter.close()

    run(work())


def test_changed_terms_end_the_lease(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        key = Key(amount=1000, key_credit=10**9)
        await lease_up(limiter, key, 1000)
        before, leased = await key.admit(limiter)
        assert isinstance(before, tuple) and leased
        key.values["key_credit"] = 10**6  # an admin lowered the credit
        found, leased = await key.admit(limiter)
        assert isinstance(found, tuple) and not leased  # checked in Redis, with the new credit
        limiter.finish_soon(found[1], 1000, 1, 0)
        await renew(limiter)  # the old lease gives back all but the request still under way
        assert [m.split(":")[1] for m in await members(limiter, "key")] == ["1000"]
        limiter.finish_soon(before[1], 1000, 1, 0)
        await renew(limiter)
        assert not any(m.startswith("L") for m in await members(limiter, "key"))
        assert (await budget(limiter, "key"))["reserved"] == "0"
        await limiter.close()
        assert await budget(limiter, "key") == {"spent": str(BUSY * 1000 + 2000), "reserved": "0"}

    run(work())


def test_a_failed_renewal_abandons_the_lease_and_what_it_held_lapses(backend: Backend) -> None:
    async def work() -> None:
        backend.reservation_ttl = 60
        limiter = RedisLimiter(
            REDIS_URL, prefix=backend.prefix, clock=backend.clock, lease_period=3600,
            reservation_ttl=60,
        )  # fmt: skip
        key = Key(amount=1000, key_credit=100 * 1000)
        await lease_up(limiter, key, 1000)
        assert (await key.admit(limiter))[1]
        held = int((await budget(limiter, "key"))["reserved"])
        assert held > 0
        real = limiter._batcher.script

        async def broken(**_: Any) -> Any:
            raise RedisConnectionError("gone")

        limiter._batcher.script = broken
        await renew(limiter)
        limiter._batcher.script = real
        found, leased = await key.admit(limiter)
        assert isinstance(found, tuple) and not leased  # abandoned: Redis decides again
        # What the lease held stays held (whether its renewal ran is unknown) until it lapses.
        assert int((await budget(limiter, "key"))["reserved"]) == held + 1000
        backend.clock.advance(61)
        other = Key(amount=1000, key_credit=100 * 1000, key_spent=(BUSY + 2) * 1000)
        found, _ = await other.admit(limiter)
        assert isinstance(found, tuple)
        assert (await budget(limiter, "key"))["reserved"] == "1000"
        await limiter.close()

    run(work())


def test_a_killed_process_lease_lapses(backend: Backend) -> None:
    async def work() -> None:
        killed = RedisLimiter(
            REDIS_URL, prefix=backend.prefix, clock=backend.clock, lease_period=3600,
            reservation_ttl=60,
        )  # fmt: skip
        key = Key(amount=1000, key_credit=100 * 1000)
        await lease_up(killed, key, 1000)
        assert (await key.admit(killed))[1]
        # The process dies: its lease is never given back, its spend never reported.
        await killed._batcher.close()
        await killed._script.close()
        await killed.redis.aclose()
        survivor = RedisLimiter(
            REDIS_URL, prefix=backend.prefix, clock=backend.clock, lease_period=0,
            reservation_ttl=60,
        )  # fmt: skip
        held = int((await budget(survivor, "key"))["reserved"])
        assert held >= 1000
        backend.clock.advance(61)
        # The database has the dead process's spend (its ledger journal): the snapshot says so.
        spent = (BUSY + 1) * 1000
        rest = Key(amount=1000, key_credit=100 * 1000, key_spent=spent)
        admitted = 0
        while isinstance((await rest.admit(survivor))[0], tuple):
            admitted += 1
        assert admitted == 100 - BUSY - 1
        await survivor.close()

    run(work())

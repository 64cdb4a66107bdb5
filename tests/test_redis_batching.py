"""RedisLimiter groups the calls of one event-loop turn into one script call each, against a
real Redis: every item still gets exactly the answer it would get alone, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmrelay.accounting.limits import RateStatus, Reservation
from llmrelay.accounting.redis_batching import MAX_BATCH
from llmrelay.accounting.redis_limits import RedisLimiter
from llmrelay.errors import InsufficientQuota, RateLimited, ServiceUnavailable
from tests.limiters import REDIS_URL, Backend, limiter_backend

USD = 10**12
BIG = 10**16 + 12345  # beyond 2**53


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


@pytest.fixture
def backend() -> Iterator[Backend]:
    with limiter_backend("redis") as found:
        yield found


def make(backend: Backend) -> RedisLimiter:
    limiter = backend.make()
    assert isinstance(limiter, RedisLimiter)
    return limiter


class Spy:
    """Wraps a batcher's script: the items of each call."""

    def __init__(self, limiter: RedisLimiter, which: str, header: int) -> None:
        self.batcher = getattr(limiter, which)
        self.script = self.batcher.script
        self.stride = header
        self.calls: list[int] = []
        self.batcher.script = self

    async def __call__(self, *, keys: list[bytes], args: list[Any]) -> Any:
        self.calls.append(len(args) - self.stride)  # the items, after the header
        return await self.script(keys=keys, args=args)


async def admit(
    limiter: RedisLimiter,
    key_id: int,
    amount: int | None,
    *,
    user_id: int = 1,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens: int = 1,
    key_credit: int | None = None,
    key_spent: int = 0,
    user_balance: int | None = None,
) -> tuple[RateStatus, Reservation | None] | Exception:
    try:
        return await limiter.admit(
            key_id, user_id, rpm=rpm, tpm=tpm, tokens=tokens, amount=amount, key_credit=key_credit,
            key_spent=key_spent, user_balance=user_balance, user_spent=0,
        )  # fmt: skip
    except (RateLimited, InsufficientQuota, ServiceUnavailable) as exc:
        return exc


def held(found: list[Any]) -> list[Reservation]:
    return [f[1] for f in found if isinstance(f, tuple) and f[1] is not None]


async def budget(limiter: RedisLimiter, kind: str, ident: int) -> dict[str, str]:
    state = await limiter.redis.hgetall(f"{limiter.prefix}:{kind}:{ident}")
    return {str(k): str(v) for k, v in state.items()}


def test_one_turns_admits_are_one_script_call_in_order(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        spy = Spy(limiter, "_batcher", 3)
        amount = BIG
        found = await asyncio.gather(
            *(admit(limiter, 1, amount, key_credit=10 * amount + 5, key_spent=5) for _ in range(50))
        )
        assert spy.calls == [50] and limiter.batches == 1
        # The items run in the order of the calls: the first ten are held.
        assert [isinstance(f, tuple) for f in found] == [True] * 10 + [False] * 40
        assert all(isinstance(f, InsufficientQuota) for f in found[10:])
        state = await budget(limiter, "key", 1)
        assert state == {"spent": "5", "reserved": str(10 * amount)}
        await limiter.close()

    run(work())


def test_rate_refusals_in_a_batch_reserve_nothing(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        # 30 requests, 10 allowed a minute, money for 25: the 20 refused by the RPM hold nothing.
        found = await asyncio.gather(
            *(admit(limiter, 1, 4, rpm=10, key_credit=100) for _ in range(30))
        )
        assert limiter.batches == 1
        assert len(held(found)) == 10
        assert sum(isinstance(f, RateLimited) for f in found) == 20
        assert (await budget(limiter, "key", 1))["reserved"] == "40"
        # Refused for money, the requests still count: 5 allowed, 3 pass the credit.
        backend.clock.advance(30)
        found = await asyncio.gather(
            *(admit(limiter, 1, 20, rpm=10, key_credit=100) for _ in range(8))
        )
        kinds = [type(f).__name__ for f in found]
        assert kinds == ["tuple"] * 3 + ["InsufficientQuota"] * 2 + ["RateLimited"] * 3
        await limiter.close()

    run(work())


def test_a_batch_holds_at_most_max_batch_items(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        spy = Spy(limiter, "_batcher", 3)
        found = await asyncio.gather(*(admit(limiter, i % 3, 1) for i in range(150)))
        assert spy.calls == [MAX_BATCH, MAX_BATCH, 150 - 2 * MAX_BATCH]
        assert len(held(found)) == 150
        await limiter.close()

    run(work())


def test_a_lone_call_is_sent_in_the_next_turn(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        spy = Spy(limiter, "_batcher", 3)
        task = asyncio.get_running_loop().create_task(admit(limiter, 1, 1))
        await asyncio.sleep(0)  # the task queues its item
        assert spy.calls == []
        await asyncio.sleep(0)  # the turn ended: the batch was sent, without any timer
        assert spy.calls == [1]
        assert isinstance(await task, tuple)
        await limiter.close()

    run(work())


def test_concurrent_finishes_settle_exactly(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        found = await asyncio.gather(
            *(admit(limiter, 1, BIG, user_id=2, user_balance=10**20) for _ in range(50))
        )
        reservations = held(found)
        assert len(reservations) == 50
        spy = Spy(limiter, "_batcher", 3)
        costs = [BIG - i * 1_000_003 for i in range(50)]
        await asyncio.gather(
            *(limiter.finish(r, c, 1, 0) for r, c in zip(reservations, costs, strict=True)),
            *(limiter.finish(r, 1, 1, 0) for r in reservations[:5]),  # settled once only
        )
        assert spy.calls == [50]  # the second finishes found their reservations settled
        for kind, ident in (("key", 1), ("user", 2)):
            assert await budget(limiter, kind, ident) == {"spent": str(sum(costs)), "reserved": "0"}
        assert await limiter.redis.exists(f"{limiter.prefix}:key:1:held") == 0
        await limiter.close()

    run(work())


def test_token_corrections_batch_with_settlements(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        found = await asyncio.gather(
            *(admit(limiter, 1, 7, tpm=1000, tokens=100, key_credit=70) for _ in range(10))
        )
        spy = Spy(limiter, "_batcher", 3)
        await asyncio.gather(
            *(limiter.finish(r, 7, 1, -50) for r in held(found)),
            *(limiter.add_tokens(1, -10) for _ in range(10)),
        )
        assert spy.calls == [20]
        status = await limiter.check_rate(1, None, 1000, 0)
        assert status.headers()["x-ratelimit-remaining-tokens"] == "600"  # 10 * 50 + 10 * 10
        assert await budget(limiter, "key", 1) == {"spent": "70", "reserved": "0"}
        await limiter.close()

    run(work())


def test_two_processes_interleaving_stay_exact(backend: Backend) -> None:
    async def work() -> None:
        limiters = [make(backend), make(backend)]
        amount, credit = 3 * USD + 1, 37 * (3 * USD + 1) + 2
        for _round in range(3):
            found = await asyncio.gather(
                *(admit(limiters[i % 2], 1, amount, key_credit=credit) for i in range(200)),
                *(admit(limiters[i % 2], 2, 1, user_id=3, rpm=25) for i in range(100)),
            )
            reservations = held(found)
            assert len([r for r in reservations if r.key_id == 1]) == 37
            assert len([r for r in reservations if r.key_id == 2]) == (25 if _round == 0 else 0)
            await asyncio.gather(
                *(
                    limiters[i % 2].finish(r, r.amount // 3, r.key_id, 0)
                    for i, r in enumerate(reservations)
                )
            )
            credit += 37 * (amount // 3)  # the next round has room for 37 again
        spent = 3 * 37 * (amount // 3)
        assert await budget(limiters[0], "key", 1) == {"spent": str(spent), "reserved": "0"}
        # Per round and limiter: 150 admits in 3 calls (64 at most), 31 finishes in 1.
        assert [lim.batches for lim in limiters] == [3 * 4, 3 * 4]
        for limiter in limiters:
            await limiter.close()

    run(work())


def test_a_redis_error_fails_every_item_of_its_batch(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        good = held(await asyncio.gather(*(admit(limiter, 1, 5) for _ in range(5))))

        async def broken(*, keys: list[bytes], args: list[Any]) -> Any:
            raise RedisConnectionError("connection reset")

        def failed(found: list[Any]) -> bool:
            return all(
                isinstance(f, ServiceUnavailable) and f.headers["Retry-After"] == "1" for f in found
            )

        batcher = limiter._batcher
        batcher.script, script = broken, batcher.script
        found = await asyncio.gather(
            *(admit(limiter, 1, 5) for _ in range(5)),
            limiter.finish(good[0], 5, 1, 0),  # joins the admissions' batch, and fails with it
            return_exceptions=True,
        )
        assert failed(found)
        refused = await asyncio.gather(
            limiter.finish(good[1], 5, 1, 0),
            limiter.settle(good[2], 5),
            limiter.add_tokens(1, 7),
            return_exceptions=True,
        )
        assert failed(list(refused))
        batcher.script = script
        assert limiter.batches == 1 + 1 + 1
        # Redis itself is fine: the limiter goes on, and the settlements that did not fail
        # release their reservations (the failed ones hold theirs until they lapse).
        assert isinstance(await admit(limiter, 1, 5), tuple)
        await limiter.finish(good[3], 5, 1, 0)
        # Held: good[0], good[1], good[2] (their settlements failed), good[4] and the new one.
        assert await budget(limiter, "key", 1) == {"spent": "5", "reserved": str(5 * 5)}
        await limiter.close()

    run(work())


def test_settlements_ride_with_the_next_admissions(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        spy = Spy(limiter, "_batcher", 3)
        found = held(
            await asyncio.gather(*(admit(limiter, 1, 10, key_credit=100) for _ in range(10)))
        )
        for reservation in found[:4]:
            limiter.finish_soon(reservation, 2, 1, 0)  # a batch that can wait: not sent yet
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert spy.calls == [10]
        # The next admissions take the settlements along, in order: the credit they freed
        # (4 * 8) admits three more requests of 10, and no more.
        more = await asyncio.gather(*(admit(limiter, 1, 10, key_credit=100) for _ in range(4)))
        assert spy.calls == [10, 4 + 4]
        assert [type(f).__name__ for f in more] == ["tuple"] * 3 + ["InsufficientQuota"]
        # Alone, settlements wait FINISH_DELAY for company, then go without any admission.
        for reservation in found[4:]:
            limiter.finish_soon(reservation, 2, 1, 0)
        await asyncio.sleep(0.001)
        assert spy.calls == [10, 8]
        await limiter._batcher.wait()
        assert spy.calls == [10, 8, 6]
        assert await budget(limiter, "key", 1) == {"spent": str(10 * 2), "reserved": "30"}
        await limiter.close()

    run(work())


def test_an_unreachable_redis_fails_the_batch_fast() -> None:
    async def work() -> None:
        limiter = RedisLimiter("redis://127.0.0.1:1/0")
        found = await asyncio.gather(*(admit(limiter, i, 1) for i in range(10)))
        assert all(isinstance(f, ServiceUnavailable) for f in found)
        assert limiter.batches == 1
        await limiter.close()

    run(work())


def test_a_cancelled_caller_leaves_the_others_their_answers(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(admit(limiter, 1, 1, key_credit=3)) for _ in range(5)]
        await asyncio.sleep(0)  # all five queued in one batch
        tasks[0].cancel()
        found = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(found[0], asyncio.CancelledError)
        # The cancelled item still ran (it holds its reservation until it lapses).
        assert [type(f).__name__ for f in found[1:]] == ["tuple"] * 2 + ["InsufficientQuota"] * 2
        assert limiter.batches == 1
        await limiter.close()

    run(work())


def test_finish_soon_joins_the_turns_batch_and_never_raises(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def work() -> None:
        limiter = make(backend)
        reservations = held(await asyncio.gather(*(admit(limiter, 1, 10) for _ in range(11))))
        for reservation in reservations[:10]:
            limiter.finish_soon(reservation, 3, 1, 0)
        await limiter.finish(reservations[10], 3, 1, 0)  # the same batch: answered with it
        assert limiter.batches == 2
        assert await budget(limiter, "key", 1) == {"spent": "33", "reserved": "0"}

        async def broken(*, keys: list[bytes], args: list[Any]) -> Any:
            raise RedisConnectionError("connection reset")

        more = held(await asyncio.gather(*(admit(limiter, 1, 10) for _ in range(3))))
        limiter._batcher.script = broken
        for reservation in more:
            limiter.finish_soon(reservation, 3, 1, 0)
        await limiter.close()  # waits for the batches under way
        assert "3 limiter updates failed in Redis: connection reset" in caplog.text

    run(work())


def test_a_cancelled_batch_cancels_its_callers_only(backend: Backend) -> None:
    async def work() -> None:
        limiter = make(backend)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(admit(limiter, 1, 1)) for _ in range(3)]
        await asyncio.sleep(0)  # queued; the batch's task has not started
        (sending,) = limiter._batcher._sending
        sending.cancel()
        found = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(f, asyncio.CancelledError) for f in found)
        assert isinstance(await admit(limiter, 1, 1), tuple)  # the next turn's batch is fresh
        await limiter.close()

    run(work())


def test_scripts_come_back_after_redis_lost_them_and_after_a_dropped_connection(
    backend: Backend,
) -> None:
    async def work() -> None:
        limiter = make(backend)
        assert isinstance(await admit(limiter, 1, 1), tuple)
        await limiter.redis.script_flush()  # as a Redis restart would
        assert isinstance(await admit(limiter, 1, 1), tuple)
        # Redis drops the limiter's own connection: a call fails (503), the next reconnects.
        connection = limiter._script._connection
        host, port = connection._writer.get_extra_info("sockname")[:2]
        await limiter.redis.client_kill_filter(laddr=None, addr=f"{host}:{port}")
        failed = await admit(limiter, 1, 1)
        assert isinstance(failed, ServiceUnavailable)
        assert isinstance(await admit(limiter, 1, 1), tuple)
        assert (await budget(limiter, "key", 1))["reserved"] == "3"
        await limiter.close()

    run(work())


class _SilentRedis(asyncio.Protocol):
    """A Redis that answers the connection's set-up commands and never answers EVALSHA: a
    server that hangs mid-call. redis-py 8 opens with HELLO 3 (RESP3), answered as Redis 7
    does, with a map that names the protocol; other set-up commands get OK."""

    HELLO = b"%1\r\n$5\r\nproto\r\n:3\r\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"EVALSHA" in data:
            return
        commands = data.count(b"\r\n*", 0) + 1
        if b"HELLO" in data:  # sent alone: the client waits for its answer
            self.transport.write(self.HELLO + b"+OK\r\n" * (commands - 1))
            return
        self.transport.write(b"+OK\r\n" * commands)


def test_a_call_redis_never_answers_times_out_and_the_next_reconnects(backend: Backend) -> None:
    async def work() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_SilentRedis, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        limiter = RedisLimiter(redis)
        started = loop.time()
        found = await asyncio.gather(*(admit(limiter, 1, 1) for _ in range(3)))
        waited = loop.time() - started
        assert all(isinstance(f, ServiceUnavailable) for f in found)
        assert all(isinstance(f.__cause__, RedisTimeoutError) for f in found)
        assert 0.3 <= waited < 2.0, waited
        # The calls after it go on, each on a fresh connection, under the same bound.
        assert isinstance(await admit(limiter, 1, 1), ServiceUnavailable)
        await limiter.close()
        await redis.aclose()
        server.close()
        # A live Redis with the same short bound: calls spread over several bounds are not cut
        # (the watchdog looks at the call under way when it fires).
        live = Redis.from_url(REDIS_URL, socket_timeout=0.3)
        quick = RedisLimiter(live, prefix=backend.prefix, clock=backend.clock)
        for _ in range(8):
            assert isinstance(await admit(quick, 1, 1), tuple)
            await asyncio.sleep(0.1)
        assert quick.batches == 8
        await quick.close()
        await live.aclose()

    run(work())

"""The accounting engine: exact pricing, and budget reservations that never overspend.

Every limiter case runs on the in-process ``MemoryLimiter`` and on ``RedisLimiter`` against a
real Redis (two limiters with their own connections stand for two processes).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Iterator
from fractions import Fraction
from typing import Any

import pytest

from llmrelay.accounting.limits import Limiter, RateStatus, Reservation, create_limiter
from llmrelay.accounting.memory_limits import MemoryLimiter
from llmrelay.accounting.money import parse_price
from llmrelay.accounting.pricing import Consumption, cost, usage_cost, worst_case
from llmrelay.accounting.redis_limits import RedisLimiter
from llmrelay.errors import InsufficientQuota, RateLimited, ServiceUnavailable, error_payload
from llmrelay.store.prices import PriceRecord
from llmrelay.stream import Usage
from tests.limiters import LIMITERS, Backend, limiter_backend, redis_keys

USD = 10**12
BIG = 10**16 + 12345  # beyond 2**53: a double cannot hold it exactly


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


@pytest.fixture(params=LIMITERS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with limiter_backend(request.param) as found:
        yield found


def price(**values: Any) -> PriceRecord:
    return PriceRecord(model="m", **{"input_pusd": 0, "output_pusd": 0, **values})


# -- pricing -------------------------------------------------------------------------------------


def test_cost_prices_each_token_once_and_exactly() -> None:
    # USD per million tokens: 2.50 input, 1.25 cached, 10 output, 12 reasoning, 0.035 a search.
    p = price(
        input_pusd=parse_price("2.50"),
        cached_input_pusd=parse_price("1.25"),
        output_pusd=parse_price("10"),
        reasoning_pusd=parse_price("12"),
        per_search_pusd=35_000_000_000,
    )
    used = Consumption(
        prompt_tokens=1000, cached_tokens=400, completion_tokens=300, reasoning_tokens=100,
        search_calls=2,
    )  # fmt: skip
    expected_usd = (
        Fraction(600 * 250, 100 * 10**6)
        + Fraction(400 * 125, 100 * 10**6)
        + Fraction(200 * 10, 10**6)
        + Fraction(100 * 12, 10**6)
        + Fraction(2 * 35, 1000)
    )
    assert cost(p, used) == expected_usd * USD


def test_missing_cached_and_reasoning_prices_fall_back() -> None:
    p = price(input_pusd=3, output_pusd=7)
    used = Consumption(prompt_tokens=10, cached_tokens=4, completion_tokens=5, reasoning_tokens=5)
    assert cost(p, used) == 10 * 3 + 5 * 7
    assert cost(None, used) == 0  # a model without a price is free


def test_counts_beyond_their_total_are_capped_not_charged_twice() -> None:
    p = price(input_pusd=3, cached_input_pusd=1, output_pusd=7, reasoning_pusd=9)
    used = Consumption(prompt_tokens=10, cached_tokens=50, completion_tokens=5, reasoning_tokens=8)
    assert cost(p, used) == 10 * 1 + 5 * 9


def test_cost_is_exact_for_huge_counts() -> None:
    p = price(input_pusd=parse_price("0.000001"), output_pusd=parse_price("123.456789"))
    used = Consumption(prompt_tokens=3 * 10**9 + 7, completion_tokens=10**9 + 1)
    assert cost(p, used) == (3 * 10**9 + 7) * 1 + (10**9 + 1) * 123_456_789
    assert float(cost(p, used)) != cost(p, used)  # beyond floats: only integers get this right


def _reference(p: PriceRecord, prompt: int, completion: int, cached: int, reasoning: int) -> int:
    """Token by token, as a check on the closed formula."""
    total = sum(p.cached_input if i < cached else p.input_pusd for i in range(prompt))
    total += sum(p.reasoning if i < reasoning else p.output_pusd for i in range(completion))
    return total


def test_cost_matches_a_token_by_token_sum() -> None:
    rng = random.Random(7)
    for _ in range(300):
        p = price(
            input_pusd=rng.randrange(10**8),
            cached_input_pusd=rng.choice([None, rng.randrange(10**8)]),
            output_pusd=rng.randrange(10**8),
            reasoning_pusd=rng.choice([None, rng.randrange(10**8)]),
            per_search_pusd=rng.randrange(10**11),
        )
        prompt, completion = rng.randrange(2000), rng.randrange(2000)
        cached, reasoning = rng.randrange(prompt + 1), rng.randrange(completion + 1)
        searches = rng.randrange(5)
        usage = Usage(prompt, completion, cached_tokens=cached, reasoning_tokens=reasoning)
        expected = _reference(p, prompt, completion, cached, reasoning)
        expected += searches * p.per_search_pusd
        assert usage_cost(p, usage, search_calls=searches) == expected
        # The reservation covers whatever the request may turn out to use.
        bound = worst_case(p, prompt_tokens=prompt, max_tokens=completion, max_searches=searches)
        assert bound >= expected


def test_worst_case_takes_the_dearer_prices() -> None:
    p = price(
        input_pusd=3, cached_input_pusd=5, output_pusd=7, reasoning_pusd=11, per_search_pusd=13
    )
    assert worst_case(p, prompt_tokens=100, max_tokens=50, max_searches=2) == 500 + 550 + 26
    cheap_reasoning = price(input_pusd=3, output_pusd=7, reasoning_pusd=2)
    assert worst_case(cheap_reasoning, prompt_tokens=100, max_tokens=50) == 300 + 350
    assert worst_case(None, prompt_tokens=100, max_tokens=50) == 0


@pytest.mark.parametrize(
    "bad", [{"prompt_tokens": -1}, {"completion_tokens": -5}, {"search_calls": -1}]
)
def test_negative_counts_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        cost(price(input_pusd=1, output_pusd=1), Consumption(**bad))
    with pytest.raises(TypeError):
        cost(None, Consumption(prompt_tokens=1.5))  # type: ignore[arg-type]


def test_the_prompt_bound_counts_a_token_per_byte_and_a_budget_per_image() -> None:
    from llmrelay.accounting.meter import IMAGE_TOKENS, MESSAGE_TOKENS, prompt_bound
    from llmrelay.dialects.openai_chat import parse_chat_request

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    text = {"type": "text", "text": "héllo"}  # 6 bytes in UTF-8
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [text, image, text]},
        ],
    }
    request = parse_chat_request(body, path_model=None, default_model="m")
    expected = 16 + 2 * MESSAGE_TOKENS + len("Be brief.") + 2 * 6 + IMAGE_TOKENS
    assert prompt_bound(request) == expected


# -- reservations --------------------------------------------------------------------------------


async def _reserve(limiter: Limiter, key_id: int, amount: int, **state: Any) -> Reservation | None:
    values = {"key_credit": None, "key_spent": 0, "user_balance": None, "user_spent": 0}
    try:
        return await limiter.reserve(key_id, state.pop("user_id", 1), amount, **(values | state))
    except InsufficientQuota:
        return None


async def _close(*limiters: Limiter) -> None:
    for limiter in limiters:
        await limiter.close()


def test_concurrent_reservations_never_exceed_a_key_credit(backend: Backend) -> None:
    async def work() -> None:
        limiters = [backend.make(), backend.make()]  # two processes (one shared memory)
        amount = 7 * USD + 3
        calls = [
            _reserve(
                limiters[i % 2], 1, amount, key_credit=10 * amount + 5 * USD, key_spent=5 * USD
            )
            for i in range(200)
        ]
        held = [r for r in await asyncio.gather(*calls) if r is not None]
        assert len(held) == 10
        # Settling below the reservation frees exactly the difference.
        await limiters[0].settle(held[0], amount - 1)
        assert await _reserve(limiters[1], 1, 2, key_credit=10 * amount + 5 * USD) is None
        assert await _reserve(limiters[1], 1, 1, key_credit=10 * amount + 5 * USD) is not None
        await _close(*limiters)

    run(work())


def test_a_user_balance_is_shared_by_the_users_keys(backend: Backend) -> None:
    async def work() -> None:
        limiters = [backend.make(), backend.make()]
        state = {"user_id": 9, "user_balance": 10 * USD, "user_spent": 3 * USD}
        calls = [
            _reserve(limiters[i % 2], 100 + i % 5, USD, key_credit=100 * USD, **state)
            for i in range(200)
        ]
        held = [r for r in await asyncio.gather(*calls) if r is not None]
        assert len(held) == 10
        assert {r.key_id for r in held} <= {100, 101, 102, 103, 104}
        # Another user is not affected.
        assert await _reserve(limiters[0], 100, USD, user_id=10, user_balance=USD) is not None
        await _close(*limiters)

    run(work())


def test_settle_releases_once_and_counts_the_actual_cost(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        credit = {"key_credit": 100, "key_spent": 0}
        first = await _reserve(limiter, 1, 60, **credit)
        assert first is not None
        assert await _reserve(limiter, 1, 41, **credit) is None
        await limiter.settle(first, 30)
        await limiter.settle(first, 30)  # a second settle changes nothing
        assert await _reserve(limiter, 1, 71, **credit) is None
        second = await _reserve(limiter, 1, 70, **credit)
        assert second is not None
        await limiter.settle(second, 0)  # released unused
        third = await _reserve(limiter, 1, 70, **credit)
        assert third is not None
        await limiter.settle(third, 90)  # more than held: the spend is what counts
        assert await _reserve(limiter, 1, 0, **credit) is None  # 120 spent of 100
        with pytest.raises(ValueError):
            await limiter.settle(Reservation(1, 1, 5), -1)
        await limiter.close()

    run(work())


def test_finish_settles_and_corrects_tokens_in_one_call(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        credit = {"key_credit": 100, "key_spent": 0}
        held = await _reserve(limiter, 1, 60, **credit)
        assert held is not None
        status = await limiter.check_rate(1, None, 10, 8)  # 8 of 10 tokens counted up front
        assert status.headers()["x-ratelimit-remaining-tokens"] == "2"
        await limiter.finish(held, 30, 1, -6)  # 30 spent; only 2 tokens were used
        await limiter.finish(held, 30, 1, 0)  # settled once: a second finish changes nothing
        assert await _reserve(limiter, 1, 71, **credit) is None
        assert await _reserve(limiter, 1, 70, **credit) is not None
        again = await limiter.check_rate(1, None, 10, 8)  # 6 tokens came back
        assert again.headers()["x-ratelimit-remaining-tokens"] == "0"
        await limiter.finish(None, 0, 1, 0)  # nothing to do
        await limiter.close()

    run(work())


def test_spend_is_learned_from_snapshots_without_double_counting(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        user = {"user_id": 4, "user_balance": 100, "user_spent": 0}
        held = await _reserve(limiter, 1, 40, **user)
        assert held is not None
        await limiter.settle(held, 40)
        # The ledger committed the 40: a fresh snapshot moved it from balance to spent.
        after = {"user_id": 4, "user_balance": 60, "user_spent": 40}
        assert await _reserve(limiter, 1, 61, **after) is None
        sixty = await _reserve(limiter, 2, 60, **after)
        assert sixty is not None
        await limiter.settle(sixty, 0)
        # A stale snapshot (cached before the commit) gives the same answers.
        assert await _reserve(limiter, 3, 61, **user) is None
        assert await _reserve(limiter, 3, 60, **user) is not None
        # A top-up shows in the next snapshot: 600 given, 40 spent, 60 held.
        topped = {"user_id": 4, "user_balance": 560, "user_spent": 40}
        assert await _reserve(limiter, 1, 501, **topped) is None
        assert await _reserve(limiter, 1, 500, **topped) is not None
        # Another process spent 50 on the key before we saw it: a later snapshot says so.
        assert await _reserve(limiter, 7, 50, key_credit=100, key_spent=0) is not None
        assert await _reserve(limiter, 7, 1, key_credit=100, key_spent=50) is None
        await limiter.close()

    run(work())


def test_unlimited_credit_and_balance(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        for _ in range(5):
            assert await _reserve(limiter, 1, 10**18) is not None
        await limiter.close()

    run(work())


def test_money_beyond_double_precision_is_exact(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        key = {"key_credit": BIG + 7, "key_spent": BIG}
        assert await _reserve(limiter, 1, 8, **key) is None
        seven = await _reserve(limiter, 1, 7, **key)
        assert seven is not None
        assert await _reserve(limiter, 1, 1, **key) is None
        await limiter.settle(seven, 6)
        assert await _reserve(limiter, 1, 1, **key) is not None
        user = {"user_id": 2, "user_balance": BIG, "user_spent": BIG - 1}
        assert await _reserve(limiter, 2, BIG + 1, **user) is None  # given 2*BIG-1, spent BIG-1
        assert await _reserve(limiter, 2, BIG, **user) is not None
        assert await _reserve(limiter, 3, 0, user_id=3, user_balance=-5, user_spent=1) is None
        await limiter.close()

    run(work())


def test_an_abandoned_reservation_lapses(backend: Backend) -> None:
    backend.reservation_ttl = 600

    async def work() -> None:
        limiter = backend.make()
        assert await _reserve(limiter, 1, 100, key_credit=100) is not None  # never settled
        assert await _reserve(limiter, 1, 1, key_credit=100) is None
        backend.clock.advance(601)
        late = await _reserve(limiter, 1, 100, key_credit=100)
        assert late is not None
        await limiter.settle(late, 100)
        assert await _reserve(limiter, 1, 1, key_credit=200) is not None  # spent 100 of 200
        assert await _reserve(limiter, 1, 100, key_credit=200) is None
        await limiter.close()

    run(work())


def test_reservations_lapse_in_the_order_they_were_made(backend: Backend) -> None:
    backend.reservation_ttl = 600

    async def work() -> None:
        limiter = backend.make()
        first = await _reserve(limiter, 1, 10, key_credit=100)
        backend.clock.advance(100)
        second = await _reserve(limiter, 1, 20, key_credit=100)
        backend.clock.advance(100)
        third = await _reserve(limiter, 1, 30, key_credit=100)
        assert first is not None and second is not None and third is not None
        await limiter.settle(second, 20)  # 20 spent; 10 and 30 still held
        assert await _reserve(limiter, 1, 41, key_credit=100) is None
        backend.clock.advance(450)  # the first is past its deadline, the third is not
        assert await _reserve(limiter, 1, 51, key_credit=100) is None
        held = await _reserve(limiter, 1, 50, key_credit=100)
        assert held is not None
        await limiter.settle(first, 10)  # lapsed, but what it cost still counts
        assert await _reserve(limiter, 1, 1, key_credit=100) is None  # 30 spent, 80 held
        await limiter.close()

    run(work())


def test_the_quota_error_is_openais(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        for kwargs in ({"key_credit": 5}, {"user_balance": 5}):
            with pytest.raises(InsufficientQuota) as caught:
                values = {"key_credit": None, "key_spent": 0, "user_balance": None}
                await limiter.reserve(1, 1, 6, **(values | kwargs), user_spent=0)
            body = error_payload(caught.value)["error"]
            assert caught.value.status == 429
            assert body["type"] == body["code"] == "insufficient_quota"
        await limiter.close()

    run(work())


def test_forget_relearns_the_spend(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        held = await _reserve(limiter, 1, 50, key_credit=100)
        assert held is not None
        await limiter.settle(held, 50)
        assert await _reserve(limiter, 1, 51, key_credit=100) is None
        await limiter.forget(key_id=1)  # e.g. an admin reset the key's spend to 0
        assert await _reserve(limiter, 1, 100, key_credit=100, key_spent=0) is not None
        await limiter.close()

    run(work())


async def _admit(limiter: Limiter, amount: int | None, **limits: Any) -> Reservation | None:
    """Admit one request on key 1 of user 1 (credit 100): its reservation, None without one."""
    values = {"rpm": None, "tpm": None, "tokens": 1, "key_credit": 100, "key_spent": 0}
    values |= {"user_balance": None, "user_spent": 0}
    _, reservation = await limiter.admit(1, 1, amount=amount, **(values | limits))
    return reservation


def test_admit_checks_the_rate_then_reserves(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        status, held = await limiter.admit(
            1, 1, rpm=3, tpm=None, tokens=1, amount=60, key_credit=100, key_spent=0,
            user_balance=None, user_spent=0,
        )  # fmt: skip
        assert held is not None and held.amount == 60
        assert status.headers()["x-ratelimit-remaining-requests"] == "2"
        # Refused for money: the request still counts against the RPM.
        with pytest.raises(InsufficientQuota):
            await _admit(limiter, 60, rpm=3)
        assert await _admit(limiter, None, rpm=3) is None  # the third request: no money asked
        # Refused by the RPM: nothing is reserved, so all 40 left can still be held.
        with pytest.raises(RateLimited):
            await _admit(limiter, 40, rpm=3)
        with pytest.raises(RateLimited, match="Request too large"):
            await _admit(limiter, 40, tpm=10, tokens=11)
        assert await _reserve(limiter, 1, 40, key_credit=100) is not None
        assert await _reserve(limiter, 1, 1, key_credit=100) is None
        # No limits and no money: nothing to do.
        assert await limiter.admit(
            2, 1, rpm=None, tpm=None, tokens=5, amount=None, key_credit=None, key_spent=0,
            user_balance=None, user_spent=0,
        ) == (RateStatus(), None)  # fmt: skip
        await limiter.finish(held, 10, 1, 0)
        assert await _reserve(limiter, 1, 51, key_credit=100) is None  # 10 spent, 40 held
        assert await _reserve(limiter, 1, 50, key_credit=100) is not None
        await limiter.close()

    run(work())


def test_admit_now_admits_without_a_coroutine_where_the_state_is_in_process(
    backend: Backend,
) -> None:
    async def work() -> None:
        limiter = backend.make()
        # key 1 of user 1: RPM 3, one token, 60 of a credit of 100
        args = (1, 1, 3, None, 1, 60, 100, 0, None, 0)
        admitted = limiter.admit_now(*args)
        if backend.kind == "redis":
            assert admitted is None  # a round trip: the caller awaits admit()
        else:
            assert admitted is not None
            status, held = admitted
            assert held is not None and held.amount == 60
            assert status.headers()["x-ratelimit-remaining-requests"] == "2"
            for _ in range(2):  # 60 more would pass the credit; each still counts as a request
                with pytest.raises(InsufficientQuota):
                    limiter.admit_now(*args)
            with pytest.raises(RateLimited):
                limiter.admit_now(*args)  # the RPM's three requests are used
        await limiter.close()

    run(work())


def test_redis_state_lives_under_the_documented_keys() -> None:
    async def work(backend: Backend) -> None:
        limiter = backend.make()
        held = await _reserve(limiter, 5, 10, user_id=6)
        assert held is not None
        await limiter.check_rate(5, 10, 1000, 3)
        p = "{" + backend.prefix + "}"
        expected = [f"{p}:key:5", f"{p}:key:5:held", f"{p}:rate:5:req", f"{p}:rate:5:tok"]
        expected += [f"{p}:user:6", f"{p}:user:6:held"]
        assert [k.decode() for k in redis_keys(backend.prefix)] == sorted(expected)
        assert isinstance(limiter, RedisLimiter)
        ttl = await limiter.redis.pttl(f"{p}:key:5")
        assert 0 < ttl <= 3600 * 1000
        await limiter.settle(held, 10)
        assert await limiter.redis.hget(f"{p}:key:5", "spent") == "10"
        assert await limiter.redis.exists(f"{p}:key:5:held") == 0
        await limiter.close()

    with limiter_backend("redis") as backend:
        run(work(backend))


def test_an_unreachable_redis_is_a_503_not_a_hang() -> None:
    async def work() -> None:
        limiter = RedisLimiter("redis://127.0.0.1:1/0")
        with pytest.raises(ServiceUnavailable) as caught:
            await _reserve(limiter, 1, 1)
        assert caught.value.headers["Retry-After"] == "1"
        await limiter.close()

    run(work())


def test_create_limiter_picks_the_backend() -> None:
    assert isinstance(create_limiter(None), MemoryLimiter)
    shared = create_limiter("redis://127.0.0.1:6379/0")
    assert isinstance(shared, RedisLimiter)
    run(shared.close())

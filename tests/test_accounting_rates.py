"""Per-key RPM and TPM limits, in memory and in a real Redis shared by two limiters."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from llmrelay.accounting.limits import Limiter, RateStatus, duration_text
from llmrelay.errors import RateLimited, error_payload
from tests.limiters import LIMITERS, Backend, limiter_backend


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


@pytest.fixture(params=LIMITERS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with limiter_backend(request.param) as found:
        yield found


async def _try(
    limiter: Limiter, key_id: int, rpm: int | None, tpm: int | None, tokens: int
) -> RateStatus | RateLimited:
    try:
        return await limiter.check_rate(key_id, rpm, tpm, tokens)
    except RateLimited as exc:
        return exc


async def _burst(
    limiters: list[Limiter], n: int, rpm: int | None, tpm: int | None, tokens: int = 1
) -> tuple[list[RateStatus], list[RateLimited]]:
    found = await asyncio.gather(
        *(_try(limiters[i % len(limiters)], 1, rpm, tpm, tokens) for i in range(n))
    )
    passed = [f for f in found if isinstance(f, RateStatus)]
    return passed, [f for f in found if isinstance(f, RateLimited)]


async def _close(*limiters: Limiter) -> None:
    for limiter in limiters:
        await limiter.close()


def test_requests_per_minute_hold_to_the_request(backend: Backend) -> None:
    async def work() -> None:
        limiters = [backend.make(), backend.make()]
        passed, refused = await _burst(limiters, 60, rpm=10, tpm=None)
        assert len(passed) == 10 and len(refused) == 50
        error = refused[0]
        assert error.status == 429
        assert error_payload(error)["error"]["code"] == "rate_limit_exceeded"
        assert "requests per min (RPM): Limit 10" in error.message
        assert error.headers["Retry-After"] == "6"  # 10 a minute: one every 6 s
        assert error.headers["retry-after-ms"] == "6000"
        assert error.retry_after == 6.0
        assert error.headers["x-ratelimit-limit-requests"] == "10"
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.headers["x-ratelimit-reset-requests"] == "1m0s"
        backend.clock.advance(5.9)
        assert len((await _burst(limiters, 5, rpm=10, tpm=None))[0]) == 0
        backend.clock.advance(0.1)
        assert len((await _burst(limiters, 5, rpm=10, tpm=None))[0]) == 1
        backend.clock.advance(3600)  # a bucket holds one minute's allowance, no more
        assert len((await _burst(limiters, 30, rpm=10, tpm=None))[0]) == 10
        await _close(*limiters)

    run(work())


def test_tokens_per_minute_with_corrections(backend: Backend) -> None:
    async def work() -> None:
        limiters = [backend.make(), backend.make()]
        passed, refused = await _burst(limiters, 20, rpm=None, tpm=1000, tokens=300)
        assert len(passed) == 3
        assert "tokens per min (TPM): Limit 1000" in refused[0].message
        assert refused[0].headers["x-ratelimit-remaining-tokens"] == "100"
        assert "x-ratelimit-limit-requests" not in refused[0].headers
        # One request used no tokens at all: its estimate comes back.
        await limiters[0].add_tokens(1, -300)
        assert len((await _burst(limiters, 5, rpm=None, tpm=1000, tokens=300))[0]) == 1
        # One used far more than estimated: the key is in debt (at most one minute's worth).
        await limiters[1].add_tokens(1, 10**6)
        backend.clock.advance(60)
        assert len((await _burst(limiters, 5, rpm=None, tpm=1000, tokens=1))[0]) == 0
        backend.clock.advance(60)
        status = await limiters[0].check_rate(1, None, 1000, 1000)
        assert status.headers()["x-ratelimit-remaining-tokens"] == "0"
        await _close(*limiters)

    run(work())


def test_tokens_given_back_after_a_refill_fill_the_bucket_no_further(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        await limiter.check_rate(1, None, 1000, 600)  # 400 left
        backend.clock.advance(30)  # +500: 900
        await limiter.add_tokens(1, -300)  # 1200, capped at the minute's 1000
        status = await limiter.check_rate(1, None, 1000, 1000)
        assert status.headers()["x-ratelimit-remaining-tokens"] == "0"
        # Given back within the same millisecond (nothing refills before the next check).
        await limiter.add_tokens(1, -1300)
        status = await limiter.check_rate(1, None, 1000, 1000)
        assert status.headers()["x-ratelimit-remaining-tokens"] == "0"
        await _close(limiter)

    run(work())


def test_headers_of_an_admitted_request(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        first = await limiter.check_rate(1, 10, 1000, 100)
        assert first.headers() == {
            "x-ratelimit-limit-requests": "10",
            "x-ratelimit-remaining-requests": "9",
            "x-ratelimit-reset-requests": "6s",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": "6s",
        }
        backend.clock.advance(1.5)
        second = (await limiter.check_rate(1, 10, 1000, 50)).headers()
        assert second["x-ratelimit-remaining-requests"] == "8"
        assert second["x-ratelimit-reset-requests"] == "10.5s"
        assert second["x-ratelimit-remaining-tokens"] == "875"  # 900 + 25 refilled - 50
        assert await limiter.check_rate(2, None, None, 10**9) == RateStatus()
        assert RateStatus().headers() == {}
        await limiter.close()

    run(work())


def test_a_refused_request_takes_nothing(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        await limiter.check_rate(1, 5, 100, 100)  # the tokens are gone, 4 requests are left
        for _ in range(10):
            with pytest.raises(RateLimited) as caught:
                await limiter.check_rate(1, 5, 100, 50)
        assert caught.value.headers["x-ratelimit-remaining-requests"] == "4"
        assert caught.value.headers["Retry-After"] == "30"  # 50 tokens at 100 a minute
        await limiter.close()

    run(work())


def test_requests_that_no_wait_can_admit(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        with pytest.raises(RateLimited) as caught:
            await limiter.check_rate(1, 100, 1000, 1001)
        assert "Request too large" in caught.value.message
        assert "Retry-After" not in caught.value.headers
        with pytest.raises(RateLimited) as caught:
            await limiter.check_rate(1, 0, None, 1)
        assert "Retry-After" not in caught.value.headers
        await limiter.close()

    run(work())


def test_a_lowered_limit_applies_at_once(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        await limiter.check_rate(1, 100, None, 1)
        passed, _ = await _burst([limiter], 10, rpm=2, tpm=None)
        assert len(passed) == 2
        await limiter.close()

    run(work())


def test_a_limit_added_to_a_limited_key_starts_full(backend: Backend) -> None:
    async def work() -> None:
        limiter = backend.make()
        await limiter.check_rate(1, None, 1000, 10)  # a TPM only
        passed, refused = await _burst([limiter], 5, rpm=3, tpm=1000)
        assert len(passed) == 3 and len(refused) == 2
        assert passed[0].headers()["x-ratelimit-remaining-requests"] == "2"
        assert passed[0].headers()["x-ratelimit-remaining-tokens"] == "989"  # 10, then 1
        await limiter.close()

    run(work())


def test_real_concurrency_across_redis_connections() -> None:
    """Four limiters with their own connections, many requests at once, the real clock."""
    import time

    async def work(backend: Backend) -> None:
        limiters = [backend.make() for _ in range(4)]
        for limiter in limiters:
            limiter._clock = time.time  # type: ignore[attr-defined]
        passed, _ = await _burst(limiters, 400, rpm=50, tpm=None)
        # Refill adds one request per 1.2 s; the burst takes far less.
        assert 50 <= len(passed) <= 51
        await _close(*limiters)

    with limiter_backend("redis") as backend:
        run(work(backend))


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (20, "20ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (66_500, "1m6.5s"),
        (120_000, "2m0s"),
    ],
)
def test_reset_durations_read_like_openais(ms: int, text: str) -> None:
    assert duration_text(ms) == text

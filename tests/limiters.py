"""Limiter backends for tests: in memory, or a real Redis under a prefix of the test's own.

Redis is found at ``TEST_REDIS_URL`` (default: 127.0.0.1:6379). When it cannot be reached the
Redis cases are skipped, except under ``CI=1``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from llmrelay.accounting.limits import Limiter
from llmrelay.accounting.memory_limits import MemoryLimiter
from llmrelay.accounting.redis_limits import RedisLimiter

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMITERS = ("memory", "redis")


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """Makes limiters that share one state: one ``MemoryLimiter``, or Redis limiters with
    their own connections (as separate processes would have) under one prefix."""

    kind: str
    prefix: str
    clock: FakeClock = field(default_factory=FakeClock)
    reservation_ttl: float = 1800.0
    _memory: MemoryLimiter | None = None

    def make(self) -> Limiter:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryLimiter(clock=self.clock, reservation_ttl=self.reservation_ttl)
            return self._memory
        return RedisLimiter(
            REDIS_URL, prefix=self.prefix, clock=self.clock, reservation_ttl=self.reservation_ttl
        )


def _redis_or_skip() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis at {REDIS_URL} is unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()


def redis_keys(prefix: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sorted(client.scan_iter(match="{" + prefix + "}*", count=1000))
    finally:
        client.close()


def _flush(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(match="{" + prefix + "}*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


@contextmanager
def limiter_backend(kind: str) -> Iterator[Backend]:
    """A backend under a fresh prefix; its Redis keys are deleted afterwards."""
    prefix = f"llmrelay-test-{uuid.uuid4().hex[:12]}"
    if kind == "redis":
        _redis_or_skip()
    try:
        yield Backend(kind, prefix)
    finally:
        if kind == "redis":
            _flush(prefix)

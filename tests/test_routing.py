"""Route ordering and the circuit breaker, on their own."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmrelay.errors import ModelNotFound
from llmrelay.providers.base import Capabilities, ModelInfo
from llmrelay.routing.breaker import CircuitBreaker
from llmrelay.routing.router import Route, Router


def route(name: str, model: str, priority: int, weight: int) -> Route:
    info = ModelInfo(id=model, owned_by=name, capabilities=Capabilities())
    return Route(name, None, info, priority, weight, None)  # type: ignore[arg-type]


def test_priority_tiers_come_first_and_weights_split_traffic() -> None:
    router = Router(rng=random.Random(7))
    router.set_routes([route("low", "m", 0, 1), route("a", "m", 5, 1), route("b", "m", 5, 3)])
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        order = [r.name for r in router.routes("m")]
        assert order[-1] == "low"  # the lower tier is only a fallback
        firsts[order[0]] += 1
    assert 0.70 < firsts["b"] / 4000 < 0.80  # weight 3 of 4


def test_unknown_model_lists_what_exists() -> None:
    router = Router()
    router.set_routes([route("a", "m1", 0, 1)])
    with pytest.raises(ModelNotFound, match="m1"):
        router.routes("nope")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=5, clock=clock)
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.failure()  # the probe failed: open again, for twice as long
    clock.now += 5
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_retry_after_opens_at_once_for_that_long() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=1, clock=clock)
    breaker.failure(retry_after=30)
    assert breaker.state == "open" and breaker.retry_in() == 30
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()

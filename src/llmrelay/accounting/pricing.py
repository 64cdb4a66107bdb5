"""What a request costs under a price, in exact integer picodollars.

A price gives picodollars per token (``llmrelay.accounting.money``), so every cost here is a
sum of integer products: no floats, no rounding. As in OpenAI's usage object, the prompt tokens
include the cached ones and the completion tokens include the reasoning ones; each token is
priced exactly once (cached ones at the cached-input price, reasoning ones at the reasoning
price when the model has one).

:func:`worst_case` is what a reservation holds before the call: the whole prompt at the
dearer input price, every allowed output token at the dearer output price, and every allowed
search call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmrelay.accounting.money import Money

# Picodollars per token: input, cached input, output, reasoning output, per search call, the
# dearer input and the dearer output price (see :func:`rates`).
Rates = tuple[Money, Money, Money, Money, Money, Money, Money]


class PriceLike(Protocol):
    """A price (``store.prices.PriceRecord``), in picodollars per token."""

    @property
    def input_pusd(self) -> Money: ...

    @property
    def output_pusd(self) -> Money: ...

    @property
    def cached_input_pusd(self) -> Money | None: ...  # None: the input price

    @property
    def reasoning_pusd(self) -> Money | None: ...  # None: the output price

    @property
    def per_search_pusd(self) -> Money: ...

    @property
    def rates(self) -> Rates: ...  # rates(self), made once per price (it is on every request)


class TokenCounts(Protocol):
    """``llmrelay.stream.Usage`` or anything shaped like it."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...

    @property
    def reasoning_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Consumption:
    """What one request used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens
    reasoning_tokens: int = 0  # part of completion_tokens
    search_calls: int = 0

    @classmethod
    def of(cls, usage: TokenCounts, *, search_calls: int = 0) -> Consumption:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            search_calls=search_calls,
        )


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")


def cached_input_price(price: PriceLike) -> Money:
    return price.input_pusd if price.cached_input_pusd is None else price.cached_input_pusd


def reasoning_price(price: PriceLike) -> Money:
    return price.output_pusd if price.reasoning_pusd is None else price.reasoning_pusd


def rates(price: PriceLike) -> Rates:
    """Which price applies to which token: input, cached input, output, reasoning output, per
    search call, then the dearer of the two input and of the two output prices (what a
    reservation holds for tokens not counted yet)."""
    cached, reasoning = cached_input_price(price), reasoning_price(price)
    return (
        price.input_pusd,
        cached,
        price.output_pusd,
        reasoning,
        price.per_search_pusd,
        max(price.input_pusd, cached),
        max(price.output_pusd, reasoning),
    )


def cost(price: PriceLike | None, used: Consumption) -> Money:
    """The exact cost of ``used``; a model without a price (None) is free.

    Cached tokens beyond the prompt tokens, or reasoning tokens beyond the completion tokens
    (an upstream that counts them apart), are capped so that no token is charged twice.
    """
    return usage_cost(price, used, search_calls=used.search_calls)


def usage_cost(price: PriceLike | None, usage: TokenCounts, *, search_calls: int = 0) -> Money:
    """:func:`cost` of a ``stream.Usage``. (It runs for every request: checks and sums are
    written out, without helper calls.)"""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    cached, reasoning = usage.cached_tokens, usage.reasoning_tokens
    if not (
        type(prompt) is type(completion) is type(cached) is type(reasoning) is int
        and type(search_calls) is int
        and prompt >= 0
        and completion >= 0
        and cached >= 0
        and reasoning >= 0
        and search_calls >= 0
    ):
        _check_counts(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
            search_calls=search_calls,
        )
    if price is None:
        return 0
    if cached > prompt:
        cached = prompt
    if reasoning > completion:
        reasoning = completion
    per_input, per_cached, per_output, per_reasoning, per_search, _, _ = price.rates
    return (
        (prompt - cached) * per_input
        + cached * per_cached
        + (completion - reasoning) * per_output
        + reasoning * per_reasoning
        + search_calls * per_search
    )


def worst_case(
    price: PriceLike | None, *, prompt_tokens: int, max_tokens: int, max_searches: int = 0
) -> Money:
    """The most a request may cost: what a reservation holds before the call.

    ``prompt_tokens`` is the caller's estimate of the prompt, ``max_tokens`` the most output
    tokens the request allows (its ``max_tokens``/``max_completion_tokens``, else what the
    model's context leaves), ``max_searches`` the most web-search calls it may make.
    """
    if not (
        type(prompt_tokens) is type(max_tokens) is type(max_searches) is int
        and prompt_tokens >= 0
        and max_tokens >= 0
        and max_searches >= 0
    ):
        _check_counts(prompt_tokens=prompt_tokens, max_tokens=max_tokens, max_searches=max_searches)
    if price is None:
        return 0
    found = price.rates
    cost = prompt_tokens * found[5] + max_tokens * found[6]
    return cost + max_searches * found[4] if max_searches else cost

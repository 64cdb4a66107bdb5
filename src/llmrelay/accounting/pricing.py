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


class PriceLike(Protocol):
    """A price row (``store.prices.PriceRecord`` or the ``prices`` table); picodollars/token."""

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


def _counts_ok(*values: int) -> bool:
    """The common case, cheaply: every value a non-negative int (bool is not one)."""
    for value in values:  # noqa: SIM110 (a loop: all() over a generator costs twice as much)
        if type(value) is not int or value < 0:
            return False
    return True


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


def cost(price: PriceLike | None, used: Consumption) -> Money:
    """The exact cost of ``used``; a model without a price (None) is free.

    Cached tokens beyond the prompt tokens, or reasoning tokens beyond the completion tokens
    (an upstream that counts them apart), are capped so that no token is charged twice.
    """
    return _cost(
        price,
        used.prompt_tokens,
        used.completion_tokens,
        used.cached_tokens,
        used.reasoning_tokens,
        used.search_calls,
    )


def _cost(
    price: PriceLike | None,
    prompt: int,
    completion: int,
    cached: int,
    reasoning: int,
    searches: int,
) -> Money:
    if not _counts_ok(prompt, completion, cached, reasoning, searches):
        _check_counts(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
            search_calls=searches,
        )
    if price is None:
        return 0
    cached = min(cached, prompt)
    reasoning = min(reasoning, completion)
    return (
        (prompt - cached) * price.input_pusd
        + cached * cached_input_price(price)
        + (completion - reasoning) * price.output_pusd
        + reasoning * reasoning_price(price)
        + searches * price.per_search_pusd
    )


def usage_cost(price: PriceLike | None, usage: TokenCounts, *, search_calls: int = 0) -> Money:
    """:func:`cost` of a ``stream.Usage``."""
    return _cost(
        price,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        search_calls,
    )


def worst_case(
    price: PriceLike | None, *, prompt_tokens: int, max_tokens: int, max_searches: int = 0
) -> Money:
    """The most a request may cost: what a reservation holds before the call.

    ``prompt_tokens`` is the caller's estimate of the prompt, ``max_tokens`` the most output
    tokens the request allows (its ``max_tokens``/``max_completion_tokens``, else what the
    model's context leaves), ``max_searches`` the most web-search calls it may make.
    """
    if not _counts_ok(prompt_tokens, max_tokens, max_searches):
        _check_counts(prompt_tokens=prompt_tokens, max_tokens=max_tokens, max_searches=max_searches)
    if price is None:
        return 0
    per_input = cached_input_price(price)
    if price.input_pusd > per_input:
        per_input = price.input_pusd
    per_output = reasoning_price(price)
    if price.output_pusd > per_output:
        per_output = price.output_pusd
    cost = prompt_tokens * per_input + max_tokens * per_output
    return cost + max_searches * price.per_search_pusd if max_searches else cost

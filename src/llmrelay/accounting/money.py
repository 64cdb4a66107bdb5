"""Exact money: integer picodollars (1e-12 USD) everywhere, never floats.

Prices are quoted per million tokens in USD. With at most 6 decimals such a price is a whole
number of micro-USD per million tokens, which is exactly a whole number of picodollars per
token, so ``tokens * price`` is exact.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

Money = int  # picodollars

PUSD_PER_USD = 10**12
MAX_MONEY: Money = 2**63 - 1  # a BigInteger column: about 9.2 million USD
_USD_DECIMALS = 12
_PRICE_DECIMALS = 6  # per million tokens: a whole picodollar per token
_TOKENS_PER_PRICE_UNIT = 1_000_000


class MoneyError(ValueError):
    """Text that is not an amount of money we can hold exactly."""


def _decimal(text: str | int | float) -> Decimal:
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise MoneyError(f"{text!r} is not an amount in USD (e.g. 10 or 0.25)")
    raw = text if isinstance(text, str) else repr(text)
    cleaned = raw.strip().replace("_", "")
    cleaned = cleaned.removeprefix("$") if not cleaned.startswith("-$") else "-" + cleaned[2:]
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise MoneyError(f"{raw!r} is not an amount in USD (e.g. 10 or 0.25)") from None
    if not value.is_finite():
        raise MoneyError(f"{raw!r} is not an amount in USD (e.g. 10 or 0.25)")
    return value


def _scaled(value: Decimal, raw: object, decimals: int, unit: str) -> int:
    """``value * 10**decimals`` in exact integer arithmetic (no context rounding)."""
    if value.is_zero():
        return 0
    if value.adjusted() > 30:  # far beyond MAX_MONEY: refuse before building huge numbers
        raise MoneyError(f"{raw!r} is too large (at most {format_usd(MAX_MONEY)})")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite values only
    mantissa = int("".join(map(str, digits)))
    shift = exponent + decimals
    amount: int
    if shift >= 0:
        amount = mantissa * int(10**shift)
    else:
        amount, rest = divmod(mantissa, int(10**-shift))
        if rest:
            raise MoneyError(f"{raw!r} has more than {decimals} decimals {unit}")
    return -amount if sign else amount


def _bounded(amount: int, raw: object, negative: bool) -> Money:
    if amount < 0 and not negative:
        raise MoneyError(f"{raw!r} is negative; expected an amount of at least 0")
    if abs(amount) > MAX_MONEY:
        raise MoneyError(f"{raw!r} is too large (at most {format_usd(MAX_MONEY)})")
    return amount


def parse_usd(text: str | int | float, *, negative: bool = False) -> Money:
    """``"10.50"``, ``"$0.000150"`` or ``2`` in USD, as exact picodollars."""
    value = _decimal(text)
    return _bounded(
        _scaled(value, text, _USD_DECIMALS, "(the smallest unit is 1e-12 USD)"), text, negative
    )


def parse_price(text: str | int | float) -> Money:
    """A price in USD per million tokens, as exact picodollars per token."""
    value = _decimal(text)
    per_token = _scaled(value, text, _PRICE_DECIMALS, "(a price per million tokens has at most 6)")
    return _bounded(per_token, text, negative=False)


def usd_text(value: Money) -> str:
    """The exact amount in USD without a sign symbol: ``"10.50"``, ``"0.000150"``.

    Whole cents show 2 decimals; anything finer at least 6, and more only where needed.
    """
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), PUSD_PER_USD)
    digits = f"{frac:012d}"
    keep = 2 if frac % 10**10 == 0 else max(6, len(digits.rstrip("0")))
    return f"{sign}{whole}.{digits[:keep]}"


def format_usd(value: Money) -> str:
    """``"$0.000150"``, ``"$10.50"``, ``"-$1.00"``: exact, trimmed sensibly."""
    text = usd_text(value)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def price_text(per_token: Money) -> str:
    """A price per token shown per million tokens, in USD: ``"2.50"``, ``"0.075000"``."""
    return usd_text(per_token * _TOKENS_PER_PRICE_UNIT)

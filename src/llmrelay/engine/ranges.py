"""GBNF alternatives that match exactly the integers of a range, written without leading zeros."""

from __future__ import annotations


def _literal(digits: str) -> str:
    return f'"{digits}"' if digits else ""


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _any_digits(count: int) -> str:
    return " ".join(["[0-9]"] * count)


def _same_length(low: str, high: str) -> list[str]:
    """Sequences for every digit string of this length between ``low`` and ``high``."""
    if low == high:
        return [_literal(low)]
    i = next(k for k in range(len(low)) if low[k] != high[k])
    prefix, rest = _literal(low[:i]), len(low) - i - 1
    lo_digit, hi_digit = int(low[i]), int(high[i])
    if low[i + 1 :] == "0" * rest and high[i + 1 :] == "9" * rest:
        return [_seq(prefix, f"[{lo_digit}-{hi_digit}]", _any_digits(rest))]
    out = [_seq(prefix, _literal(low[i]), s) for s in _same_length(low[i + 1 :], "9" * rest)]
    if hi_digit - lo_digit > 1:
        out.append(_seq(prefix, f"[{lo_digit + 1}-{hi_digit - 1}]", _any_digits(rest)))
    out += [_seq(prefix, _literal(high[i]), s) for s in _same_length("0" * rest, high[i + 1 :])]
    return out


def _natural(low: int, high: int | None) -> list[str]:
    """Non-negative integers in ``[low, high]`` (``high`` None: no upper bound)."""
    top = high if high is not None else 10 ** len(str(low)) - 1
    out: list[str] = []
    for width in range(len(str(low)), len(str(top)) + 1):
        start = max(low, 10 ** (width - 1) if width > 1 else 0)
        end = min(top, 10**width - 1)
        if start <= end:
            out += _same_length(str(start), str(end))
    if high is None:
        out.append(f"[1-9] [0-9]{{{len(str(low))},}}")  # every longer number
    return out


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression for the integers ``low <= n <= high`` (None: unbounded)."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"minimum {low} is greater than maximum {high}")
    alternatives: list[str] = []
    if low is None or low < 0:  # negative numbers, written "-" and their magnitude
        magnitude_low = 1 if high is None or high >= 0 else -high
        magnitude_high = None if low is None else -low
        negative = _natural(magnitude_low, magnitude_high)
        alternatives.append(f'"-" ({" | ".join(negative)})')
    if high is None or high >= 0:
        alternatives += _natural(max(low or 0, 0), high)
    return " | ".join(alternatives)

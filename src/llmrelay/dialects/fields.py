"""Typed, path-aware reads from decoded JSON, each failure a 400 naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmrelay.errors import InvalidRequest

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def describe(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {describe(value)}.",
        param=param,
        code="invalid_type",
    )


def missing(param: str, why: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'{f' ({why})' if why else ''}.",
        param=param,
        code="missing_required_parameter",
    )


def invalid_value(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """Reads the members of one JSON object at ``path``.

    ``empty_object_is_null`` accepts ``{}`` for a scalar field as "unset": seed 002's documented
    request template writes every nullable scalar that way.
    """

    def __init__(self, obj: Any, path: str = "", *, empty_object_is_null: bool = True) -> None:
        if not isinstance(obj, Mapping):
            raise wrong_type(path or "body", "an object", obj)
        self.obj: Mapping[str, Any] = obj
        self.path = path
        self.empty_object_is_null = empty_object_is_null

    def param(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return self.raw(key) is not None

    def raw(self, key: str) -> Any:
        return self.obj.get(key)

    def scalar(self, key: str) -> Any:
        """The value of a scalar or array field, with seed 002's ``{}`` read as null."""
        value = self.obj.get(key)
        if self.empty_object_is_null and isinstance(value, dict) and not value:
            return None
        return value

    def required(self, key: str) -> Any:
        value = self.scalar(key)
        if value is None:
            raise missing(self.param(key))
        return value

    def string(self, key: str, *, required: bool = False, nonempty: bool = False) -> str | None:
        value = self.required(key) if required else self.scalar(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise wrong_type(self.param(key), "a string", value)
        if nonempty and not value.strip():
            raise invalid_value(self.param(key), "must not be empty.")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.scalar(key)
        if value is None or isinstance(value, bool):
            return value
        raise wrong_type(self.param(key), "a boolean", value)

    def number(
        self,
        key: str,
        *,
        ge: float | None = None,
        le: float | None = None,
        gt: float | None = None,
        lt: float | None = None,
    ) -> float | None:
        value = self.scalar(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong_type(self.param(key), "a number", value)
        number = float(value)
        if not math.isfinite(number):
            raise invalid_value(self.param(key), "must be a finite number.")
        check_range(self.param(key), number, ge=ge, le=le, gt=gt, lt=lt)
        return number

    def integer(self, key: str, *, ge: int | None = None, le: int | None = None) -> int | None:
        value = self.scalar(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type(self.param(key), "an integer", value)
        check_range(self.param(key), value, ge=ge, le=le)
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str | None:
        value = self.string(key)
        if value is not None and value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            raise invalid_value(self.param(key), f"{value!r} is not one of {options}.")
        return value

    def array(
        self, key: str, *, required: bool = False, single_object: bool = False
    ) -> list[Any] | None:
        value = self.required(key) if required else self.scalar(key)
        if value is None:
            return None
        if single_object and isinstance(value, dict):
            return [value]  # seed 002 documents one object where OpenAI has an array
        if not isinstance(value, list):
            raise wrong_type(self.param(key), "an array", value)
        return value

    def object(self, key: str) -> Fields | None:
        value = self.obj.get(key)
        if value is None:
            return None
        return Fields(value, self.param(key), empty_object_is_null=self.empty_object_is_null)


def check_range(
    param: str,
    value: float,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> None:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if ge is not None and value < ge:
        raise invalid_value(param, f"{fmt(value)} is less than the minimum of {fmt(ge)}.")
    if gt is not None and value <= gt:
        raise invalid_value(param, f"{fmt(value)} must be greater than {fmt(gt)}.")
    if le is not None and value > le:
        raise invalid_value(param, f"{fmt(value)} is greater than the maximum of {fmt(le)}.")
    if lt is not None and value >= lt:
        raise invalid_value(param, f"{fmt(value)} must be less than {fmt(lt)}.")

"""What the ``/admin`` route modules share: the admin check, bodies, money in JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.requests import Request

from llmrelay.accounting.money import Money, parse_price, parse_usd, usd_text
from llmrelay.api.context import AppContext, context
from llmrelay.api.io import read_json
from llmrelay.errors import InvalidRequest, PermissionDenied

M = TypeVar("M", bound=BaseModel)

MAX_COUNT = 2**31 - 1  # an Integer column

# Amounts arrive as USD (a JSON string such as "10.50", or a number) and are held exactly.
USD = Annotated[int, BeforeValidator(lambda v: parse_usd(v))]
PricePerMillion = Annotated[int, BeforeValidator(lambda v: parse_price(v))]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
Name = Annotated[str, Field(min_length=1, max_length=128)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def require_admin(request: Request) -> AppContext:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    if key.role != "admin":
        raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")
    return ctx


def invalid(exc: ValidationError, what: str) -> InvalidRequest:
    """A pydantic error as a 400 that names the field (never a 422)."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    return InvalidRequest(f"Invalid {what}: {param}: {message}", param=param, code="invalid_value")


async def read_body(request: Request, ctx: AppContext, model: type[M], what: str) -> M:
    data = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    if not isinstance(data, dict):
        raise InvalidRequest(f"Send the {what} as a JSON object.", param="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, what) from None


def money(value: Money | None) -> str | None:
    """An amount for JSON: exact decimal USD in a string (``"0.000150"``), or null."""
    return None if value is None else usd_text(value)


def timestamp(value: datetime | None) -> int | None:
    """Unix seconds, as the OpenAI API shows times."""
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def query_value(request: Request, name: str) -> Any:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"Give '{name}' once.", param=name)
    return values[0] if values else None

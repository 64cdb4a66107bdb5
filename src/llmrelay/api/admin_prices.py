"""``/admin/prices``: model prices in USD per million tokens (admin keys only)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.accounting.money import price_text
from llmrelay.api.admin_common import (
    USD,
    Body,
    PricePerMillion,
    money,
    read_body,
    require_admin,
    timestamp,
)
from llmrelay.api.io import JSONResponse
from llmrelay.errors import InvalidRequest, NotFound
from llmrelay.store.prices import PriceError, PriceNotFound, PriceRecord, PriceStore


class PriceSet(Body):
    """Per million tokens in USD (at most 6 decimals); ``per_search`` per web-search call."""

    input: PricePerMillion
    output: PricePerMillion
    cached_input: PricePerMillion | None = None  # null: the input price
    reasoning: PricePerMillion | None = None  # null: the output price
    per_search: USD = 0


class PriceCreate(PriceSet):
    model: Annotated[str, Field(min_length=1, max_length=200)]


def _per_million(value: int | None) -> str | None:
    return None if value is None else price_text(value)


def public(price: PriceRecord) -> dict[str, Any]:
    return {
        "object": "price",
        "model": price.model,
        "unit": "USD per million tokens",
        "input": _per_million(price.input_pusd),
        "cached_input": _per_million(price.cached_input),
        "output": _per_million(price.output_pusd),
        "reasoning": _per_million(price.reasoning),
        "per_search": money(price.per_search_pusd),
        # Exact integers: picodollars per token (and per search call).
        "input_pusd": price.input_pusd,
        "cached_input_pusd": price.cached_input,
        "output_pusd": price.output_pusd,
        "reasoning_pusd": price.reasoning,
        "per_search_pusd": price.per_search_pusd,
        "updated_at": timestamp(price.updated_at),
    }


async def _set(store: PriceStore, model: str, body: PriceSet) -> PriceRecord:
    record = PriceRecord(
        model=model,
        input_pusd=body.input,
        output_pusd=body.output,
        cached_input_pusd=body.cached_input,
        reasoning_pusd=body.reasoning,
        per_search_pusd=body.per_search,
    )
    try:
        return await store.set(record)
    except PriceError as exc:
        raise InvalidRequest(str(exc), param="model") from None


async def list_prices(request: Request) -> Response:
    ctx = await require_admin(request)
    prices = await PriceStore(ctx.db).list()
    return JSONResponse({"object": "list", "data": [public(p) for p in prices]})


async def create_price(request: Request) -> Response:
    ctx = await require_admin(request)
    body = await read_body(request, ctx, PriceCreate, "price")
    return JSONResponse(public(await _set(PriceStore(ctx.db), body.model, body)), status_code=201)


async def put_price(request: Request) -> Response:
    ctx = await require_admin(request)
    body = await read_body(request, ctx, PriceSet, "price")
    price = await _set(PriceStore(ctx.db), request.path_params["model"], body)
    return JSONResponse(public(price))


async def get_price(request: Request) -> Response:
    ctx = await require_admin(request)
    model = request.path_params["model"]
    try:
        return JSONResponse(public(await PriceStore(ctx.db).get(model)))
    except PriceNotFound:
        raise NotFound(f"No price for the model '{model}'.", param="model") from None


async def delete_price(request: Request) -> Response:
    ctx = await require_admin(request)
    model = request.path_params["model"]
    try:
        await PriceStore(ctx.db).delete(model)
    except PriceNotFound:
        raise NotFound(f"No price for the model '{model}'.", param="model") from None
    return Response(status_code=204)


routes = [
    Route("/admin/prices", list_prices, methods=["GET"]),
    Route("/admin/prices", create_price, methods=["POST"]),
    # Model names may hold slashes ("openai/gpt-4o").
    Route("/admin/prices/{model:path}", get_price, methods=["GET"]),
    Route("/admin/prices/{model:path}", put_price, methods=["PUT"]),
    Route("/admin/prices/{model:path}", delete_price, methods=["DELETE"]),
]

"""Console: the models page: every model the router serves, who serves it, and its price.

Prices are USD per million tokens (per call for web search), entered and shown as exact
decimal text (``accounting.money``), never floats. They live in ``store.prices`` as the
``/admin/prices`` API and ``llmrelay prices`` keep them; running servers apply a change within
the price book's reload time (2 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from llmrelay.accounting.money import (
    Money,
    MoneyError,
    parse_price,
    parse_usd,
    price_text,
    usd_text,
)
from llmrelay.api.context import AppContext, context
from llmrelay.console.pages import error_page, page
from llmrelay.console.views import Viewer
from llmrelay.providers.base import ModelInfo
from llmrelay.store.prices import PriceError, PriceNotFound, PriceRecord, PriceStore

HOME = "/console/admin/models"
LOCAL = "local"  # the route name of the bundled / local GGUF models
NOTICES = {
    "priced": "The price of “{}” is saved; requests use it within a few seconds.",
    "unpriced": "The price of “{}” is removed; its requests are free from now on.",
}
# Form field, label, whether a blank field falls back to another price (else it is required).
PRICE_FIELDS = (
    ("input", "Input", None),
    ("cached_input", "Cached input", "input"),
    ("output", "Output", None),
    ("reasoning", "Reasoning", "output"),
)


@dataclass(frozen=True, slots=True)
class ModelRow:
    info: ModelInfo
    served_by: list[str]  # channel names, "bundled model" for a local one
    alias_of: str | None  # the model an alias sends its requests to
    context_length: int  # of the model requests reach (an alias's target)
    aliases: list[str]
    price: PriceRecord | None


def _per_million(value: Money) -> str:
    return "$" + price_text(value)


def _served_by(ctx: AppContext, model: str) -> list[str]:
    # What a request for ``model`` reaches: an alias (of a local model) wins over channels
    # listing the same name. routes() shuffles inside a priority; only the names matter here.
    names = [route.name for route in ctx.router.routes(model)]
    return sorted({"bundled model" if name == LOCAL else name for name in names})


async def _rows(ctx: AppContext) -> tuple[list[ModelRow], list[PriceRecord]]:
    """The served models with their prices, and the prices of models not served now."""
    prices = {p.model.lower(): p for p in await PriceStore(ctx.db).list()}
    aliases: dict[str, list[str]] = {}
    for alias, target in ctx.router.aliases.items():
        aliases.setdefault(target.lower(), []).append(alias)
    rows = [
        ModelRow(
            info,
            _served_by(ctx, info.id),
            ctx.router.aliases.get(info.id.lower()),
            ctx.router.model(info.id).capabilities.context_length,
            sorted(aliases.get(info.id.lower(), [])),
            prices.pop(info.id.lower(), None),
        )
        for info in sorted(ctx.router.models(), key=lambda m: m.id.lower())
    ]
    return rows, sorted(prices.values(), key=lambda p: p.model.lower())


async def list_models(request: Request, viewer: Viewer) -> Response:
    rows, unserved = await _rows(context(request))
    notice = next(
        (
            text.format(request.query_params[code])
            for code, text in NOTICES.items()
            if code in request.query_params
        ),
        None,
    )
    return page(
        "models.html",
        viewer=viewer,
        nav="models",
        rows=rows,
        unserved=unserved,
        notice=notice,
        per_million=_per_million,
    )


def _price_page(
    viewer: Viewer,
    form: dict[str, str],
    existing: PriceRecord | None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return page(
        "price_form.html",
        status,
        viewer=viewer,
        nav="models",
        form=form,
        existing=existing,
        fields=PRICE_FIELDS,
        error=error,
    )


def _form_of(price: PriceRecord) -> dict[str, str]:
    return {
        "model": price.model,
        "input": price_text(price.input_pusd),
        "cached_input": "" if price.cached_input_pusd is None else price_text(price.cached_input),
        "output": price_text(price.output_pusd),
        "reasoning": "" if price.reasoning_pusd is None else price_text(price.reasoning),
        "per_search": usd_text(price.per_search_pusd),
    }


async def price_form(request: Request, viewer: Viewer) -> Response:
    model = request.query_params.get("model", "").strip()
    existing = await PriceStore(context(request).db).find(model) if model else None
    form = _form_of(existing) if existing else {"model": model}
    return _price_page(viewer, form, existing)


def parse_price_form(form: dict[str, str]) -> PriceRecord:
    """The price in the form; a field that cannot be held exactly raises PriceError in words."""
    model = form.get("model", "").strip()
    if not model:
        raise PriceError("Model: enter the model's public name.")
    amounts: dict[str, Money | None] = {}
    for field, label, fallback in PRICE_FIELDS:
        text = form.get(field, "").strip()
        if not text and fallback is None:
            raise PriceError(f"{label}: enter a price in USD per million tokens, e.g. 0.15.")
        try:
            amounts[field] = parse_price(text) if text else None
        except MoneyError as exc:
            raise PriceError(f"{label}: {exc}.") from None
    search = form.get("per_search", "").strip()
    try:
        per_search = parse_usd(search) if search else 0
    except MoneyError as exc:
        raise PriceError(f"Web search: {exc}.") from None
    assert amounts["input"] is not None and amounts["output"] is not None
    return PriceRecord(
        model=model,
        input_pusd=amounts["input"],
        output_pusd=amounts["output"],
        cached_input_pusd=amounts["cached_input"],
        reasoning_pusd=amounts["reasoning"],
        per_search_pusd=per_search,
    )


async def set_price(request: Request, viewer: Viewer) -> Response:
    form: dict[str, str] = request.state.form
    store = PriceStore(context(request).db)
    try:
        price = await store.set(parse_price_form(form))
    except PriceError as exc:
        text = str(exc)
        existing = await store.find(form.get("model", "").strip() or "-")
        return _price_page(viewer, form, existing, text[:1].upper() + text[1:], 400)
    return RedirectResponse(f"{HOME}?priced={quote(price.model)}", status_code=303)


async def confirm_unprice(request: Request, viewer: Viewer) -> Response:
    model = request.query_params.get("model", "")
    return page(
        "admin_confirm.html",
        viewer=viewer,
        nav="models",
        title=f"Remove the price of “{model}”?",
        text="Requests for this model are then recorded at no cost until a price is set again.",
        action=f"{HOME}/price/remove",
        button="Remove price",
        fields={"model": model},
        back=HOME,
    )


async def remove_price(request: Request, viewer: Viewer) -> Response:
    model = request.state.form.get("model", "")
    try:
        await PriceStore(context(request).db).delete(model)
    except PriceNotFound:
        return error_page(f"There is no price for “{model}”.", 404, viewer=viewer, nav="models")
    return RedirectResponse(f"{HOME}?unpriced={quote(model)}", status_code=303)

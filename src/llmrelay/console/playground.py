"""Console: the playground, a chat with any model one of the viewer's keys may use.

The console keeps only hashes of key secrets, so the browser cannot call ``/v1`` itself. It
posts the conversation here instead (a form, so the session's CSRF check applies), and the
server answers as the chosen key through the same path as ``/v1/chat/completions``: the same
parsing and checks, routing, the key's limits and credit, and a ledger row for that key. The
answer streams back as the API's own server-sent events, with reasoning apart from the text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.chat import answer
from llmrelay.api.context import AppContext, context
from llmrelay.api.io import JSONResponse
from llmrelay.console.pages import page
from llmrelay.console.views import Viewer, signed_in
from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    error_payload,
)
from llmrelay.store.keys import KeyNotFound, KeyRecord

_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _models_for(ctx: AppContext, key: KeyRecord) -> list[str]:
    """The model names ``key`` may ask for and the router knows (a key may list aliases)."""
    if key.models is None:
        return [m.id for m in ctx.router.models()]
    usable = []
    for name in key.models:
        try:
            ctx.router.routes(name)
        except ModelNotFound:
            continue  # listed on the key but served by no channel now
        usable.append(name)
    return usable


async def _choices(ctx: AppContext, viewer: Viewer) -> list[dict[str, Any]]:
    """The viewer's usable keys (an admin's: everyone's, their own first) and their models."""
    keys = await ctx.keys.list(user=None if viewer.admin else viewer.user_name)
    keys = [k for k in keys if k.usable() and viewer.may_see(k)]
    keys.sort(key=lambda k: k.user_id != viewer.user_id)  # stable: creation order otherwise
    return [{"name": k.name, "user": k.user, "models": _models_for(ctx, k)} for k in keys]


async def playground(request: Request, viewer: Viewer) -> Response:
    choices = await _choices(context(request), viewer)
    return page("playground.html", viewer=viewer, nav="playground", choices=choices)


async def _key(ctx: AppContext, viewer: Viewer, name: str) -> KeyRecord:
    """The key to answer as: one this viewer may use, and usable now."""
    if not name:
        raise InvalidRequest("Choose one of your API keys.", param="key")
    try:
        key = await ctx.keys.get(name)
    except KeyNotFound:
        key = None
    if key is None or not viewer.may_see(key):
        raise NotFound(f"You have no API key named “{name}”.", param="key")
    if not key.usable():
        raise PermissionDenied(
            f"The API key “{name}” is {key.status()}; choose another key.", param="key"
        )
    return key


def _number(text: str) -> int | float | str:
    """A number if the text is one; otherwise the text, which the API's own checks refuse."""
    if not _NUMBER.fullmatch(text):
        return text
    return float(text) if any(c in text for c in ".eE") else int(text)


def chat_body(form: dict[str, str]) -> dict[str, Any]:
    """The form as a ``/v1/chat/completions`` body: streamed, reasoning apart, with usage."""
    try:
        conversation = json.loads(form.get("messages") or "[]")
    except ValueError:
        conversation = None
    if not isinstance(conversation, list):
        raise InvalidRequest(
            "The conversation did not arrive as a JSON list; start a new chat.", param="messages"
        )
    system = form.get("system", "").strip()
    messages = [{"role": "system", "content": system}] if system else []
    body: dict[str, Any] = {
        "messages": messages + conversation,
        "stream": True,
        "stream_options": {"include_usage": True},
        "separate_reasoning": True,
    }
    if form.get("model"):
        body["model"] = form["model"]
    for name in ("temperature", "max_tokens"):
        text = form.get(name, "").strip()
        if text:
            body[name] = _number(text)
    return body


async def chat(request: Request, viewer: Viewer) -> Response:
    ctx = context(request)
    form: dict[str, str] = request.state.form
    try:
        key = await _key(ctx, viewer, form.get("key", "").strip())
        return await answer(request, ctx, key, chat_body(form))
    except LLMRelayError as exc:
        # The API's own error envelope and status; the page shows its message.
        return JSONResponse(error_payload(exc), status_code=exc.status, headers=exc.headers)


routes = [
    Route("/console/playground", signed_in(playground), methods=["GET"]),
    Route("/console/playground/chat", signed_in(chat), methods=["POST"]),
]

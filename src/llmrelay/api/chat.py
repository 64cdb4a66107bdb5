"""Chat completions under every path of SPEC section 2."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api import metered
from llmrelay.api.context import AppContext, context
from llmrelay.api.io import JSONResponse, SSEResponse, read_json
from llmrelay.api.observe import exchange
from llmrelay.dialects import render
from llmrelay.dialects.openai_chat import parse_chat_request
from llmrelay.store.keys import KeyRecord


async def chat_completions(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    body = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    return await answer(request, ctx, key, body)


async def answer(request: Request, ctx: AppContext, key: KeyRecord, body: Any) -> Response:
    """A chat completion for ``body`` as ``key``, already authenticated: parsed, routed, metered.

    The console's playground comes in here too, as a key its signed-in user chose.
    """
    chat = parse_chat_request(
        body,
        path_model=request.path_params.get("model"),
        default_model=ctx.settings.default_model,
    )
    ctx.auth.authorize_model(key, chat.model)
    seen = exchange(request)
    seen.model = chat.model
    meter = await ctx.accounts.admit(key, chat, seen.request_id)
    if chat.stream:
        info, chunks = await metered.open_stream(ctx, chat, meter)
        renderer = render.ChunkRenderer(
            model=info.id, n=chat.n, include_usage=chat.include_usage, logprobs=chat.logprobs
        )
        seen.streaming(info.id, renderer)
        return SSEResponse(renderer, chunks, meter)
    info, completion = await metered.complete(request, ctx, chat, meter)
    seen.answered(info.id, completion.usage)
    return JSONResponse(
        render.chat_completion(
            completion,
            response_id=render.new_id("chatcmpl"),
            created=int(time.time()),
            model=info.id,
            logprobs=chat.logprobs,
        ),
        rate=meter.rate,
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/openai/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/{model:path}/v1/chat/completions", chat_completions, methods=["POST"]),
]

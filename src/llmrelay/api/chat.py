"""Chat completions under every path of SPEC section 2."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.context import context
from llmrelay.api.io import JSONResponse, SSEResponse, read_json, until_disconnect
from llmrelay.dialects import render
from llmrelay.dialects.openai_chat import parse_chat_request


async def chat_completions(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    body = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    chat = parse_chat_request(
        body,
        path_model=request.path_params.get("model"),
        default_model=ctx.settings.default_model,
    )
    ctx.auth.authorize_model(key, chat.model)
    if chat.stream:
        info, chunks = await ctx.gateway.open(chat)
        renderer = render.ChunkRenderer(
            model=info.id, n=chat.n, include_usage=chat.include_usage, logprobs=chat.logprobs
        )
        return SSEResponse(renderer, chunks)
    info, completion = await until_disconnect(request, ctx.gateway.complete(chat))
    return JSONResponse(
        render.chat_completion(
            completion,
            response_id=render.new_id("chatcmpl"),
            created=int(time.time()),
            model=info.id,
            logprobs=chat.logprobs,
        )
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/openai/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/{model:path}/v1/chat/completions", chat_completions, methods=["POST"]),
]

"""Legacy text completions (``/v1/completions``)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api import metered
from llmrelay.api.context import context
from llmrelay.api.io import JSONResponse, SSEResponse, read_json
from llmrelay.api.observe import exchange
from llmrelay.dialects import render
from llmrelay.dialects.openai_completions import parse_completion_request
from llmrelay.errors import InvalidRequest


async def completions(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    body = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    req = parse_completion_request(body, default_model=ctx.settings.default_model)
    ctx.auth.authorize_model(key, req.model)
    seen = exchange(request)
    seen.model = req.model
    route_info = ctx.router.model(req.model)
    if route_info.owned_by != "llmrelay":
        raise InvalidRequest(
            f"The model '{route_info.id}' supports chat completions only.",
            param="model",
            code="unsupported_endpoint",
        )
    meter = await ctx.accounts.admit(key, req, seen.request_id)
    if req.stream:
        info, chunks = await metered.open_stream(ctx, req, meter)
        renderer = render.CompletionChunkRenderer(model=info.id, include_usage=req.include_usage)
        seen.streaming(info.id, renderer)
        return SSEResponse(renderer, chunks, meter)
    info, completion = await metered.complete(request, ctx, req, meter)
    seen.answered(info.id, completion.usage)
    return JSONResponse(
        render.text_completion(
            completion,
            response_id=render.new_id("cmpl"),
            created=int(time.time()),
            model=info.id,
            prefix=req.raw_prompt if req.echo and req.raw_prompt else "",
        ),
        rate=meter.rate,
    )


routes = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/openai/v1/completions", completions, methods=["POST"]),
    Route("/completions", completions, methods=["POST"]),
]

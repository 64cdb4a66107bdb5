"""Legacy text completions (``/v1/completions``)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.context import context
from llmrelay.api.io import JSONResponse, event_stream, primed, read_json, until_disconnect
from llmrelay.dialects import render
from llmrelay.dialects.openai_completions import parse_completion_request
from llmrelay.errors import InvalidRequest
from llmrelay.stream import collect


async def completions(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    body = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    req = parse_completion_request(body, default_model=ctx.settings.default_model)
    ctx.auth.authorize_model(key, req.model)
    info = ctx.gateway.prepare(req)
    if info.owned_by != "llmrelay":
        raise InvalidRequest(
            f"The model '{info.id}' supports chat completions only.",
            param="model",
            code="unsupported_endpoint",
        )
    chunks = ctx.gateway.stream(req, info)
    if req.stream:
        first, rest = await primed(chunks)
        renderer = render.CompletionChunkRenderer(model=info.id, include_usage=req.include_usage)
        return event_stream(renderer, first, rest)
    completion = await until_disconnect(request, collect(chunks, req.n))
    return JSONResponse(
        render.text_completion(
            completion,
            response_id=render.new_id("cmpl"),
            created=int(time.time()),
            model=info.id,
            prefix=req.raw_prompt if req.echo and req.raw_prompt else "",
        )
    )


routes = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/openai/v1/completions", completions, methods=["POST"]),
    Route("/completions", completions, methods=["POST"]),
]

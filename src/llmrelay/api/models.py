"""Model listings: what the calling key may use, in the OpenAI list shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.context import context
from llmrelay.api.io import JSONResponse
from llmrelay.errors import ModelNotFound


async def list_models(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    data = [m.to_wire() for m in ctx.router.models() if key.allows(m.id)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    ctx = context(request)
    key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
    name = request.path_params["model"]
    for info in ctx.router.models():
        if info.id.lower() == name.lower() and key.allows(info.id):
            return JSONResponse(info.to_wire())
    raise ModelNotFound(
        f"The model '{name}' does not exist or you do not have access to it.", param="model"
    )


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/openai/v1/models", list_models, methods=["GET"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/openai/v1/models/{model:path}", get_model, methods=["GET"]),
]

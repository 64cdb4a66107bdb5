"""``GET /metrics``: Prometheus text exposition; open unless ``metrics_require_admin``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.context import context
from llmrelay.errors import PermissionDenied


async def metrics(request: Request) -> Response:
    ctx = context(request)
    if ctx.settings.metrics_require_admin:
        key = await ctx.auth.authenticate(request.headers.getlist("authorization"))
        if key.role != "admin":
            raise PermissionDenied("/metrics needs an admin key.", code="admin_required")
    return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]

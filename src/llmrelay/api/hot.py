"""The few routes that carry nearly all traffic, dispatched without Starlette's router.

A relayed completion is a few hundred microseconds of CPU, and Starlette's routing and its two
exception middlewares (each wrapping ``send``) were about 7% of it. :class:`HotRoutes` sends
``POST`` requests to the fixed paths of the completion routes straight to their endpoints and
renders their errors with the same handlers the Starlette app uses; every other request, and
the lifespan, goes to the Starlette app unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class HotRoutes:
    def __init__(
        self,
        app: Starlette,
        routes: Sequence[Route],
        handlers: Mapping[type[Exception], ErrorHandler],
    ) -> None:
        self.app = app
        self.routes = {
            r.path: r for r in routes if "{" not in r.path and "POST" in (r.methods or ())
        }
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        scope["route"] = route  # for the metrics' route label, as Starlette's router sets it
        request = Request(scope, receive)
        try:
            response: Response = await route.endpoint(request)
        except Exception as exc:
            response = await self._handler(exc)(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ErrorHandler:
        for kind in type(exc).__mro__:
            handler = self.handlers.get(kind)
            if handler is not None:
                return handler
        raise exc

"""The web console under ``/console/``: server-rendered pages, a signed session cookie."""

from llmrelay.console import admin, playground, signin, usage, users, views

# The static route and the catch-all stay last (in views.tail_routes).
routes = [
    *views.routes,
    *signin.routes,
    *usage.routes,
    *playground.routes,
    *admin.routes,
    *users.routes,
    *views.tail_routes,
]

__all__ = ["routes"]

"""The web console under ``/console/``: server-rendered pages, a signed session cookie."""

from llmrelay.console.views import routes

__all__ = ["routes"]

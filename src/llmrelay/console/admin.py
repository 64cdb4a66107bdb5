"""Console: the admin pages (channels, models and prices); admins only, others get a 403 page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.console import channels, models
from llmrelay.console.pages import error_page
from llmrelay.console.views import Handler, Viewer, signed_in

Page = Callable[[Request, Viewer], Awaitable[Response]]


def admin_only(handler: Page) -> Handler:
    """A signed-in page (CSRF-checked POSTs) that only admins may use."""

    async def checked(request: Request, viewer: Viewer) -> Response:
        if not viewer.admin:
            return error_page("Only admins can use this page.", 403, viewer=viewer)
        return await handler(request, viewer)

    return signed_in(checked)


CHANNEL = "/console/admin/channels/{name}"

routes = [
    Route("/console/admin/channels", admin_only(channels.list_channels), methods=["GET"]),
    Route("/console/admin/channels", admin_only(channels.add_channel), methods=["POST"]),
    Route("/console/admin/channels/new", admin_only(channels.new_channel), methods=["GET"]),
    Route(CHANNEL + "/edit", admin_only(channels.edit_form), methods=["GET"]),
    Route(CHANNEL + "/edit", admin_only(channels.edit_channel), methods=["POST"]),
    Route(CHANNEL + "/enable", admin_only(channels.switch_channel), methods=["POST"]),
    Route(CHANNEL + "/disable", admin_only(channels.switch_channel), methods=["POST"]),
    Route(CHANNEL + "/remove", admin_only(channels.confirm_remove), methods=["GET"]),
    Route(CHANNEL + "/remove", admin_only(channels.remove_channel), methods=["POST"]),
    Route(CHANNEL + "/test", admin_only(channels.test_channel), methods=["POST"]),
    Route("/console/admin/models", admin_only(models.list_models), methods=["GET"]),
    Route("/console/admin/models/price", admin_only(models.price_form), methods=["GET"]),
    Route("/console/admin/models/price", admin_only(models.set_price), methods=["POST"]),
    Route(
        "/console/admin/models/price/remove", admin_only(models.confirm_unprice), methods=["GET"]
    ),
    Route("/console/admin/models/price/remove", admin_only(models.remove_price), methods=["POST"]),
]

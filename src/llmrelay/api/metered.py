"""A request's trip through the gateway with its accounting: every way it can end is metered.

The answer is charged before its last bytes go out (a non-streaming response after its ledger
row is recorded; a stream just before ``[DONE]``, in :class:`~llmrelay.api.io.SSEResponse`); a
request that failed is recorded without a charge; one the client abandoned is charged for what
was generated.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from llmrelay.accounting.meter import Meter
from llmrelay.api.context import AppContext
from llmrelay.api.io import ClientGone, until_disconnect
from llmrelay.errors import LLMRelayError
from llmrelay.gateway import OpenStream
from llmrelay.providers.base import ModelInfo
from llmrelay.request import ChatRequest
from llmrelay.stream import Completion

GONE = "client_disconnected"


async def open_stream(
    ctx: AppContext, req: ChatRequest, meter: Meter
) -> tuple[ModelInfo, OpenStream]:
    """The gateway's stream, once it has a first chunk."""
    try:
        info, chunks = await ctx.gateway.open(req)
    except LLMRelayError as exc:
        meter.failed(exc)
        raise
    except (ClientGone, asyncio.CancelledError):
        meter.close_later(None, status=499, error=GONE)
        raise
    meter.answered_by(info.owned_by)
    return info, chunks


async def complete(
    request: Request, ctx: AppContext, req: ChatRequest, meter: Meter
) -> tuple[ModelInfo, Completion]:
    """The whole answer, charged and in the ledger."""
    try:
        info, completion = await until_disconnect(request, ctx.gateway.complete(req))
    except LLMRelayError as exc:
        meter.failed(exc)
        raise
    except (ClientGone, asyncio.CancelledError):
        # The backend was stopped mid-answer; what it had generated is unknown.
        meter.close_later(meter.cut_usage([]), status=499, error=GONE)
        raise
    meter.answered_by(info.owned_by)
    meter.close(completion.usage)
    return info, completion

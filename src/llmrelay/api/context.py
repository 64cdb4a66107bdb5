"""What route handlers share, held on ``app.state`` (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from llmrelay.accounting.meter import Accounts
from llmrelay.auth import Authenticator
from llmrelay.engine.provider import LocalProvider
from llmrelay.gateway import Gateway
from llmrelay.metrics import Metrics
from llmrelay.routing.channels import ChannelManager
from llmrelay.routing.router import Router
from llmrelay.settings import Settings
from llmrelay.store.db import Database
from llmrelay.store.keys import KeyStore


@dataclass(slots=True)
class AppContext:
    settings: Settings
    db: Database
    keys: KeyStore
    auth: Authenticator
    router: Router
    gateway: Gateway
    local: LocalProvider
    channels: ChannelManager
    metrics: Metrics
    accounts: Accounts
    ready: bool = False


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx

"""Build routes from local models and channels, and rebuild them when channels change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson

from llmrelay.accounting.tokens import TokenEstimator
from llmrelay.engine.provider import LocalProvider
from llmrelay.media import FetchPolicy, MediaFetcher
from llmrelay.providers.anthropic import AnthropicProvider
from llmrelay.providers.base import Provider
from llmrelay.providers.gemini import GeminiProvider
from llmrelay.providers.http import HTTPPool
from llmrelay.providers.openai import OpenAIProvider
from llmrelay.routing.router import Route, Router
from llmrelay.settings import ChannelConfig, Settings
from llmrelay.store.channels import ChannelStore, to_json

log = logging.getLogger(__name__)
LOCAL_PRIORITY = 1_000_000  # a local model answers before any channel serving the same name


def build_provider(
    config: ChannelConfig,
    pool: HTTPPool,
    estimate: Callable[[str], int],
    media: MediaFetcher,
) -> Provider | None:
    if config.type == "openai":
        return OpenAIProvider(config, pool, estimate, media)
    if config.type == "anthropic":
        return AnthropicProvider(config, pool, estimate)
    if config.type == "gemini":
        return GeminiProvider(config, pool, estimate, media)
    log.warning("channel %s: provider type %r is not available yet", config.name, config.type)
    return None


class ChannelManager:
    def __init__(
        self, settings: Settings, router: Router, local: LocalProvider, store: ChannelStore
    ) -> None:
        self.settings = settings
        self.router = router
        self.local = local
        self.store = store
        self.estimate = TokenEstimator()
        self.media = MediaFetcher(
            FetchPolicy.from_settings(
                settings.media_fetch_allow,
                settings.media_max_bytes,
                settings.media_timeout_seconds,
            )
        )
        self._pool: HTTPPool | None = None
        self.channels: list[ChannelConfig] = []
        self._fingerprint = b""
        self._task: asyncio.Task[None] | None = None

    @property
    def pool(self) -> HTTPPool:
        """The upstream connection pool every channel shares."""
        if self._pool is None:
            self._pool = HTTPPool()
        return self._pool

    async def refresh(self) -> bool:
        """Reload channels from the config and the database; rebuild routes if they changed."""
        stored = await self.store.list()
        names = {c.name for c in self.settings.channels}
        channels = [*self.settings.channels, *(c for c in stored if c.name not in names)]
        fingerprint = orjson.dumps([to_json(c) for c in channels])
        if fingerprint == self._fingerprint and self.router.models():
            return False
        self._fingerprint = fingerprint
        self.channels = channels
        routes = [
            Route("local", self.local, info, LOCAL_PRIORITY, 1, None)
            for info in self.local.models()
        ]
        for config in channels:
            provider = (
                build_provider(config, self.pool, self.estimate, self.media)
                if config.enabled
                else None
            )
            if provider is None:
                continue
            breaker = self.router.breaker(config.name)
            routes += [
                Route(config.name, provider, info, config.priority, config.weight, breaker)
                for info in provider.models()
            ]
        self.router.set_routes(routes)
        log.info("routes rebuilt: %d channels", len(channels))
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.channel_refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("reloading channels failed; keeping the current routes")

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            await self._pool.close()
        await self.media.close()
        self.estimate.close()

"""The HTTP side of a channel, shared by provider types: send, read SSE, map failures.

Connect, first-byte and idle timeouts are separate. Upstream failures become llmrelay's
errors here, each marked retryable when another channel may do better.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from llmrelay.providers.base import Capabilities, ModelInfo
from llmrelay.settings import ChannelConfig


class ChannelTransport:
    def __init__(self, config: ChannelConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.name = config.name
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_connect=config.connect_timeout
        )

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send; a response with an error status is read and raised as our error."""
        try:
            async with asyncio.timeout(self.config.first_byte_timeout):
                response = await self.session.post(
                    url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
                )
        except TimeoutError:
            raise self._late("did not answer") from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None
        if response.status >= 400:
            try:
                raise await self._error(response)
            finally:
                response.release()
        return response

    async def payloads(
        self, response: aiohttp.ClientResponse
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Decoded ``data:`` events, then None for ``[DONE]``; a JSON answer is one event.

        Reads whatever bytes have arrived and splits them into lines itself: one await (and
        one timeout) per network read rather than per line.
        """
        if response.content_type == "application/json":  # an upstream that ignored stream
            try:
                async with asyncio.timeout(self.config.first_byte_timeout):
                    body = await response.read()
            except TimeoutError:
                raise self._late("did not answer") from None
            except aiohttp.ClientError as exc:
                raise self.broken(f"the answer was cut ({type(exc).__name__})") from None
            payload = self._event(body.strip())
            if payload is not None:
                yield payload
            return
        buffer = b""
        first = True
        while True:
            limit = self.config.first_byte_timeout if first else self.config.idle_timeout
            try:
                async with asyncio.timeout(limit):
                    data = await response.content.readany()
            except TimeoutError:
                what = "stalled mid-stream" if not first else "did not answer"
                raise self._late(what) from None
            except aiohttp.ClientError as exc:
                why = f"the connection failed mid-stream ({type(exc).__name__})"
                raise self.broken(why) from None
            if not data:
                if buffer.strip():
                    payload = self._event(buffer.strip())
                    if payload is not None:
                        yield payload
                return
            first = False
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.strip()
                if not line or line.startswith((b":", b"event:", b"id:", b"retry:")):
                    continue
                payload = self._event(line)
                if payload is None:
                    await _drain(response)
                    yield None
                    return
                yield payload

    def _event(self, line: bytes) -> dict[str, Any] | None:
        """One ``data:`` line (or a bare JSON body) as a payload; None for ``[DONE]``."""
        data = line[5:].strip() if line.startswith(b"data:") else line
        if data == b"[DONE]":
            return None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self.broken(f"it sent a malformed event: {data[:80]!r}") from None
        if not isinstance(payload, dict):
            raise self.broken("it sent an event that is not a JSON object")
        if "error" in payload:
            raise self.map_error(502, payload, mid_stream=True)
        return payload

    async def _error(self, response: aiohttp.ClientResponse) -> LLMRelayError:
        try:
            raw = await response.read()
        except aiohttp.ClientError:
            raw = b""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        error = self.map_error(response.status, payload, mid_stream=False)
        retry_after = response.headers.get("Retry-After")
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            error.retry_after = float(retry_after)
        return error

    def _late(self, what: str) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream channel '{self.name}' {what} in time.", retryable=True
        )

    def _unreachable(self, exc: aiohttp.ClientError) -> UpstreamError:
        return UpstreamError(
            f"The upstream channel '{self.name}' could not be reached ({type(exc).__name__}).",
            code="upstream_unreachable",
            retryable=True,
        )

    def map_error(self, status: int, payload: Any, *, mid_stream: bool) -> LLMRelayError:
        """An upstream error body as one of ours; a provider type with its own error shape
        overrides this (the one place its errors are mapped)."""
        return _mapped(self.name, status, payload, mid_stream=mid_stream)

    def broken(self, why: str) -> UpstreamError:
        return UpstreamError(
            f"The upstream channel '{self.name}' failed: {why}.",
            code="upstream_protocol_error",
            retryable=True,
        )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] so the connection goes back to the pool instead of closing."""
    if response.content.at_eof():
        return
    try:
        async with asyncio.timeout(1.0):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


def _mapped(channel: str, status: int, payload: Any, *, mid_stream: bool) -> LLMRelayError:
    """An upstream error as one of ours. Client mistakes pass through; the rest may fail over."""
    detail = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(detail, dict):
        detail = {"message": str(detail or payload)[:300]}
    message = str(detail.get("message") or "no message")[:500]
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    if status in (400, 413, 422) and not mid_stream:
        return InvalidRequest(
            f"The upstream refused the request: {message}",
            param=param,
            code="upstream_invalid_request",
        )
    if status == 429:
        return ServiceUnavailable(
            f"The upstream channel '{channel}' is rate limited: {message}",
            code="upstream_rate_limited",
            retryable=True,
        )
    if status >= 500 or status in (401, 403, 404, 408):
        return UpstreamError(
            f"The upstream channel '{channel}' failed ({status}): {message}",
            code="upstream_error",
            retryable=True,
        )
    return UpstreamError(
        f"The upstream channel '{channel}' failed: {message}", code="upstream_error", retryable=True
    )


class ChannelProvider:
    """What every channel-backed provider shares: its transport, keys in turn, its models."""

    def __init__(
        self,
        config: ChannelConfig,
        session: aiohttp.ClientSession,
        estimate: Callable[[str], int],
        capabilities: Capabilities,
    ) -> None:
        self.config = config
        self.http = ChannelTransport(config, session)
        self.estimate = estimate
        self._keys = itertools.cycle([k.get_secret_value() for k in config.keys] or [""])
        created = int(time.time())
        self._models = [
            ModelInfo(
                id=m,
                owned_by=config.name,
                capabilities=capabilities,
                created=created,
                description=f"served by channel {config.name}",
            )
            for m in config.models
        ]
        self._upstream_names = {m: config.upstream_model(m) for m in config.models}

    @property
    def name(self) -> str:
        return self.config.name

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def next_key(self) -> str:
        return next(self._keys)

    def upstream_name(self, model: ModelInfo) -> str:
        return self._upstream_names.get(model.id) or self.config.upstream_model(model.id)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

"""The HTTP side of a channel, shared by provider types: send, read SSE, map failures.

Connect, first-byte and idle timeouts are separate. Upstream failures become llmrelay's
errors here, each marked retryable when another channel may do better.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from llmrelay.providers.base import Capabilities, ModelInfo
from llmrelay.providers.http import ConnectFailed, HTTPFailure, HTTPPool, Response
from llmrelay.settings import ChannelConfig

BATCH_LINES = 16  # SSE lines parsed ahead of the first event handed over


class ChannelTransport:
    def __init__(self, config: ChannelConfig, pool: HTTPPool) -> None:
        self.config = config
        self.pool = pool
        self.name = config.name

    async def post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Response:
        """Send; a response with an error status is read and raised as our error."""
        try:
            response = await self.pool.post(
                url,
                orjson.dumps(body),
                headers,
                connect_timeout=self.config.connect_timeout,
                first_byte_timeout=self.config.first_byte_timeout,
            )
        except TimeoutError:
            raise self._late("did not answer") from None
        except ConnectFailed as exc:
            raise self._unreachable(exc) from None
        except HTTPFailure as exc:
            raise self.broken(str(exc)) from None
        if response.status >= 400:
            try:
                raise await self._error(response)
            finally:
                response.release()
        return response

    async def batches(self, response: Response) -> AsyncIterator[list[dict[str, Any] | None]]:
        """The decoded ``data:`` events of each network read, None for ``[DONE]`` (always the
        last); a JSON answer is one event.

        One await (and one timeout) per network read rather than per line, and the caller's
        loop resumes this generator once per read rather than once per event. A malformed or
        error event ends the stream with its error after the events before it.
        """
        if response.content_type == "application/json":  # an upstream that ignored stream
            try:
                body = await response.read(self.config.first_byte_timeout)
            except TimeoutError:
                raise self._late("did not answer") from None
            except HTTPFailure as exc:
                raise self.broken(f"the answer was cut ({exc})") from None
            payload = self._event(body.strip())
            if payload is not None:
                yield [payload]
            return
        buffer = b""
        first = True
        while True:
            limit = self.config.first_byte_timeout if first else self.config.idle_timeout
            try:
                data = await response.readany(limit)
            except TimeoutError:
                what = "stalled mid-stream" if not first else "did not answer"
                raise self._late(what) from None
            except HTTPFailure as exc:
                raise self.broken(f"the connection failed mid-stream ({exc})") from None
            if not data:
                payload = self._event(buffer.strip()) if buffer.strip() else None
                if payload is not None:
                    yield [payload]
                return
            first = False
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            # A fast upstream's read may hold hundreds of events: hand them over in slices, so
            # the first is relayed before the last is parsed.
            for start in range(0, len(lines), BATCH_LINES):
                found, error, done = self._lines(lines[start : start + BATCH_LINES])
                if done:
                    if len(found) > 1:
                        yield found[:-1]
                    # Read what follows [DONE] before the caller may stop at it, so the
                    # connection goes back to the pool.
                    await _drain(response)
                    yield [None]
                    return
                if found:
                    yield found
                if error is not None:
                    raise error

    def _lines(
        self, lines: list[bytes]
    ) -> tuple[list[dict[str, Any] | None], LLMRelayError | None, bool]:
        """The events of whole lines, the error that stopped them, and whether [DONE] came."""
        found: list[dict[str, Any] | None] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith((b":", b"event:", b"id:", b"retry:")):
                continue
            try:
                payload = self._event(line)
            except LLMRelayError as exc:
                return found, exc, False
            found.append(payload)
            if payload is None:
                return found, None, True
        return found, None, False

    async def payloads(self, response: Response) -> AsyncIterator[dict[str, Any] | None]:
        """:meth:`batches`, one event at a time."""
        async for batch in self.batches(response):
            for payload in batch:
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

    async def _error(self, response: Response) -> LLMRelayError:
        try:
            raw = await response.read(self.config.idle_timeout)
        except (HTTPFailure, TimeoutError):
            raw = b""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        error = self.map_error(response.status, payload, mid_stream=False)
        retry_after = response.headers.get("retry-after")
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            error.retry_after = float(retry_after)
        return error

    def _late(self, what: str) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream channel '{self.name}' {what} in time.", retryable=True
        )

    def _unreachable(self, exc: ConnectFailed) -> UpstreamError:
        return UpstreamError(
            f"The upstream channel '{self.name}' could not be reached ({exc}).",
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


async def _drain(response: Response) -> None:
    """Read what follows [DONE] so the connection goes back to the pool instead of closing."""
    if response.at_eof():
        return
    try:
        while await response.readany(1.0):
            pass
    except (TimeoutError, HTTPFailure):
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
        pool: HTTPPool,
        estimate: Callable[[str], int],
        capabilities: Capabilities,
    ) -> None:
        self.config = config
        self.http = ChannelTransport(config, pool)
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

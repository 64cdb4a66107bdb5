"""From a normalised request to chunks: pick backends in route order, fail over, post-process.

A streaming request may move to the next channel until its first chunk exists; after that an
error reaches the client as an SSE error event. A non-streaming request has sent nothing until
it is complete, so it may move on after any retryable failure.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from llmrelay import reasoning
from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from llmrelay.providers.base import ModelInfo, check_request
from llmrelay.request import ChatRequest
from llmrelay.routing.router import Route, Router
from llmrelay.stream import Chunk, Collector, Completion

log = logging.getLogger(__name__)
T = TypeVar("T")
AttemptHook = Callable[[str, LLMRelayError | None], None]  # channel, the error (None: success)


def _ignore_attempt(channel: str, error: LLMRelayError | None) -> None:
    pass


class Gateway:
    def __init__(self, router: Router, on_attempt: AttemptHook = _ignore_attempt) -> None:
        self.router = router
        self.on_attempt = on_attempt  # told how each try of a backend ended (metrics)

    def _candidates(self, request: ChatRequest) -> list[Route]:
        """Routes able to honour the request; if none can, the first one's refusal."""
        routes = self.router.routes(request.model)
        able: list[Route] = []
        refusal: InvalidRequest | None = None
        for route in routes:
            try:
                check_request(request, route.info)
            except InvalidRequest as exc:
                refusal = refusal or exc
                continue
            able.append(route)
        if not able:
            assert refusal is not None
            raise refusal
        return able

    async def _first_success(
        self, request: ChatRequest, attempt: Callable[[Route], Awaitable[T]]
    ) -> tuple[Route, T]:
        """Try routes in order until ``attempt`` succeeds; retryable failures move on."""
        failures: list[tuple[Route, LLMRelayError | None]] = []
        for route in self._candidates(request):
            if route.breaker is not None and not route.breaker.allow():
                failures.append((route, None))
                continue
            try:
                result = await attempt(route)
            except LLMRelayError as exc:
                self.on_attempt(route.name, exc)
                if not exc.retryable:
                    raise
                self._failed(route, exc, failures)
                continue
            self.on_attempt(route.name, None)
            if route.breaker is not None:
                route.breaker.success()
            return route, result
        raise all_failed(request.model, failures)

    async def open(self, request: ChatRequest) -> tuple[ModelInfo, OpenStream]:
        """Start a stream on the first route that produces a first chunk."""

        async def start(route: Route) -> tuple[Chunk | None, AsyncIterator[Chunk]]:
            chunks = route.provider.stream(request, route.info)
            try:
                return await anext(chunks), chunks
            except StopAsyncIteration:
                return None, chunks
            except LLMRelayError:
                await _close(chunks)
                raise

        route, (first, rest) = await self._first_success(request, start)
        return route.info, OpenStream(route, first, rest, _reasoning(request, route.info))

    async def complete(self, request: ChatRequest) -> tuple[ModelInfo, Completion]:
        """The whole answer; nothing has reached the client, so any route may take over."""

        async def run(route: Route) -> Completion:
            transform = _reasoning(request, route.info)
            collector = Collector(request.n)
            async for chunk in route.provider.stream(request, route.info):
                for out in transform(chunk):
                    collector.add(out)
            return collector.result()

        route, completion = await self._first_success(request, run)
        return route.info, completion

    def _failed(
        self, route: Route, error: LLMRelayError, failures: list[tuple[Route, LLMRelayError | None]]
    ) -> None:
        log.warning("route %s failed for %s: %s", route.name, route.info.id, error.message)
        if route.breaker is not None:
            route.breaker.failure(error.retry_after)
        failures.append((route, error))


@dataclass(slots=True)
class OpenStream:
    """A stream whose route produced its first chunk: that chunk, the provider's chunks still
    to come, and the reasoning transform each one goes through. The SSE response applies the
    transform inline (no async-generator layer of its own per chunk), reports a mid-stream
    failure with :meth:`failed` and closes the stream with :meth:`aclose`."""

    route: Route
    first: Chunk | None
    rest: AsyncIterator[Chunk]
    transform: reasoning.Transform

    def failed(self, error: LLMRelayError) -> None:
        """The stream broke after it started: a retryable failure counts against the route."""
        if error.retryable and self.route.breaker is not None:
            self.route.breaker.failure(error.retry_after)

    async def aclose(self) -> None:
        await _close(self.rest)


def _reasoning(request: ChatRequest, info: ModelInfo) -> reasoning.Transform:
    """Where reasoning goes: its own field, or inline as ``<think>`` text."""
    if request.raw_prompt is not None:
        # Legacy text completions have no reasoning field: the text stays as generated.
        return reasoning.Inline(request.n)
    separate = (
        info.separate_reasoning
        if request.separate_reasoning is None
        else request.separate_reasoning
    )
    return reasoning.Separate(request.n) if separate else reasoning.Inline(request.n)


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def all_failed(model: str, failures: list[tuple[Route, LLMRelayError | None]]) -> LLMRelayError:
    """Every route failed: say why, with the status that fits the failures."""
    reasons = []
    waits = []
    for route, error in failures:
        if error is None:
            assert route.breaker is not None
            waits.append(route.breaker.retry_in())
            reasons.append(f"{route.name}: circuit open, retry in {route.breaker.retry_in():.0f}s")
        else:
            if error.retry_after:
                waits.append(error.retry_after)
            reasons.append(f"{route.name}: {error.message}")
    message = f"All {len(failures)} backends for model '{model}' failed. " + "; ".join(reasons)
    errors = [e for _, e in failures if e is not None]
    if errors and all(isinstance(e, UpstreamTimeout) for e in errors):
        return UpstreamTimeout(message)
    if not errors or all(isinstance(e, ServiceUnavailable) for e in errors):
        wait = max(1, round(min(waits))) if waits else 1
        return ServiceUnavailable(message, headers={"Retry-After": str(wait)})
    return UpstreamError(message, code="upstream_failed")

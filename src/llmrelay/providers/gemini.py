"""The ``gemini`` provider type: Google's Generative Language API behind a channel.

Every request goes to ``streamGenerateContent?alt=sse``: a stream of whole
``GenerateContentResponse`` objects, each with the new parts of every candidate, the last with
its ``finishReason``, and no end marker but the end of the body. Parts become typed chunks as
they arrive: text, thoughts (``thought: true``) as reasoning, each ``functionCall`` as one whole
tool call, ``inlineData`` as a produced image. Gemini's error bodies are mapped in
:func:`gemini_error`, the one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from llmrelay.media import FetchPolicy, MediaFetcher
from llmrelay.providers.base import Capabilities, ModelInfo
from llmrelay.providers.gemini_wire import build_body, new_call_id
from llmrelay.providers.http import HTTPPool
from llmrelay.providers.profiles import apply_overrides
from llmrelay.providers.transport import ChannelProvider, ChannelTransport
from llmrelay.request import ChatRequest, ImagePart
from llmrelay.settings import ChannelConfig
from llmrelay.stream import (
    Chunk,
    CitationDelta,
    Finish,
    FinishReason,
    ImageDelta,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

CAPABILITIES = Capabilities(
    input_modalities=("text", "image", "audio"),
    max_n=8,
    sampling=frozenset(
        {"temperature", "top_p", "top_k", "stop", "seed", "presence_penalty", "frequency_penalty"}
    ),
    reasoning=True,
    context_length=1_048_576,
)
_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        (
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
        ),
        "content_filter",
    ),
}
# The model failed to produce a usable answer: another channel (or a retry) may do better.
_FAILED = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"})


class GeminiTransport(ChannelTransport):
    def map_error(self, status: int, payload: Any, *, mid_stream: bool) -> LLMRelayError:
        return gemini_error(self.name, status, payload, mid_stream=mid_stream)


class GeminiProvider(ChannelProvider):
    def __init__(
        self,
        config: ChannelConfig,
        pool: HTTPPool,
        estimate: Callable[[str], int],
        media: MediaFetcher | None = None,
    ) -> None:
        super().__init__(config, pool, estimate, apply_overrides(CAPABILITIES, config.capabilities))
        self.http = GeminiTransport(config, pool)
        self.media = media or MediaFetcher(FetchPolicy())
        base = config.base_url.rstrip("/")
        self.root = base if base.endswith(("/v1beta", "/v1", "/v1alpha")) else base + "/v1beta"

    def _url(self, upstream_model: str) -> str:
        name = quote(upstream_model.removeprefix("models/"), safe="")
        return f"{self.root}/models/{name}:streamGenerateContent?alt=sse"

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "x-goog-api-key": self.next_key(),
        }

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[Chunk]:
        upstream = self.upstream_name(model)
        body = build_body(request, upstream, await self._fetch_images(request))
        response = await self.http.post(self._url(upstream), body, self._headers())
        try:
            decoder = _Decoder(request, self.estimate, self.name)
            async for payload in self.http.payloads(response):
                if payload is None:
                    break
                for chunk in decoder.feed(payload):
                    yield chunk
            if not decoder.complete():
                raise self.http.broken("the stream ended before every candidate finished")
            yield decoder.usage()
        finally:
            response.release()

    async def _fetch_images(self, request: ChatRequest) -> dict[str, str]:
        """Image URLs as data: URIs (Gemini takes images inline), each URL fetched once."""
        jobs: dict[str, Awaitable[str]] = {}
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.content):
                url = part.url if isinstance(part, ImagePart) else "data:"
                if not url.startswith("data:") and url not in jobs:
                    jobs[url] = self.media.data_uri(
                        url, param=f"messages[{i}].content[{j}]", media="image"
                    )
        if not jobs:
            return {}
        return dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))


@dataclass(slots=True)
class _Candidate:
    calls: int = 0
    images: int = 0
    finished: bool = False
    text: list[str] = field(default_factory=list)  # the content so far, for citation offsets
    grounding: dict[str, Any] | None = None


class _Decoder:
    """``GenerateContentResponse`` stream objects into typed chunks."""

    def __init__(self, request: ChatRequest, estimate: Callable[[str], int], channel: str) -> None:
        self.request = request
        self.estimate = estimate
        self.channel = channel
        self.candidates = [_Candidate() for _ in range(request.n)]
        self.metadata: dict[str, Any] | None = None
        self.text: list[str] = []

    def feed(self, payload: dict[str, Any]) -> list[Chunk]:
        out: list[Chunk] = []
        candidates = payload.get("candidates") or []
        for candidate in candidates:
            index = int(candidate.get("index") or 0)  # proto3 JSON leaves out index 0
            if 0 <= index < len(self.candidates):
                out += self._parts(index, candidate)
                if isinstance(candidate.get("groundingMetadata"), dict):
                    self.candidates[index].grounding = candidate["groundingMetadata"]
                if candidate.get("finishReason"):
                    out += self._finish(index, candidate)
        feedback = payload.get("promptFeedback") or {}
        if feedback.get("blockReason") and not candidates:
            # The prompt was blocked: no candidates at all. Not an error for the client.
            for index, state in enumerate(self.candidates):
                if not state.finished:
                    state.finished = True
                    out.append(Finish(index, "content_filter"))
        usage = payload.get("usageMetadata")
        if isinstance(usage, dict):
            self.metadata = usage  # running totals; the last one counts
        return out

    def _parts(self, index: int, candidate: dict[str, Any]) -> list[Chunk]:
        out: list[Chunk] = []
        logprobs = _logprobs(candidate.get("logprobsResult"))
        for part in (candidate.get("content") or {}).get("parts") or []:
            if isinstance(part.get("functionCall"), dict):
                out.append(self._call(index, part))
            elif isinstance(part.get("inlineData"), dict):
                if not part.get("thought"):  # Gemini 3 image models also show draft images
                    out.append(self._image(index, part["inlineData"]))
            elif isinstance(part.get("text"), str) and part["text"]:
                self.text.append(part["text"])
                if part.get("thought"):
                    out.append(ReasoningDelta(index, part["text"]))
                else:
                    self.candidates[index].text.append(part["text"])
                    out.append(TextDelta(index, part["text"], logprobs))
                    logprobs = None  # a chunk's logprobs cover all its text
        return out

    def _call(self, index: int, part: dict[str, Any]) -> ToolCallDelta:
        state = self.candidates[index]
        call = part["functionCall"]
        arguments = orjson.dumps(call.get("args") or {}).decode()
        self.text.append(arguments)
        delta = ToolCallDelta(
            index,
            state.calls,
            new_call_id(part.get("thoughtSignature")),
            str(call.get("name", "")),
            arguments,
        )
        state.calls += 1
        return delta

    def _image(self, index: int, data: dict[str, Any]) -> ImageDelta:
        state = self.candidates[index]
        image = ImageDelta(
            index, state.images, str(data.get("mimeType") or "image/png"), str(data.get("data"))
        )
        state.images += 1
        return image

    def _finish(self, index: int, candidate: dict[str, Any]) -> list[Chunk]:
        state = self.candidates[index]
        if state.finished:
            return []
        reason = str(candidate["finishReason"])
        if reason in _FAILED:
            detail = candidate.get("finishMessage") or "no details"
            raise UpstreamError(
                f"The upstream channel '{self.channel}' failed: the model ended with {reason} "
                f"({str(detail)[:300]}).",
                code="upstream_bad_output",
                retryable=True,
            )
        state.finished = True
        mapped = "tool_calls" if reason == "STOP" and state.calls else _FINISH.get(reason, "stop")
        return [*self._citations(index), Finish(index, mapped)]

    def _citations(self, index: int) -> list[Chunk]:
        """Search grounding as URL citations; Gemini's segment offsets are UTF-8 bytes."""
        state = self.candidates[index]
        if not state.grounding:
            return []
        sources = state.grounding.get("groundingChunks") or []
        content = "".join(state.text).encode()
        out: list[Chunk] = []
        for support in state.grounding.get("groundingSupports") or []:
            segment = support.get("segment") or {}
            start = _characters(content, int(segment.get("startIndex") or 0))
            end = _characters(content, int(segment.get("endIndex") or 0))
            for source in support.get("groundingChunkIndices") or []:
                web = (sources[source].get("web") or {}) if 0 <= source < len(sources) else {}
                if web.get("uri"):
                    title = str(web.get("title") or "")
                    out.append(CitationDelta(index, str(web["uri"]), title, start, end))
        return out

    def complete(self) -> bool:
        return all(state.finished for state in self.candidates)

    def usage(self) -> Usage:
        raw = self.metadata
        if raw is None:
            prompt = "\n".join(m.text() for m in self.request.messages)
            return Usage(self.estimate(prompt), self.estimate("".join(self.text)), estimated=True)
        thoughts = int(raw.get("thoughtsTokenCount") or 0)
        # OpenAI counts reasoning inside completion_tokens, and all input (tool-use prompts of
        # grounding included) in prompt_tokens: the totals then match totalTokenCount.
        return Usage(
            int(raw.get("promptTokenCount") or 0) + int(raw.get("toolUsePromptTokenCount") or 0),
            int(raw.get("candidatesTokenCount") or 0) + thoughts,
            cached_tokens=int(raw.get("cachedContentTokenCount") or 0),
            reasoning_tokens=thoughts,
        )


def _characters(content: bytes, offset: int) -> int:
    return len(content[:offset].decode("utf-8", errors="ignore"))


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("chosenCandidates"), list):
        return None
    tops = raw.get("topCandidates") or []
    entries = []
    for position, chosen in enumerate(raw["chosenCandidates"]):
        alternatives = (tops[position].get("candidates") or []) if position < len(tops) else []
        entries.append(
            TokenLogprob(
                *_token(chosen),
                [TopLogprob(*_token(alternative)) for alternative in alternatives],
            )
        )
    return entries


def _token(raw: dict[str, Any]) -> tuple[str, float, list[int]]:
    token = str(raw.get("token", ""))
    return token, float(raw.get("logProbability") or 0.0), list(token.encode())


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(detail.get("retryDelay") or "").removesuffix("s")
            try:
                return float(delay)
            except ValueError:
                return None
    return None


def gemini_error(channel: str, status: int, payload: Any, *, mid_stream: bool) -> LLMRelayError:
    """A Gemini error (``{"error": {"code", "message", "status", "details"}}``) as one of ours.

    A client's mistake (400 ``INVALID_ARGUMENT``) passes back; a key, quota, permission, model
    or server problem is this channel's, so the request may move to the next one.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(error or payload)[:300]}
    message = str(error.get("message") or "no message")[:500]
    state = str(error.get("status") or "")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {str(d.get("reason")) for d in details if d.get("reason")}
    if mid_stream and isinstance(error.get("code"), int):
        status = error["code"]
    where = f"The upstream channel '{channel}'"
    retry_after = _retry_delay(details)
    if "API_KEY_INVALID" in reasons or status == 401 or state == "UNAUTHENTICATED":
        return UpstreamError(
            f"{where} refused its key: {message}",
            code="upstream_authentication_failed",
            retryable=True,
        )
    if status == 403 or state == "PERMISSION_DENIED":
        return UpstreamError(
            f"{where} is not permitted: {message}",
            code="upstream_permission_denied",
            retryable=True,
        )
    if status == 429 or state == "RESOURCE_EXHAUSTED":
        return ServiceUnavailable(
            f"{where} is rate limited: {message}",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if status in (400, 413) and state != "FAILED_PRECONDITION" and not mid_stream:
        return InvalidRequest(
            f"The upstream refused the request: {message}", code="upstream_invalid_request"
        )
    if status == 503 or state == "UNAVAILABLE":
        return ServiceUnavailable(
            f"{where} is unavailable: {message}",
            code="upstream_unavailable",
            retryable=True,
            retry_after=retry_after,
        )
    if status == 504 or state == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(f"{where} timed out: {message}", retryable=True)
    return UpstreamError(
        f"{where} failed ({status} {state or 'error'}): {message}",
        code="upstream_error",
        retryable=True,
    )

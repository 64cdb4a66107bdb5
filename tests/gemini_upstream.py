"""A local server speaking Gemini's ``streamGenerateContent?alt=sse`` as the docs show it.

Each event is ``data: <GenerateContentResponse JSON>\\r\\n\\r\\n``, sent as its own HTTP chunk;
the body just ends (no ``[DONE]``). Like the real API it refuses unknown field names and bad
roles with 400 ``INVALID_ARGUMENT``, and (for ``gemini-3…`` models) function calls of the
current turn without a ``thoughtSignature``.

The model in the path picks the answer (``gemini-text``, ``gemini-tool``, ``gemini-think``,
``gemini-image``, …, see :data:`ANSWERS`); the ``x-goog-api-key`` picks a failure
(``bad-key``, ``denied``, ``quota``, ``internal``, ``overloaded``, ``invalid``, ``cut``,
``midstream``). Every request is recorded. A second listener on :data:`IMAGE_HOST` serves
``/cat.png`` for image-URL tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.netutil import serve_in_thread

IMAGE_HOST = "127.0.0.6"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5"
    "ErkJggg=="
)
SIGNATURE = "CiQBcsjafB3mV+Hg/TXmx5Yx7k2Pq9fA0Zs8OBw1nE4dtjtvsU0SWwFyyNp8ev3/+Ag="
SIGNATURE_2 = "Eo4BCosBAU/Qvia7zp+JwFrMGtl5FUkJpFcmC0bBosF4tJyxOA=="
_TOP = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
_TOOLS = {"functionDeclarations", "googleSearch"}
_CONFIG = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
}
_THINKING = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
_PART = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thoughtSignature"}


def usage(prompt: int, output: int, thoughts: int = 0, cached: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    if cached:
        meta["cachedContentTokenCount"] = cached
    return meta


def event(
    parts: list[dict[str, Any]],
    *,
    index: int = 0,
    finish: str | None = None,
    meta: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, **extra}
    if finish:
        candidate["finishReason"] = finish
    if index:
        candidate["index"] = index  # proto3 JSON leaves index 0 out, as Gemini does
    return {
        "candidates": [candidate],
        "usageMetadata": meta or {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mSpVaNLnK8WjnvgPuvyY8Qk",
    }


def _text(body: dict[str, Any]) -> list[dict[str, Any]]:
    n = int(body.get("generationConfig", {}).get("candidateCount", 1))
    events = [event([{"text": "Hello"}], index=i) for i in range(n)]
    events += [event([{"text": "!"}], index=i, finish="STOP") for i in range(n)]
    events[-1]["usageMetadata"] = usage(9, 3 * n, cached=4)
    return events


def _tool(body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["contents"][-1]["parts"]
    if any("functionResponse" in p for p in last):
        return [event([{"text": "It is 18C in SF."}], finish="STOP", meta=usage(40, 8))]
    name = body["tools"][0]["functionDeclarations"][0]["name"]
    return [
        event([{"text": "Let me check."}]),
        event(
            [
                {
                    "functionCall": {"name": name, "args": {"location": "San Francisco, CA"}},
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": name, "args": {"location": "Paris"}}},
            ],
            finish="STOP",
            meta=usage(30, 12, thoughts=20),
        ),
    ]


def _think(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        event([{"text": "**Multiplying**\n\nSix times seven", "thought": True}]),
        event([{"text": " is 42.", "thought": True}]),
        event([{"text": "", "thoughtSignature": SIGNATURE_2}, {"text": "The answer is 42."}]),
        event([], finish="STOP", meta=usage(12, 6, thoughts=31)),
    ]


def _image(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        event([{"text": "Here is a cat:"}]),
        event([{"inlineData": {"mimeType": "image/webp", "data": "thought"}, "thought": True}]),
        event([{"inlineData": {"mimeType": "image/png", "data": PNG}}]),
        event([{"inlineData": {"mimeType": "image/jpeg", "data": PNG}}], finish="STOP"),
    ]


def _logprobs(body: dict[str, Any]) -> list[dict[str, Any]]:
    def token(text: str, value: float) -> dict[str, Any]:
        return {"token": text, "tokenId": 7, "logProbability": value}

    result = {
        "topCandidates": [{"candidates": [token("Hi", -0.1), token("Hey", -2.5)]}],
        "chosenCandidates": [token("Hi", -0.1)],
        "logProbabilitySum": -0.1,
    }
    return [event([{"text": "Hi"}], finish="STOP", logprobsResult=result, avgLogprobs=-0.1)]


GROUNDED = ("Spain won Euro 2024.", " Café owners in Madrid celebrated — all night.")


def _grounded(body: dict[str, Any]) -> list[dict[str, Any]]:
    assert {"googleSearch": {}} in body["tools"]
    first, second = (len(part.encode()) for part in GROUNDED)
    metadata = {
        "webSearchQueries": ["euro 2024 winner"],
        "searchEntryPoint": {"renderedContent": "<style>.container{}</style>"},
        "groundingChunks": [
            {
                "web": {
                    "uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/a1",
                    "title": "uefa.com",
                }
            },
            {
                "web": {
                    "uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/b2",
                    "title": "elpais.com",
                }
            },
        ],
        "groundingSupports": [
            {"segment": {"endIndex": first, "text": GROUNDED[0]}, "groundingChunkIndices": [0]},
            {
                "segment": {
                    "startIndex": first + 1,
                    "endIndex": first + second,
                    "text": GROUNDED[1].strip(),
                },
                "groundingChunkIndices": [0, 1],
            },
        ],
    }
    return [
        event([{"text": GROUNDED[0]}]),
        event([{"text": GROUNDED[1]}], finish="STOP", groundingMetadata=metadata),
    ]


def _blocked(body: dict[str, Any]) -> list[dict[str, Any]]:
    feedback = {
        "blockReason": "PROHIBITED_CONTENT",
        "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}],
    }
    return [{"promptFeedback": feedback, "usageMetadata": usage(7, 0)}]


def _finishing(reason: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
        extra: dict[str, Any] = {}
        if reason == "SAFETY":
            extra["safetyRatings"] = [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ]
        if reason == "MALFORMED_FUNCTION_CALL":
            extra["finishMessage"] = "Malformed function call: print(default_api.x("
            return [event([], finish=reason, **extra)]
        return [event([{"text": "Hel"}], finish=reason, meta=usage(5, 1), **extra)]

    return answer


ANSWERS: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "gemini-text": _text,
    "gemini-2.5-flash": _text,
    "gemini-tool": _tool,
    "gemini-3-pro-preview": _tool,
    "gemini-think": _think,
    "gemini-3-flash-preview": _think,
    "gemini-image": _image,
    "gemini-logprobs": _logprobs,
    "gemini-grounded": _grounded,
    "gemini-blocked": _blocked,
    "gemini-max": _finishing("MAX_TOKENS"),
    "gemini-safety": _finishing("SAFETY"),
    "gemini-recitation": _finishing("RECITATION"),
    "gemini-malformed": _finishing("MALFORMED_FUNCTION_CALL"),
}


def error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = list(details)
    return {"error": body}


FAILURES: dict[str, tuple[int, dict[str, Any]]] = {
    "bad-key": (
        400,
        error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
        ),
    ),
    "denied": (
        403,
        error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
    ),
    "quota": (
        429,
        error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
        ),
    ),
    "internal": (500, error(500, "INTERNAL", "An internal error has occurred.")),
    "overloaded": (503, error(503, "UNAVAILABLE", "The model is overloaded.")),
    "invalid": (
        400,
        error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not set"),
    ),
}


def check(model: str, body: dict[str, Any]) -> str | None:
    """What the real API would refuse in ``body``, as its message; None if it would take it."""
    for name in [*body, *body.get("generationConfig", {})]:
        if name not in _TOP | _CONFIG:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    for tool in body.get("tools", []):
        if not set(tool) <= _TOOLS:
            return f"Invalid JSON payload received. Unknown name in tools: {sorted(tool)}"
    for name in body.get("generationConfig", {}).get("thinkingConfig", {}):
        if name not in _THINKING:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    for content in body.get("contents", []):
        if content.get("role") not in ("user", "model") or not content.get("parts"):
            return "Please use a valid role: user, model. And parts must not be empty."
        for part in content["parts"]:
            if not set(part) <= _PART:
                return f"Invalid JSON payload received. Unknown name in part: {sorted(part)}"
    if model.startswith("gemini-3"):
        for content in body.get("contents", []):
            calls = [p for p in content["parts"] if "functionCall" in p]
            if calls and "thoughtSignature" not in calls[0]:
                return "Function call is missing a thought_signature in functionCall parts."
    return None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeGemini:
    port: int = 0
    image_port: int = 0
    requests: list[Recorded] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def image_url(self) -> str:
        return f"http://{IMAGE_HOST}:{self.image_port}/cat.png"

    def last(self, model: str) -> Recorded:
        return [r for r in self.requests if f"/models/{model}:" in r.path][-1]

    def start(self) -> FakeGemini:
        self.port = serve_in_thread(self._handle)
        self.image_port = serve_in_thread(self._image, IMAGE_HOST)
        return self

    async def _image(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        data = base64.b64decode(PNG)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
            + str(len(data)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + data
        )
        await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.requests.append(Recorded(path, headers, body))
        route, _, query = path.partition("?")
        model = route.removeprefix("/v1beta/models/").removesuffix(":streamGenerateContent")
        key = headers.get("x-goog-api-key", "")
        problem = check(model, body)
        if key in FAILURES:
            status, payload = FAILURES[key]
            await _json(writer, status, payload)
        elif not route.startswith("/v1beta/models/") or query != "alt=sse":
            await _json(writer, 404, error(404, "NOT_FOUND", f"{path} not found"))
        elif problem or model not in ANSWERS:
            status, reason = (400, "INVALID_ARGUMENT") if problem else (404, "NOT_FOUND")
            await _json(writer, status, error(status, reason, problem or f"models/{model}"))
        else:
            events = ANSWERS[model](body)
            if key == "cut":
                events = events[:-1]
            if key == "midstream":
                events = [events[0], error(500, "INTERNAL", "An internal error has occurred.")]
            await _stream(writer, events)
        writer.close()


async def _json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, indent=2).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()


async def _stream(writer: asyncio.StreamWriter, events: list[dict[str, Any]]) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    for payload in events:
        data = b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()

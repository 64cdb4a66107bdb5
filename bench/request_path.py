"""The request path without the model: JSON library, parsing, rendering, HTTP server.

1. In process: decode + normalise + render one typical chat body, with orjson (what llmrelay
   uses) and with the standard library's json.
2. Over HTTP with wrk: an authenticated GET /v1/models (auth cache, routing, JSON rendering)
   on uvicorn with httptools + uvloop (llmrelay's default) and with h11 + asyncio.

    .venv/bin/python -m bench.request_path
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from bench._server import ADMIN_KEY, running_server
from llmrelay.dialects.openai_chat import parse_chat_request
from llmrelay.dialects.render import chat_completion
from llmrelay.stream import Choice, Completion, Usage

BODY = json.dumps(
    {
        "model": "smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Hello " * 200}]},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "Tell me about the weather."},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 256,
        "stream": False,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
    }
).encode()
COMPLETION = Completion([Choice(0, text="It is sunny. " * 40)], Usage(400, 120))


def path(loads: Callable[[bytes], Any], dumps: Callable[[Any], bytes]) -> None:
    request = parse_chat_request(loads(BODY), path_model=None, default_model="m")
    dumps(
        chat_completion(COMPLETION, response_id="x", created=0, model=request.model, logprobs=False)
    )


def in_process() -> None:
    def std_dumps(value: Any) -> bytes:
        return json.dumps(value).encode()

    rows = []
    for name, loads, dumps in [
        ("orjson", orjson.loads, orjson.dumps),
        ("json (stdlib)", json.loads, std_dumps),
    ]:
        runs = [
            min(timeit.repeat(lambda ld=loads, dp=dumps: path(ld, dp), number=2000, repeat=3))
            / 2000
            * 1e6
            for _ in range(5)
        ]
        rows.append((name, statistics.median(runs)))
    print("decode + normalise + render, one chat body (median µs per request):")
    for name, micros in rows:
        print(f"  {name:<16} {micros:8.1f} µs")


def wrk(url: str) -> tuple[float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            "-d8s",
            "--latency",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
            url + "/v1/models",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms)", out)
    assert p50 is not None
    latency = float(p50.group(1)) / (1000 if p50.group(2) == "us" else 1)
    return rps, latency


def over_http() -> None:
    print("GET /v1/models with a key, wrk -t2 -c32 -d8s (requests/s, p50 ms):")
    config = {"local_models": [{"n_ctx": 512, "n_threads": 1}]}
    for label, env in [
        (
            "uvicorn httptools + uvloop",
            {"LLMRELAY_HTTP_PARSER": "httptools", "LLMRELAY_EVENT_LOOP": "uvloop"},
        ),
        (
            "uvicorn h11 + asyncio",
            {"LLMRELAY_HTTP_PARSER": "h11", "LLMRELAY_EVENT_LOOP": "asyncio"},
        ),
    ]:
        with running_server(config, extra_env=env) as url:
            time.sleep(0.5)
            wrk(url)  # warm-up
            rps, p50 = wrk(url)
        print(f"  {label:<28} {rps:9.0f} req/s   p50 {p50:6.2f} ms")


if __name__ == "__main__":
    in_process()
    over_http()

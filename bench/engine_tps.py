"""Embedded-engine tokens per second: through llmrelay's HTTP API vs llama-cpp-python direct.

Same model file, prompt, parameters and thread count in one run; runs alternate so machine
noise hits both sides alike; medians are reported. The end-of-turn token is banned with
logit_bias so every run generates exactly ``--tokens`` tokens.

    .venv/bin/python bench/engine_tps.py --tokens 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from llama_cpp import Llama

from bench._server import ADMIN_KEY, running_server
from llmrelay.engine.model_files import BUNDLED_MODEL_NAME, bundled_model_path

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
N_CTX = 2048
THREADS = 2


def direct(llm: Llama, tokens: int, eos: int) -> float:
    start = time.perf_counter()
    out: Any = llm.create_chat_completion(
        messages=PROMPT,
        max_tokens=tokens,
        temperature=0.0,
        logit_bias={eos: -100.0},  # type: ignore[arg-type]
    )
    elapsed = time.perf_counter() - start
    assert out["usage"]["completion_tokens"] == tokens, out["usage"]
    return tokens / elapsed


def body(tokens: int, eos: int, stream: bool) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL_NAME,
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "logit_bias": {str(eos): -100},
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


def api(client: httpx.Client, tokens: int, eos: int, stream: bool) -> float:
    start = time.perf_counter()
    if not stream:
        usage = client.post("/v1/chat/completions", json=body(tokens, eos, False)).json()["usage"]
    else:
        usage = {}
        with client.stream("POST", "/v1/chat/completions", json=body(tokens, eos, True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]
    elapsed = time.perf_counter() - start
    assert usage["completion_tokens"] == tokens, usage
    return tokens / elapsed


def concurrent_api(url: str, tokens: int, eos: int, streams: int) -> float:
    def one(_: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=600
        ) as c:
            api(c, tokens, eos, True)

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, range(streams)))
    return streams * tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()

    llm = Llama(
        str(bundled_model_path()),
        n_ctx=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
    )
    eos = llm.token_eos()
    config = {"local_models": [{"n_ctx": N_CTX, "n_threads": THREADS}]}
    results: dict[str, list[float]] = {"direct": [], "api": [], "api_stream": []}
    with (
        running_server(config) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=600
        ) as client,
    ):
        api(client, 16, eos, False)  # warm both sides
        direct(llm, 16, eos)
        for _ in range(args.repeats):
            results["direct"].append(direct(llm, args.tokens, eos))
            results["api"].append(api(client, args.tokens, eos, False))
            results["api_stream"].append(api(client, args.tokens, eos, True))
        concurrent = [
            concurrent_api(url, args.tokens, eos, args.streams)
            for _ in range(max(1, args.repeats // 2))
        ]
    llm.close()
    base = statistics.median(results["direct"])
    print(f"tokens per run: {args.tokens}, repeats: {args.repeats}, threads: {THREADS}")
    print(f"{'path':<34} {'median tok/s':>12} {'vs direct':>10}")
    for name, label in [
        ("direct", "llama-cpp-python direct"),
        ("api", "llmrelay HTTP, non-streaming"),
        ("api_stream", "llmrelay HTTP, streaming (SSE)"),
    ]:
        value = statistics.median(results[name])
        print(f"{label:<34} {value:>12.1f} {value / base:>10.3f}")
    value = statistics.median(concurrent)
    print(
        f"{f'llmrelay HTTP, {args.streams} concurrent streams':<34} {value:>12.1f} "
        f"{value / base:>10.3f}  (aggregate)"
    )


if __name__ == "__main__":
    main()

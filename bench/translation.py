"""Translation overhead: llmrelay's anthropic and gemini channels against its openai channel.

    .venv/bin/python -m bench.translation --seconds 6

One llmrelay server with three channels to one bench.fast_upstream process, which answers
each in its own wire format (OpenAI chat completions, Anthropic Messages, Gemini
streamGenerateContent) with the same canned words; each channel serves its own public model
(``bench-openai``, ``bench-anthropic``, ``bench-gemini``). wrk drives each at concurrency 1
and 32, non-streaming and streaming (3 chunks); then 1,000-chunk streams measure time to first
token and llmrelay's CPU time per relayed chunk (all its threads, from /proc/PID/task/*/schedstat).
Everything is repeated in rounds (5 by default) that rotate the order of the types; medians are
reported, and each comparison with openai is taken within a round, because the machine is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from bench._server import ADMIN_KEY, free_port, running_server
from bench.relay import process, wrk

TYPES = ("openai", "anthropic", "gemini")
MODES = ((False, 1), (False, 32), (True, 1), (True, 32))
Cell = tuple[bool, int, str]  # stream, connections, provider type
Sample = dict[str, float]
BY_SAMPLE = ("rps", "p50", "p99", "cpu_us")  # the load columns taken as medians


def config(upstream: str) -> dict[str, Any]:
    """Three channels to the same stub, one per provider type, each with its own model."""

    def channel(kind: str, base_url: str) -> dict[str, Any]:
        return {
            "name": f"bench-{kind}",
            "type": kind,
            "base_url": base_url,
            "keys": [f"key-{kind}"],
            "models": [f"bench-{kind}"],
        }

    return {
        "local_models": [{"n_ctx": 256, "n_threads": 1}],
        "channels": [
            channel("openai", upstream + "/v1"),
            channel("anthropic", upstream),
            channel("gemini", upstream),
        ],
        "log_level": "warning",
    }


def body(kind: str, stream: bool, chunks: int) -> dict[str, object]:
    return {
        "model": f"bench-{kind}",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": chunks,
        "stream": stream,
    }


def order(round_: int) -> tuple[str, ...]:
    """The types rotated by one per round, so each takes each position in turn."""
    shift = round_ % len(TYPES)
    return TYPES[shift:] + TYPES[:shift]


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads, in nanoseconds' resolution (schedstat)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9


def load(url: str, pid: int, kind: str, mode: tuple[bool, int], seconds: int) -> Sample:
    """One wrk run (after a short warm-up), with llmrelay's CPU µs per request."""
    stream, connections = mode
    payload = body(kind, stream, 3)
    wrk(url, payload, connections, 1)
    before = cpu_seconds(pid)
    result = wrk(url, payload, connections, seconds)
    result["cpu_us"] = (cpu_seconds(pid) - before) / (result["rps"] * seconds) * 1e6
    return result


def load_round(url: str, pid: int, round_: int, seconds: int) -> dict[Cell, Sample]:
    results = {}
    for stream, connections in MODES:
        for kind in order(round_):
            sample = load(url, pid, kind, (stream, connections), seconds)
            results[(stream, connections, kind)] = sample
            print(f"  round {round_ + 1} {stream=} {connections=} {kind}: {sample['rps']:.0f}")
    return results


def one_stream(client: httpx.Client, url: str, payload: dict[str, object]) -> tuple[float, int]:
    """Time to the first content chunk (ms) and the number of content chunks relayed."""
    started = time.perf_counter()
    first = 0.0
    received = 0
    with client.stream("POST", url, json=payload) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if "word" in line:
                received += 1
                first = first or (time.perf_counter() - started) * 1000
    return first, received


def long_streams(url: str, pid: int, kind: str, chunks: int, runs: int) -> Sample:
    """``runs`` streams of ``chunks`` chunks: median TTFT, CPU µs per chunk over all of them."""
    payload = body(kind, True, chunks)
    ttft = []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        one_stream(client, url, payload)  # warm-up
        before = cpu_seconds(pid)
        for _ in range(runs):
            first, received = one_stream(client, url, payload)
            assert received == chunks, (kind, received)
            ttft.append(first)
        cpu = (cpu_seconds(pid) - before) / (runs * chunks) * 1e6
    return {"ttft": statistics.median(ttft), "cpu_us": cpu}


def stream_round(url: str, pid: int, round_: int, chunks: int, runs: int) -> dict[str, Sample]:
    return {kind: long_streams(url, pid, kind, chunks, runs) for kind in order(round_)}


def median(rounds: Iterable[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.median(value(sample) for sample in rounds)


def load_table(rounds: list[dict[Cell, Sample]]) -> None:
    print(
        "\n| mode | conc | type | req/s | p50 ms | p99 ms | vs openai | Δ µs/req "
        "| CPU µs/req | Δ CPU µs/req |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for stream, connections in MODES:
        for kind in TYPES:
            load_row(rounds, (stream, connections, kind))


def load_row(rounds: list[dict[Cell, Sample]], cell: Cell) -> None:
    """Medians over the rounds; the comparisons with openai are taken per round, then medians.

    Δ µs/req is 1/rps − 1/rps_openai (the translation cost where llmrelay is CPU bound, at
    concurrency 32); Δ CPU µs/req the difference in llmrelay's CPU time per request.
    """
    stream, connections, kind = cell
    pairs = [(r[cell], r[(stream, connections, "openai")]) for r in rounds]
    rps, p50, p99, cpu = (statistics.median(s[k] for s, _ in pairs) for k in BY_SAMPLE)
    ratio = statistics.median(s["rps"] / o["rps"] for s, o in pairs)
    delta = statistics.median((1 / s["rps"] - 1 / o["rps"]) * 1e6 for s, o in pairs)
    cpu_delta = statistics.median(s["cpu_us"] - o["cpu_us"] for s, o in pairs)
    mode = "stream" if stream else "json"
    print(
        f"| {mode} | {connections} | {kind} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {ratio:.2f} "
        f"| {delta:+.0f} | {cpu:.0f} | {cpu_delta:+.0f} |"
    )


def stream_table(rounds: list[dict[str, Sample]], chunks: int, runs: int) -> None:
    print(
        f"\n{chunks}-chunk streams, {len(rounds)} rounds of {runs} per type (medians); "
        "Δ is taken per round against openai\n"
        "\n| type | TTFT ms | CPU µs/chunk | Δ CPU µs/chunk |\n|---|---:|---:|---:|"
    )
    for kind in TYPES:
        ttft = median((r[kind] for r in rounds), lambda s: s["ttft"])
        cpu = median((r[kind] for r in rounds), lambda s: s["cpu_us"])
        delta = statistics.median(r[kind]["cpu_us"] - r["openai"]["cpu_us"] for r in rounds)
        print(f"| {kind} | {ttft:.2f} | {cpu:.1f} | {delta:+.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=10, help="long streams per type a round")
    args = parser.parse_args()
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    pids: list[int] = []
    with (
        process("bench.fast_upstream", str(port), ready_url=upstream + "/v1/chat/completions"),
        running_server(config(upstream), pids=pids) as relay_url,
    ):
        url = relay_url + "/v1/chat/completions"
        loads = [load_round(url, pids[0], r, args.seconds) for r in range(args.rounds)]
        streams = [
            stream_round(url, pids[0], r, args.chunks, args.streams) for r in range(args.rounds)
        ]
    load_table(loads)
    stream_table(streams, args.chunks, args.streams)


if __name__ == "__main__":
    main()

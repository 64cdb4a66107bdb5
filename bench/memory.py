"""llmrelay's memory with many concurrent slow streams open (SPEC 10: memory stays flat).

    .venv/bin/python -m bench.memory --streams 1 50 200

Each stream relays 200 chunks, one every 20 ms, from ``bench/fast_upstream.py``; the relay's
resident memory (from /proc) is sampled while they are all open.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import aiohttp

from bench._server import ADMIN_KEY, free_port, running_server
from bench.relay import process

PAGE = 4096


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


async def one_stream(session: aiohttp.ClientSession, url: str, chunks: int) -> int:
    body = {
        "model": "drip",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": chunks,
        "stream": True,
    }
    received = 0
    async with session.post(
        url, json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as response:
        async for line in response.content:
            if b'"content"' in line:
                received += 1
    return received


async def measure(url: str, pid: int, streams: int, chunks: int) -> tuple[float, float]:
    peak = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(one_stream(session, url, chunks)) for _ in range(streams)]
        started = time.monotonic()
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.1)
        received = [t.result() for t in tasks]
    assert all(r >= chunks for r in received), received
    return peak, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    config = {
        "local_models": [{"n_ctx": 256, "n_threads": 1}],
        "channels": [
            {"name": "bench", "base_url": upstream, "models": ["drip"], "idle_timeout": 30}
        ],
        "log_level": "warning",
    }
    pids: list[int] = []
    with (
        process("bench.fast_upstream", str(up_port), ready_url=upstream + "/chat/completions"),
        running_server(config, pids=pids) as relay,
    ):
        url = relay + "/v1/chat/completions"
        asyncio.run(measure(url, pids[0], 5, 20))  # warm-up
        idle = rss_mib(pids[0])
        print(f"llmrelay resident memory: {idle:.1f} MiB idle (after a warm-up)")
        print(
            f"{'streams':>8} {'peak RSS MiB':>13} {'above idle':>11} {'per stream KiB':>15} "
            f"{'seconds':>8}"
        )
        for streams in args.streams:
            peak, seconds = asyncio.run(measure(url, pids[0], streams, args.chunks))
            print(
                f"{streams:>8} {peak:>13.1f} {peak - idle:>11.1f} "
                f"{(peak - idle) * 1024 / streams:>15.1f} {seconds:>8.1f}"
            )


if __name__ == "__main__":
    main()

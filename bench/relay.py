"""llmrelay in front of a fast local OpenAI-compatible upstream, against going direct and
against a minimal aiohttp relay (the floor a Python relay reaches), in one run.

    .venv/bin/python -m bench.relay --seconds 4 --rounds 5

wrk drives each target at concurrency 1 and 32, non-streaming and streaming (3 chunks), in
``--rounds`` rounds whose target order rotates, so the floor and llmrelay are measured side by
side each round; the table shows medians, and "vs floor" is the median of each round's ratio.
Then 1,000-chunk streams measure time to first token and the relay's CPU time per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench._server import ADMIN_KEY, free_port, running_server

CLK = os.sysconf("SC_CLK_TCK")


@contextmanager
def process(*args: str, ready_url: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(ready_url, json={}, timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{args} did not start"
            time.sleep(0.1)
    try:
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def wrk(
    url: str, body: dict[str, object], connections: int, seconds: int, key: str = ADMIN_KEY
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f"wrk.method = 'POST'\nwrk.body = '{json.dumps(body)}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
            f"wrk.headers['Authorization'] = 'Bearer {key}'\n"
        )
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    assert "Non-2xx" not in out, out

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        assert m is not None, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps is not None, out
    return {"rps": float(rps.group(1)), "p50": ms("50%"), "p99": ms("99%")}


def long_streams(url: str, pid: int | None, chunks: int, runs: int) -> dict[str, float]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": chunks,
        "stream": True,
    }
    ttft, cpu = [], []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        for _ in range(runs):
            before = cpu_seconds(pid) if pid else 0.0
            started = time.perf_counter()
            first = None
            received = 0
            with client.stream("POST", url, json=body) as r:
                for line in r.iter_lines():
                    if '"content"' in line:
                        received += 1
                        if first is None:
                            first = time.perf_counter() - started
            assert received >= chunks, received
            ttft.append((first or 0) * 1000)
            if pid:
                cpu.append((cpu_seconds(pid) - before) / chunks * 1e6)
    return {"ttft": statistics.median(ttft), "cpu_us": statistics.median(cpu) if cpu else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=1000)
    args = parser.parse_args()
    up_port, floor_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    config = {
        "local_models": [{"n_ctx": 256, "n_threads": 1}],
        "channels": [{"name": "bench", "base_url": upstream, "models": ["bench"]}],
        "log_level": "warning",
        "accounting": False,  # gateway overhead alone; bench/accounting.py measures accounting
    }
    pids: list[int] = []
    with (
        process("bench.fast_upstream", str(up_port), ready_url=upstream + "/chat/completions"),
        process(
            "bench.aiohttp_floor",
            str(floor_port),
            upstream + "/chat/completions",
            ADMIN_KEY,
            ready_url=f"http://127.0.0.1:{floor_port}/v1/chat/completions",
        ) as floor_pid,
        running_server(config, pids=pids) as relay_url,
    ):
        targets = {
            "direct upstream": (upstream + "/chat/completions", None),
            "aiohttp floor": (f"http://127.0.0.1:{floor_port}/v1/chat/completions", floor_pid),
            "llmrelay": (relay_url + "/v1/chat/completions", pids[0]),
        }
        rows = []
        names = list(targets)
        for stream in (False, True):
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": stream,
            }
            for connections in (1, 32):
                rounds: list[dict[str, dict[str, float]]] = []
                for i in range(args.rounds):
                    found = {}
                    for name in names[i % 3 :] + names[: i % 3]:
                        url = targets[name][0]
                        wrk(url, body, connections, 1)  # warm-up
                        found[name] = wrk(url, body, connections, args.seconds)
                    rounds.append(found)
                rows.append((stream, connections, rounds))
        print(
            f"{'mode':<10} {'conc':>4} {'target':<16} {'req/s':>9} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'added p50':>10} {'vs floor':>9}"
        )
        for stream, connections, rounds in rows:
            mode = "stream" if stream else "json"
            for name in names:

                def median(what: str, name: str = name, rounds: list[Any] = rounds) -> float:
                    return statistics.median(r[name][what] for r in rounds)

                added = statistics.median(
                    r[name]["p50"] - r["direct upstream"]["p50"] for r in rounds
                )
                ratio = statistics.median(
                    r[name]["rps"] / r["aiohttp floor"]["rps"] for r in rounds
                )
                print(
                    f"{mode:<10} {connections:>4} {name:<16} {median('rps'):>9.0f} "
                    f"{median('p50'):>8.3f} {median('p99'):>8.3f} {added:>10.3f} {ratio:>9.2f}"
                )
        print(f"\n{args.chunks}-chunk stream (median of 5): time to first token, relay CPU")
        for name, (url, pid) in targets.items():
            r = long_streams(url, pid, args.chunks, 5)
            cpu = f"{r['cpu_us']:.1f} µs/chunk" if pid else "-"
            print(f"  {name:<16} TTFT {r['ttft']:7.2f} ms   CPU {cpu}")


if __name__ == "__main__":
    main()

"""What accounting costs: llmrelay in front of the fast upstream with accounting off, on with
SQLite, and on with PostgreSQL + Redis, in one run.

    .venv/bin/python -m bench.accounting --seconds 2 --pairs 9

Each configuration is one server with one channel to ``bench/fast_upstream.py`` and a price for
the model. wrk drives ``POST /v1/chat/completions`` (non-streaming and 3-chunk streams) at
concurrency 32 with two keys: the admin key (no limits: the ledger row only) and a metered key
(a credit, RPM and TPM: rate check, reservation, settlement and the ledger row).

These shared machines change speed by 10-25% over tens of seconds, more than the differences
measured, so one long run per configuration cannot tell them apart. Instead each row is
``--pairs`` pairs of short slices: accounting off, then the configuration (or the other way
round, alternating), back to back, and a pair's ratio compares two slices run within seconds of
each other. The table shows the median ratio and its quartiles, and medians of the raw values.

Added latency is measured apart, at concurrency 1 (at 32 the latency of a saturated server is
only the inverse of its throughput): after a row's throughput pairs, as many pairs of 1 s
slices with one connection, and the table shows the median of the pairs' differences in wrk's
median and 99th-percentile latency, in µs.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from bench._server import ADMIN_KEY, free_port, running_server
from bench.relay import cpu_seconds, process, wrk

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def metered_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    price = {"model": "bench", "input": "0.15", "output": "0.60"}
    httpx.post(url + "/admin/prices", json=price, headers=admin).raise_for_status()
    key = {"name": "metered-" + uuid.uuid4().hex[:8], "credit": "1000000", "rpm": 10**8}
    key["tpm"] = 10**9
    created = httpx.post(url + "/admin/keys", json=key, headers=admin)
    created.raise_for_status()
    return str(created.json()["secret"])


def postgres_database() -> str:
    import psycopg

    name = "llmrelay_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def configs(upstream: str, pg_url: str) -> dict[str, dict[str, Any]]:
    base = {
        "local_models": [{"n_ctx": 256, "n_threads": 1}],
        "channels": [{"name": "bench", "base_url": upstream, "models": ["bench"]}],
        "log_level": "warning",
    }
    return {
        "off": {**base, "accounting": False},
        "sqlite": base,
        "postgres+redis": {
            **base,
            "database_url": pg_url,
            "redis_url": REDIS,
            "redis_prefix": "bench-" + uuid.uuid4().hex[:8],
        },
    }


Row = tuple[str, str, str]  # (mode, configuration, key)
Slice = tuple[float, float, float, float]  # req/s, llmrelay CPU µs a request, p50 and p99 µs
Pairs = dict[Row, list[tuple[Slice, Slice]]]  # (off, on) slices per row


def run_slice(
    server: tuple[str, str, int],
    who: str,
    body: dict[str, Any],
    seconds: int,
    connections: int = 32,
) -> Slice:
    url, key, pid = server
    secret = ADMIN_KEY if who == "admin" else key
    before = cpu_seconds(pid)
    found = wrk(url + "/v1/chat/completions", body, connections, seconds, secret)
    rps = found["rps"]
    cpu = (cpu_seconds(pid) - before) / (rps * seconds) * 1e6
    return rps, cpu, found["p50"] * 1000, found["p99"] * 1000


def pair(
    off: tuple[str, str, int],
    on: tuple[str, str, int],
    i: int,
    slice_of: Callable[[tuple[str, str, int]], Slice],
) -> tuple[Slice, Slice]:
    """(off, on), run back to back, "off" first in even pairs."""
    if i % 2 == 0:
        first = slice_of(off)
        return first, slice_of(on)
    second = slice_of(on)
    return slice_of(off), second


def measure(
    servers: dict[str, tuple[str, str, int]],
    seconds: int,
    pairs: int,
    modes: tuple[str, ...] = ("json", "stream"),
    keys: tuple[str, ...] = ("admin", "metered"),
) -> tuple[Pairs, Pairs]:
    """For each (mode, configuration, key): ``pairs`` pairs of slices at concurrency 32, (off,
    configuration), each pair run back to back, the pair's order alternating and the
    configurations rotating, so that the machine's drift weighs on both slices of a pair alike;
    then as many pairs of 1 s slices at concurrency 1, for latency."""
    results: Pairs = {}
    latencies: Pairs = {}
    others = [name for name in servers if name != "off"]
    for mode in modes:
        stream = mode == "stream"
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": stream,
        }
        for who in keys:
            for server in servers.values():
                run_slice(server, who, body, 1)  # warm up: connections, caches, bytecode
            for i in range(pairs):
                for name in others[i % len(others) :] + others[: i % len(others)]:
                    run = functools.partial(run_slice, who=who, body=body, seconds=seconds)
                    found = pair(servers["off"], servers[name], i, run)
                    results.setdefault((mode, name, who), []).append(found)
            for i in range(pairs):
                for name in others:
                    run = functools.partial(run_slice, who=who, body=body, seconds=1, connections=1)
                    found = pair(servers["off"], servers[name], i, run)
                    latencies.setdefault((mode, name, who), []).append(found)
    return results, latencies


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentiles."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(results: Pairs, latencies: Pairs) -> None:
    print(
        "| mode | accounting | key | off req/s | req/s | vs off (p25-p75) "
        "| off CPU µs/req | CPU µs/req | CPU vs off (p25-p75) "
        "| 1 conn: off p50 µs | added p50 µs | added p99 µs |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (mode, name, who), found in sorted(results.items()):
        rps = quartiles([on[0] / off[0] for off, on in found])
        cpu = quartiles([on[1] / off[1] for off, on in found])
        print(
            f"| {mode} | {name} | {who} "
            f"| {statistics.median(off[0] for off, _ in found):.0f} "
            f"| {statistics.median(on[0] for _, on in found):.0f} "
            f"| **{rps[1]:.3f}** ({rps[0]:.3f}-{rps[2]:.3f}) "
            f"| {statistics.median(off[1] for off, _ in found):.0f} "
            f"| {statistics.median(on[1] for _, on in found):.0f} "
            f"| {cpu[1]:.3f} ({cpu[0]:.3f}-{cpu[2]:.3f}) "
            f"| {added_latency((mode, name, who), latencies)} |"
        )


def added_latency(row: Row, latencies: Pairs) -> str:
    """Off's median latency, and the medians of what the configuration added to the median
    and the 99th percentile (one connection)."""
    found = latencies[row]  # (measure makes both tables for the same rows)
    off = statistics.median(off[2] for off, _ in found)
    p50 = statistics.median(on[2] - off[2] for off, on in found)
    p99 = statistics.median(on[3] - off[3] for off, on in found)
    return f"{off:.0f} | {p50:+.0f} | {p99:+.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=2, help="length of one slice")
    parser.add_argument("--pairs", type=int, default=9, help="pairs of slices per row")
    parser.add_argument("--only", default="", help="comma-separated configurations besides off")
    parser.add_argument("--modes", default="json,stream", help="comma-separated: json, stream")
    parser.add_argument("--keys", default="admin,metered", help="comma-separated: admin, metered")
    args = parser.parse_args()
    only = {"off", *args.only.split(",")} if args.only else None
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    pg_url = postgres_database()
    try:
        with ExitStack() as stack:
            stack.enter_context(
                process(
                    "bench.fast_upstream", str(up_port), ready_url=upstream + "/chat/completions"
                )
            )
            servers = {}
            for name, config in configs(upstream, pg_url).items():
                if only is not None and name not in only:
                    continue
                pids: list[int] = []
                url = stack.enter_context(running_server(config, pids=pids))
                servers[name] = (url, metered_key(url), pids[0])
            modes, keys = tuple(args.modes.split(",")), tuple(args.keys.split(","))
            results, latencies = measure(servers, args.seconds, args.pairs, modes, keys)
    finally:
        drop_database(pg_url)
    report(results, latencies)


if __name__ == "__main__":
    main()

"""What accounting costs: llmrelay in front of the fast upstream with accounting off, on with
SQLite, and on with PostgreSQL + Redis, in one run.

    .venv/bin/python -m bench.accounting --seconds 5 --rounds 3

Each configuration is one server with one channel to ``bench/fast_upstream.py`` and a price for
the model. wrk drives ``POST /v1/chat/completions`` (non-streaming and 3-chunk streams) at
concurrency 32 with two keys: the admin key (no limits: the ledger row only) and a metered key
(a credit, RPM and TPM: rate check, reservation, settlement and the ledger row). Rounds rotate
the order of the configurations; the table shows medians and the ratio to accounting off.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
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


Row = tuple[str, str, str]


def measure(
    servers: dict[str, tuple[str, str, int]], seconds: int, rounds: int
) -> dict[Row, tuple[float, float]]:
    """Median req/s and llmrelay CPU µs per request, per (mode, configuration, key)."""
    results: dict[Row, list[tuple[float, float]]] = {}
    names = list(servers)
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for stream in (False, True):
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": stream,
            }
            mode = "stream" if stream else "json"
            for name in order:
                url, key, pid = servers[name]
                for who, secret in (("admin", ADMIN_KEY), ("metered", key)):
                    target = url + "/v1/chat/completions"
                    wrk(target, body, 32, 1, secret)
                    before = cpu_seconds(pid)
                    rps = wrk(target, body, 32, seconds, secret)["rps"]
                    cpu = (cpu_seconds(pid) - before) / (rps * seconds) * 1e6
                    results.setdefault((mode, name, who), []).append((rps, cpu))
    return {
        k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
        for k, v in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
                pids: list[int] = []
                url = stack.enter_context(running_server(config, pids=pids))
                servers[name] = (url, metered_key(url), pids[0])
            medians = measure(servers, args.seconds, args.rounds)
    finally:
        drop_database(pg_url)
    print("| mode | accounting | key | req/s | vs off | CPU µs/request | vs off |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (mode, name, who), (rps, cpu) in sorted(medians.items()):
        off_rps, off_cpu = medians[(mode, "off", who)]
        print(
            f"| {mode} | {name} | {who} | {rps:.0f} | {rps / off_rps:.2f} "
            f"| {cpu:.0f} | {cpu / off_cpu:.2f} |"
        )


if __name__ == "__main__":
    main()

"""What accounting costs, counted in CPU instructions per request instead of timed.

    .venv/bin/python -m bench.instructions --seconds 10

Timings on these shared two-core machines move by 5-10% from one run to the next, which is
as large as the differences worth measuring here. Instruction counts do not move: each
configuration of :mod:`bench.accounting` (accounting off, SQLite, PostgreSQL + Redis; the
admin key and a metered key) runs under valgrind's callgrind while wrk drives it at
concurrency 32, and the instructions executed while wrk ran are divided by the requests it
completed: repeated runs agree within about 1%. Counts are per thread: the main thread runs the
event loop, which is the relay's bottleneck, so its instructions per request predict the
throughput ratios of :mod:`bench.accounting`; SQLite's ledger writes run on a thread of their
own, mostly outside the GIL. The server is :mod:`bench._instrumented_server` (periodic work
spread as at full speed). Needs valgrind and wrk (Debian packages), and PostgreSQL and Redis
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench._server import ADMIN_KEY, free_port, running_server
from bench.accounting import configs, drop_database, metered_key, postgres_database
from bench.relay import process, wrk


def thread_totals(directory: Path) -> dict[int, int]:
    """Instructions per thread (1: the main thread) from callgrind's output files."""
    totals: dict[int, int] = {}
    for path in directory.glob("callgrind.out*"):
        thread = int(path.name.rsplit("-", 1)[1]) if "-" in path.name else 1
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                totals[thread] = totals.get(thread, 0) + int(line.split()[1])
    return totals


def count(config: dict[str, object], who: str, seconds: int) -> tuple[float, float]:
    """(main thread, all threads) instructions per request."""
    config = {**config, "local_models": []}
    with tempfile.TemporaryDirectory() as out:
        callgrind = (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}/callgrind.out",
        )
        pids: list[int] = []
        with running_server(
            config, pids=pids, wrapper=callgrind, module="bench._instrumented_server", patience=300
        ) as url:
            key = metered_key(url) if who == "metered" else ADMIN_KEY
            body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
            body["max_tokens"] = 3
            target = url + "/v1/chat/completions"
            wrk(target, body, 32, 2, key)  # warm up: caches, connections, specialised bytecode
            time.sleep(6)  # the warm-up's ledger batch is committed
            subprocess.run(
                ["callgrind_control", "-i", "on", str(pids[0])], check=True, capture_output=True
            )
            requests = wrk(target, body, 32, seconds, key)["rps"] * seconds
            time.sleep(6)  # this run's ledger batches are committed, and counted
            subprocess.run(
                ["callgrind_control", "-i", "off", str(pids[0])], check=True, capture_output=True
            )
        totals = thread_totals(Path(out))
    return totals.get(1, 0) / requests, sum(totals.values()) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--only", default="", help="comma-separated configurations to run besides off (all)"
    )
    parser.add_argument("--keys", default="admin,metered", help="comma-separated: admin, metered")
    args = parser.parse_args()
    only = {"off", *args.only.split(",")} if args.only else None
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    pg_url = postgres_database()
    rows = []
    try:
        with ExitStack() as stack:
            stack.enter_context(
                process(
                    "bench.fast_upstream", str(up_port), ready_url=upstream + "/chat/completions"
                )
            )
            for name, config in configs(upstream, pg_url).items():
                if only is not None and name not in only:
                    continue
                for who in args.keys.split(","):
                    rows.append((name, who, *count(config, who, args.seconds)))
    finally:
        drop_database(pg_url)
    off = {who: main for name, who, main, _ in rows if name == "off"}
    print("| accounting | key | main thread instr/request | vs off | all threads | vs off |")
    print("|---|---|---:|---:|---:|---:|")
    off_all = {who: every for name, who, _, every in rows if name == "off"}
    for name, who, main_thread, every in rows:
        print(
            f"| {name} | {who} | {main_thread / 1000:.0f}k | {main_thread / off[who]:.3f} "
            f"| {every / 1000:.0f}k | {every / off_all[who]:.3f} |"
        )


if __name__ == "__main__":
    main()

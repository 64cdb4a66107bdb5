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
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench._server import ADMIN_KEY, free_port, running_server
from bench.accounting import configs, drop_database, metered_key, postgres_database
from bench.relay import process, wrk

# With --cache-sim, what a miss costs in instructions' worth, as callgrind_annotate's "cycle
# estimate" weighs them: an L1 miss 10, a last-level miss 100.
L1_MISSES = ("I1mr", "D1mr", "D1mw")
LL_MISSES = ("ILmr", "DLmr", "DLmw")


def thread_totals(directory: Path) -> dict[int, dict[str, int]]:
    """Callgrind's event totals per thread (1: the main thread), by event name (``Ir``, and
    the cache misses with --cache-sim)."""
    totals: dict[int, dict[str, int]] = {}
    for path in directory.glob("callgrind.out*"):
        thread = int(path.name.rsplit("-", 1)[1]) if "-" in path.name else 1
        events: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                mine = totals.setdefault(thread, {})
                for name, value in zip(events, line.split()[1:], strict=False):
                    mine[name] = mine.get(name, 0) + int(value)
    return totals


def weighted(events: dict[str, int]) -> float:
    """Instructions plus the misses' estimated cost (just instructions without --cache-sim)."""
    l1 = sum(events.get(name, 0) for name in L1_MISSES)
    return events.get("Ir", 0) + 10 * l1 + 100 * sum(events.get(name, 0) for name in LL_MISSES)


def count(
    config: dict[str, object],
    who: str,
    seconds: int,
    cache_sim: bool = False,
    keep: Path | None = None,
) -> tuple[float, float]:
    """(main thread, all threads) instructions per request; with ``cache_sim``, instructions
    plus the cost of cache misses (see :func:`weighted`). With ``keep``, callgrind's files are
    copied there, for ``callgrind_annotate``."""
    config = {**config, "local_models": []}
    with tempfile.TemporaryDirectory() as out:
        callgrind = (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--cache-sim={'yes' if cache_sim else 'no'}",
            f"--callgrind-out-file={out}/callgrind.out",
        )
        pids: list[int] = []
        with running_server(
            config, pids=pids, wrapper=callgrind, module="bench._instrumented_server", patience=300
        ) as url:
            metered = metered_key(url)  # (and the model's price, for both keys)
            key = metered if who == "metered" else ADMIN_KEY
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
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for path in Path(out).iterdir():
                shutil.copy(path, keep / path.name)
        totals = {thread: weighted(events) for thread, events in thread_totals(Path(out)).items()}
    return totals.get(1, 0) / requests, sum(totals.values()) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--only", default="", help="comma-separated configurations to run besides off (all)"
    )
    parser.add_argument("--keys", default="admin,metered", help="comma-separated: admin, metered")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="simulate the caches and count each miss as well (an L1 miss as 10 instructions, "
        "a last-level miss as 100): what accounting adds is partly instruction-cache misses",
    )
    parser.add_argument(
        "--keep", type=Path, help="copy callgrind's files to KEEP/<configuration>-<key>/"
    )
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
                    keep = args.keep / f"{name}-{who}" if args.keep else None
                    rows.append(
                        (name, who, *count(config, who, args.seconds, args.cache_sim, keep))
                    )
    finally:
        drop_database(pg_url)
    off = {who: main for name, who, main, _ in rows if name == "off"}
    unit = "instr + misses" if args.cache_sim else "instr"
    print(f"| accounting | key | main thread {unit}/request | vs off | all threads | vs off |")
    print("|---|---|---:|---:|---:|---:|")
    off_all = {who: every for name, who, _, every in rows if name == "off"}
    for name, who, main_thread, every in rows:
        print(
            f"| {name} | {who} | {main_thread / 1000:.0f}k | {main_thread / off[who]:.3f} "
            f"| {every / 1000:.0f}k | {every / off_all[who]:.3f} |"
        )


if __name__ == "__main__":
    main()

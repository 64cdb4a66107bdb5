"""What accounting costs, counted in Python bytecode instructions per request, by function.

    .venv/bin/python -m bench.opcodes --only sqlite

:mod:`bench.instructions` counts machine instructions but cannot say which Python function
they belong to; py-spy and cProfile can, but their shares move with the machine's speed
(py-spy) or weigh every call the same (cProfile). This counts the bytecode instructions the
event loop executes in each function while wrk drives the server (``sys.settrace`` with opcode
events, in :mod:`bench._opcode_server`), divided by the requests answered: exact, and the same
from run to run but for periodic work. On CPython 3.11 a bytecode instruction costs about 25
machine instructions in the interpreter's loop, plus what the C functions it calls cost.

Each configuration of :mod:`bench.accounting` runs with the admin key and a metered key; the
table gives opcodes per request against accounting off, then the functions that add the most.
Needs wrk (Debian), and PostgreSQL and Redis on 127.0.0.1 for ``postgres+redis``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench._server import ADMIN_KEY, free_port, running_server
from bench.accounting import configs, drop_database, metered_key, postgres_database
from bench.relay import process, wrk

ONCE_A_REQUEST = "llmrelay/dialects/openai_chat.py:parse_chat_request"
Counts = dict[str, float]  # opcodes a request, by function


def count(config: dict[str, object], who: str, seconds: int, stream: bool) -> Counts:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opcodes.json"
        pids: list[int] = []
        env = {"LLMRELAY_OPCODES_OUT": str(out)}
        server = running_server(config, pids=pids, module="bench._opcode_server", extra_env=env)
        with server as url:
            metered = metered_key(url)  # (and the model's price, for both keys)
            key = metered if who == "metered" else ADMIN_KEY
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": stream,
            }
            target = url + "/v1/chat/completions"
            wrk(target, body, 32, 2, key)  # warm up: connections, caches
            time.sleep(0.5)
            os.kill(pids[0], signal.SIGUSR1)
            wrk(target, body, 8, seconds, key)
            os.kill(pids[0], signal.SIGUSR2)
            deadline = time.monotonic() + 20
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            found = json.loads(out.read_text())
    requests = found["calls"][ONCE_A_REQUEST]
    return {name: n / requests for name, n in found["opcodes"].items()}


def report(rows: dict[tuple[str, str], Counts], top: int) -> None:
    print("| accounting | key | opcodes/request | vs off |")
    print("|---|---|---:|---:|")
    for (name, who), counts in rows.items():
        total, off = sum(counts.values()), sum(rows["off", who].values())
        print(f"| {name} | {who} | {total:.0f} | {total - off:+.0f} |")
    for (name, who), counts in rows.items():
        if name == "off":
            continue
        off = rows["off", who]
        added = sorted(((n - off.get(f, 0.0), f) for f, n in counts.items()), reverse=True)
        print(f"\n{name}, {who} key: the {top} functions that add the most opcodes a request\n")
        print("| added | function |")
        print("|---:|---|")
        for extra, function in added[:top]:
            print(f"| {extra:.0f} | `{function}` |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated configurations besides off")
    parser.add_argument("--keys", default="admin,metered", help="comma-separated: admin, metered")
    parser.add_argument("--stream", action="store_true", help="streamed answers (3 chunks)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per row")
    args = parser.parse_args()
    only = {"off", *args.only.split(",")} if args.only else None
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    pg_url = postgres_database()
    rows: dict[tuple[str, str], Counts] = {}
    try:
        with ExitStack() as stack:
            ready = upstream + "/chat/completions"
            stack.enter_context(process("bench.fast_upstream", str(up_port), ready_url=ready))
            for name, config in configs(upstream, pg_url).items():
                if only is None or name in only:
                    for who in args.keys.split(","):
                        rows[name, who] = count(config, who, args.seconds, args.stream)
    finally:
        drop_database(pg_url)
    report(rows, args.top)


if __name__ == "__main__":
    main()

"""Records ledger rows until it is killed, printing each request id once ``record`` returned.

Run by tests/test_accounting_ledger.py:
``python ledger_crash_child.py URL JOURNAL_DIR KEY_ID USER_ID COST``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from llmrelay.accounting.ledger import LedgerRow, LedgerWriter
from llmrelay.store.db import Database

WORKERS = 16


async def _worker(writer: LedgerWriter, n: int, key_id: int, user_id: int, cost: int) -> None:
    i = 0
    while True:
        request_id = f"crash-{n}-{i}"
        row = LedgerRow(
            request_id=request_id,
            model="m",
            status=200,
            key_id=key_id,
            user_id=user_id,
            prompt_tokens=10,
            completion_tokens=5,
            cost_pusd=cost,
        )
        writer.record(row)
        os.write(1, f"{request_id}\n".encode())  # one write: a whole line or nothing
        i += 1
        await asyncio.sleep(0)  # as a server would, between requests: the writer task runs


async def main(url: str, journal: Path, key_id: int, user_id: int, cost: int) -> None:
    db = Database(url)
    async with LedgerWriter(db, journal) as writer:
        os.write(1, b"ready\n")
        await asyncio.gather(*(_worker(writer, n, key_id, user_id, cost) for n in range(WORKERS)))


if __name__ == "__main__":
    url, journal = sys.argv[1], Path(sys.argv[2])
    key_id, user_id, cost = map(int, sys.argv[3:6])
    asyncio.run(main(url, journal, key_id, user_id, cost))

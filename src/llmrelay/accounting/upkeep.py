"""Ledger upkeep in the background: roll rows up into daily sums, prune past the retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from llmrelay.store.usage import UsageStore

log = logging.getLogger(__name__)


async def ledger_upkeep(usage: UsageStore, retention_days: int, every: float = 3600.0) -> None:
    """Forever: rows older than an hour go into ``usage_daily`` (reports read the sums), rows
    older than ``retention_days`` are deleted. Safe with several processes on one database."""
    while True:
        try:
            rolled = await usage.rollup(datetime.now(UTC) - timedelta(hours=1))
            pruned = await usage.prune(retention_days)
            if rolled or pruned:
                log.info("ledger upkeep: %d rows rolled up, %d pruned", rolled, pruned)
        except Exception:
            log.exception("ledger upkeep failed; trying again later")
        await asyncio.sleep(every)

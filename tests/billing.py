"""Shared pieces of the billing tests: servers in front of the fake upstream, ledger reads.

The fake upstream's every answer has the same usage (11 prompt tokens of which 3 cached, 7
completion tokens of which 2 reasoning). Priced at $0 input and $1 per million output tokens,
one answer costs exactly 7 µ$ = 7,000,000 picodollars, and a request with ``max_tokens: 7``
reserves exactly that: a credit of 10 answers admits exactly 10 concurrent requests.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from llmrelay.settings import async_database_url
from llmrelay.store.db import sync_url
from tests.conftest import Server, start_server
from tests.upstream import FakeUpstream

MODEL = "billed"
ANSWER_PUSD = 7_000_000  # what one answer of the fake upstream costs at the prices below
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}


def billing_config(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "channels": [
            {"name": "bill", "base_url": upstream.url, "keys": ["ok"], "models": [MODEL]},
            {
                "name": "bill-drip",
                "base_url": upstream.url,
                "keys": ["drip"],
                "models": ["dripped"],
            },
        ],
        "redis_prefix": "test-" + uuid.uuid4().hex[:10],
        **extra,
    }


def start_billing(tmp: Path, upstream: FakeUpstream, **extra: Any) -> Server:
    server = start_server(tmp, extra_config=billing_config(upstream, **extra))
    for model in (MODEL, "dripped"):
        done = server.cli(
            "prices", "set", model, "--input", "0", "--cached-input", "0", "--output", "1"
        )
        assert done.returncode == 0, done.stderr
    return server


def database_url(server: Server) -> str:
    config = (server.data_dir.parent / "config.yaml").read_text()
    import json

    url = json.loads(config).get("database_url")
    return sync_url(async_database_url(url)) if url else f"sqlite:///{server.data_dir}/llmrelay.db"


def flush(*servers: Server) -> None:
    """Have each server commit the ledger rows it has queued (a row is journaled when its
    response is sent, and committed a few milliseconds later): an admin report does that."""
    for server in servers:
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        httpx.get(server.url + "/admin/usage", headers=headers, timeout=30).raise_for_status()


def ledger(
    server: Server, key_name: str | None = None, *, flushed: bool = False
) -> list[dict[str, Any]]:
    """The ledger rows (of one key), straight from the database, once the server committed
    what it had queued (``flushed``: that is done already, or the server is not running)."""
    if not flushed:
        flush(server)
    engine = create_engine(database_url(server))
    query = "SELECT l.* FROM ledger l LEFT JOIN api_keys k ON k.id = l.key_id"
    params: dict[str, Any] = {}
    if key_name is not None:
        query += " WHERE k.name = :name"
        params["name"] = key_name
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(query + " ORDER BY l.id"), params)]
    finally:
        engine.dispose()


def spent(server: Server, table: str, name: str) -> tuple[int | None, int]:
    """(credit or balance, spent) of a key (``api_keys``) or user (``users``)."""
    flush(server)
    limit = "credit_pusd" if table == "api_keys" else "balance_pusd"
    engine = create_engine(database_url(server))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT {limit}, spent_pusd FROM {table} WHERE name = :n"), {"n": name}
            ).one()
    finally:
        engine.dispose()
    return row[0], row[1]


async def _fire(urls: list[str], keys: list[str], count: int, body: dict[str, Any]) -> list[Any]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            return await client.post(
                urls[i % len(urls)] + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
            )

        return await asyncio.gather(*(one(i) for i in range(count)))


def fire(
    urls: list[str], keys: list[str], count: int, body: dict[str, Any] | None = None
) -> list[httpx.Response]:
    """``count`` requests at once, spread over the servers and keys."""
    return asyncio.run(_fire(urls, keys, count, body or BODY))


async def _hammer(urls: list[str], key: str, workers: int) -> int:
    limits = httpx.Limits(max_connections=workers)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

        async def worker(i: int) -> int:
            answered = 0
            while True:
                r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY)
                if r.status_code != 200:
                    assert r.status_code == 429, r.text
                    return answered
                answered += 1

        return sum(await asyncio.gather(*(worker(i) for i in range(workers))))


def hammer(urls: list[str], key: str, workers: int = 32) -> int:
    """Sustained load: ``workers`` clients, each sending one request after the other until it
    is refused. Returns how many were answered."""
    return asyncio.run(_hammer(urls, key, workers))


def limiter_counts(server: Server) -> dict[str, float]:
    """The server's ``llmrelay_limiter_total`` counters, by what they count."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {server.admin_key}"}
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
    response.raise_for_status()
    return {
        sample.labels["what"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "llmrelay_limiter_total"
    }


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    found: dict[int, int] = {}
    for r in responses:
        found[r.status_code] = found.get(r.status_code, 0) + 1
    return found

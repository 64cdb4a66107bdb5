"""The console's usage page: requests made with the SDK show up in its tables, charts and CSV
export; users see only their own usage; bad periods are answered in words. Also the store's
per (day, model) sums and ledger listing, with rows rolled up and pruned."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import insert

from llmrelay.accounting.money import format_usd, parse_price
from llmrelay.console.usage_export import usd_exact
from llmrelay.store.db import Database
from llmrelay.store.keys import KeyStore
from llmrelay.store.tables import Ledger
from llmrelay.store.usage import UsageStore
from tests.conftest import MODEL, Server, admin_client
from tests.databases import BACKENDS, migrated_database, run_on
from tests.test_console import (  # noqa: F401  (fixtures)
    CHROMIUM,
    SHOTS,
    browser,
    http_session,
    page,
    playwright_api,
    screenshot_pages,
    shoot,
    sign_in,
    srv,
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs /usr/bin/chromium"
)

PRICE_IN, PRICE_OUT = "1.5", "6"  # USD per million tokens, set on MODEL for this module


@dataclass
class Call:
    """One chat completion as the SDK saw it."""

    request_id: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def cost_pusd(self) -> int:
        return self.prompt_tokens * parse_price(PRICE_IN) + (
            self.completion_tokens * parse_price(PRICE_OUT)
        )


@dataclass
class Account:
    user: str
    key: str  # key name
    secret: str
    calls: list[Call]


@pytest.fixture(scope="module")
def admin(srv: Server) -> Iterator[httpx.Client]:  # noqa: F811
    with admin_client(srv) as client:
        response = client.put(
            f"/admin/prices/{MODEL}", json={"input": PRICE_IN, "output": PRICE_OUT}
        )
        assert response.status_code == 200, response.text
        time.sleep(2.2)  # the server reloads prices every 2 s
        yield client


def new_account(admin: httpx.Client, user: str, key: str) -> Account:
    response = admin.post("/admin/keys", json={"name": key, "user": user})
    assert response.status_code == 201, response.text
    return Account(user, key, response.json()["secret"], [])


def chat(srv: Server, account: Account, text: str) -> Call:  # noqa: F811
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=account.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=3
    )
    usage = raw.parse().usage
    assert usage is not None
    call = Call(raw.headers["x-request-id"], usage.prompt_tokens, usage.completion_tokens)
    account.calls.append(call)
    return call


@pytest.fixture(scope="module")
def carol(srv: Server, admin: httpx.Client) -> Account:  # noqa: F811
    account = new_account(admin, "carol", "carol-key")
    for text in ("Say hi.", "Name a colour.", "Count to three, please."):
        chat(srv, account, text)
    return account


@pytest.fixture(scope="module")
def dave(srv: Server, admin: httpx.Client) -> Account:  # noqa: F811
    account = new_account(admin, "dave", "dave-key")
    chat(srv, account, "Say bye.")
    return account


def csv_rows(client: httpx.Client, query: str = "") -> tuple[httpx.Response, list[dict[str, str]]]:
    """The export, once it holds the rows (the ledger writer commits in groups)."""
    deadline = time.monotonic() + 5
    while True:
        response = client.get("/console/usage.csv" + query)
        assert response.status_code == 200, response.text
        rows = list(csv.DictReader(io.StringIO(response.text)))
        if rows or time.monotonic() > deadline:
            return response, rows
        time.sleep(0.1)


def wait_rows(page: playwright_api.Page, url: str, count: int) -> None:  # noqa: F811
    """Load ``url`` until its recent-requests table has ``count`` rows."""
    deadline = time.monotonic() + 5
    while True:
        page.goto(url)
        found = page.locator("#recent tbody tr").count()
        if found >= count or time.monotonic() > deadline:
            assert found == count
            return
        time.sleep(0.1)


def test_requests_show_in_table_and_chart(page: playwright_api.Page, carol: Account) -> None:  # noqa: F811
    sign_in(page, carol.secret)
    page.get_by_role("link", name="Usage").click()
    wait_rows(page, "/console/usage", len(carol.calls))
    assert page.get_by_role("link", name="Usage").get_attribute("aria-current") == "page"

    recent = page.locator("#recent tbody tr")
    for i, call in enumerate(reversed(carol.calls)):  # newest first
        cells = recent.nth(i).locator("td")
        assert cells.nth(1).inner_text() == "carol-key"
        assert cells.nth(2).inner_text() == MODEL
        assert cells.nth(3).inner_text().startswith("200")
        assert cells.nth(4).inner_text().split()[0] == f"{call.prompt_tokens:,}"
        assert cells.nth(5).inner_text().split()[0] == f"{call.completion_tokens:,}"
        assert cells.last.inner_text() == format_usd(call.cost_pusd)
    assert "User" not in page.locator("#recent thead").inner_text()  # admins only

    today = datetime.now(UTC).date().isoformat()
    day = page.locator("#per-day tbody tr")
    assert day.count() == 1
    assert day.locator("th").inner_text() == today
    assert day.locator("td").first.inner_text() == str(len(carol.calls))
    model = page.locator("#per-model tbody tr")
    assert model.locator("th").inner_text() == MODEL
    cost = sum(c.cost_pusd for c in carol.calls)
    assert model.locator("td").last.inner_text() == format_usd(cost)
    assert page.locator("#total-requests").inner_text() == str(len(carol.calls))

    # The charts: drawn (a canvas each) from the same numbers.
    assert page.locator("#charts").is_visible()
    for kind in ("requests", "tokens", "cost"):
        page.locator(f"#chart-{kind} canvas").first.wait_for()
    series = page.evaluate(
        "() => Object.fromEntries(Object.entries(window.llmrelayCharts)"
        ".map(([k, u]) => [k, {x: u.data[0], ys: u.data.slice(1),"
        " labels: u.series.slice(1).map(s => s.label)}]))"
    )
    x = series["requests"]["x"]
    assert len(x) == 30 and x[-1] == datetime.fromisoformat(today + "T00:00:00+00:00").timestamp()
    assert series["requests"]["labels"] == [MODEL]
    assert series["requests"]["ys"][0][-1] == len(carol.calls)
    assert sum(series["requests"]["ys"][0]) == len(carol.calls)
    prompt, completion = series["tokens"]["ys"]
    assert prompt[-1] == sum(c.prompt_tokens for c in carol.calls)
    assert completion[-1] == sum(c.completion_tokens for c in carol.calls)
    assert series["cost"]["ys"][0][-1] == pytest.approx(cost / 10**12)


def test_csv_export_has_the_sdk_token_counts(srv: Server, carol: Account) -> None:  # noqa: F811
    with http_session(srv, carol.secret) as client:
        response, rows = csv_rows(client)
        assert response.headers["content-type"].startswith("text/csv")
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("attachment;") and '.csv"' in disposition
        assert {r["request_id"] for r in rows} == {c.request_id for c in carol.calls}
        for call in carol.calls:
            row = next(r for r in rows if r["request_id"] == call.request_id)
            assert (row["user"], row["key"], row["model"], row["status"]) == (
                "carol",
                "carol-key",
                MODEL,
                "200",
            )
            assert int(row["prompt_tokens"]) == call.prompt_tokens
            assert int(row["completion_tokens"]) == call.completion_tokens
            assert int(row["cost_pusd"]) == call.cost_pusd
            assert row["cost_usd"] == usd_exact(call.cost_pusd)
            assert int(row["latency_ms"]) > 0 and row["estimated"] in ("true", "false")

        _, daily = csv_rows(client, "?days=7&kind=daily")
        assert len(daily) == 1
        assert daily[0]["day"] == datetime.now(UTC).date().isoformat()
        assert daily[0]["model"] == MODEL and int(daily[0]["requests"]) == len(carol.calls)
        assert int(daily[0]["prompt_tokens"]) == sum(c.prompt_tokens for c in carol.calls)
        assert int(daily[0]["cost_pusd"]) == sum(c.cost_pusd for c in carol.calls)

        # A period without requests: only the header.
        response = client.get("/console/usage.csv?from=2020-01-01&to=2020-01-31")
        assert response.text.strip() == ",".join(csv.reader([response.text]).__next__())
        assert "2020-01-01-to-2020-01-31" in response.headers["content-disposition"]
        bad = client.get("/console/usage.csv?kind=everything")
        assert bad.status_code == 400 and "must be one of requests, daily" in bad.text


def test_users_see_only_their_own_usage(
    page: playwright_api.Page,  # noqa: F811
    srv: Server,  # noqa: F811
    carol: Account,
    dave: Account,
) -> None:
    with http_session(srv, carol.secret) as client:
        html = client.get("/console/usage").text
        assert "carol-key" in html and "dave-key" not in html
        assert dave.calls[0].request_id not in client.get("/console/usage.csv").text
        refused = client.get("/console/usage?user=dave")
        assert refused.status_code == 403 and "Only admins" in refused.text
        hidden = client.get("/console/usage.csv?key=dave-key")
        assert hidden.status_code == 404 and "no key named" in hidden.text
        assert 'id="user"' not in html  # no user filter for non-admins

    sign_in(page, srv.admin_key)
    total = len(carol.calls) + len(dave.calls)
    wait_rows(page, "/console/usage", total)
    assert page.locator("#recent thead th").nth(1).inner_text() == "User"
    page.get_by_label("User", exact=True).select_option("dave")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**user=dave**")
    rows = page.locator("#recent tbody tr")
    assert rows.count() == 1 and "dave-key" in rows.first.inner_text()
    assert page.locator("#total-requests").inner_text() == "1"
    page.get_by_label("User", exact=True).select_option("")
    page.get_by_label("Key", exact=True).select_option("carol-key")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**key=carol-key**")
    assert page.locator("#recent tbody tr").count() == len(carol.calls)
    # The quick links keep the filter.
    page.get_by_role("link", name="Last 7 days").click()
    page.wait_for_url("**days=7**")
    assert "key=carol-key" in page.url
    assert page.locator("#recent tbody tr").count() == len(carol.calls)
    assert page.get_by_role("link", name="Last 7 days").get_attribute("aria-current") == "page"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2025-02-30", "“From” must be a date like 2025-01-31, not “2025-02-30”."),
        ("from=2025-03-01&to=2025-02-01", "“From” (2025-03-01) is after “To” (2025-02-01)."),
        ("from=2020-01-01&to=2025-01-01", "A period can be at most 366 days"),
        ("days=abc", "“days” must be a whole number from 1 to 366"),
        ("days=0", "“days” must be a whole number from 1 to 366"),
        ("to=9999-12-31", "“To” must be between 1970-01-01 and 9998-12-31."),
        ("user=nobody-at-all", "There is no user named “nobody-at-all”."),
    ],
)
def test_bad_period_is_answered_in_words(
    page: playwright_api.Page,  # noqa: F811
    srv: Server,  # noqa: F811
    query: str,
    message: str,
) -> None:
    sign_in(page, srv.admin_key)
    response = page.goto("/console/usage?" + query)
    assert response is not None and response.status in (400, 404)
    assert message in page.get_by_role("alert").inner_text()
    # The form is still there to fix it, holding what was typed where it could.
    page.get_by_label("From").fill("2025-01-01")
    page.get_by_label("To").fill("2025-01-07")
    page.get_by_label("User", exact=True).select_option("")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**from=2025-01-01**")
    assert page.get_by_role("alert").count() == 0
    assert "2025-01-01 to 2025-01-07" in page.get_by_role("heading", level=2).all_inner_texts()


def test_page_reads_without_javascript(
    browser: playwright_api.Browser,  # noqa: F811
    srv: Server,  # noqa: F811
    carol: Account,
) -> None:
    context = browser.new_context(base_url=srv.url, java_script_enabled=False)
    tab = context.new_page()
    sign_in(tab, carol.secret)
    tab.goto("/console/usage")
    assert tab.locator("#charts").is_hidden()  # charts only with JS; the tables carry it all
    assert tab.locator("#per-day tbody tr td").first.inner_text() == str(len(carol.calls))
    assert tab.locator("#recent tbody tr").count() == len(carol.calls)
    context.close()


def test_charts_follow_dark_mode(
    browser: playwright_api.Browser,  # noqa: F811
    srv: Server,  # noqa: F811
    carol: Account,
) -> None:
    strokes = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(base_url=srv.url, color_scheme=scheme)  # type: ignore[arg-type]
        tab = context.new_page()
        sign_in(tab, carol.secret)
        tab.goto("/console/usage")
        tab.locator("#chart-requests canvas").first.wait_for()
        strokes[scheme] = tab.evaluate(
            "() => { const u = window.llmrelayCharts.requests;"
            " return [u.series[1].stroke(u, 1), u.axes[1].stroke(u, 1),"
            " getComputedStyle(document.body).getPropertyValue('--muted').trim()]; }"
        )
        context.close()
    assert strokes["light"][0] != strokes["dark"][0]
    assert strokes["light"][2] != strokes["dark"][2]
    for _series, axis, muted in strokes.values():
        assert axis == muted  # axis labels in the page's muted text colour


@pytest.mark.skipif(not os.environ.get("LLMRELAY_SCREENSHOTS"), reason="scripts/screenshots")
def test_screenshots(browser: playwright_api.Browser, srv: Server, carol: Account) -> None:  # noqa: F811
    for tab, suffix in screenshot_pages(browser, srv):
        sign_in(tab, carol.secret)
        tab.goto("/console/usage?days=7")
        tab.locator("#chart-cost canvas").first.wait_for()
        shoot(tab, "usage", suffix)


# -- the store: per (day, model) sums and the ledger listing --------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as resolved:
        yield resolved


def _row(i: int, key_id: int, user_id: int, days_ago: int, model: str, **extra: Any) -> Any:
    return {
        "request_id": f"req_{i}",
        "created_at": NOW - timedelta(days=days_ago, seconds=i),
        "key_id": key_id,
        "user_id": user_id,
        "model": model,
        "prompt_tokens": 10 + i,
        "completion_tokens": 3,
        "cost_pusd": 1_000 + i,
        "latency_ms": 5,
        "status": 200,
        "error_type": None,  # every row has every column: executemany uses the first's
        **extra,
    }


def test_store_day_model_sums_survive_rollup_and_prune(url: str) -> None:
    async def work(db: Database) -> None:
        keys = KeyStore(db)
        await keys.create("s-one", user="s-u1")
        await keys.create("s-two", user="s-u2")
        one, two = await keys.get("s-one"), await keys.get("s-two")
        rows = [
            *(_row(i, one.id, one.user_id, i % 3, "m-a" if i % 2 else "m-b") for i in range(12)),
            _row(50, two.id, two.user_id, 1, "m-a", status=500, error_type="upstream_error"),
        ]
        async with db.engine.begin() as conn:
            await conn.execute(insert(Ledger), rows)
        usage = UsageStore(db)

        async def cells(**where: Any) -> dict[tuple[date, str], tuple[int, int, int, int]]:
            found = await usage.usage_by_day_and_model(TODAY - timedelta(days=6), TODAY, **where)
            return {
                (d, r.group): (r.requests, r.errors, r.prompt_tokens, r.cost_pusd) for d, r in found
            }

        expected: dict[tuple[date, str], list[int]] = {}
        for row in rows:
            day = (row["created_at"]).date()
            sums = expected.setdefault((day, row["model"]), [0, 0, 0, 0])
            sums[0] += 1
            sums[1] += row["status"] >= 400
            sums[2] += row["prompt_tokens"]
            sums[3] += row["cost_pusd"]
        before = await cells()
        assert before == {k: tuple(v) for k, v in expected.items()}
        assert sum(v[0] for k, v in (await cells(user_id=two.user_id)).items()) == 1
        assert sum(v[0] for v in (await cells(key_id=one.id)).values()) == 12
        # The per-day sums agree with the existing report.
        by_day = {r.group: r.requests for r in await usage.usage("day")}
        for day in {d for d, _ in before}:
            assert by_day[day.isoformat()] == sum(v[0] for (d, _), v in before.items() if d == day)

        listed = await usage.requests(limit=5)
        assert [r.request_id for r in listed] == [f"req_{i}" for i in (50, 11, 10, 9, 8)]
        assert listed[0].key == "s-two" and listed[0].user == "s-u2"
        assert listed[0].error_type == "upstream_error" and listed[0].created_at.tzinfo
        page_two = await usage.requests(limit=5, before_id=listed[-1].id)
        assert [r.request_id for r in page_two] == [f"req_{i}" for i in (7, 6, 5, 4, 3)]
        mine = await usage.requests(TODAY, TODAY, user_id=one.user_id, limit=100)
        # Derived from the rows' dates: a row a few seconds before NOW is yesterday's
        # when the suite runs just after midnight.
        assert {r.request_id for r in mine} == {
            row["request_id"]
            for row in rows
            if row["user_id"] == one.user_id and row["created_at"].date() == TODAY
        }

        # Rolled up (nothing counted twice) and then pruned: the sums stay the same.
        assert await usage.rollup(NOW - timedelta(hours=12)) == 9
        assert await cells() == before
        assert await usage.prune(1, now=NOW + timedelta(hours=1)) == 9
        assert await cells() == before
        assert await usage.rollup(NOW + timedelta(seconds=1)) == 4  # today's rows too
        assert await cells() == before
        assert await cells(user_id=two.user_id) == {
            (rows[-1]["created_at"].date(), "m-a"): (1, 1, 60, 1050)
        }
        assert len(await usage.requests(limit=100)) == 4  # today's rows are kept

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(run_on, url, work).result()

"""The console's admin pages (channels, models and prices) in headless Chromium, against a real
server relaying to a real local OpenAI-compatible upstream (tests/upstream.py)."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import Server, admin_client, start_server, stop_server
from tests.test_channels import closed_port
from tests.test_console import (  # noqa: F401  (fixtures)
    SHOTS,
    browser,
    csrf_of,
    http_session,
    page,
    playwright_api,
    screenshot_pages,
    shoot,
    sign_in,
)
from tests.upstream import FakeUpstream, wait_for

Page = playwright_api.Page
CHANNELS = "/console/admin/channels"
MODELS = "/console/admin/models"

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium") and not os.environ.get("CI"),
    reason="needs /usr/bin/chromium",
)


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream().start()


FILE_KEY = "ok:sk-config-file-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Server]:
    """A server with one channel in its config file (read-only in the console)."""
    file_channel = {
        "name": "from-file",
        "base_url": upstream.url,
        "keys": [FILE_KEY],
        "models": ["file-model"],
    }
    config = {"channels": [file_channel]}
    server = start_server(tmp_path_factory.mktemp("console-admin"), extra_config=config)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def admin_http(srv: Server) -> Iterator[httpx.Client]:  # noqa: F811, RUF100
    with admin_client(srv, timeout=30) as client:
        yield client


def upstream_key() -> str:
    """A key the fake upstream answers normally ("ok:…"), unique and long enough to search for."""
    return "ok:sk-upstream-" + secrets.token_hex(16)


def served(server: Server) -> set[str]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)
    return {m.id for m in client.models.list()}


def add_channel(tab: Page, name: str, base_url: str, key: str, models: str, **extra: str) -> None:
    tab.goto(CHANNELS)
    tab.get_by_role("link", name="Add a channel").first.click()
    field(tab, "Name").fill(name)
    field(tab, "Base URL").fill(base_url)
    field(tab, "Upstream keys").fill(key)
    field(tab, "Models").fill(models)
    for label, value in extra.items():
        field(tab, label).fill(value)
    tab.get_by_role("button", name="Add channel").click()


def field(tab: Page, label: str) -> playwright_api.Locator:
    """The input whose label starts with ``label`` (labels carry hints in <small>)."""
    return tab.get_by_label(re.compile("^" + re.escape(label)))


def row(tab: Page, name: str) -> playwright_api.Locator:
    return tab.locator(f'tr[id="channel-{name}"]')


def run_test(tab: Page, name: str) -> playwright_api.Locator:
    tab.goto(CHANNELS)
    tab.get_by_role("button", name=f"Test {name}").click()
    result = tab.locator("#test-result")
    result.wait_for()
    return result


def test_channel_lifecycle(page: Page, srv: Server, upstream: FakeUpstream) -> None:  # noqa: F811
    key = upstream_key()
    sign_in(page, srv.admin_key)
    add_channel(
        page,
        "console-up",
        upstream.url,
        key,
        "console-model, console-alias",
        **{"Model mapping": "console-alias=real-upstream-name"},
    )
    page.wait_for_url(f"**{CHANNELS}?added=console-up")
    assert "is added" in page.get_by_role("status").inner_text()
    line = row(page, "console-up").inner_text()
    assert "1 key" in line and "console-alias" in line and "real-upstream-name" in line
    assert key not in page.content() and key[-4:] not in line  # not even a few characters

    # The test is a real round trip: the upstream sees it, the page shows latency and support.
    before = len(upstream.bodies(key))
    result = run_test(page, "console-up")
    text = result.inner_text()
    assert "Passed" in text and "Hello from console-model." in text
    assert re.search(r"first chunk after \d+ ms, complete after \d+ ms", text), text
    assert "tools: yes" in text and "reported by the upstream" in text
    assert len(upstream.bodies(key)) == before + 1
    assert key not in page.content()

    # Served through the relay at once, with the mapping applied upstream.
    assert {"console-model", "console-alias"} <= served(srv)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.admin_key, max_retries=0)
    reply = client.chat.completions.create(
        model="console-alias", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert reply.choices[0].message.content == "Hello from real-upstream-name."
    assert upstream.bodies(key)[-1]["model"] == "real-upstream-name"

    # Edit: the keys field left empty keeps the key.
    row(page, "console-up").get_by_role("link", name="Edit console-up").click()
    assert key not in page.content()
    assert "Now: 1 key" in page.locator("#keys-hint").inner_text()
    field(page, "Models").fill("console-model, console-alias, console-extra")
    field(page, "Priority").fill("2")
    field(page, "Weight").fill("3")
    field(page, "Tools").select_option("no")
    page.get_by_role("button", name="Save channel").click()
    page.wait_for_url(f"**{CHANNELS}?updated=console-up")
    assert "2, 3" in row(page, "console-up").inner_text()
    assert "console-extra" in served(srv)
    reply = client.chat.completions.create(
        model="console-extra", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert reply.choices[0].message.content == "Hello from console-extra."
    assert upstream.bodies(key)[-1]["model"] == "console-extra"  # sent with the kept key
    assert "tools: no" in run_test(page, "console-up").inner_text()

    # Disable: its models leave /v1/models; enable brings them back.
    row(page, "console-up").get_by_role("button", name="Disable console-up").click()
    page.wait_for_url(f"**{CHANNELS}?disabled=console-up")
    assert "disabled" in row(page, "console-up").inner_text()
    assert "console-model" not in served(srv)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="console-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
        )
    row(page, "console-up").get_by_role("button", name="Enable console-up").click()
    page.wait_for_url(f"**{CHANNELS}?enabled=console-up")
    assert "console-model" in served(srv)

    # Remove, after a confirmation.
    row(page, "console-up").get_by_role("link", name="Remove console-up").click()
    assert "Remove channel “console-up”?" in page.get_by_role("heading").inner_text()
    page.get_by_role("button", name="Remove channel").click()
    page.wait_for_url(f"**{CHANNELS}?removed=console-up")
    assert row(page, "console-up").count() == 0
    assert not {"console-model", "console-extra"} & served(srv)


def test_refused_connection_is_reported_in_words(page: Page, srv: Server) -> None:  # noqa: F811
    sign_in(page, srv.admin_key)
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    add_channel(page, "console-dead", dead, upstream_key(), "dead-model")
    page.wait_for_url(f"**{CHANNELS}?added=console-dead")
    result = run_test(page, "console-dead")
    alert = result.get_by_role("alert").inner_text()
    assert alert.startswith("Failed: ") and "Passed" not in result.inner_text()
    assert re.search(r"connect|refused|reach", alert, re.I), alert
    assert "Traceback" not in page.content()


def test_form_errors_are_shown_in_words(page: Page, srv: Server, upstream: FakeUpstream) -> None:  # noqa: F811
    sign_in(page, srv.admin_key)
    key = upstream_key()
    add_channel(page, "console-bad", upstream.url, key, "m1", Weight="0")
    alert = page.get_by_role("alert").inner_text()
    assert alert == "Weight: input should be greater than or equal to 1."
    # The form keeps what was typed, but never echoes the keys.
    assert field(page, "Name").input_value() == "console-bad"
    assert key not in page.content()
    field(page, "Weight").fill("1")
    field(page, "Model mapping").fill("no equals sign")
    field(page, "Upstream keys").fill(key)
    page.get_by_role("button", name="Add channel").click()
    assert "line 1: write public=upstream" in page.get_by_role("alert").inner_text()
    add_channel(page, "console-twice", upstream.url, key, "twice-model")
    page.wait_for_url("**?added=console-twice")
    add_channel(page, "console-twice", upstream.url, key, "twice-model")
    assert "already exists" in page.get_by_role("alert").inner_text()
    # The browser checks the name's pattern itself; the server says the same in words.
    with http_session(srv, srv.admin_key) as client:
        token = csrf_of(client.get(CHANNELS).text)
        fields = {"name": "has space", "base_url": upstream.url, "models": "m1", "csrf": token}
        response = client.post(CHANNELS, data=fields)
        assert response.status_code == 400
        assert "Name: use only letters, digits and the characters _ . : - (no spaces)." in (
            response.text
        )
    with admin_client(srv) as http:
        assert "console-bad" not in http.get("/admin/channels").text


def test_config_file_channel_is_read_only(page: Page, srv: Server) -> None:  # noqa: F811
    sign_in(page, srv.admin_key)
    page.goto(CHANNELS)
    line = row(page, "from-file")
    assert "from the config file" in line.inner_text()
    assert line.get_by_role("link", name="Edit from-file").count() == 0
    assert "Passed" in run_test(page, "from-file").inner_text()
    assert FILE_KEY not in page.content()
    with http_session(srv, srv.admin_key) as client:
        token = csrf_of(client.get(CHANNELS).text)
        response = client.get(CHANNELS + "/from-file/edit")
        assert response.status_code == 409 and "config file" in response.text
        for action in ("disable", "remove", "edit"):
            response = client.post(f"{CHANNELS}/from-file/{action}", data={"csrf": token})
            assert response.status_code == 409, action
        response = client.post(CHANNELS + "/no-such/test", data={"csrf": token})
        assert response.status_code == 404 and "No channel named" in response.text
    assert "file-model" in served(srv)


def test_price_is_set_used_edited_and_removed(
    page: Page,  # noqa: F811
    srv: Server,  # noqa: F811, RUF100
    upstream: FakeUpstream,
    admin_http: httpx.Client,
) -> None:
    created = admin_http.post(
        "/admin/channels",
        json={
            "name": "priced",
            "base_url": upstream.url,
            "keys": [upstream_key()],
            "models": ["priced-model"],
        },
    )
    assert created.status_code == 201, created.text
    sign_in(page, srv.admin_key)
    page.goto(MODELS)
    line = page.locator('tr[id="model-priced-model"]')
    assert line.locator('td[data-label="Served by"]').inner_text() == "priced"
    assert "no price" in line.inner_text()
    bundled = page.locator('tr[id="model-smollm2-135m-instruct"]').inner_text()
    assert "bundled model" in bundled

    line.get_by_role("link", name="Set price of priced-model").click()
    field(page, "Input").fill("1.5")
    field(page, "Cached input").fill("0.5")
    field(page, "Output").fill("2")
    field(page, "Reasoning").fill("4")
    field(page, "Web search").fill("0.01")
    page.get_by_role("button", name="Save price").click()
    page.wait_for_url(f"**{MODELS}?priced=priced-model")
    cells = page.locator('tr[id="model-priced-model"]').inner_text()
    assert all(p in cells for p in ("$1.50", "$0.50", "$2.00", "$4.00", "$0.01")), cells

    price = admin_http.get("/admin/prices/priced-model").json()
    assert (price["input"], price["cached_input"], price["output"]) == ("1.50", "0.50", "2.00")
    assert (price["reasoning"], price["per_search"]) == ("4.00", "0.01")

    # A request is charged under it: the upstream reports 11 prompt tokens (3 cached) and 7
    # completion tokens (2 reasoning): 8*1.5 + 3*0.5 + 5*2 + 2*4 = 31.5 USD per million tokens.
    secret = srv.create_key("priced-user")
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=secret, max_retries=0)
    time.sleep(2.1)  # the price book reloads every 2 s
    client.chat.completions.create(
        model="priced-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    wait_for(lambda: admin_http.get("/admin/keys/priced-user").json()["spent_pusd"] == 31_500_000)

    # A price that cannot be held exactly is refused in words; the old one stays.
    page.locator('tr[id="model-priced-model"]').get_by_role(
        "link", name="Edit price of priced-model"
    ).click()
    assert field(page, "Input").input_value() == "1.50"
    field(page, "Output").fill("0.0000001")
    page.get_by_role("button", name="Save price").click()
    assert "more than 6 decimals" in page.get_by_role("alert").inner_text()
    assert admin_http.get("/admin/prices/priced-model").json()["output"] == "2.00"
    field(page, "Output").fill("3")
    field(page, "Reasoning").fill("")
    page.get_by_role("button", name="Save price").click()
    page.wait_for_url(f"**{MODELS}?priced=priced-model")
    assert admin_http.get("/admin/prices/priced-model").json()["reasoning"] == "3.00"

    page.locator('tr[id="model-priced-model"]').get_by_role(
        "link", name="Remove price of priced-model"
    ).click()
    page.get_by_role("button", name="Remove price").click()
    page.wait_for_url(f"**{MODELS}?unpriced=priced-model")
    assert "no price" in page.locator('tr[id="model-priced-model"]').inner_text()
    assert admin_http.get("/admin/prices/priced-model").status_code == 404


def test_pages_are_for_admins_only(srv: Server, admin_http: httpx.Client) -> None:  # noqa: F811, RUF100
    secret = srv.create_key("not-an-admin")
    with http_session(srv, secret) as client:
        token = csrf_of(client.get("/console/keys").text)
        for path in (CHANNELS, CHANNELS + "/new", MODELS, MODELS + "/price"):
            response = client.get(path)
            assert response.status_code == 403 and "Only admins" in response.text, path
        attempts = {
            CHANNELS: {"name": "sneaky", "base_url": "http://127.0.0.1:9/v1", "models": "x"},
            MODELS + "/price": {"model": "sneaky", "input": "0", "output": "0"},
        }
        for path, data in attempts.items():
            response = client.post(path, data={**data, "csrf": token})
            assert response.status_code == 403 and "Only admins" in response.text
    assert "sneaky" not in admin_http.get("/admin/channels").text
    assert admin_http.get("/admin/prices/sneaky").status_code == 404


def test_posts_without_csrf_are_refused(
    srv: Server,  # noqa: F811, RUF100
    upstream: FakeUpstream,
    admin_http: httpx.Client,
) -> None:
    key = upstream_key()
    fields = {"name": "no-csrf", "base_url": upstream.url, "models": "m", "keys": key}
    with http_session(srv, srv.admin_key) as client:
        for extra in ({}, {"csrf": "forged"}):
            response = client.post(CHANNELS, data={**fields, **extra})
            assert response.status_code == 403 and "security token" in response.text
            response = client.post(
                MODELS + "/price", data={"model": "no-csrf", "input": "1", "output": "1", **extra}
            )
            assert response.status_code == 403
        assert "no-csrf" not in admin_http.get("/admin/channels").text
        assert admin_http.get("/admin/prices/no-csrf").status_code == 404
        token = csrf_of(client.get(CHANNELS).text)
        response = client.post(CHANNELS, data={**fields, "enabled": "on", "csrf": token})
        assert response.status_code == 303
        listed = {c["name"]: c for c in admin_http.get("/admin/channels").json()["data"]}
        assert listed["no-csrf"]["keys"] == 1
        for path in (CHANNELS, CHANNELS + "/no-csrf/edit", MODELS):
            assert key not in client.get(path).text


@pytest.mark.skipif(not os.environ.get("LLMRELAY_SCREENSHOTS"), reason="scripts/screenshots")
def test_screenshots(browser: playwright_api.Browser, srv: Server, upstream: FakeUpstream) -> None:  # noqa: F811
    with admin_client(srv) as http:
        for name, models, key in (
            ("openai-main", ["gpt-4o-mini", "gpt-4o"], upstream_key()),
            ("backup", ["gpt-4o-mini"], "500"),
        ):
            spec = {"name": name, "base_url": upstream.url, "keys": [key], "models": models}
            http.post("/admin/channels", json=spec)
        http.put(
            "/admin/prices/gpt-4o", json={"input": "2.50", "cached_input": "1.25", "output": "10"}
        )
    for shot, suffix in screenshot_pages(browser, srv):
        sign_in(shot, srv.admin_key)
        run_test(shot, "openai-main")
        shoot(shot, "channels", suffix)
        shot.goto(CHANNELS + "/openai-main/edit")
        shoot(shot, "channel-form", suffix)
        shot.goto(MODELS)
        shoot(shot, "models", suffix)
        shot.goto(MODELS + "/price?model=gpt-4o")
        shoot(shot, "price-form", suffix)

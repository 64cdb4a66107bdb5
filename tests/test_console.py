"""The web console in a real headless Chromium (Playwright) against a real server."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parent.parent / "docs" / "screenshots"

# Under CI a missing Chromium fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs /usr/bin/chromium"
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("console"))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: playwright_api.Browser, srv: Server) -> Iterator[playwright_api.Page]:
    context = browser.new_context(base_url=srv.url, viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=srv.url)
    yield context.new_page()
    context.close()


def sign_in(page: playwright_api.Page, key: str) -> None:
    page.goto("/console/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/keys")


def create(page: playwright_api.Page, name: str, user: str = "") -> str:
    page.goto("/console/keys")
    page.get_by_label("Name").fill(name)
    if user:
        page.get_by_label("User").fill(user)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret").input_value()
    assert secret.startswith("sk-")
    return secret


def models_status(srv: Server, secret: str) -> int:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=secret, max_retries=0)
    try:
        client.models.list()
    except openai.AuthenticationError:
        return 401
    return 200


def wait_status(srv: Server, secret: str, expected: int) -> None:
    deadline = time.monotonic() + 2.0
    while models_status(srv, secret) != expected:
        assert time.monotonic() < deadline, f"expected {expected} for {secret[:11]}"
        time.sleep(0.1)


@contextmanager
def http_session(srv: Server, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        # The sign-in form's CSRF token pairs with a cookie set by the form page.
        token = csrf_of(client.get("/console/login").text)
        response = client.post("/console/login", data={"key": key, "csrf": token})
        assert response.status_code == 303, response.text
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "max-age=" in cookie
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_login_refuses_bad_key_in_words(page: playwright_api.Page) -> None:
    page.goto("/console/login")
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    assert "unknown, revoked or expired" in page.get_by_role("alert").inner_text()
    assert page.goto("/console/keys").url.endswith("/console/login")  # type: ignore[union-attr]


def test_key_lifecycle(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    secret = create(page, "life")
    assert secret in page.locator("#curl").input_value()
    assert secret in page.locator("#python").input_value()
    page.get_by_role("button", name="Copy").first.click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    wait_status(srv, secret, 200)

    page.goto("/console/keys")
    assert secret not in page.content()
    page.locator("tr", has_text="life").get_by_role("link", name="Reset").click()
    page.get_by_role("button", name="Reset key").click()
    new = page.locator("#secret").input_value()
    assert new != secret
    wait_status(srv, secret, 401)
    wait_status(srv, new, 200)

    page.goto("/console/keys")
    html = page.content()
    assert secret not in html and new not in html
    page.locator("tr", has_text="life").get_by_role("link", name="Revoke").click()
    page.get_by_role("button", name="Revoke key").click()
    assert "revoked" in page.locator("tr", has_text="life").inner_text()
    wait_status(srv, new, 401)


def test_post_without_csrf_is_refused(srv: Server) -> None:
    with http_session(srv, srv.admin_key) as client:
        for data in ({"name": "no-csrf"}, {"name": "no-csrf", "csrf": "forged"}):
            response = client.post("/console/keys", data=data)
            assert response.status_code == 403
            assert "security token" in response.text
        html = client.get("/console/keys").text
        assert "no-csrf" not in html
        response = client.post("/console/keys", data={"name": "with-csrf", "csrf": csrf_of(html)})
        assert response.status_code == 200 and 'id="secret"' in response.text


def test_user_sees_only_own_keys(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    alice = create(page, "alice-key", user="alice")
    create(page, "bob-key", user="bob")
    with http_session(srv, alice) as client:
        html = client.get("/console/keys").text
        assert "alice-key" in html and "bob-key" not in html and alice not in html
        assert client.get("/console/keys/bob-key/reset").status_code == 404
        token = csrf_of(html)
        for action in ("reset", "revoke"):
            response = client.post(f"/console/keys/bob-key/{action}", data={"csrf": token})
            assert response.status_code == 404
    page.goto("/console/keys")
    assert "active" in page.locator("tr", has_text="bob-key").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    assert page.goto("/console/keys").url.endswith("/console/login")  # type: ignore[union-attr]


def screenshot_pages(
    browser: playwright_api.Browser, srv: Server, *, desktop_height: int = 800
) -> Iterator[tuple[playwright_api.Page, str]]:
    """A fresh page at each size (desktop, phone) and colour scheme, with its file-name suffix
    (``desktop-light`` …); the clipboard works, as for a person clicking a copy button."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", (1280, desktop_height)), ("phone", (390, 844))):
        for scheme in ("light", "dark"):
            context = browser.new_context(
                base_url=srv.url,
                viewport={"width": size[0], "height": size[1]},
                color_scheme=scheme,  # type: ignore[arg-type]
            )
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=srv.url)
            try:
                yield context.new_page(), f"{label}-{scheme}"
            finally:
                context.close()


def shoot(page: playwright_api.Page, name: str, suffix: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}-{suffix}.png"), full_page=True)


@pytest.mark.skipif(not os.environ.get("LLMRELAY_SCREENSHOTS"), reason="scripts/screenshots")
def test_screenshots(browser: playwright_api.Browser, srv: Server) -> None:
    for page, suffix in screenshot_pages(browser, srv):
        sign_in(page, srv.admin_key)
        shoot(page, "keys", suffix)


def tab_to(page: playwright_api.Page, selector: str) -> None:
    """Press Tab until ``selector`` has the focus, as a keyboard user would; the focus must be
    visible on the way (an outline)."""
    target = page.locator(selector)
    for _ in range(80):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            outline = target.evaluate("el => getComputedStyle(el).outlineStyle")
            assert outline != "none", f"{selector} has the focus but shows no outline"
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_keyboard_only_sign_in_create_and_use_a_key(page: playwright_api.Page, srv: Server) -> None:
    """Sign in and create a key without the mouse; the key's last use then shows on the page."""
    page.goto("/console/login")
    tab_to(page, "#key")
    page.keyboard.type(srv.admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/keys")
    tab_to(page, "#name")
    page.keyboard.type("by-keyboard")
    page.keyboard.press("Enter")
    secret = page.locator("#secret").input_value()
    assert secret.startswith("sk-")

    page.goto("/console/keys")
    assert "never" in page.locator("tr", has_text="by-keyboard").inner_text()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=1,
    )
    page.goto("/console/keys")
    row = page.locator("tr", has_text="by-keyboard")
    assert "never" not in row.locator("td[data-label='Last used']").inner_text()


PAGES = (
    "/console/keys",
    "/console/usage",
    "/console/playground",
    "/console/account",
    "/console/admin/users",
    "/console/admin/channels",
    "/console/admin/channels/new",
    "/console/admin/models",
)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_a_phone(browser: playwright_api.Browser, srv: Server, scheme: str) -> None:
    """At 390 px wide no page scrolls sideways, and each has its heading."""
    context = browser.new_context(
        base_url=srv.url, viewport={"width": 390, "height": 844}, color_scheme=scheme
    )
    try:
        phone = context.new_page()
        sign_in(phone, srv.admin_key)
        for path in PAGES:
            response = phone.goto(path)
            assert response is not None and response.status == 200, path
            phone.locator("h1").first.wait_for()
            overflow = phone.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{path} is {overflow}px wider than the phone"
    finally:
        context.close()

"""Console sign-in (passwords, one-time links, API keys), sessions that end when they must,
login CSRF, the admin Users page and the HTML 404, in headless Chromium and over HTTP against
a real server. The store behind them, on SQLite and PostgreSQL: tests/test_credentials.py."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Server, admin_client
from tests.test_console import (  # noqa: F401  (fixtures)
    SHOTS,
    browser,
    create,
    csrf_of,
    http_session,
    page,
    playwright_api,
    screenshot_pages,
    shoot,
    sign_in,
    srv,
)

Page = playwright_api.Page
USERS = "/console/admin/users"
WRONG = "do not match an account that may sign in"


@pytest.fixture(scope="module")
def admin(srv: Server) -> Iterator[httpx.Client]:  # noqa: F811
    """A console session of the admin (signed in with the admin key)."""
    with http_session(srv, srv.admin_key) as client:
        yield client


def post_form(client: httpx.Client, form_page: str, path: str, **data: str) -> httpx.Response:
    """Submit a console form the way a browser would: with the CSRF token of its page."""
    token = csrf_of(client.get(form_page).text)
    return client.post(path, data={**data, "csrf": token})


def new_user(admin: httpx.Client, name: str, password: str = "", **extra: str) -> None:
    response = post_form(admin, USERS, USERS, name=name, password=password, **extra)
    assert response.status_code == 303, response.text


def try_password(srv: Server, name: str, password: str) -> httpx.Response:  # noqa: F811
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        return post_form(client, "/console/login", "/console/login", name=name, password=password)


@contextmanager
def password_session(srv: Server, name: str, password: str) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        response = post_form(
            client, "/console/login", "/console/login", name=name, password=password
        )
        assert response.status_code == 303, response.text
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        yield client


def signed_in_as(client: httpx.Client) -> str | None:
    """Whose session this is (the name in the header), or None when it has ended."""
    response = client.get("/console/keys")
    if response.status_code == 303:
        assert response.headers["location"] == "/console/login"
        return None
    match = re.search(r'class="who"[^>]*>([^<(]+)', response.text)
    assert match, response.text
    return match.group(1).strip()


def link_via_console(admin: httpx.Client, name: str) -> str:
    response = post_form(admin, f"{USERS}/{name}", f"{USERS}/{name}/signin-link")
    assert response.status_code == 200, response.text
    match = re.search(r'id="signin-link" readonly value="([^"]+)"', response.text)
    assert match
    return match.group(1)


def use_link(srv: Server, link: str) -> httpx.Response:  # noqa: F811
    """Open a sign-in link and press its button, as a browser without a session would."""
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        parts = urlsplit(link)
        form_page = client.get(f"{parts.path}?{parts.query}")
        if form_page.status_code != 200:
            return form_page
        token = parts.query.removeprefix("token=")
        return client.post(parts.path, data={"csrf": csrf_of(form_page.text), "token": token})


# -- signing in -------------------------------------------------------------------------------


def test_admin_creates_a_user_who_signs_in_with_a_password_and_sees_only_own_keys(
    page: Page,  # noqa: F811
    browser: playwright_api.Browser,  # noqa: F811
    srv: Server,  # noqa: F811
) -> None:
    sign_in(page, srv.admin_key)
    page.get_by_role("link", name="Users").click()
    page.wait_for_url(f"**{USERS}")
    page.get_by_label("Name", exact=True).fill("carol")
    page.get_by_label("Role").select_option("user")
    page.get_by_label("Balance in USD").fill("5")
    page.get_by_label("Initial password").fill("carol-password-1")
    page.get_by_role("button", name="Create user").click()
    page.wait_for_url(f"**{USERS}/carol?created=carol")
    assert "User “carol” is created." in page.get_by_role("status").inner_text()
    facts = page.locator("dl.facts").inner_text()
    assert "$5.00" in facts and "set" in facts
    create(page, "carol-key", user="carol")
    create(page, "frank-key", user="frank")
    page.goto(USERS)
    row = page.locator("tr", has_text="carol").inner_text()
    assert "$5.00" in row and "active" in row and "set" in row

    context = browser.new_context(base_url=srv.url)
    user_page = context.new_page()
    user_page.goto("/console/login")
    user_page.get_by_label("User name").fill("carol")
    user_page.get_by_label("Password").fill("carol-password-1")
    user_page.get_by_role("button", name="Sign in").click()
    user_page.wait_for_url("**/console/keys")
    table = user_page.locator("table").inner_text()
    assert "carol-key" in table and "frank-key" not in table
    assert user_page.get_by_role("link", name="Users").count() == 0  # no admin navigation
    user_page.goto(USERS)
    assert "Only admins" in user_page.get_by_role("alert").inner_text()
    # Resetting a key is not the end of a password session (only of a session of that key).
    user_page.goto("/console/keys")
    user_page.locator("tr", has_text="carol-key").get_by_role("link", name="Reset").click()
    assert user_page.get_by_text("you will be signed out").count() == 0
    user_page.get_by_role("button", name="Reset key").click()
    user_page.get_by_role("link", name="Done: back to your keys").click()
    user_page.wait_for_url("**/console/keys")
    context.close()


def test_a_user_cannot_see_or_change_another_users_keys(
    srv: Server,  # noqa: F811
    admin: httpx.Client,
) -> None:
    new_user(admin, "gina", "gina-password-1")
    other = srv.create_key("henry-key", "--user", "henry")
    with password_session(srv, "gina", "gina-password-1") as gina:
        html = gina.get("/console/keys").text
        assert "henry-key" not in html and other[:11] not in html
        assert gina.get("/console/keys/henry-key/reset").status_code == 404
        token = csrf_of(html)
        for action in ("reset", "revoke"):
            response = gina.post(f"/console/keys/henry-key/{action}", data={"csrf": token})
            assert response.status_code == 404
        response = gina.post("/console/keys", data={"csrf": token, "name": "g1", "user": "henry"})
        assert response.status_code == 200  # the user field is for admins: the key is gina's
    with admin_client(srv) as api:
        keys = {k["name"]: k["user"] for k in api.get("/admin/keys").json()["data"]}
        assert keys["g1"] == "gina" and "henry-key" in keys
        assert api.get("/admin/keys/henry-key").json()["revoked_at"] is None


def test_wrong_password_is_refused_in_words_without_telling_which_names_exist(
    page: Page,  # noqa: F811
    srv: Server,  # noqa: F811
    admin: httpx.Client,
) -> None:
    new_user(admin, "ivan", "ivan-password-1")
    srv.create_key("jane-key", "--user", "jane")  # jane has no password
    new_user(admin, "kim", "kim-password-1")
    assert post_form(admin, f"{USERS}/kim", f"{USERS}/kim/disable").status_code == 303
    answers = [
        try_password(srv, name, password)
        for name, password in (
            ("ivan", "not-ivans-password"),
            ("nobody-here", "whatever-password"),
            ("jane", "whatever-password"),
            ("kim", "kim-password-1"),  # right, but kim is disabled
        )
    ]
    for response in answers:
        assert response.status_code == 401
        assert "llmrelay_console=" not in str(response.headers.get_list("set-cookie"))
    alerts = {re.search(r'role="alert">([^<]+)<', r.text).group(1) for r in answers}  # type: ignore[union-attr]
    assert len(alerts) == 1 and WRONG in alerts.pop()
    page.goto("/console/login")
    page.get_by_label("User name").fill("ivan")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    assert WRONG in page.get_by_role("alert").inner_text()
    assert page.get_by_label("User name").input_value() == "ivan"
    assert page.get_by_label("Password").input_value() == ""  # never sent back
    assert try_password(srv, "ivan", "").status_code == 400


def test_signin_link_works_once_then_sets_a_password(
    page: Page,  # noqa: F811
    browser: playwright_api.Browser,  # noqa: F811
    srv: Server,  # noqa: F811
) -> None:
    sign_in(page, srv.admin_key)
    page.goto(USERS)
    page.get_by_label("Name", exact=True).fill("lena")
    page.get_by_role("button", name="Create user").click()
    page.wait_for_url(f"**{USERS}/lena?created=lena")
    page.get_by_role("button", name="Create a sign-in link").click()
    link = page.get_by_label("Sign-in link", exact=True).input_value()
    assert link.startswith(srv.url + "/console/signin?token=")
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    page.goto(f"{USERS}/lena")
    assert link not in page.content()

    context = browser.new_context(base_url=srv.url)
    lena = context.new_page()
    lena.goto(link)
    assert lena.get_by_role("heading").inner_text() == "Sign in as “lena”"
    lena.goto(link)  # opening it again (a preview, a reload) does not use it up
    lena.get_by_role("button", name="Continue as lena").click()
    lena.wait_for_url("**/console/account?welcome=1")
    assert "Set a password" in lena.get_by_role("status").inner_text()
    assert lena.get_by_label("Current password").count() == 0
    lena.get_by_label("New password", exact=True).fill("lena-password-1")
    lena.get_by_label("New password again").fill("lena-password-1")
    lena.get_by_role("button", name="Set password").click()
    assert "Your password is set" in lena.get_by_role("status").inner_text()
    lena.goto("/console/keys")  # the session goes on after the change
    assert lena.url.endswith("/console/keys")
    context.close()

    again = use_link(srv, link)
    assert again.status_code == 404 and "already used" in again.text
    with password_session(srv, "lena", "lena-password-1") as client:
        assert signed_in_as(client) == "lena"


def test_signin_links_from_the_api_and_the_cli_and_their_expiry(
    srv: Server,  # noqa: F811
    admin: httpx.Client,
) -> None:
    new_user(admin, "mona")
    with admin_client(srv) as api:
        made = api.post("/admin/users/mona/signin-link")
        assert made.status_code == 201, made.text
        assert made.json()["url"].startswith(srv.url + "/console/signin?token=")
        proxied = api.post(
            "/admin/users/mona/signin-link", json={"base_url": "https://relay.example.com/"}
        )
        assert proxied.json()["url"].startswith("https://relay.example.com/console/signin?token=")
        assert api.post("/admin/users/nobody/signin-link").status_code == 404
    # A newer link replaces the older unused one.
    assert use_link(srv, made.json()["url"]).status_code == 404
    result = srv.cli("users", "signin-link", "mona", "--base-url", srv.url)
    assert result.returncode == 0, result.stderr
    cli_link = result.stdout.strip()
    assert cli_link.startswith(srv.url + "/console/signin?token=") and "once" in result.stderr
    # Expired: the same link, with its expiry moved into the past in the server's database.
    with sqlite3.connect(srv.data_dir / "llmrelay.db") as db:
        db.execute("UPDATE signin_tokens SET expires_at = '2001-01-01 00:00:00.000000'")
    assert use_link(srv, cli_link).status_code == 404
    fresh = srv.cli("users", "signin-link", "mona", "--base-url", srv.url).stdout.strip()
    signed = use_link(srv, fresh)
    assert signed.status_code == 303 and signed.headers["location"] == "/console/account?welcome=1"


def test_cli_set_password(srv: Server) -> None:  # noqa: F811
    srv.create_key("nina-key", "--user", "nina")
    short = srv.cli("users", "set-password", "nina", "--password-stdin", input="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    result = srv.cli("users", "set-password", "nina", "--password-stdin", input="nina-pass-1\n")
    assert result.returncode == 0, result.stderr
    with password_session(srv, "nina", "nina-pass-1") as client:
        assert signed_in_as(client) == "nina"
    unknown = srv.cli("users", "set-password", "nobody", "--password-stdin", input="long-enough\n")
    assert unknown.returncode == 1 and "no user named" in unknown.stderr


# -- sessions that end ------------------------------------------------------------------------


def test_disabling_a_user_ends_their_sessions(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "omar", "omar-password-1")
    key = srv.create_key("omar-key", "--user", "omar")
    with (
        password_session(srv, "omar", "omar-password-1") as by_password,
        http_session(srv, key) as by_key,
    ):
        assert signed_in_as(by_password) == "omar" and signed_in_as(by_key) == "omar"
        token = csrf_of(by_password.get("/console/keys").text)
        response = post_form(admin, f"{USERS}/omar", f"{USERS}/omar/disable")
        assert response.status_code == 303
        assert "disabled" in admin.get(response.headers["location"]).text
        assert signed_in_as(by_password) is None and signed_in_as(by_key) is None
        refused = by_password.post("/console/keys", data={"csrf": token, "name": "late"})
        assert refused.status_code == 401 and "session has ended" in refused.text
        assert try_password(srv, "omar", "omar-password-1").status_code == 401
        assert post_form(admin, f"{USERS}/omar", f"{USERS}/omar/enable").status_code == 303
        assert signed_in_as(by_password) is None  # enabling does not bring old sessions back
    with password_session(srv, "omar", "omar-password-1") as client:
        assert signed_in_as(client) == "omar"


def test_a_password_change_ends_the_other_sessions(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "pia", "pia-password-1")
    key = srv.create_key("pia-key", "--user", "pia")
    with (
        password_session(srv, "pia", "pia-password-1") as here,
        password_session(srv, "pia", "pia-password-1") as elsewhere,
        http_session(srv, key) as by_key,
    ):
        account = "/console/account"
        change = account + "/password"
        attempts = {
            "current password is wrong": ("nope-nope-1", "pia-password-2", "pia-password-2"),
            "two new passwords differ": ("pia-password-1", "pia-password-2", "pia-password-3"),
            "at least 8 characters": ("pia-password-1", "short", "short"),
        }
        for words, (current, new, again) in attempts.items():
            response = post_form(
                here,
                account,
                change,
                current_password=current,
                new_password=new,
                new_password_again=again,
            )
            assert response.status_code == 400 and words in response.text
        assert signed_in_as(elsewhere) == "pia"  # nothing changed yet
        response = post_form(
            here,
            account,
            change,
            current_password="pia-password-1",
            new_password="pia-password-2",
            new_password_again="pia-password-2",
        )
        assert response.status_code == 200 and "Your password is set" in response.text
        assert signed_in_as(here) == "pia"
        assert signed_in_as(elsewhere) is None and signed_in_as(by_key) is None
    assert try_password(srv, "pia", "pia-password-1").status_code == 401
    with password_session(srv, "pia", "pia-password-2") as client:
        assert signed_in_as(client) == "pia"


def test_resetting_the_key_of_a_key_session_signs_out(page: Page, srv: Server) -> None:  # noqa: F811
    secret = srv.create_key("quinn-key", "--user", "quinn")
    sign_in(page, secret)
    page.locator("tr", has_text="quinn-key").get_by_role("link", name="Reset").click()
    assert page.get_by_text("you will be signed out").count() == 1
    page.get_by_role("button", name="Reset key").click()
    page.get_by_role("link", name="Sign in with the new secret").wait_for()
    assert page.goto("/console/keys").url.endswith("/console/login")  # type: ignore[union-attr]


# -- CSRF, admin pages, 404 -------------------------------------------------------------------


def test_sign_in_without_its_csrf_token_is_refused(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "rosa", "rosa-password-1")
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        good = csrf_of(client.get("/console/login").text)
        for data in (
            {"key": srv.admin_key},
            {"key": srv.admin_key, "csrf": "forged"},
            {"name": "rosa", "password": "rosa-password-1"},
        ):
            response = client.post("/console/login", data=data)
            assert response.status_code == 403 and "stale or did not come from this site" in (
                response.text
            )
            assert "llmrelay_console=" not in str(response.headers.get_list("set-cookie"))
        assert signed_in_as(client) is None
    # The token of one browser is worthless without that browser's cookie (another site
    # cannot set it): a login-CSRF attempt that carries a stolen form token fails.
    with httpx.Client(base_url=srv.url, timeout=30) as attacker:
        response = attacker.post("/console/login", data={"key": srv.admin_key, "csrf": good})
        assert response.status_code == 403
    # The same holds for a sign-in link; a refused attempt does not use the link up.
    link = link_via_console(admin, "rosa")
    parts = urlsplit(link)
    with httpx.Client(base_url=srv.url, timeout=30) as attacker:
        token = parts.query.removeprefix("token=")
        assert attacker.post(parts.path, data={"token": token}).status_code == 403
    assert use_link(srv, link).status_code == 303


def test_admin_user_forms_need_the_csrf_token(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "sam")
    for path, data in (
        (USERS, {"name": "no-csrf"}),
        (f"{USERS}/sam/disable", {}),
        (f"{USERS}/sam/balance", {"balance": "1"}),
        (f"{USERS}/sam/signin-link", {}),
    ):
        for extra in ({}, {"csrf": "forged"}):
            response = admin.post(path, data={**data, **extra})
            assert response.status_code == 403 and "security token" in response.text
    with admin_client(srv) as api:
        assert api.get("/admin/users/no-csrf").status_code == 404
        sam = api.get("/admin/users/sam").json()
        assert not sam["disabled"] and sam["balance"] is None


def test_users_page_sets_balances_and_explains_mistakes(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "tara", balance="2.50")
    response = post_form(admin, f"{USERS}/tara", f"{USERS}/tara/balance", balance="12.345")
    assert response.status_code == 303
    page_html = admin.get(response.headers["location"]).text
    assert "The balance of “tara” is set." in page_html and "$12.345" in page_html
    assert post_form(admin, f"{USERS}/tara", f"{USERS}/tara/balance", balance="").status_code == 303
    with admin_client(srv) as api:
        assert api.get("/admin/users/tara").json()["balance"] is None
    bad = post_form(admin, f"{USERS}/tara", f"{USERS}/tara/balance", balance="ten dollars")
    assert bad.status_code == 400 and "Balance:" in bad.text
    taken = post_form(admin, USERS, USERS, name="tara", password="tara-pass-1")
    assert taken.status_code == 400 and "already exists" in taken.text
    assert "tara-pass-1" not in taken.text  # a refused form never shows the password again
    short = post_form(admin, USERS, USERS, name="uma", password="short")
    assert short.status_code == 400 and "at least 8 characters" in short.text
    assert admin.get(f"{USERS}/uma").status_code == 404  # not created half-way
    me = post_form(admin, f"{USERS}/admin", f"{USERS}/admin/disable")
    assert me.status_code == 409 and "cannot disable yourself" in me.text
    assert admin.get(f"{USERS}/nobody").status_code == 404


def test_a_user_cannot_reach_admin_pages(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "vic", "vic-password-1")
    with password_session(srv, "vic", "vic-password-1") as vic:
        token = csrf_of(vic.get("/console/keys").text)
        for path in (USERS, f"{USERS}/vic", f"{USERS}/admin", "/console/admin/channels"):
            response = vic.get(path)
            assert response.status_code == 403 and "Only admins" in response.text, path
        for path, data in (
            (USERS, {"name": "vic-admin", "role": "admin"}),
            (f"{USERS}/admin/disable", {}),
            (f"{USERS}/vic/balance", {"balance": "1000"}),
            (f"{USERS}/vic/signin-link", {}),
        ):
            response = vic.post(path, data={**data, "csrf": token})
            assert response.status_code == 403 and "Only admins" in response.text, path
    with admin_client(srv) as api:
        assert api.get("/admin/users/vic-admin").status_code == 404
        assert api.get("/admin/users/vic").json()["balance"] is None
        assert not api.get("/admin/users/admin").json()["disabled"]


def test_unknown_console_paths_get_an_html_404(srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    with httpx.Client(base_url=srv.url, timeout=30) as anonymous:
        for method, path in (("GET", "/console/nope"), ("POST", "/console/keys/x/y/z")):
            response = anonymous.request(method, path)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("text/html")
            assert "There is no console page at “" + path + "”" in response.text
    signed = admin.get("/console/admin/nothing-here")
    assert signed.status_code == 404 and "Page not found" in signed.text
    assert 'href="/console/admin/users"' in signed.text  # the navigation of a signed-in admin
    assert admin.get("/console/static/console.css").status_code == 200


# -- screenshots ------------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("LLMRELAY_SCREENSHOTS"), reason="scripts/screenshots")
def test_screenshots(browser: playwright_api.Browser, srv: Server, admin: httpx.Client) -> None:  # noqa: F811
    new_user(admin, "xena", "xena-password-1", balance="25")
    srv.create_key("xena-laptop", "--user", "xena")
    for shot, suffix in screenshot_pages(browser, srv):
        shot.goto("/console/login")
        shot.screenshot(path=str(SHOTS / f"login-{suffix}.png"))  # the first screen, no scroll
        sign_in(shot, srv.admin_key)
        shot.goto(USERS)
        shoot(shot, "users", suffix)
        shot.goto(f"{USERS}/xena")
        shot.get_by_role("button", name="Create a sign-in link").click()
        shoot(shot, "user", suffix)
        shot.goto("/console/account")
        shoot(shot, "account", suffix)

"""The console playground in Chromium: replies stream in as the chosen key and are metered."""

# Fixtures come from tests.test_console; test parameters take their names on purpose.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.conftest import MODEL, SECOND_MODEL, Server, admin_client, sse_events
from tests.test_console import (  # noqa: F401 (fixtures)
    SHOTS,
    browser,
    create,
    csrf_of,
    http_session,
    page,
    playwright_api,
    pytestmark,
    screenshot_pages,
    shoot,
    sign_in,
    srv,
)

expect = playwright_api.expect
ANSWER_WAIT_MS = 60_000  # how long Playwright waits for an answer to finish
# Count the answer's length each time the page changes, to see it grow while streaming.
WATCH_ANSWER = """() => {
  window.pgLengths = [];
  const log = document.getElementById("pg-log");
  new MutationObserver(() => {
    const answers = log.querySelectorAll(".pg-msg.assistant .pg-text");
    if (!answers.length) return;
    const length = answers[answers.length - 1].textContent.length;
    window.pgLengths.push([Math.round(performance.now()), length]);
  }).observe(log, { subtree: true, childList: true, characterData: true });
}"""
# A history the small model imitates: it then opens its answer with <think> (see
# tests/test_reasoning.py), which the playground must show apart from the answer.
FEW_SHOT = [
    ("Hi", "The user greets me.", "Hello!"),
    ("What is 2+2?", "Two plus two is four.", "4"),
    ("Name a colour.", "Pick a common colour.", "Blue"),
]


def open_playground(
    page: playwright_api.Page, key: str, model: str, *, max_tokens: int, temperature: str = "0"
) -> None:
    page.goto("/console/playground")
    page.get_by_label("API key").select_option(key)
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Temperature").fill(temperature)
    page.get_by_label("Max tokens").fill(str(max_tokens))


def last_answer(page: playwright_api.Page) -> playwright_api.Locator:
    return page.locator(".pg-msg.assistant").last


def finished(page: playwright_api.Page, state: str = "done") -> playwright_api.Locator:
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", state, timeout=ANSWER_WAIT_MS)
    return answer


def sent_form(request: playwright_api.Request) -> dict[str, str]:
    assert request.post_data is not None
    return {name: values[0] for name, values in parse_qs(request.post_data).items()}


def usage_of(srv: Server, key: str) -> dict[str, Any]:
    with admin_client(srv) as http:
        rows = http.get("/admin/usage", params={"by": "key"}).json()["data"]
    return next((row for row in rows if row["group"] == key), {"requests": 0})


def completion_tokens(answer: playwright_api.Locator) -> int:
    match = re.search(r"(\d+) completion tokens", answer.locator(".pg-meta").inner_text())
    assert match, answer.inner_text()
    return int(match.group(1))


def test_reply_streams_in_and_is_metered(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    create(page, "pg-stream")
    open_playground(page, "pg-stream", MODEL, max_tokens=24)
    message = page.get_by_label("Message")
    message.fill("Tell me a story")
    message.press("Shift+Enter")
    message.press_sequentially("about a dragon.")
    assert message.input_value() == "Tell me a story\nabout a dragon."
    assert page.locator(".pg-msg").count() == 0  # Shift+Enter sent nothing

    page.evaluate(WATCH_ANSWER)
    with page.expect_request("**/console/playground/chat") as sent:
        message.press("Enter")
    form = sent_form(sent.value)
    assert (form["key"], form["model"], form["max_tokens"]) == ("pg-stream", MODEL, "24")
    assert json.loads(form["messages"]) == [
        {"role": "user", "content": "Tell me a story\nabout a dragon."}
    ]
    first = finished(page)
    text = first.locator(".pg-text").inner_text()
    seen: list[tuple[float, int]] = page.evaluate("window.pgLengths")
    # Partial answers shown at moments apart (tokens come tens of milliseconds apart here).
    moments = {t // 5 for t, n in seen if 0 < n < len(text)}
    assert len(moments) >= 3, f"the answer did not stream in: (ms, length) seen {seen}"
    assert first.locator(".pg-reasoning").is_hidden()  # no reasoning from this model
    tokens = [completion_tokens(first)]
    assert 0 < tokens[0] <= 24

    # The conversation goes on: the next request carries the whole history.
    with page.expect_request("**/console/playground/chat") as sent:
        message.fill("Now make it shorter.")
        page.get_by_role("button", name="Send").click()
    history = json.loads(sent_form(sent.value)["messages"])
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"].strip() == text.strip()
    tokens.append(completion_tokens(finished(page)))
    assert page.locator(".pg-msg.assistant").count() == 2

    row = usage_of(srv, "pg-stream")
    assert row["requests"] == 2 and row["errors"] == 0
    assert row["completion_tokens"] == sum(tokens)


def test_reasoning_shows_apart_from_the_answer(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    create(page, "pg-think")
    open_playground(page, "pg-think", SECOND_MODEL, max_tokens=30)
    message = page.get_by_label("Message")
    role = page.get_by_label("Role")
    for question, thought, reply in FEW_SHOT:  # examples built with Add: no answer asked for
        role.select_option("user")
        message.fill(question)
        page.get_by_role("button", name="Add").click()
        role.select_option("assistant")
        message.fill(f"<think>{thought}</think>\n{reply}")
        page.get_by_role("button", name="Add").click()
    assert page.locator(".pg-msg").count() == 6
    role.select_option("user")
    message.fill("Name an animal.")
    message.press("Enter")

    answer = finished(page)
    reasoning = answer.locator(".pg-reasoning-text")
    expect(reasoning).to_be_visible()
    thought = reasoning.inner_text()
    text = answer.locator(".pg-text").inner_text()
    assert thought.strip() and text.strip()
    for part in (thought, text):
        assert "<think>" not in part and "</think>" not in part
    assert thought not in text

    # The reasoning folds away from the keyboard.
    answer.locator(".pg-reasoning summary").focus()
    page.keyboard.press("Enter")
    expect(reasoning).to_be_hidden()
    assert usage_of(srv, "pg-think")["requests"] == 1  # the six added messages cost nothing

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_refusals_reach_the_page_in_words(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    page.goto("/console/keys")
    page.get_by_label("Name").fill("pg-limited")
    page.get_by_label("Models").fill(MODEL)
    page.get_by_label("Requests per minute").fill("1")
    page.get_by_role("button", name="Create key").click()
    open_playground(page, "pg-limited", MODEL, max_tokens=4)
    options = page.get_by_label("Model", exact=True).locator("option").all_inner_texts()
    assert options == [MODEL]  # only what the key may use is offered
    message = page.get_by_label("Message")
    message.fill("Hi")
    message.press("Enter")
    finished(page)

    message.fill("Hi again")
    message.press("Enter")
    failed = finished(page, "failed")
    expect(failed.get_by_role("alert")).to_contain_text("Rate limit reached for this key")
    expect(page.locator(".pg-msg.user.not-sent")).to_contain_text("Hi again")
    assert message.input_value() == "Hi again"  # given back, to send again later

    # A model the key may not use, forced into the form, is refused by the server.
    page.evaluate(
        """(model) => {
          const select = document.getElementById("pg-model");
          select.append(new Option(model, model));
          select.value = model;
        }""",
        SECOND_MODEL,
    )
    message.press("Enter")
    failed = finished(page, "failed")
    expect(failed.get_by_role("alert")).to_contain_text(
        f"This API key may not use the model '{SECOND_MODEL}'."
    )
    assert usage_of(srv, "pg-limited")["requests"] == 1


def test_stop_ends_the_answer_early(page: playwright_api.Page, srv: Server) -> None:
    sign_in(page, srv.admin_key)
    create(page, "pg-stop")
    open_playground(page, "pg-stop", MODEL, max_tokens=400)
    page.get_by_label("Message").fill("Write a long story about a castle.")
    page.get_by_label("Message").press("Enter")
    text = last_answer(page).locator(".pg-text")
    expect(text).to_have_text(re.compile(r"\S.{8}"), timeout=ANSWER_WAIT_MS)
    stop = page.get_by_role("button", name="Stop")
    stop.click()
    finished(page, "stopped")
    expect(page.get_by_role("status")).to_have_text("Stopped.")
    assert stop.is_disabled() and page.get_by_role("button", name="Send").is_enabled()
    assert page.locator(".pg-text").last.inner_text().strip()  # the part that came is kept
    # The server noticed: the key is charged for what was generated, far from max_tokens.
    deadline = time.monotonic() + 10
    while (row := usage_of(srv, "pg-stop"))["requests"] == 0:
        assert time.monotonic() < deadline, "the stopped answer never reached the ledger"
        time.sleep(0.2)
    assert row["requests"] == 1 and 0 < row["completion_tokens"] < 100


def chat_form(csrf: str | None, key: str, **extra: str) -> dict[str, str]:
    form = {
        "key": key,
        "model": MODEL,
        "max_tokens": "4",
        "messages": json.dumps([{"role": "user", "content": "Hi"}]),
        **extra,
    }
    return form if csrf is None else {**form, "csrf": csrf}


def refusal(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


def test_keys_csrf_and_settings_are_checked(srv: Server) -> None:
    secrets: dict[str, str] = {}
    with admin_client(srv) as http:
        for name, user in (("pg-alice", "alice"), ("pg-bob", "bob")):
            created = http.post("/admin/keys", json={"name": name, "user": user})
            assert created.status_code in (200, 201), created.text
            secrets[name] = created.json()["secret"]
    alice_secret = secrets["pg-alice"]
    with http_session(srv, alice_secret) as client:
        html = client.get("/console/playground").text
        assert "pg-alice" in html and "pg-bob" not in html
        csrf = csrf_of(html)
        for token in (None, "forged"):
            response = client.post("/console/playground/chat", data=chat_form(token, "pg-alice"))
            assert response.status_code == 403 and "security token" in response.text
        for other in ("pg-bob", "no-such-key"):
            words = refusal(
                client.post("/console/playground/chat", data=chat_form(csrf, other)), 404
            )
            assert words == f"You have no API key named “{other}”."
        for temperature in ("5", "warm"):
            form = chat_form(csrf, "pg-alice", temperature=temperature)
            words = refusal(client.post("/console/playground/chat", data=form), 400)
            assert "temperature" in words
        form = chat_form(csrf, "pg-alice", messages="not json")
        assert "JSON" in refusal(client.post("/console/playground/chat", data=form), 400)
        with client.stream(
            "POST", "/console/playground/chat", data=chat_form(csrf, "pg-alice")
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event")
            events = sse_events(r)
        assert any(e.get("usage") for e in events)
    with http_session(srv, srv.admin_key) as client:  # an admin may answer as anyone's key
        csrf = csrf_of(client.get("/console/playground").text)
        with client.stream("POST", "/console/playground/chat", data=chat_form(csrf, "pg-bob")) as r:
            assert r.status_code == 200
            sse_events(r)
    assert usage_of(srv, "pg-alice")["requests"] == 1
    assert usage_of(srv, "pg-bob")["requests"] == 1


@pytest.mark.skipif(not os.environ.get("LLMRELAY_SCREENSHOTS"), reason="scripts/screenshots")
def test_screenshots(browser: playwright_api.Browser, srv: Server) -> None:
    for tab, suffix in screenshot_pages(browser, srv, desktop_height=900):
        sign_in(tab, srv.admin_key)
        open_playground(tab, "admin", SECOND_MODEL, max_tokens=30)
        message = tab.get_by_label("Message")
        for question, thought, reply in FEW_SHOT:
            tab.get_by_label("Role").select_option("user")
            message.fill(question)
            tab.get_by_role("button", name="Add").click()
            tab.get_by_label("Role").select_option("assistant")
            message.fill(f"<think>{thought}</think>\n{reply}")
            tab.get_by_role("button", name="Add").click()
        tab.get_by_label("Role").select_option("user")
        message.fill("Name an animal.")
        message.press("Enter")
        finished(tab)
        shoot(tab, "playground", suffix)

"""API keys made with the CLI take effect on the running server within a second."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, chat
from tests.schemas import check_error, check_model_list


def status_with(server: Server, key: str) -> int:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json=chat("Hi", max_tokens=1),
        headers={"Authorization": f"Bearer {key}"},
    ).status_code


def within_a_second(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 1.0
    while not check():
        assert time.monotonic() < deadline, "the change did not take effect within a second"
        time.sleep(0.05)


def test_create_use_reset_revoke(server: Server) -> None:
    key = server.create_key("alice")
    assert key.startswith("sk-") and len(key) > 40
    within_a_second(lambda: status_with(server, key) == 200)

    reset = server.cli("keys", "reset", "alice")
    assert reset.returncode == 0, reset.stderr
    new_key = reset.stdout.strip().splitlines()[-1]
    assert new_key.startswith("sk-") and new_key != key
    within_a_second(lambda: status_with(server, key) == 401)
    assert status_with(server, new_key) == 200

    revoke = server.cli("keys", "revoke", "alice")
    assert revoke.returncode == 0, revoke.stderr
    within_a_second(lambda: status_with(server, new_key) == 401)


def test_list_shows_prefixes_never_secrets(server: Server) -> None:
    key = server.create_key("bob")
    listing = server.cli("keys", "list")
    assert listing.returncode == 0
    assert "bob" in listing.stdout and key[:11] in listing.stdout
    assert key not in listing.stdout


def test_keys_are_stored_hashed(server: Server) -> None:
    key = server.create_key("carol")
    database = (server.data_dir / "llmrelay.db").read_bytes()
    assert key.encode() not in database
    with sqlite3.connect(server.data_dir / "llmrelay.db") as conn:
        ((digest,),) = conn.execute("SELECT secret_hash FROM api_keys WHERE name = 'carol'")
    assert len(digest) == 64 and key not in digest


def test_model_allow_list(server: Server) -> None:
    key = server.create_key("limited", "--models", "some-other-model")
    within_a_second(lambda: status_with(server, key) == 403)
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json=chat("Hi"),
        headers={"Authorization": f"Bearer {key}"},
    )
    error = check_error(response.json())
    assert (error["type"], error["param"]) == ("permission_error", "model")
    listing = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert check_model_list(listing.json()) == []
    allowed = server.create_key("allowed", "--models", MODEL)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=allowed, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]


def test_expired_key_is_refused(server: Server) -> None:
    key = server.create_key("old", "--expires", "2020-01-01T00:00:00+00:00")
    assert status_with(server, key) == 401


def test_duplicate_and_unknown_names_fail_cleanly(server: Server) -> None:
    server.create_key("dave")
    again = server.cli("keys", "create", "--name", "dave")
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = server.cli("keys", "revoke", "nobody")
    assert missing.returncode == 1 and "no key named" in missing.stderr


def test_sdk_reports_bad_key(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "invalid_api_key"

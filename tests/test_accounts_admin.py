"""Users, keys with limits, prices and usage end to end: the CLI and /admin against a running
server, on SQLite (the shared test server) and on PostgreSQL (a server of its own)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.databases import fresh_postgres
from tests.schemas import check_error
from tests.test_keys import status_with as chat_status
from tests.test_keys import within_a_second


def status_with(server: Server, key: str) -> int:
    """The status a key gets: a cheap authenticated route, through the same key cache as chat
    (so the timing of a check does not hang on the model's speed)."""
    return httpx.get(
        server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
    ).status_code


def _admin(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=60
    )


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with fresh_postgres() as url:
        srv = start_server(tmp_path_factory.mktemp("pg-server"), extra_config={"database_url": url})
        try:
            yield srv
        finally:
            stop_server(srv)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest) -> Server:
    name = "server" if request.param == "sqlite" else "pg_server"
    server: Server = request.getfixturevalue(name)
    return server


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_keys_with_limits(any_server: Server) -> None:
    server = any_server
    _ok(server.cli("users", "create", "acct-owner", "--balance", "20"))
    key = server.create_key(
        "acct-limits",
        "--user", "acct-owner",
        "--models", MODEL,
        "--credit", "5.25",
        "--rpm", "60",
        "--tpm", "10000",
        "--expires", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    within_a_second(lambda: status_with(server, key) == 200)
    listing = _ok(server.cli("keys", "list"))
    line = next(x for x in listing.splitlines() if x.startswith("acct-limits "))
    for shown in (key[:11], "acct-owner", "active", MODEL, "$5.25", "$0.00", "60", "10000"):
        assert shown in line.split(), (shown, line)
    assert "2099-01-01" in line
    assert key not in listing
    bad = server.cli("keys", "create", "--name", "acct-bad", "--credit", "1.0000000000001")
    assert bad.returncode == 2 and "more than 12 decimals" in bad.stderr
    bad = server.cli("keys", "create", "--name", "acct-bad", "--expires", "soon")
    assert bad.returncode == 1 and "ISO-8601" in bad.stderr


def test_cli_reset_and_revoke_within_a_second(any_server: Server) -> None:
    server = any_server
    key = server.create_key("acct-cycle", "--credit", "1")
    within_a_second(lambda: status_with(server, key) == 200)
    new_key = _ok(server.cli("keys", "reset", "acct-cycle")).strip().splitlines()[-1]
    assert new_key.startswith("sk-") and new_key != key
    within_a_second(lambda: status_with(server, key) == 401)
    assert status_with(server, new_key) == 200
    line = next(
        x for x in _ok(server.cli("keys", "list")).splitlines() if x.startswith("acct-cycle ")
    )
    assert "$1.00" in line.split()  # same settings after the reset
    _ok(server.cli("keys", "revoke", "acct-cycle"))
    within_a_second(lambda: status_with(server, new_key) == 401)
    assert chat_status(server, new_key) == chat_status(server, key) == 401


def test_cli_users(any_server: Server) -> None:
    server = any_server
    _ok(server.cli("users", "create", "acct-ursula", "--role", "user", "--balance", "$10.50"))
    key = server.create_key("acct-ursula-key", "--user", "acct-ursula")
    dup = server.cli("users", "create", "acct-ursula")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    _ok(server.cli("users", "set-balance", "acct-ursula", "0.000150"))
    line = next(x for x in _ok(server.cli("users", "list")).splitlines() if "acct-ursula" in x)
    assert line.split()[:5] == ["acct-ursula", "user", "active", "$0.000150", "$0.00"]
    _ok(server.cli("users", "set-balance", "acct-ursula", "unlimited"))
    _ok(server.cli("users", "disable", "acct-ursula"))
    within_a_second(lambda: status_with(server, key) == 401)
    line = next(x for x in _ok(server.cli("users", "list")).splitlines() if "acct-ursula" in x)
    assert line.split()[2:4] == ["disabled", "unlimited"]
    _ok(server.cli("users", "enable", "acct-ursula"))
    within_a_second(lambda: status_with(server, key) == 200)
    missing = server.cli("users", "disable", "acct-nobody")
    assert missing.returncode == 1 and "no user named" in missing.stderr
    bad = server.cli("users", "create", "acct-x", "--role", "owner")
    assert bad.returncode == 2


def test_cli_prices(any_server: Server) -> None:
    server = any_server
    out = _ok(
        server.cli(
            "prices", "set", "acct/gpt-x",
            "--input", "2.5", "--output", "10",
            "--cached-input", "1.25", "--per-search", "0.01",
        )
    )  # fmt: skip
    assert "acct/gpt-x" in out
    _ok(server.cli("prices", "set", "acct-small", "--input", "0.075", "--output", "0.3"))
    listing = _ok(server.cli("prices", "list"))
    row = next(x for x in listing.splitlines() if x.startswith("acct/gpt-x "))
    assert row.split()[:6] == ["acct/gpt-x", "$2.50", "$1.25", "$10.00", "$10.00", "$0.01"]
    row = next(x for x in listing.splitlines() if x.startswith("acct-small "))
    assert row.split()[:5] == ["acct-small", "$0.075000", "$0.075000", "$0.30", "$0.30"]
    bad = server.cli("prices", "set", "acct-bad", "--input", "0.0000001", "--output", "1")
    assert bad.returncode == 2 and "6" in bad.stderr
    _ok(server.cli("prices", "remove", "acct-small"))
    assert "acct-small" not in _ok(server.cli("prices", "list"))
    missing = server.cli("prices", "remove", "acct-small")
    assert missing.returncode == 1 and "no price" in missing.stderr


def _insert_ledger(server: Server, key: str, rows: list[tuple[str, int, int, datetime]]) -> None:
    """Ledger rows (model, status, cost) for a key, straight into the SQLite database."""
    with sqlite3.connect(server.data_dir / "llmrelay.db") as conn:
        ((key_id, user_id),) = conn.execute(
            "SELECT id, user_id FROM api_keys WHERE name = ?", (key,)
        )
        conn.executemany(
            "INSERT INTO ledger (request_id, created_at, key_id, user_id, model, channel,"
            " prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, search_calls,"
            " estimated, stream, cost_pusd, latency_ms, ttft_ms, status, error_type, rolled_up)"
            " VALUES (?, ?, ?, ?, ?, 'local', 100, 20, 50, 10, 1, 0, 1, ?, 30, 10, ?, NULL, 0)",
            [
                (
                    f"req_acct_{i}",
                    at.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    key_id,
                    user_id,
                    model,
                    cost,
                    status,
                )
                for i, (model, status, cost, at) in enumerate(rows)
            ],
        )


def test_cli_usage(server: Server) -> None:
    server.create_key("acct-usage", "--user", "acct-usage-user")
    now = datetime.now(UTC)
    _insert_ledger(
        server,
        "acct-usage",
        [
            ("acct-usage-m1", 200, 150_000_000, now),
            ("acct-usage-m1", 502, 0, now),
            ("acct-usage-m2", 200, 2_000_000_000_000, now - timedelta(days=3)),
        ],
    )
    by_key = _ok(server.cli("usage", "--by", "key"))
    row = next(x for x in by_key.splitlines() if x.startswith("acct-usage "))
    assert row.split() == ["acct-usage", "3", "1", "300", "60", "150", "30", "3", "$2.000150"]
    assert by_key.splitlines()[0].split()[:2] == ["KEY", "REQUESTS"]
    assert by_key.splitlines()[-1].startswith("TOTAL")
    by_user = _ok(server.cli("usage", "--by", "user"))
    assert any(x.startswith("acct-usage-user ") for x in by_user.splitlines())
    today = now.date().isoformat()
    recent = _ok(server.cli("usage", "--by", "model", "--since", today, "--until", today))
    assert "acct-usage-m1" in recent and "acct-usage-m2" not in recent
    row = next(x for x in recent.splitlines() if x.startswith("acct-usage-m1 "))
    assert row.split()[1:3] == ["2", "1"] and row.split()[-1] == "$0.000150"
    by_day = _ok(server.cli("usage", "--by", "day"))
    assert (now - timedelta(days=3)).date().isoformat() in by_day
    bad = server.cli("usage", "--since", "yesterday")
    assert bad.returncode == 2


# -- the admin API -----------------------------------------------------------------------------


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return check_error(response.json())


def test_admin_users(any_server: Server) -> None:
    with _admin(any_server) as admin:
        created = admin.post("/admin/users", json={"name": "acct-api-user", "balance": "12.5"})
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["object"] == "user" and user["role"] == "user"
        assert (user["balance"], user["balance_pusd"]) == ("12.50", 12_500_000_000_000)
        assert (user["spent"], user["disabled"], user["keys"]) == ("0.00", False, 0)
        _error(admin.post("/admin/users", json={"name": "acct-api-user"}), 409)
        error = _error(admin.post("/admin/users", json={"name": "x", "balance": "1e-13"}), 400)
        assert error["param"] == "balance" and "12 decimals" in error["message"]
        _error(admin.post("/admin/users", json={"name": "x", "balance": -1}), 400)
        _error(admin.post("/admin/users", json={"name": "x", "role": "owner"}), 400)
        _error(admin.post("/admin/users", json={"name": "x", "extra": 1}), 400)
        _error(admin.post("/admin/users", json=["x"]), 400)
        _error(admin.post("/admin/users", content=b"{oops"), 400)
        _error(admin.get("/admin/users/acct-nobody"), 404)
        _error(admin.patch("/admin/users/acct-nobody", json={"balance": 1}), 404)

        changed = admin.patch("/admin/users/acct-api-user", json={"balance": 0.25}).json()
        assert changed["balance_pusd"] == 250_000_000_000
        changed = admin.patch("/admin/users/acct-api-user", json={"balance": None}).json()
        assert changed["balance"] is None
        changed = admin.patch("/admin/users/acct-api-user", json={"disabled": True}).json()
        assert changed["disabled"] and changed["disabled_at"] is not None
        users = admin.get("/admin/users").json()
        assert users["object"] == "list"
        assert any(u["name"] == "acct-api-user" for u in users["data"])
        assert admin.get("/admin/users/acct-api-user").json()["disabled"]


def test_admin_keys_lifecycle(any_server: Server) -> None:
    server = any_server
    with _admin(server) as admin:
        body = {
            "name": "acct-api-key",
            "user": "acct-api-owner",
            "models": [MODEL],
            "credit": "3",
            "rpm": 100,
            "tpm": 5000,
            "expires_at": "2099-01-01T00:00:00Z",
        }
        created = admin.post("/admin/keys", json=body)
        assert created.status_code == 201, created.text
        key = created.json()
        secret = key.pop("secret")
        assert secret.startswith("sk-") and key["prefix"] == secret[:11]
        assert (key["user"], key["status"], key["models"]) == ("acct-api-owner", "active", [MODEL])
        assert (key["credit"], key["credit_pusd"], key["spent_pusd"]) == ("3.00", 3 * 10**12, 0)
        assert (key["rpm"], key["tpm"]) == (100, 5000)
        assert key["expires_at"] == int(datetime(2099, 1, 1, tzinfo=UTC).timestamp())
        _error(admin.post("/admin/keys", json=body), 409)
        within_a_second(lambda: status_with(server, secret) == 200)

        listed = admin.get("/admin/keys", params={"user": "acct-api-owner"}).json()["data"]
        assert [k["name"] for k in listed] == ["acct-api-key"]
        assert "secret" not in listed[0] and secret not in str(listed)
        assert "secret" not in admin.get("/admin/keys/acct-api-key").json()

        patched = admin.patch("/admin/keys/acct-api-key", json={"credit": None, "rpm": 7})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["credit"], patched.json()["rpm"]) == (None, 7)
        assert patched.json()["tpm"] == 5000
        _error(admin.patch("/admin/keys/acct-api-key", json={"rpm": -1}), 400)
        _error(admin.patch("/admin/keys/acct-api-key", json={"rpm": "7"}), 400)
        _error(admin.patch("/admin/keys/acct-api-key", json={"models": []}), 400)
        _error(admin.patch("/admin/keys/acct-api-key", json={"secret": "sk-mine"}), 400)

        reset = admin.post("/admin/keys/acct-api-key/reset")
        assert reset.status_code == 200, reset.text
        new_secret = reset.json()["secret"]
        assert new_secret != secret and reset.json()["rpm"] == 7
        within_a_second(lambda: status_with(server, secret) == 401)
        assert status_with(server, new_secret) == 200

        revoked = admin.delete("/admin/keys/acct-api-key")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        within_a_second(lambda: status_with(server, new_secret) == 401)
        for missing in (
            admin.get("/admin/keys/acct-nobody"),
            admin.post("/admin/keys/acct-nobody/reset"),
            admin.post("/admin/keys/acct-nobody/revoke"),
            admin.patch("/admin/keys/acct-nobody", json={"rpm": 1}),
        ):
            _error(missing, 404)


def test_admin_needs_an_admin_key(server: Server) -> None:
    key = server.create_key("acct-plain")
    headers = {"Authorization": f"Bearer {key}"}
    for path in ("/admin/users", "/admin/keys", "/admin/prices", "/admin/usage"):
        within_a_second(
            lambda p=path: httpx.get(server.url + p, headers=headers).status_code == 403
        )
        _error(httpx.get(server.url + path), 401)


def test_admin_prices(any_server: Server) -> None:
    with _admin(any_server) as admin:
        body = {"input": "2.5", "output": 10, "cached_input": "1.25", "per_search": "0.01"}
        put = admin.put("/admin/prices/acct-vendor/model-1", json=body)
        assert put.status_code == 200, put.text
        price = put.json()
        assert price["model"] == "acct-vendor/model-1"
        assert (price["input"], price["cached_input"], price["output"]) == ("2.50", "1.25", "10.00")
        assert (price["reasoning"], price["per_search"]) == ("10.00", "0.01")
        assert (price["input_pusd"], price["output_pusd"]) == (2_500_000, 10_000_000)
        got = admin.get("/admin/prices/acct-vendor/model-1").json()
        assert got["input_pusd"] == 2_500_000
        created = admin.post("/admin/prices", json={"model": "acct-p2", "input": 1, "output": 2})
        assert created.status_code == 201, created.text
        models = [p["model"] for p in admin.get("/admin/prices").json()["data"]]
        assert {"acct-vendor/model-1", "acct-p2"} <= set(models)
        error = _error(
            admin.put("/admin/prices/acct-p3", json={"input": "0.0000001", "output": 1}), 400
        )
        assert error["param"] == "input"
        _error(admin.put("/admin/prices/acct-p3", json={"input": 1}), 400)
        _error(admin.put("/admin/prices/acct-p3", json={"input": "free", "output": 1}), 400)
        assert admin.delete("/admin/prices/acct-p2").status_code == 204
        _error(admin.delete("/admin/prices/acct-p2"), 404)
        _error(admin.get("/admin/prices/acct-p2"), 404)


def test_admin_usage(server: Server) -> None:
    server.create_key("acct-usage-api")
    now = datetime.now(UTC)
    _insert_ledger(
        server,
        "acct-usage-api",
        [("acct-usage-api-m", 200, 7, now), ("acct-usage-api-m", 429, 0, now)],
    )
    with _admin(server) as admin:
        report = admin.get("/admin/usage", params={"by": "key"}).json()
        assert report["object"] == "list" and report["by"] == "key"
        row = next(r for r in report["data"] if r["group"] == "acct-usage-api")
        assert (row["requests"], row["errors"], row["prompt_tokens"]) == (2, 1, 200)
        assert (row["cost_pusd"], row["cost"]) == (7, "0.000000000007")
        assert report["total"]["requests"] >= 2
        today = now.date().isoformat()
        by_model = admin.get("/admin/usage", params={"by": "model", "since": today}).json()
        assert any(r["group"] == "acct-usage-api-m" for r in by_model["data"])
        assert by_model["since"] == today
        _error(admin.get("/admin/usage", params={"by": "channel"}), 400)
        _error(admin.get("/admin/usage", params={"since": "last week"}), 400)
        _error(admin.get("/admin/usage", params={"since": today, "until": "2000-01-01"}), 400)


def test_postgres_server_starts_on_its_own_database(pg_server: Server) -> None:
    assert pg_server.admin_key.startswith("sk-")
    assert status_with(pg_server, pg_server.admin_key) == 200
    assert not (Path(pg_server.data_dir) / "llmrelay.db").exists()

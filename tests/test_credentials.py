"""Console credentials in the store (``store/credentials.py``, migration 0004) on SQLite and
PostgreSQL: passwords, one-time sign-in links (one use, even when raced) and session versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrelay.store.credentials import Credentials, hash_password, verify_password
from llmrelay.store.db import Database
from llmrelay.store.keys import KeyStore
from llmrelay.store.users import UserStore
from tests.databases import BACKENDS, migrated_database, run_on


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as resolved:
        yield resolved


def test_passwords_links_and_session_versions_in_the_store(url: str) -> None:
    async def work(db: Database) -> None:
        users, credentials = UserStore(db), Credentials(db)
        await users.create("wes")
        await KeyStore(db).create("wes-key", user="wes")
        assert not (await users.get("wes")).has_password
        assert await credentials.check_password("wes", "anything-at-all") is None
        version = await credentials.set_password("wes", "wes-password-1")
        wes = await users.get("wes")
        assert wes.has_password and wes.session_version == version == 1
        checked = await credentials.check_password("wes", "wes-password-1")
        assert checked is not None and checked.name == "wes"
        assert await credentials.check_password("wes", "wes-password-2") is None
        assert await credentials.check_password("nobody", "wes-password-1") is None

        token, _ = await credentials.new_signin_link("wes")
        assert (await credentials.peek_link(token)) == (await credentials.session_user(wes.id))
        racing = await asyncio.gather(*(credentials.redeem_link(token) for _ in range(4)))
        assert sum(user is not None for user in racing) == 1  # exactly one use, even at once
        assert await credentials.peek_link(token) is None
        assert await credentials.redeem_link(token) is None
        assert await credentials.redeem_link("made-up") is None

        token, _ = await credentials.new_signin_link("wes")
        await users.disable("wes")
        assert (await users.get("wes")).session_version == 2
        assert await credentials.peek_link(token) is None  # disabled users get no sign-in
        assert await credentials.check_password("wes", "wes-password-1") is None
        await users.enable("wes")
        assert (await users.get("wes")).session_version == 2

    run_on(url, work)


def test_password_hashes_are_salted_phc_strings() -> None:
    first, second = hash_password("same-password"), hash_password("same-password")
    assert first != second and first.startswith("$scrypt$ln=15,r=8,p=3$")
    assert verify_password("same-password", first) and verify_password("same-password", second)
    assert not verify_password("same-passwore", first)
    for broken in ("", "$scrypt$", first.replace("ln=15", "ln=99"), "$md5$x$y$z", None):
        assert not verify_password("same-password", broken)

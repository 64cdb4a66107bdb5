"""Console sessions: an HMAC-signed cookie naming the signed-in user, and CSRF tokens.

The session cookie holds the user's id and session version (a password change or disabling
the user bumps the version, which ends every older session), how they signed in, and for a key
sign-in the key's name and prefix (a reset changes the prefix, so it ends that session too),
an expiry and a random nonce. The CSRF token is an HMAC of the nonce. Before there is a
session, the sign-in forms are protected by a signed double-submit token: a random nonce in
its own cookie and its HMAC in the form, which another site can neither read nor set.
Nothing secret is in a cookie; the signing secret lives in ``console_secret`` in the data
directory (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

COOKIE = "llmrelay_console"
LOGIN_COOKIE = "llmrelay_console_login"  # the pre-session (sign-in form) CSRF nonce
LIFETIME_SECONDS = 12 * 3600
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
Method = Literal["password", "key", "link"]
METHODS: tuple[Method, ...] = ("password", "key", "link")


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    version: int  # the user's session version when this session began
    method: Method  # how the user signed in
    key_name: str  # the key signed in with; "" unless method is "key"
    key_prefix: str
    expires: int
    nonce: str


def load_secret(data_dir: Path) -> bytes:
    """The signing secret, created on first use; readable by the server's user only."""
    path = data_dir / "console_secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret


def _unpadded_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _same(given: str, expected: str) -> bool:
    """Constant-time equality that also takes what an attacker sends (non-ASCII included)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, data: bytes) -> str:
        digest = hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256)
        return _unpadded_b64(digest.digest())

    def new(
        self, user_id: int, version: int, method: Method, key_name: str = "", key_prefix: str = ""
    ) -> Session:
        expires = int(time.time()) + LIFETIME_SECONDS
        nonce = secrets.token_urlsafe(16)
        return Session(user_id, version, method, key_name, key_prefix, expires, nonce)

    def renewed(self, session: Session, version: int, method: Method) -> Session:
        """The same session under a new user version (after the user's own password change).
        The nonce stays, so forms already open in other tabs of this browser keep working."""
        return replace(
            session, version=version, method=method, expires=int(time.time()) + LIFETIME_SECONDS
        )

    def dump(self, session: Session) -> str:
        payload = json.dumps(
            [
                session.user_id,
                session.version,
                session.method,
                session.key_name,
                session.key_prefix,
                session.expires,
                session.nonce,
            ]
        )
        body = _unpadded_b64(payload.encode())
        return body + "." + self._mac("session", body.encode())

    def load(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if it is missing, forged, malformed or expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not _same(mac, self._mac("session", body.encode())):
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            user_id, version, method, key_name, key_prefix, expires, nonce = json.loads(raw)
            session = Session(
                int(user_id),
                int(version),
                method,
                str(key_name),
                str(key_prefix),
                int(expires),
                str(nonce),
            )
        except (ValueError, TypeError):
            return None  # malformed, or a cookie from before sessions named users
        if session.method not in METHODS:
            return None
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", session.nonce.encode())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and _same(token, self.csrf(session))

    # -- before signing in: the double-submit token of the sign-in forms ----------------------

    @staticmethod
    def login_nonce(cookie: str | None) -> str | None:
        """The nonce in a sign-in cookie if it looks like one of ours, else None."""
        return cookie if cookie and _NONCE.fullmatch(cookie) else None

    @staticmethod
    def new_login_nonce() -> str:
        return secrets.token_urlsafe(24)

    def login_csrf(self, nonce: str) -> str:
        return self._mac("login", nonce.encode())

    def check_login_csrf(self, nonce: str | None, token: str | None) -> bool:
        if nonce is None or token is None:
            return False
        return _same(token, self.login_csrf(nonce))

"""Console sessions: an HMAC-signed cookie naming the key that signed in, and CSRF tokens.

The cookie holds the key's name and prefix (a reset changes the prefix, so it ends the session),
an expiry and a random nonce; the CSRF token is an HMAC of that nonce. Nothing secret is in the
cookie; the signing secret lives in ``console_secret`` in the data directory (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "llmrelay_console"
LIFETIME_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    prefix: str
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


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, data: bytes) -> str:
        digest = hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def new(self, key_name: str, prefix: str) -> Session:
        expires = int(time.time()) + LIFETIME_SECONDS
        return Session(key_name, prefix, expires, secrets.token_urlsafe(16))

    def dump(self, session: Session) -> str:
        payload = json.dumps([session.key_name, session.prefix, session.expires, session.nonce])
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return body + "." + self._mac("session", body.encode())

    def load(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if it is missing, forged, malformed or expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", body.encode())):
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            name, prefix, expires, nonce = json.loads(raw)
        except (ValueError, TypeError):
            return None
        session = Session(str(name), str(prefix), int(expires), str(nonce))
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", session.nonce.encode())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))

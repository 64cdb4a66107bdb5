"""Bearer-key authentication with a short-lived cache (a revoked key dies within a second)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from llmrelay.errors import AuthenticationError, InvalidRequest, PermissionDenied
from llmrelay.store.keys import KeyRecord, KeyStore, hash_secret

_MISSING = (
    "You didn't provide an API key. Send it in the Authorization header: "
    "'Authorization: Bearer YOUR_KEY'."
)


def bearer_token(values: Sequence[str]) -> str:
    """The key from one or more Authorization headers (seed 001 repeats the header)."""
    if not values:
        raise AuthenticationError(_MISSING)
    tokens = {_token(v) for v in values}
    if len(tokens) > 1:
        raise InvalidRequest(
            "The request has several Authorization headers with different values; send one.",
            param="Authorization",
            code="conflicting_authorization",
        )
    return tokens.pop()


def _token(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "Malformed Authorization header: expected 'Authorization: Bearer YOUR_KEY'."
        )
    return token


class Authenticator:
    def __init__(self, keys: KeyStore, *, cache_seconds: float = 0.5) -> None:
        self.keys = keys
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def authenticate(self, header_values: Sequence[str]) -> KeyRecord:
        token = bearer_token(header_values)
        digest = hash_secret(token)  # the cache holds digests, never secrets
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            record = cached[1]
        else:
            record = await self.keys.lookup_digest(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, record)
        if record is None or not record.usable():
            shown = token[:6] + "…" if len(token) > 6 else "…"
            raise AuthenticationError(
                f"Incorrect API key provided: {shown}. The key is unknown, revoked or expired."
            )
        return record

    @staticmethod
    def authorize_model(record: KeyRecord, model: str) -> None:
        if not record.allows(model):
            raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")

"""Bearer-key authentication with a short-lived cache (a revoked key dies within a second)."""

from __future__ import annotations

import asyncio
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
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def _lookup(self, digest: str) -> KeyRecord | None:
        """One database query per key per expiry, however many requests are waiting on it."""
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            record = await self.keys.lookup_digest(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody is warned twice
            raise
        finally:
            del self._inflight[digest]
        future.set_result(record)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self.cache_seconds, record)
        return record

    async def authenticate(self, header_values: Sequence[str]) -> KeyRecord:
        token = bearer_token(header_values)
        digest = hash_secret(token)  # the cache holds digests, never secrets
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            record = cached[1]
        else:
            record = await self._lookup(digest)
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

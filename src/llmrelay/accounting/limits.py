"""Budget reservations and rate limits: one :class:`Limiter` protocol, two backends.

:class:`~llmrelay.accounting.memory_limits.MemoryLimiter` keeps the state in this process (each
call is atomic because it never awaits between its check and its update);
:class:`~llmrelay.accounting.redis_limits.RedisLimiter` keeps it in Redis, shared by every
process, with each call one Lua script. This module holds the protocol and the rules both
follow.

Budgets. The limiter holds, per key and per user, ``spent`` (what was settled, including
spend the ledger has not committed yet) and ``reserved`` (reservations not settled yet). It
learns ``spent`` from the database values a caller passes (the first time it sees a key or user,
and whenever a later snapshot shows more), then adds each settled cost itself, so a cost is seen
by later reservations before the ledger commits it. A reservation succeeds when

    key:  spent + reserved + amount <= credit                 (credit None: no limit)
    user: spent + reserved + amount <= balance + spent_in_db  (balance None: unlimited)

``balance + spent_in_db`` is what the user was ever given: the ledger moves cost from the
balance to ``spent`` in one statement, so the sum is the same in every snapshot, fresh or
cached, and only a top-up changes it. A reservation left unsettled (a process killed mid-call)
lapses after ``reservation_ttl`` seconds; idle state is forgotten after ``state_ttl``.

Rate limits. Token buckets per key, for requests (``rpm``) and tokens (``tpm``): a bucket holds
up to one minute's allowance and refills continuously, so a burst gets at most the limit and
the limit is enforced exactly (to the request), as OpenAI's own limits behave. A bucket unit is
1/60000 of a request or token, which keeps the arithmetic in integers.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llmrelay.accounting.money import Money
from llmrelay.errors import InsufficientQuota, RateLimited


class _Ids:
    """Reservation ids: a random tag per process and a counter (no system call per id, as
    uuid4 makes), so reservations of processes sharing a Redis never share an id."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tag = os.urandom(8).hex()
        self.count = itertools.count()

    def __call__(self) -> str:
        return f"{self.tag}{next(self.count):x}"


new_reservation_id = _Ids()
os.register_at_fork(after_in_child=new_reservation_id.reset)


WINDOW_MS = 60_000  # a bucket holds one minute's allowance
RESERVATION_TTL = 1800.0  # seconds an unsettled reservation lasts
STATE_TTL = 3600.0  # seconds idle budget state is kept
Clock = Callable[[], float]


class LocalHold(Protocol):
    """Where a reservation made without a round trip is settled (a Redis limiter's lease)."""

    def settle(self, reservation: Reservation, actual_cost: Money, token_delta: int) -> None: ...


@dataclass(slots=True, eq=False)  # equal only to itself: it keys the in-memory holds
class Reservation:
    """Money held for one request until :meth:`Limiter.settle`."""

    key_id: int
    user_id: int
    amount: Money
    id: str = ""  # unique where the state is shared (Redis): see new_reservation_id
    settled: bool = False
    # How the reservation is named in Redis: ``<id>:<amount>``, made once (the admit and the
    # settle both send it).
    member: str = ""
    lease: LocalHold | None = None  # admitted from a lease: settled there, not in Redis


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much
class RateStatus:
    """A key's rate-limit state after a request: OpenAI's ``x-ratelimit-*`` headers.

    Levels are bucket units (1/60000 of a request or token); None where there is no limit.
    """

    rpm: int | None = None
    requests_level: int = 0
    tpm: int | None = None
    tokens_level: int = 0

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as an ASGI response sends them (lower-case names, latin-1 values)."""
        found: list[tuple[bytes, bytes]] = []
        for names, limit, level in (
            (_REQUEST_HEADERS, self.rpm, self.requests_level),
            (_TOKEN_HEADERS, self.tpm, self.tokens_level),
        ):
            if limit is not None:
                most, remaining, reset = _describe(limit, level)
                found += (
                    (names[0], b"%d" % most),
                    (names[1], b"%d" % remaining),
                    (names[2], reset),
                )
        return found

    def head_lines(self) -> bytes:
        """The same headers as HTTP header lines (``name: value\r\n`` each), for
        :data:`~llmrelay.corking.HEAD_LINES`."""
        lines = b""
        if self.rpm is not None:
            lines = _REQUEST_LINES % _describe(self.rpm, self.requests_level)
        if self.tpm is not None:
            lines += _TOKEN_LINES % _describe(self.tpm, self.tokens_level)
        return lines

    def headers(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.raw_headers()}


_REQUEST_HEADERS, _TOKEN_HEADERS = (
    (b"x-ratelimit-limit-" + kind, b"x-ratelimit-remaining-" + kind, b"x-ratelimit-reset-" + kind)
    for kind in (b"requests", b"tokens")
)
_REQUEST_LINES, _TOKEN_LINES = (
    b"%s: %%d\r\n%s: %%d\r\n%s: %%s\r\n" % names for names in (_REQUEST_HEADERS, _TOKEN_HEADERS)
)


def _describe(limit: int, level: int) -> tuple[int, int, bytes]:
    """The limit, what remains of it and the time until the bucket is full again (text)."""
    # On every metered response: plain arithmetic, no helper calls for the common case.
    to_full = -((level - limit * WINDOW_MS) // limit) if limit else 0  # ms, rounded up
    return (
        limit,
        level // WINDOW_MS if level > 0 else 0,
        b"%dms" % to_full if 0 <= to_full < 1000 else duration_text(to_full).encode(),
    )


class Limiter(Protocol):
    async def reserve(
        self,
        key_id: int,
        user_id: int,
        amount: Money,
        *,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> Reservation:
        """Hold ``amount`` against the key's credit and the user's balance, atomically, or
        raise :class:`~llmrelay.errors.InsufficientQuota`. ``key_spent``, ``user_balance`` and
        ``user_spent`` are the database's values (a cached snapshot will do; see above)."""
        ...

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        """Release the reservation and count ``actual_cost`` as spent (idempotent)."""
        ...

    async def check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateStatus:
        """Count one request of ``tokens`` (estimated) against the key's limits, or raise
        :class:`~llmrelay.errors.RateLimited` with ``Retry-After`` and the headers."""
        ...

    async def admit(
        self,
        key_id: int,
        user_id: int,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        amount: Money | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> tuple[RateStatus, Reservation | None]:
        """:meth:`check_rate`, then (when ``amount`` is not None) :meth:`reserve`, in one step
        (one round trip where the backend has round trips). A request refused by its rate
        limits reserves nothing; one refused for money still counts against its rate limits."""
        ...

    def admit_now(
        self,
        key_id: int,
        user_id: int,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        amount: Money | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> tuple[RateStatus, Reservation | None] | None:
        """:meth:`admit` at once, where the state is in this process; None where it is not
        (the caller then awaits :meth:`admit` with the same arguments). It saves a coroutine
        on every request."""
        ...

    async def add_tokens(self, key_id: int, delta: int) -> None:
        """Correct the token estimate of a request by ``delta`` (actual − estimate)."""
        ...

    async def finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        """:meth:`settle` (when there is a reservation) and :meth:`add_tokens` (when
        ``token_delta`` is not 0), in one round trip where the backend has round trips."""
        ...

    def finish_soon(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        """:meth:`finish` without waiting for it (settling late is safe: the reservation holds
        the worst case until then); survives the caller's cancellation, never raises."""
        ...

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        """Drop what is known of a key's or user's spend (after an admin changed it)."""
        ...

    def counts(self) -> dict[str, int]:
        """For /metrics: what the limiter did (script calls, lease work), by name."""
        ...

    async def close(self) -> None: ...


# -- shared arithmetic and errors ---------------------------------------------------------------


def duration_text(ms: int) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1.5s"``, ``"1m0s"``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def wait_ms(level: int, need: int, limit: int) -> int:
    """How long until a bucket at ``level`` holds ``need`` units."""
    return max(0, math.ceil((need - level) / limit)) if limit else 0


def check_money(amount: Money, name: str = "amount") -> None:
    if type(amount) is int and amount >= 0:  # the common case first: it is on the hot path
        return
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"{name} must be an int of picodollars")
    if amount < 0:
        raise ValueError(f"{name} must not be negative, got {amount}")


def refused_outright(rpm: int | None, tpm: int | None, tokens: int) -> RateLimited | None:
    """A request no amount of waiting admits: a zero RPM, or more tokens than the TPM."""
    if rpm == 0:
        return RateLimited(
            "This key may not send requests: its limit is 0 requests per minute (RPM).",
            headers=RateStatus(rpm=0).headers(),
        )
    if tpm is None or tokens <= tpm:
        return None
    return RateLimited(
        f"Request too large: this key's limit is {tpm} tokens per minute (TPM), and the "
        f"request needs {tokens}. Send fewer tokens or lower max_tokens.",
        headers=RateStatus(tpm=tpm, tokens_level=0).headers(),
    )


def rate_error(status: RateStatus, wait: int, short: list[str]) -> RateLimited:
    """The 429 for a request refused by the buckets named in ``short`` (requests, tokens)."""
    seconds = max(1, math.ceil(wait / 1000))
    limits = {"requests": f"requests per min (RPM): Limit {status.rpm}"}
    limits["tokens"] = f"tokens per min (TPM): Limit {status.tpm}"
    headers = status.headers() | {"Retry-After": str(seconds), "retry-after-ms": str(wait)}
    return RateLimited(
        f"Rate limit reached for this key on {' and '.join(limits[k] for k in short)}. "
        f"Please try again in {duration_text(wait)}.",
        headers=headers,
        retry_after=float(seconds),
    )


def quota_error(who: str) -> InsufficientQuota:
    if who == "key":
        message = (
            "You exceeded this API key's credit limit. Raise the key's credit or use another key."
        )
    else:
        message = (
            "You exceeded your current quota, please check your plan and billing details "
            "(your balance does not cover this request)."
        )
    return InsufficientQuota(message)


def create_limiter(
    redis_url: str | None = None,
    *,
    prefix: str = "llmrelay",
    reservation_ttl: float = RESERVATION_TTL,
    state_ttl: float = STATE_TTL,
) -> Limiter:
    """A :class:`MemoryLimiter`, or a ``RedisLimiter`` when a Redis URL is configured."""
    if not redis_url:
        from llmrelay.accounting.memory_limits import MemoryLimiter

        return MemoryLimiter(reservation_ttl=reservation_ttl, state_ttl=state_ttl)
    from llmrelay.accounting.redis_limits import RedisLimiter

    return RedisLimiter(
        redis_url, prefix=prefix, reservation_ttl=reservation_ttl, state_ttl=state_ttl
    )

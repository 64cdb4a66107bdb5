"""Leases: a busy key's requests admitted and settled in this process, Redis told once a period.

Without a lease, every metered request costs the :class:`~llmrelay.accounting.redis_limits.
RedisLimiter` two items in Redis (its admission and its settlement), and Redis runs some fifty
commands for them; at thousands of requests a second that is more CPU than the rest of the
request's accounting. A key this process sends at least :data:`BUSY` requests in one period
(:data:`LEASE_PERIOD` seconds) is given a lease at the end of the period instead: one item of
the limiter's script takes, atomically with everything else in Redis, about twice the period's
requests out of the key's request bucket, twice its tokens out of the token bucket, and twice
its worst-case cost out of the key's credit and the user's balance (held as one member of each
held set, as a reservation is). Requests are then admitted from what the lease holds, and
settled into it, with no round trip. At the end of each period the lease is renewed by one item
that gives back what it did not use, counts what it spent, keeps the money of requests still
under way held, and grants the next lease.

What stays exact. A lease only holds what Redis gave it, so no request is admitted that the
limits did not allow, whatever the number of processes: a credit or balance is never overspent
and a bucket never gives more than its limit. A lease is granted only when it leaves at least as
much as it takes (of each bucket and of the money), so a key near one of its limits gets none
and each of its requests is checked in Redis, as without leases; that keeps small limits (the
ones tests and most users set) exact to the request. What a lease holds but does not use is
unavailable to other processes until it is given back, at most one period later: near a limit a
request may be refused that a moment later would have passed, never the other way round.

While a renewal is under way the lease admits nothing (its requests go to Redis one by one), so
the process never uses what Redis may already have taken back. A renewal that fails (Redis
unreachable, a timeout) abandons the lease: whether the script ran is unknown, so nothing is
sent again; what it held stays held in Redis until its deadline (``reservation_ttl``) and its
spend reaches Redis through the database, as a failed settlement's does. The same happens when
the process is killed. The ``x-ratelimit-remaining-*`` headers of a leased request count what the
buckets held at the last renewal, less what this process has taken since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from llmrelay.accounting.limits import WINDOW_MS, RateStatus, Reservation, new_reservation_id
from llmrelay.accounting.money import Money
from llmrelay.accounting.redis_batching import Batcher

log = logging.getLogger(__name__)

LEASE_PERIOD = 0.05  # seconds between renewals
BUSY = 8  # requests of a key in one period that earn it a lease
# What a lease was granted under: user id, rpm, tpm, key credit, the user's funds (balance +
# spent, which a charge does not change); a request under other terms does not use it.
Terms = tuple[int, int | None, int | None, Money | None, Money | None]
Names = Callable[[int, int], tuple[tuple[bytes, ...], tuple[bytes, ...]]]


@dataclass(slots=True, eq=False)
class Lease:
    """What this process holds of one key's limits, and the key's traffic in this period."""

    key_id: int
    terms: Terms
    money_limited: bool  # the key has a credit or its user a balance
    granted: bool = False  # Redis granted its last renewal: requests may be admitted from it
    renewing: bool = False
    # Left to admit from: bucket units (1/60000 of a request or token; tokens may go below 0
    # when requests used more than they were counted for) and money.
    requests: int = 0
    tokens: int = 0
    money: Money = 0
    in_flight: Money = 0  # worst cases of admitted requests not settled yet
    spent: Money = 0  # settled here, not counted in Redis yet
    member: str = ""  # the Redis member that holds its money, "<id>:<amount>" ("": none)
    held: Money = 0  # that amount
    requests_level: int = 0  # the buckets' levels in Redis after the last renewal
    tokens_level: int = 0
    # This period's requests (admitted here or not): they size the next renewal.
    count: int = 0
    tokens_seen: int = 0
    money_seen: Money = 0
    key_spent: Money = 0  # the newest database snapshots, sent with the next renewal
    user_spent: Money = 0

    def take(
        self, rpm: int | None, tpm: int | None, tokens: int, amount: Money | None
    ) -> tuple[RateStatus, Reservation] | None:
        """Admit one request from what the lease holds, or None (it does not hold enough)."""
        need = tokens * WINDOW_MS
        if (
            (rpm is not None and self.requests < WINDOW_MS)
            or (tpm is not None and self.tokens < need)
            or (amount is not None and self.money < amount)
        ):
            return None
        if rpm is not None:
            self.requests -= WINDOW_MS
        if tpm is not None:
            self.tokens -= need
        if amount is None:
            amount = 0
        else:
            self.money -= amount
            self.in_flight += amount
        status = RateStatus(
            rpm, self.requests_level + self.requests, tpm, self.tokens_level + self.tokens
        )
        # (By position: keywords cost more. The id and member are for Redis reservations.)
        return status, Reservation(self.key_id, self.terms[0], amount, "", False, "", self)

    def settle(self, reservation: Reservation, actual_cost: Money, token_delta: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if self.money_limited:
            self.in_flight -= reservation.amount
            self.spent += actual_cost
        if token_delta and self.terms[2] is not None:
            self.tokens -= token_delta * WINDOW_MS  # counted in Redis at the next renewal

    @property
    def holds_anything(self) -> bool:
        return bool(self.held or self.spent or self.requests or self.tokens)


@dataclass(slots=True)
class _Renewal:
    """What one renewal asked for: applied to the lease when the answer comes."""

    lease: Lease
    ident: str  # the new member's id
    kept: Money  # money held whether or not the renewal is granted
    requests: int  # asked for: bucket units and money
    tokens: int
    money: Money
    ending: bool  # it gives everything back and asks for nothing


class Leases:
    """The leases of one :class:`~llmrelay.accounting.redis_limits.RedisLimiter`."""

    def __init__(self, batcher: Batcher, names: Names, period: float = LEASE_PERIOD) -> None:
        self.batcher = batcher
        self.names = names  # a key's and a user's Redis names
        self.period = period
        self.renewals = 0  # renewal items sent
        self.admitted = 0  # requests admitted from leases
        self._current: dict[int, Lease] = {}  # per key id
        self._ending: list[Lease] = []  # replaced (the key's terms changed), still holding
        self._task: asyncio.Task[None] | None = None

    def admit(
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
    ) -> tuple[RateStatus, Reservation] | None:
        """Admit from the key's lease, or None: the caller goes to Redis. Counts the request
        either way (a busy key earns a lease)."""
        funded = None if user_balance is None else user_balance + user_spent
        lease = self._current.get(key_id)
        if lease is None or lease.terms != (user_id, rpm, tpm, key_credit, funded):
            lease = self._replace(key_id, (user_id, rpm, tpm, key_credit, funded), amount)
        if tokens < 0:
            tokens = 0
        lease.count += 1
        lease.tokens_seen += tokens
        if amount is not None:
            lease.money_seen += amount
        lease.key_spent = key_spent
        lease.user_spent = user_spent
        if not lease.granted:
            return None
        taken = lease.take(rpm, tpm, tokens, amount)
        if taken is not None:
            self.admitted += 1
        return taken

    def _replace(self, key_id: int, terms: Terms, amount: Money | None) -> Lease:
        self.forget(key_id)
        lease = self._current[key_id] = Lease(key_id, terms, amount is not None)
        task = self._task
        if task is None or task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return lease

    async def _run(self) -> None:
        while self._current or self._ending:
            await asyncio.sleep(self.period)
            try:
                self.tick()
            except Exception:  # a bug here must not stop the renewals of every other lease
                log.exception("lease renewals failed")

    def tick(self) -> list[asyncio.Future[str]]:
        """End the period: renew the leases of busy keys (and grant new ones), end the others,
        forget idle keys. Returns the renewals' answers to come."""
        sent = []
        for key_id, lease in list(self._current.items()):
            if not lease.renewing:
                if lease.count >= BUSY:
                    sent.append(self._renew(lease, ending=False))
                elif lease.holds_anything:
                    sent.append(self._renew(lease, ending=True))
                elif not lease.count:
                    del self._current[key_id]
            lease.count = lease.tokens_seen = lease.money_seen = 0
        for lease in list(self._ending):
            if not lease.renewing:
                if lease.holds_anything:
                    sent.append(self._renew(lease, ending=True))
                else:
                    self._ending.remove(lease)
        return sent

    def _renew(self, lease: Lease, *, ending: bool) -> asyncio.Future[str]:
        """Send one renewal: toward twice this period's traffic, or (``ending``) to nothing."""
        user_id, rpm, tpm, credit, funded = lease.terms
        if ending:  # everything goes back (tokens below 0: the bucket pays the difference)
            asked, back = [0, 0, 0], [lease.requests, lease.tokens, lease.money]
        else:
            targets = (
                2 * lease.count * WINDOW_MS,
                2 * lease.tokens_seen * WINDOW_MS,
                2 * lease.money_seen,
            )
            left = (lease.requests, lease.tokens, lease.money)
            asked = [t - n if t > n else 0 for t, n in zip(targets, left, strict=True)]
            back = [n - t if n > t else 0 for t, n in zip(targets, left, strict=True)]
        if rpm is None:
            asked[0] = back[0] = 0
        if tpm is None:
            asked[1] = back[1] = 0
        # What goes back is no longer this process's to admit from, from now on.
        lease.requests -= back[0]
        lease.tokens -= back[1]
        lease.money -= back[2]
        kept = lease.in_flight + lease.money
        renewal = _Renewal(lease, new_reservation_id(), kept, asked[0], asked[1], asked[2], ending)
        if lease.money_limited:
            money = (
                f"{lease.member or '_'} {lease.held} {lease.spent} {back[0]} {back[1]} "
                f"L{renewal.ident} {kept} {kept + asked[2]} {kept + 2 * asked[2]}"
            )
        else:
            money = f"_ 0 0 {back[0]} {back[1]} _ _ _ _"
        item = (
            f"l {money} {asked[0]} {asked[1]} {'_' if rpm is None else rpm} "
            f"{'_' if tpm is None else tpm} {'_' if credit is None else credit} "
            f"{max(lease.key_spent, 0)} {'_' if funded is None else funded} "
            f"{max(lease.user_spent, 0)}"
        )
        lease.spent = 0
        lease.held, lease.member = kept, ""  # (until the answer names the new member)
        lease.renewing = True
        if ending:
            lease.granted = False
        key_names, user_names = self.names(lease.key_id, user_id)
        self.renewals += 1
        answer = self.batcher.add(key_names, user_names, item)
        answer.add_done_callback(lambda done: self._renewed(renewal, done))
        return answer

    def _renewed(self, renewal: _Renewal, answer: asyncio.Future[str]) -> None:
        lease = renewal.lease
        lease.renewing = False
        error = answer.exception() if not answer.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._abandon(lease, error)
            return
        granted, requests_level, tokens_level = map(int, answer.result().split(","))
        held = renewal.kept + (renewal.money if granted else 0)
        lease.held, lease.member = held, f"L{renewal.ident}:{held}" if held else ""
        if not lease.money_limited:
            lease.held = 0
        lease.requests_level, lease.tokens_level = requests_level, tokens_level
        if renewal.ending:
            return
        if granted:
            lease.requests += renewal.requests
            lease.tokens += renewal.tokens
            lease.money += renewal.money
            lease.granted = self._current.get(lease.key_id) is lease
        else:  # near a limit: give back what it holds at once, Redis decides request by request
            lease.granted = False
            self._renew(lease, ending=True)

    def _abandon(self, lease: Lease, error: BaseException) -> None:
        """Forget a lease whose renewal may or may not have run in Redis (see the module)."""
        lease.granted = False
        if self._current.get(lease.key_id) is lease:
            del self._current[lease.key_id]
        if lease in self._ending:
            self._ending.remove(lease)
        if not isinstance(error, asyncio.CancelledError):
            log.warning("lease of key %d abandoned: its renewal failed: %s", lease.key_id, error)

    def forget(self, key_id: int) -> None:
        """Stop admitting from the key's lease (its terms or its spend changed); what it holds
        is given back at the next renewal."""
        lease = self._current.pop(key_id, None)
        if lease is not None:
            lease.granted = False
            if lease.holds_anything or lease.renewing:
                self._ending.append(lease)

    async def close(self) -> None:
        """Give back everything leases hold (after the renewals under way)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for key_id in list(self._current):
            self.forget(key_id)
        while self._ending:
            pending = self.tick()
            renewing = [lease for lease in self._ending if lease.renewing]
            if not pending and not renewing:
                break
            await asyncio.gather(*pending, return_exceptions=True)
            if not pending:
                await self.batcher.wait()

"""The in-process :class:`~llmrelay.accounting.limits.Limiter`: the state in this process's
memory, for a single process per database. The rules are those of ``limits.py``; each call is
atomic because it never awaits between its check and its update.

Every metered request runs :meth:`MemoryLimiter.admit_now` and :meth:`MemoryLimiter.finish_soon`
on the event loop, so they are written as plain arithmetic with few calls: in CPython a call, a
``min()`` or an object costs more than the sums themselves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from llmrelay.accounting.limits import (
    RESERVATION_TTL,
    STATE_TTL,
    WINDOW_MS,
    Clock,
    RateStatus,
    Reservation,
    check_money,
    quota_error,
    rate_error,
    refill,
    refused_outright,
    wait_ms,
)
from llmrelay.accounting.money import Money
from llmrelay.errors import RateLimited


@dataclass(slots=True)
class _Account:
    spent: Money
    touched_ms: int
    reserved: Money = 0
    holding: int = 0  # reservations not settled yet


_Hold = tuple[_Account, _Account, int]  # the key's and the user's accounts, the deadline


@dataclass(slots=True)
class _Rates:
    """A key's RPM and TPM buckets, refilled together. Levels are bucket units: a bucket gains
    its limit in units every ms, up to one minute's worth; a limit of None has no bucket."""

    rpm: int | None
    requests: int
    tpm: int | None
    tokens: int
    at_ms: int

    def refill(self, now: int, rpm: int | None, tpm: int | None) -> None:
        """Both levels at ``now``, under the key's limits as they are now (a bucket that had no
        limit starts full)."""
        if rpm is not None:
            self.requests = (
                refill(self.requests, self.at_ms, now, rpm)
                if self.rpm is not None
                else rpm * WINDOW_MS
            )
        if tpm is not None:
            self.tokens = (
                refill(self.tokens, self.at_ms, now, tpm)
                if self.tpm is not None
                else tpm * WINDOW_MS
            )
        self.rpm = rpm
        self.tpm = tpm
        if now > self.at_ms:
            self.at_ms = now

    def status(self) -> RateStatus:
        return RateStatus(
            self.rpm,
            self.requests if self.rpm is not None else 0,
            self.tpm,
            self.tokens if self.tpm is not None else 0,
        )


class MemoryLimiter:
    """The limiter for one process. Every method runs to completion without awaiting.

    Reservations not settled yet are held in one dict in the order they were made, which is
    also the order of their deadlines (they all last ``reservation_ttl``), so what lapsed is
    always at its front.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        reservation_ttl: float = RESERVATION_TTL,
        state_ttl: float = STATE_TTL,
    ) -> None:
        self._clock = clock
        self._reservation_ms = int(reservation_ttl * 1000)
        self._state_ms = int(state_ttl * 1000)
        self._keys: dict[int, _Account] = {}
        self._users: dict[int, _Account] = {}
        self._holds: dict[Reservation, _Hold] = {}
        self._next_lapse_ms: float = math.inf
        self._rates: dict[int, _Rates] = {}  # per key with an RPM or TPM: its buckets

    def _now(self) -> int:
        return int(self._clock() * 1000)

    # -- money ----------------------------------------------------------------------------

    def _lapse(self, now: int) -> None:
        """Release the reservations past their deadline."""
        for reservation, (key, user, deadline) in list(self._holds.items()):
            if deadline > now:
                self._next_lapse_ms = deadline
                return
            del self._holds[reservation]
            for account in (key, user):
                account.reserved -= reservation.amount
                account.holding -= 1
        self._next_lapse_ms = math.inf

    def _account(self, table: dict[int, _Account], ident: int, spent: Money, now: int) -> _Account:
        account = table.get(ident)
        if account is None or (not account.holding and now - account.touched_ms > self._state_ms):
            account = table[ident] = _Account(spent, now)  # new, or idle: learn the spend afresh
            return account
        if spent > account.spent:
            account.spent = spent
        account.touched_ms = now
        return account

    def _hold(
        self,
        key_id: int,
        user_id: int,
        amount: Money,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
        now: int,
    ) -> Reservation:
        """Reserve ``amount`` for the key and the user, or raise the 429 of whichever it
        would overdraw."""
        if type(amount) is not int or amount < 0:
            check_money(amount)
        if now >= self._next_lapse_ms:
            self._lapse(now)
        key = self._account(self._keys, key_id, key_spent, now)
        user = self._account(self._users, user_id, user_spent, now)
        if key_credit is not None and key.spent + key.reserved + amount > key_credit:
            raise quota_error("key")
        if user_balance is not None and user.spent + user.reserved + amount > (
            user_balance + user_spent
        ):
            raise quota_error("user")
        reservation = Reservation(key_id, user_id, amount)
        deadline = now + self._reservation_ms
        self._holds[reservation] = (key, user, deadline)
        if deadline < self._next_lapse_ms:
            self._next_lapse_ms = deadline
        key.reserved += amount
        key.holding += 1
        user.reserved += amount
        user.holding += 1
        return reservation

    def _count_request(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int, now: int
    ) -> RateStatus:
        """Take one request of ``tokens`` from the key's buckets (at least one limit is set),
        or raise its 429."""
        if tokens < 0:
            tokens = 0
        if rpm == 0 or (tpm is not None and tokens > tpm):
            raise refused_outright(rpm, tpm, tokens) or AssertionError("not refused")
        rates = self._rates.get(key_id)
        if rates is None:
            rates = self._rates[key_id] = _Rates(None, 0, None, 0, now)
        if now > rates.at_ms or rpm != rates.rpm or tpm != rates.tpm:
            rates.refill(now, rpm, tpm)  # (a new key's buckets start full)
        need = tokens * WINDOW_MS
        if (rpm is not None and rates.requests < WINDOW_MS) or (
            tpm is not None and rates.tokens < need
        ):
            raise _refusal(rates, need)
        requests = tokens_left = 0
        if rpm is not None:
            requests = rates.requests = rates.requests - WINDOW_MS
        if tpm is not None:
            tokens_left = rates.tokens = rates.tokens - need
        return RateStatus(rpm, requests, tpm, tokens_left)

    def _debt(self, rates: _Rates, tpm: int, tokens: int) -> None:
        """A request used ``tokens`` more than its estimate: taken from now on, down to at
        most one minute's worth below empty."""
        rates.refill(int(self._clock() * 1000), rates.rpm, tpm)
        full = tpm * WINDOW_MS
        level = rates.tokens - tokens * WINDOW_MS
        rates.tokens = -full if level < -full else level

    def _spend_lapsed(self, reservation: Reservation, actual_cost: Money) -> None:
        """The settlement of a reservation that lapsed: the cost counts all the same."""
        for account in (self._keys.get(reservation.key_id), self._users.get(reservation.user_id)):
            if account is not None:
                account.spent += actual_cost

    # -- the protocol ---------------------------------------------------------------------
    # admit_now and finish_soon do the work of every other method; they run for every metered
    # request, so each is one function with the common case inline.

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
    ) -> tuple[RateStatus, Reservation | None]:
        now = int(self._clock() * 1000)
        if rpm is not None or tpm is not None:
            status = self._count_request(key_id, rpm, tpm, tokens, now)
        else:
            if self._rates:  # limits were removed from the key: forget its buckets
                self._rates.pop(key_id, None)
            status = _NO_LIMITS
        if amount is None:
            return status, None
        return status, self._hold(
            key_id, user_id, amount, key_credit, key_spent, user_balance, user_spent, now
        )

    def finish_soon(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        if reservation is not None:
            if type(actual_cost) is not int or actual_cost < 0:
                check_money(actual_cost, "actual_cost")
            if not reservation.settled:
                reservation.settled = True
                hold = self._holds.pop(reservation, None)
                if hold is None:
                    self._spend_lapsed(reservation, actual_cost)
                else:
                    key, user, _ = hold
                    amount = reservation.amount
                    key.reserved -= amount
                    key.holding -= 1
                    key.spent += actual_cost
                    user.reserved -= amount
                    user.holding -= 1
                    user.spent += actual_cost
        if token_delta:
            rates = self._rates.get(key_id)
            if rates is None or rates.tpm is None:
                return
            tpm = rates.tpm
            if token_delta > 0:
                self._debt(rates, tpm, token_delta)
                return
            # Tokens given back (the usual case: estimates are upper bounds). Refilling first
            # would end the same: the level is capped at full either way.
            full = tpm * WINDOW_MS
            level = rates.tokens - token_delta * WINDOW_MS
            rates.tokens = full if level > full else level

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
        return self.admit_now(
            key_id,
            user_id,
            rpm,
            tpm,
            tokens,
            amount,
            key_credit,
            key_spent,
            user_balance,
            user_spent,
        )

    async def finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        self.finish_soon(reservation, actual_cost, key_id, token_delta)

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
        return self._hold(
            key_id, user_id, amount, key_credit, key_spent, user_balance, user_spent, self._now()
        )

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        self.finish_soon(reservation, actual_cost, reservation.key_id, 0)

    async def check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateStatus:
        return self.admit_now(key_id, 0, rpm, tpm, tokens, None, None, 0, None, 0)[0]

    async def add_tokens(self, key_id: int, delta: int) -> None:
        self.finish_soon(None, 0, key_id, delta)

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        """Re-learn spend from the next snapshot; outstanding reservations stay held."""
        for table, ident in ((self._keys, key_id), (self._users, user_id)):
            account = table.get(ident) if ident is not None else None
            if account is not None:
                account.spent = 0

    def counts(self) -> dict[str, int]:
        return {}  # nothing beyond the requests themselves

    async def close(self) -> None:
        self._keys.clear()
        self._users.clear()
        self._holds.clear()
        self._next_lapse_ms = math.inf
        self._rates.clear()


_NO_LIMITS = RateStatus()


def _refusal(rates: _Rates, need: int) -> RateLimited:
    """The 429 of a request its buckets do not hold enough for."""
    request_wait = token_wait = 0
    if rates.rpm is not None and rates.requests < WINDOW_MS:
        request_wait = wait_ms(rates.requests, WINDOW_MS, rates.rpm)
    if rates.tpm is not None and rates.tokens < need:
        token_wait = wait_ms(rates.tokens, need, rates.tpm)
    short = [k for k, w in (("requests", request_wait), ("tokens", token_wait)) if w]
    return rate_error(rates.status(), max(request_wait, token_wait), short)

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
    refused_outright,
    wait_ms,
)
from llmrelay.accounting.money import Money
from llmrelay.errors import RateLimited


@dataclass(slots=True)
class _Account:
    """What a key or a user spent and holds (see ``limits.py``)."""

    spent: Money
    touched_ms: int
    reserved: Money = 0
    holding: int = 0  # reservations not settled yet


_Hold = tuple[_Account, _Account, int]  # the key's and the user's accounts, the deadline


@dataclass(slots=True)
class _Key(_Account):
    """A key: its account, and its RPM and TPM buckets, refilled together, in one object (one
    lookup a request). Levels are bucket units: a bucket gains its limit in units every ms, up
    to one minute's worth; a limit of None has no bucket."""

    ident: int = 0  # the key's id
    rpm: int | None = None
    requests: int = 0
    tpm: int | None = None
    tokens: int = 0
    at_ms: int = 0

    def refill(self, now: int, rpm: int | None, tpm: int | None) -> None:
        """Both levels at ``now``, under the key's limits as they are now (a bucket that had no
        limit starts full). Plain arithmetic, no helper calls: it runs every millisecond a
        key is busy."""
        elapsed = now - self.at_ms if now > self.at_ms else 0
        if rpm is not None:
            full = rpm * WINDOW_MS
            level = self.requests + elapsed * rpm if self.rpm is not None else full
            self.requests = level if level < full else full
        if tpm is not None:
            full = tpm * WINDOW_MS
            level = self.tokens + elapsed * tpm if self.tpm is not None else full
            self.tokens = level if level < full else full
        self.rpm = rpm
        self.tpm = tpm
        if elapsed:
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
        self._keys: dict[int, _Key] = {}
        self._users: dict[int, _Account] = {}
        self._holds: dict[Reservation, _Hold] = {}
        self._next_lapse_ms: float = math.inf

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

    def _hold(
        self,
        key: _Key,
        user_id: int,
        amount: Money,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
        now: int,
    ) -> Reservation:
        """Reserve ``amount`` for the key and the user, or raise the 429 of whichever it
        would overdraw. Each account learns the spend of its snapshot when it is new or was
        idle, and whenever the snapshot shows more."""
        if type(amount) is not int or amount < 0:
            check_money(amount)
        if now >= self._next_lapse_ms:
            self._lapse(now)
        if key_spent > key.spent or (not key.holding and now - key.touched_ms > self._state_ms):
            key.spent = key_spent
        key.touched_ms = now
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _Account(user_spent, now)
        elif user_spent > user.spent or (
            not user.holding and now - user.touched_ms > self._state_ms
        ):
            user.spent = user_spent
        user.touched_ms = now
        if key_credit is not None and key.spent + key.reserved + amount > key_credit:
            raise quota_error("key")
        if user_balance is not None and user.spent + user.reserved + amount > (
            user_balance + user_spent
        ):
            raise quota_error("user")
        # (By position: keywords cost more.)
        reservation = Reservation(key.ident, user_id, amount)
        deadline = now + self._reservation_ms
        self._holds[reservation] = (key, user, deadline)
        if deadline < self._next_lapse_ms:
            self._next_lapse_ms = deadline
        key.reserved += amount
        key.holding += 1
        user.reserved += amount
        user.holding += 1
        return reservation

    def _new_key(self, key_id: int, spent: Money, now: int) -> _Key:
        key = self._keys[key_id] = _Key(spent, now, ident=key_id, at_ms=now)
        return key

    def _debt(self, key: _Key, tpm: int, tokens: int) -> None:
        """A request used ``tokens`` more than its estimate: taken from now on, down to at
        most one minute's worth below empty."""
        key.refill(int(self._clock() * 1000), key.rpm, tpm)
        full = tpm * WINDOW_MS
        level = key.tokens - tokens * WINDOW_MS
        key.tokens = -full if level < -full else level

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
        key = self._keys.get(key_id) or self._new_key(key_id, key_spent, now)
        if rpm is None and tpm is None:
            key.rpm = key.tpm = None  # (limits removed: one set again starts full)
            status = _NO_LIMITS
        else:  # one request of ``tokens`` from the buckets, or its 429
            if tokens < 0:
                tokens = 0
            if rpm == 0 or (tpm is not None and tokens > tpm):
                raise refused_outright(rpm, tpm, tokens) or AssertionError("not refused")
            if now > key.at_ms or rpm != key.rpm or tpm != key.tpm:
                key.refill(now, rpm, tpm)  # (a new key's buckets start full)
            need = tokens * WINDOW_MS
            if (rpm is not None and key.requests < WINDOW_MS) or (
                tpm is not None and key.tokens < need
            ):
                raise _refusal(key, need)
            requests = tokens_left = 0
            if rpm is not None:
                requests = key.requests = key.requests - WINDOW_MS
            if tpm is not None:
                tokens_left = key.tokens = key.tokens - need
            status = RateStatus(rpm, requests, tpm, tokens_left)
        if amount is None:
            return status, None
        return status, self._hold(
            key, user_id, amount, key_credit, key_spent, user_balance, user_spent, now
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
            found = self._keys.get(key_id)
            if found is None or found.tpm is None:
                return
            tpm = found.tpm
            if token_delta > 0:
                self._debt(found, tpm, token_delta)
                return
            # Tokens given back (the usual case: estimates are upper bounds). Refilling first
            # would end the same: the level is capped at full either way.
            full = tpm * WINDOW_MS
            level = found.tokens - token_delta * WINDOW_MS
            found.tokens = full if level > full else level

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
        now = self._now()
        key = self._keys.get(key_id) or self._new_key(key_id, key_spent, now)
        return self._hold(
            key, user_id, amount, key_credit, key_spent, user_balance, user_spent, now
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


_NO_LIMITS = RateStatus()


def _refusal(key: _Key, need: int) -> RateLimited:
    """The 429 of a request its buckets do not hold enough for."""
    request_wait = token_wait = 0
    if key.rpm is not None and key.requests < WINDOW_MS:
        request_wait = wait_ms(key.requests, WINDOW_MS, key.rpm)
    if key.tpm is not None and key.tokens < need:
        token_wait = wait_ms(key.tokens, need, key.tpm)
    short = [k for k, w in (("requests", request_wait), ("tokens", token_wait)) if w]
    return rate_error(key.status(), max(request_wait, token_wait), short)

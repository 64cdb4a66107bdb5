"""The in-process :class:`~llmrelay.accounting.limits.Limiter`: the state in this process's
memory, for a single process per database. The rules are those of ``limits.py``; each call is
atomic because it never awaits between its check and its update."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class _Account:
    spent: Money
    touched_ms: int
    reserved: Money = 0
    holds: dict[str, tuple[Money, int]] = field(default_factory=dict)  # member → amount, end
    next_lapse_ms: float = math.inf

    def lapse(self, now_ms: int) -> None:
        """Drop reservations past their deadline."""
        if now_ms < self.next_lapse_ms:
            return
        for member, (amount, deadline) in list(self.holds.items()):
            if deadline <= now_ms:
                del self.holds[member]
                self.reserved = max(0, self.reserved - amount)
        self.next_lapse_ms = min((d for _, d in self.holds.values()), default=math.inf)

    def release(self, member: str) -> None:
        hold = self.holds.pop(member, None)
        if hold is not None:
            self.reserved = max(0, self.reserved - hold[0])


@dataclass(slots=True)
class _Bucket:
    level: int
    at_ms: int
    limit: int


class MemoryLimiter:
    """The limiter for one process. Every method runs to completion without awaiting."""

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
        self._requests: dict[int, _Bucket] = {}  # per key: its RPM bucket
        self._tokens: dict[int, _Bucket] = {}  # per key: its TPM bucket

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _account(self, table: dict[int, _Account], ident: int, spent: Money, now: int) -> _Account:
        account = table.get(ident)
        if account is not None:
            account.lapse(now)
            if not account.holds and now - account.touched_ms > self._state_ms:
                account = None  # idle: learn the spend afresh
        if account is None:
            account = table[ident] = _Account(spent=spent, touched_ms=now)
        account.spent = max(account.spent, spent)
        account.touched_ms = now
        return account

    # The async methods of the protocol run these synchronously: nothing here ever waits.

    def _reserve(
        self,
        key_id: int,
        user_id: int,
        amount: Money,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
        now: int = 0,
    ) -> Reservation:
        check_money(amount)
        now = now or self._now()
        key = self._account(self._keys, key_id, key_spent, now)
        user = self._account(self._users, user_id, user_spent, now)
        if key_credit is not None and key.spent + key.reserved + amount > key_credit:
            raise quota_error("key")
        if user_balance is not None and user.spent + user.reserved + amount > (
            user_balance + user_spent
        ):
            raise quota_error("user")
        reservation = Reservation(key_id, user_id, amount)
        hold = (amount, now + self._reservation_ms)
        member = reservation.id  # unique: the amount need not be part of it here
        for account in (key, user):
            account.reserved += amount
            account.holds[member] = hold
            if hold[1] < account.next_lapse_ms:
                account.next_lapse_ms = hold[1]
        return reservation

    def _settle(self, reservation: Reservation, actual_cost: Money) -> None:
        check_money(actual_cost, "actual_cost")
        if reservation.settled:
            return
        reservation.settled = True
        member = reservation.id
        for table, ident in ((self._keys, reservation.key_id), (self._users, reservation.user_id)):
            account = table.get(ident)
            if account is not None:
                account.release(member)
                account.spent += actual_cost

    def _bucket(
        self, table: dict[int, _Bucket], key_id: int, limit: int | None, now: int
    ) -> _Bucket | None:
        if limit is None:
            if table:
                table.pop(key_id, None)
            return None
        full = limit * WINDOW_MS
        bucket = table.get(key_id)
        if bucket is None:
            bucket = table[key_id] = _Bucket(full, now, limit)
        elif now > bucket.at_ms or limit != bucket.limit:
            level = refill(bucket.level, bucket.at_ms, now, limit)
            bucket.level, bucket.at_ms, bucket.limit = level, now, limit
        return bucket

    def _check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int, now: int = 0
    ) -> RateStatus:
        if rpm is None and tpm is None:
            if self._requests or self._tokens:
                self._requests.pop(key_id, None)
                self._tokens.pop(key_id, None)
            return _NO_LIMITS
        tokens = max(0, tokens)
        error = refused_outright(rpm, tpm, tokens)
        if error is not None:
            raise error
        now = now or self._now()
        requests = self._bucket(self._requests, key_id, rpm, now)
        token_bucket = self._bucket(self._tokens, key_id, tpm, now)
        need = tokens * WINDOW_MS
        request_wait = token_wait = 0
        if requests is not None and requests.level < WINDOW_MS:
            request_wait = wait_ms(requests.level, WINDOW_MS, requests.limit)
        if token_bucket is not None and token_bucket.level < need:
            token_wait = wait_ms(token_bucket.level, need, token_bucket.limit)
        if request_wait or token_wait:
            short = [k for k, w in (("requests", request_wait), ("tokens", token_wait)) if w]
            status = _status(rpm, requests, tpm, token_bucket)
            raise rate_error(status, max(request_wait, token_wait), short)
        if requests is not None:
            requests.level -= WINDOW_MS
        if token_bucket is not None:
            token_bucket.level -= need
        return _status(rpm, requests, tpm, token_bucket)

    def _add_tokens(self, key_id: int, delta: int) -> None:
        bucket = self._tokens.get(key_id)
        if bucket is None or delta == 0:
            return
        now = self._now()
        cap = bucket.limit * WINDOW_MS
        level = refill(bucket.level, bucket.at_ms, now, bucket.limit) - delta * WINDOW_MS
        bucket.level, bucket.at_ms = max(-cap, min(cap, level)), now

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
        return self._reserve(
            key_id, user_id, amount, key_credit, key_spent, user_balance, user_spent
        )

    async def settle(self, reservation: Reservation, actual_cost: Money) -> None:
        self._settle(reservation, actual_cost)

    async def check_rate(
        self, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateStatus:
        return self._check_rate(key_id, rpm, tpm, tokens)

    async def admit(
        self,
        key_id: int,
        user_id: int,
        *,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        amount: Money | None,
        key_credit: Money | None,
        key_spent: Money,
        user_balance: Money | None,
        user_spent: Money,
    ) -> tuple[RateStatus, Reservation | None]:
        now = self._now()
        status = self._check_rate(key_id, rpm, tpm, tokens, now)
        if amount is None:
            return status, None
        reservation = self._reserve(
            key_id, user_id, amount, key_credit, key_spent, user_balance, user_spent, now
        )
        return status, reservation

    async def add_tokens(self, key_id: int, delta: int) -> None:
        self._add_tokens(key_id, delta)

    async def finish(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        self.finish_soon(reservation, actual_cost, key_id, token_delta)

    def finish_soon(
        self, reservation: Reservation | None, actual_cost: Money, key_id: int, token_delta: int
    ) -> None:
        if reservation is not None:
            self._settle(reservation, actual_cost)
        self._add_tokens(key_id, token_delta)

    async def forget(self, *, key_id: int | None = None, user_id: int | None = None) -> None:
        """Re-learn spend from the next snapshot; outstanding reservations stay held."""
        for table, ident in ((self._keys, key_id), (self._users, user_id)):
            account = table.get(ident) if ident is not None else None
            if account is not None:
                account.spent = 0

    async def close(self) -> None:
        self._keys.clear()
        self._users.clear()
        self._requests.clear()
        self._tokens.clear()


_NO_LIMITS = RateStatus()


def _status(
    rpm: int | None, requests: _Bucket | None, tpm: int | None, tokens: _Bucket | None
) -> RateStatus:
    return RateStatus(
        rpm=rpm,
        requests_level=requests.level if requests is not None else 0,
        tpm=tpm,
        tokens_level=tokens.level if tokens is not None else 0,
    )

"""Per request: admit (rate check, reservation), then settle and write the ledger row.

:meth:`Accounts.admit` runs before a request reaches a backend: it counts the request against
the key's RPM/TPM and reserves the most the request may cost against the key's credit and the
user's balance, atomically (in memory, or in Redis shared by several processes). The
:class:`Meter` it returns ends the request exactly once: :meth:`Meter.close` settles the exact
cost and waits until the ledger row is committed (callers do that before sending a response's
last bytes), :meth:`Meter.close_later` does the same without waiting, for requests the client
abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmrelay.accounting.ledger import LedgerWriter
from llmrelay.accounting.ledger_sql import Record
from llmrelay.accounting.limits import Limiter, RateStatus, Reservation
from llmrelay.accounting.money import Money
from llmrelay.accounting.pricing import usage_cost, worst_case
from llmrelay.errors import LLMRelayError
from llmrelay.request import ChatRequest, ImagePart, TextPart
from llmrelay.store.keys import KeyRecord
from llmrelay.store.prices import PriceRecord, PriceStore
from llmrelay.stream import Usage

log = logging.getLogger(__name__)
IMAGE_TOKENS = 2_000  # what one input image may count as upstream, at most, for a reservation
MESSAGE_TOKENS = 8  # a chat template's tokens around each message
_NOTHING_USED = Usage(0, 0)


def prompt_bound(request: ChatRequest) -> int:
    """An upper bound of the prompt's tokens that costs no tokenizer run: byte-level BPE
    vocabularies never need more than one token per UTF-8 byte."""
    total = 16 + MESSAGE_TOKENS * len(request.messages)
    for message in request.messages:
        for part in message.content:
            if isinstance(part, TextPart):
                text = part.text
                total += len(text) if text.isascii() else len(text.encode())
            elif isinstance(part, ImagePart):
                total += IMAGE_TOKENS
    for tool in request.tools:
        total += len(repr(tool).encode())
    if request.raw_prompt is not None:
        total += len(request.raw_prompt.encode())
    return total


class PriceBook:
    """Prices by model from the database, reloaded every ``ttl`` seconds (one query at a time),
    so a price set with the CLI applies to a running server without a restart."""

    def __init__(self, store: PriceStore, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self._prices: dict[str, PriceRecord] = {}
        self._expires = 0.0
        self._loading: asyncio.Task[None] | None = None

    def current(self, model: str) -> PriceRecord | None:
        """The price as last loaded (callers check :attr:`fresh` first)."""
        return self._prices.get(model.lower())

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self._expires

    async def get(self, model: str) -> PriceRecord | None:
        if not self.fresh:
            if self._loading is None or self._loading.done():
                self._loading = asyncio.get_running_loop().create_task(self._load())
            await asyncio.shield(self._loading)
        return self._prices.get(model.lower())

    async def _load(self) -> None:
        self._prices = {p.model.lower(): p for p in await self.store.list()}
        self._expires = time.monotonic() + self.ttl


@dataclass(slots=True)
class Accounts:
    limiter: Limiter
    ledger: LedgerWriter
    prices: PriceBook
    estimate: Callable[[str], int]  # tokens of a text (the bundled tokenizer)
    default_reserve_tokens: int = 4096  # output reserved when a request sets no max_tokens
    enabled: bool = True  # off: requests are neither limited nor recorded

    async def admit(self, key: KeyRecord, request: ChatRequest, request_id: str) -> Meter:
        if not self.enabled:
            return Meter(self, key, request, request_id, None, closed=True)
        prices = self.prices
        price = prices.current(request.model) if prices.fresh else await prices.get(request.model)
        meter = Meter(self, key, request, request_id, price)
        if not key.metered:
            return meter
        prompt = prompt_bound(request)
        output = (request.max_tokens or self.default_reserve_tokens) * request.n
        meter.tokens = prompt + output
        amount = None
        if key.credit_pusd is not None or key.user_balance_pusd is not None:
            amount = worst_case(price, prompt_tokens=prompt, max_tokens=output)
        limits = (
            key.id,
            key.user_id,
            key.rpm,
            key.tpm,
            meter.tokens,
            amount,
            key.credit_pusd,
            key.spent_pusd,
            key.user_balance_pusd,
            key.user_spent_pusd,
        )
        admitted = self.limiter.admit_now(*limits)
        if admitted is None:  # the limiter's state is elsewhere (Redis): a round trip
            admitted = await self.limiter.admit(*limits)
        meter.rate, meter.reservation = admitted
        return meter


@dataclass(slots=True)
class Meter:
    """One request's accounting; ended exactly once by :meth:`close` or :meth:`close_later`."""

    accounts: Accounts
    key: KeyRecord
    request: ChatRequest
    request_id: str
    price: PriceRecord | None
    started: float = field(default_factory=time.perf_counter)
    tokens: int = 0  # the estimate counted against the key's TPM
    rate: RateStatus | None = None
    reservation: Reservation | None = None
    channel: str | None = None  # set once a backend answers
    first_chunk: float = 0.0  # perf_counter() when a stream's first chunk was ready
    closed: bool = False

    def answered_by(self, channel: str) -> None:
        self.channel = channel
        if self.request.stream:
            self.first_chunk = time.perf_counter()

    def cut_usage(self, generated: list[str]) -> Usage:
        """What a request cut short used, by the tokenizer (marked estimated)."""
        estimate = self.accounts.estimate
        prompt = self.request.raw_prompt or "\n".join(m.text() for m in self.request.messages)
        return Usage(estimate(prompt), estimate("".join(generated)), estimated=True)

    def _row(self, usage: Usage | None, status: int, error: str | None) -> tuple[Record, Money]:
        """The ledger row (the values of ``LedgerRow``, in its order) and the cost."""
        started = self.started
        # Milliseconds, rounded (int() of a float costs less than round()).
        latency = int((time.perf_counter() - started) * 1000 + 0.5)
        ttft = int((self.first_chunk - started) * 1000 + 0.5) if self.first_chunk else None
        if usage is None:
            usage, cost = _NOTHING_USED, 0
        else:
            cost = usage_cost(self.price, usage)
        key, request = self.key, self.request
        row = (
            self.request_id,
            request.model,
            status,
            key.id,
            key.user_id,
            self.channel,
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            usage.reasoning_tokens,
            0,  # search calls
            usage.estimated,
            request.stream,
            cost,
            latency,
            ttft,
            error,
            self.accounts.ledger.now(),
        )
        return row, cost

    def _settle(self, usage: Usage | None, cost: Money) -> None:
        if self.reservation is None and self.rate is None:
            return
        delta = 0
        if self.rate is not None and self.key.tpm is not None:
            delta = (usage.total_tokens if usage is not None else 0) - self.tokens
        reservation = self.reservation
        if reservation is not None and reservation.lease is not None:
            reservation.lease.settle(reservation, cost, delta)  # admitted without a round trip
            return
        # Settling late is safe (the reservation holds the worst case until then), so the
        # response does not wait for it.
        self.accounts.limiter.finish_soon(reservation, cost, self.key.id, delta)

    def close(self, usage: Usage | None, *, status: int = 200, error: str | None = None) -> None:
        """Settle and record the ledger row; raises if the row could not be recorded."""
        if self.closed:
            return
        self.closed = True
        row, cost = self._row(usage, status, error)
        self._settle(usage, cost)
        self.accounts.ledger.append(row)

    def close_later(self, usage: Usage | None, *, status: int, error: str | None) -> None:
        """Settle and record, never raising (the client left, or the request failed): safe to
        call from a cancelled task."""
        if self.closed:
            return
        self.closed = True
        row, cost = self._row(usage, status, error)
        self._settle(usage, cost)
        try:
            self.accounts.ledger.append(row)
        except Exception:
            log.exception("ledger row of request %s not recorded", self.request_id)

    def failed(self, error: LLMRelayError) -> None:
        """Nothing was generated for the client: nothing is charged, the row says why."""
        self.close_later(None, status=error.status, error=error.type)

    def finished(
        self, usage: Usage | None, generated: list[str], error: LLMRelayError | None
    ) -> None:
        """A stream is about to send its last bytes."""
        usage = usage or (self.cut_usage(generated) if generated else None)
        self.close(usage, error=error.type if error is not None else None)

    def abandoned(self, usage: Usage | None, generated: list[str]) -> None:
        """The client left mid-answer: charge what was generated."""
        self.close_later(
            usage or self.cut_usage(generated), status=499, error="client_disconnected"
        )

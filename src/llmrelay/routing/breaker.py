"""A circuit breaker per channel: open after repeated failures, probed back in half-open."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown: float = 5.0,
        max_cooldown: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0
        self.cooldown = cooldown
        self.open_until = 0.0
        self.probing = False

    @property
    def state(self) -> State:
        if self.open_until == 0.0:
            return "closed"
        return "half_open" if self.clock() >= self.open_until else "open"

    def retry_in(self) -> float:
        return max(0.0, self.open_until - self.clock())

    def allow(self) -> bool:
        """Whether a request may go to this channel now; half-open lets one probe through."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.cooldown = self.base_cooldown
        self.open_until = 0.0
        self.probing = False

    def failure(self, retry_after: float | None = None) -> None:
        self.failures += 1
        if self.probing:  # the probe failed: stay out twice as long as last time
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
        if self.probing or self.failures >= self.threshold or retry_after:
            self.open_until = self.clock() + max(self.cooldown, retry_after or 0.0)
        self.probing = False

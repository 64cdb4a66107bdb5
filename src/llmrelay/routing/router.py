"""Resolve a public model name to the backends that serve it, in the order to try them.

Local models come first. Channels are grouped by priority (highest first); inside a tier the
order is weighted random, so traffic splits by weight and a failed channel's share moves to
the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmrelay.errors import ModelNotFound
from llmrelay.providers.base import ModelInfo, Provider
from llmrelay.routing.breaker import CircuitBreaker


@dataclass(slots=True)
class Route:
    name: str  # the channel's name, or "local"
    provider: Provider
    info: ModelInfo
    priority: int
    weight: int
    breaker: CircuitBreaker | None


class Router:
    def __init__(
        self,
        *,
        aliases: dict[str, str] | None = None,
        rng: random.Random | None = None,
        circuit_failures: int = 3,
        circuit_cooldown: float = 5.0,
    ) -> None:
        self.circuit_failures = circuit_failures
        self.circuit_cooldown = circuit_cooldown
        self.aliases = {k.lower(): v for k, v in (aliases or {}).items()}
        self.rng = rng or random.Random()
        self._routes: dict[str, list[Route]] = {}
        self.breakers: dict[str, CircuitBreaker] = {}

    def set_routes(self, routes: list[Route]) -> None:
        table: dict[str, list[Route]] = {}
        for route in routes:
            table.setdefault(route.info.id.lower(), []).append(route)
        self._routes = table

    def breaker(self, channel: str) -> CircuitBreaker:
        """Breakers outlive channel reloads, so an edit does not reset a failing channel."""
        if channel not in self.breakers:
            self.breakers[channel] = CircuitBreaker(
                threshold=self.circuit_failures, cooldown=self.circuit_cooldown
            )
        return self.breakers[channel]

    def models(self) -> list[ModelInfo]:
        return [routes[0].info for routes in self._routes.values()]

    def model(self, name: str) -> ModelInfo:
        """The model ``name`` resolves to (as its first route describes it)."""
        return self.routes(name)[0].info

    def routes(self, name: str) -> list[Route]:
        key = name.lower()
        key = self.aliases.get(key, key).lower()
        candidates = self._routes.get(key)
        if not candidates:
            known = ", ".join(sorted(r[0].info.id for r in self._routes.values()))
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it. "
                f"Available models: {known}.",
                param="model",
            )
        # Efraimidis-Spirakis: sorting by u^(1/w) is a weighted random permutation.
        keyed = [
            (-r.priority, -(self.rng.random() ** (1.0 / r.weight)), i, r)
            for i, r in enumerate(candidates)
        ]
        return [r for *_, r in sorted(keyed)]

"""Resolve a public model name to the provider that serves it."""

from __future__ import annotations

from llmrelay.errors import ModelNotFound
from llmrelay.providers.base import ModelInfo, Provider


class Router:
    def __init__(self, providers: list[Provider], *, aliases: dict[str, str] | None = None) -> None:
        self.providers = providers
        self.aliases = {k.lower(): v for k, v in (aliases or {}).items()}
        self._table: dict[str, tuple[Provider, ModelInfo]] = {}

    def refresh(self) -> None:
        table: dict[str, tuple[Provider, ModelInfo]] = {}
        for provider in self.providers:
            for info in provider.models():
                table.setdefault(info.id.lower(), (provider, info))
        self._table = table

    def models(self) -> list[ModelInfo]:
        return [info for _, info in self._table.values()]

    def resolve(self, name: str) -> tuple[Provider, ModelInfo]:
        key = name.lower()
        key = self.aliases.get(key, key).lower()
        try:
            return self._table[key]
        except KeyError:
            known = ", ".join(sorted(info.id for _, info in self._table.values()))
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it. "
                f"Available models: {known}.",
                param="model",
            ) from None

"""All configuration in one object: defaults < config file (YAML) < LLMRELAY_* env < CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from platformdirs import user_data_dir
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmrelay.engine.model_files import BUNDLED_MODEL_NAME


class SamplingDefaults(BaseModel):
    """What a local model samples with when a request leaves a parameter out."""

    temperature: float = 0.2
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0


class LocalModelConfig(BaseModel):
    name: str = BUNDLED_MODEL_NAME
    path: str | None = Field(None, description="GGUF file; empty means the bundled SmolLM2")
    n_ctx: int = Field(8192, ge=256)
    n_threads: int | None = Field(None, ge=1)
    instances: int = Field(1, ge=1, le=16)
    max_queue: int = Field(256, ge=1)
    default_max_tokens: int | None = Field(1024, ge=1)
    defaults: SamplingDefaults = SamplingDefaults()
    chat_template: str | None = None
    reasoning: bool = False
    separate_reasoning: bool = True
    aliases: list[str] = []
    description: str = "SmolLM2-135M-Instruct (Q4_1), run in-process by llama.cpp"


Flavor = Literal[
    "openai", "deepseek", "vllm", "sglang", "llamacpp", "llama-cpp-python", "ollama", "relay"
]


class CapabilityOverrides(BaseModel):
    """What to change in a channel's capability profile (None: keep the profile's value)."""

    vision: bool | None = None
    video: bool | None = None
    audio: bool | None = None
    tools: bool | None = None
    json_schema: bool | None = None
    logprobs: bool | None = None
    reasoning: bool | None = None
    max_n: int | None = Field(None, ge=1)
    context_length: int | None = Field(None, ge=1)
    inline_images: bool | None = None
    reasoning_models: list[str] | None = None


class ChannelConfig(BaseModel):
    """An upstream: where it is, how to reach it, and which public models it serves."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: Literal["openai", "gemini", "anthropic"] = "openai"
    flavor: Flavor = "relay"
    base_url: str
    keys: list[SecretStr] = []
    models: list[str] = Field(min_length=1)
    map: dict[str, str] = {}
    priority: int = 0
    weight: int = Field(1, ge=1, le=1000)
    connect_timeout: float = Field(5.0, gt=0)
    first_byte_timeout: float = Field(60.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    capabilities: CapabilityOverrides = CapabilityOverrides()
    enabled: bool = True

    def upstream_model(self, public: str) -> str:
        for name, target in self.map.items():
            if name.lower() == public.lower():
                return target
        return public


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMRELAY_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path(user_data_dir("llmrelay", appauthor=False))
    database_url: str | None = None
    redis_url: str | None = Field(
        None, description="Redis for rate limits and reservations shared by several processes"
    )
    redis_prefix: str = Field(
        "llmrelay", description="namespace of llmrelay's Redis keys (one per deployment)"
    )
    accounting: bool = Field(
        True, description="meter requests: limits, reservations and the ledger (off: benchmarks)"
    )
    reserve_max_tokens: int = Field(
        4096, ge=1, description="output tokens reserved for a request that sets no max_tokens"
    )
    ledger_journal_dir: Path | None = Field(
        None,
        description="where ledger rows are journaled before they reach the database (a local "
        "disk; default: <data_dir>/journal; processes on one host may share it)",
    )
    ledger_retention_days: int = Field(
        90, ge=1, description="per-request ledger rows kept; older ones live on as daily sums"
    )
    default_model: str = BUNDLED_MODEL_NAME
    relaxed_json: bool = False
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    local_models: list[LocalModelConfig] = [LocalModelConfig()]
    channels: list[ChannelConfig] = []
    channel_refresh_seconds: float = Field(2.0, gt=0, le=60)
    media_fetch_allow: list[str] = Field(
        [], description="networks (CIDR) image fetches may reach although private/loopback"
    )
    media_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    media_timeout_seconds: float = Field(10.0, gt=0)
    circuit_failures: int = Field(3, ge=1, description="failures in a row that open a circuit")
    circuit_cooldown_seconds: float = Field(5.0, gt=0, description="first open period")
    admin_key: SecretStr | None = Field(
        None, description="Use this secret for the first admin key instead of a random one"
    )
    key_cache_seconds: float = Field(0.5, ge=0, le=1)
    log_level: str = "info"
    access_log: bool = Field(False, description="one JSON access line per request (info level)")
    metrics_require_admin: bool = Field(False, description="/metrics needs an admin key")
    http_parser: Literal["httptools", "h11"] = "httptools"
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str | None) -> str | None:
        return async_database_url(url) if url else url

    @property
    def resolved_journal_dir(self) -> Path:
        return self.ledger_journal_dir or self.data_dir / "journal"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'llmrelay.db'}"


_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def async_database_url(url: str) -> str:
    """``postgresql://…`` and ``sqlite:///…`` as users write them, with the async driver."""
    scheme, sep, rest = url.partition("://")
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}{sep}{rest}" if sep else url


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Merge the config file, the environment and explicit overrides (highest wins)."""
    config_file = config_file or os.environ.get("LLMRELAY_CONFIG")
    file_values: dict[str, Any] = {}
    if config_file:
        with open(config_file, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: the config file must be a YAML mapping")
        file_values = loaded
    from_env = Settings()
    env_values = from_env.model_dump(include=from_env.model_fields_set)
    explicit = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**{**file_values, **env_values, **explicit})

"""One typed Settings object, validated once at start-up and passed in (never a global).

Every environment variable Sentinel reads is a field here; nothing else in the package reads the
environment. A `.env` file in the working directory is read too. Field names are Pythonic; the
environment names are the aliases (kept from the original system where it had one).
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentinel.domain.plans import parse_plan_spec
from sentinel.domain.policies import QuotaFailureMode, SessionFailover
from sentinel.domain.tiers import Tier, TierModelEntry

__all__ = ["ConfigError", "GovernanceKind", "ProviderEntry", "ProvidersFile", "Settings", "load_settings",
           "load_providers_file"]


class GovernanceKind(StrEnum):
    builtin = "builtin"
    zion = "zion"


class Settings(BaseSettings):
    """Sentinel's whole configuration. Build with `Settings()` (environment) or keyword overrides."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", validation_alias=AliasChoices("SENTINEL_HOST", "host"))
    port: int = Field(8080, ge=1, le=65535, validation_alias=AliasChoices("SENTINEL_PORT", "port"))
    log_level: str = Field("info", validation_alias=AliasChoices("SENTINEL_LOG_LEVEL", "log_level"))
    debug: bool = Field(False, validation_alias=AliasChoices("SENTINEL_DEBUG", "debug"))
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, validation_alias=AliasChoices("SENTINEL_MAX_BODY_BYTES", "max_body_bytes")
    )
    max_in_flight: int = Field(
        1024, ge=1, validation_alias=AliasChoices("SENTINEL_MAX_IN_FLIGHT", "max_in_flight")
    )
    shutdown_timeout_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("SENTINEL_SHUTDOWN_TIMEOUT_SECONDS", "shutdown_timeout_seconds"),
    )
    access_log: bool = Field(True, validation_alias=AliasChoices("SENTINEL_ACCESS_LOG", "access_log"))

    # --- storage ------------------------------------------------------------------------------
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    redis_timeout_seconds: float = Field(
        0.25, gt=0, validation_alias=AliasChoices("REDIS_TIMEOUT_SECONDS", "redis_timeout_seconds")
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///./data/sentinel.db",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )

    # --- upstream providers ---------------------------------------------------------------------
    openai_api_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_URL", "openai_api_url"))
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    anthropic_api_url: str | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_URL", "anthropic_api_url")
    )
    anthropic_api_key: str | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key")
    )
    upstream_timeout_seconds: float = Field(
        300.0,
        gt=0,
        validation_alias=AliasChoices("SENTINEL_UPSTREAM_TIMEOUT_SECONDS", "upstream_timeout_seconds"),
    )
    upstream_connect_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices(
            "SENTINEL_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "upstream_connect_timeout_seconds"
        ),
    )
    providers_file: Path | None = Field(
        None, validation_alias=AliasChoices("SENTINEL_CONFIG", "providers_file")
    )

    # --- auth and governance --------------------------------------------------------------------
    governance: GovernanceKind = Field(
        GovernanceKind.builtin, validation_alias=AliasChoices("GOVERNANCE", "governance")
    )
    zion_api_url: str | None = Field(None, validation_alias=AliasChoices("ZION_API_URL", "zion_api_url"))
    zion_api_key: str | None = Field(None, validation_alias=AliasChoices("ZION_API_KEY", "zion_api_key"))
    jwt_jwks_url: str | None = Field(None, validation_alias=AliasChoices("JWT_JWKS_URL", "jwt_jwks_url"))
    jwt_secret: str | None = Field(None, validation_alias=AliasChoices("JWT_SECRET", "jwt_secret"))
    jwt_audience: str | None = Field(None, validation_alias=AliasChoices("JWT_AUDIENCE", "jwt_audience"))
    jwt_issuer: str | None = Field(None, validation_alias=AliasChoices("JWT_ISSUER", "jwt_issuer"))
    jwt_cache_ttl_seconds: int = Field(
        300, ge=1, validation_alias=AliasChoices("JWT_CACHE_TTL_SECONDS", "jwt_cache_ttl_seconds")
    )
    cache_ttl_seconds: int = Field(
        300, ge=1, validation_alias=AliasChoices("CACHE_TTL_SECONDS", "cache_ttl_seconds")
    )
    governance_grace_seconds: int = Field(
        900, ge=0, validation_alias=AliasChoices("GOVERNANCE_GRACE_SECONDS", "governance_grace_seconds")
    )
    docs_api_key: str | None = Field(None, validation_alias=AliasChoices("DOCS_API_KEY", "docs_api_key"))

    # --- quotas and usage -----------------------------------------------------------------------
    default_plan: str = Field(
        "requests=100/60s", validation_alias=AliasChoices("DEFAULT_PLAN", "default_plan")
    )
    # GOVERNANCE=zion: enforce DEFAULT_PLAN's limits (the original's per-minute throttle) on top of each
    # user's Zion limits; a request must fit both. false: Zion's limits alone.
    zion_apply_default_plan: bool = Field(
        True, validation_alias=AliasChoices("ZION_APPLY_DEFAULT_PLAN", "zion_apply_default_plan")
    )
    quota_failure_mode: QuotaFailureMode = Field(
        QuotaFailureMode.closed, validation_alias=AliasChoices("QUOTA_FAILURE_MODE", "quota_failure_mode")
    )
    default_max_output_tokens: int = Field(
        4096, ge=1, validation_alias=AliasChoices("DEFAULT_MAX_OUTPUT_TOKENS", "default_max_output_tokens")
    )
    usage_lease_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("USAGE_LEASE_SECONDS", "usage_lease_seconds")
    )
    usage_flush_interval_seconds: float = Field(
        0.5, gt=0, validation_alias=AliasChoices("USAGE_FLUSH_INTERVAL_SECONDS", "usage_flush_interval_seconds")
    )

    # --- native API, tiers, sessions --------------------------------------------------------------
    session_ttl_seconds: int = Field(
        86400, ge=1, validation_alias=AliasChoices("SESSION_TTL_SECONDS", "session_ttl_seconds")
    )
    tier_config_ttl_seconds: int = Field(
        1800, ge=1, validation_alias=AliasChoices("TIER_CONFIG_TTL_SECONDS", "tier_config_ttl_seconds")
    )
    session_failover: SessionFailover = Field(
        SessionFailover.keep, validation_alias=AliasChoices("SESSION_FAILOVER", "session_failover")
    )
    session_auto_key: bool = Field(
        False, validation_alias=AliasChoices("SESSION_AUTO_KEY", "session_auto_key")
    )

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("default_plan")
    @classmethod
    def _default_plan(cls, value: str) -> str:
        parse_plan_spec(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # The async engine needs an async driver; accept the common spelling.
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value

    @field_validator("openai_api_url", "anthropic_api_url", "zion_api_url", "jwt_jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _governance_complete(self) -> Settings:
        if self.governance is GovernanceKind.zion and not (self.zion_api_url and self.zion_api_key):
            raise ValueError("GOVERNANCE=zion needs ZION_API_URL and ZION_API_KEY")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def use_embedded_mock(self) -> bool:
        """No upstream configured at all: serve the built-in mock in-process (the demo default)."""
        return not (
            self.openai_api_key or self.openai_api_url or self.anthropic_api_key or self.anthropic_api_url
        )

    @property
    def effective_openai_url(self) -> str:
        return self.openai_api_url or "https://api.openai.com/v1"

    @property
    def effective_anthropic_url(self) -> str:
        return self.anthropic_api_url or "https://api.anthropic.com"


class ConfigError(Exception):
    """Raised with one human line naming the variable and what is wrong."""


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "configuration"
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float) and loc != "configuration" else ""
            parts.append(f"{loc.upper()}: {msg}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from None


# --- the providers file (SENTINEL_CONFIG) ---------------------------------------------------------
class ProviderEntry(BaseModel):
    """One named upstream: `kind` is its wire format (openai-compatible or anthropic)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")
    kind: Literal["openai", "anthropic"]
    base_url: str
    api_key: str | None = None
    cheap_model: str | None = None
    mid_model: str | None = None


class ProvidersFile(BaseModel):
    """The YAML file named by SENTINEL_CONFIG: extra providers and, optionally, the tier table."""

    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderEntry] = Field(default_factory=list)
    tiers: dict[Tier, list[TierModelEntry]] | None = None


_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def load_providers_file(path: Path) -> ProvidersFile:
    """Parse the providers file; `${VAR}` in values is replaced from the environment (keys stay out of it)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG: cannot read {path}: {exc.strerror}") from None
    missing = [name for name in _ENV_REF.findall(text) if name not in os.environ]
    if missing:
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG: {', '.join(missing)} not set in the environment")
    text = _ENV_REF.sub(lambda m: os.environ[m.group(1)], text)
    try:
        return ProvidersFile.model_validate(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): {detail}") from None

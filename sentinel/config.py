"""One typed Settings object, validated once at start-up and passed in (never a global).

Every environment variable Sentinel reads is a field here, but for three read from the process
environment where they are used (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: tracing's sampler;
`PROMETHEUS_MULTIPROC_DIR`: the workers' shared metrics) and the `${VAR}`s a providers file names
(`tests/test_readme.py` finds every read). A `.env` file in the working directory is read too. Field names are Pythonic; the
environment names are the aliases (kept from the original system where it had one), and only they:
a field's own name is a keyword for code (`Settings(debug=True)`), never read from the environment
or `.env` (`DEBUG=1`, `FORWARDED_ALLOW_IPS=*` are other programs' variables).
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentinel.domain.catalogue import MODEL_NAME_PATTERN, CatalogueModel, UpstreamModelName
from sentinel.domain.plans import MAX_PLAN_LIMITS, parse_plan_spec
from sentinel.domain.policies import QuotaFailureMode, SessionFailover
from sentinel.domain.tiers import Tier, TierModelEntry
from sentinel.native.end_user import EndUserField
from sentinel.store import REDIS_URL_SCHEMES

__all__ = ["ConfigError", "GovernanceKind", "ProviderEntry", "ProvidersFile", "Settings", "load_settings",
           "load_providers_file"]


class GovernanceKind(StrEnum):
    builtin = "builtin"
    zion = "zion"


def env(name: str, default: Any, **constraints: Any) -> Any:
    """A setting read from the environment variable `name` (code may give it by its field name)."""
    return Field(default, validation_alias=name, **constraints)


# The most worker processes `serve` starts (a mistyped 100000 would fork until the host gave out).
MAX_WORKERS = 256
MAX_SECONDS = 1_000_000_000  # ~31 years: the longest duration a setting takes (`1e300` overflowed timedelta)
MIN_JWT_SECRET_BYTES = 32
MIN_END_USER_SECRET_BYTES = 32
# The keys operators choose and hand out (SENTINEL_ADMIN_KEY, DOCS_API_KEY, METRICS_TOKEN): at least
# this long — guessable otherwise, and one shorter than the log redactor's minimum (8) is never
# blanked from the logs.
MIN_OPERATOR_KEY_CHARS = 16
MAX_POOL_CONNECTIONS = 1000  # DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW: far past any PostgreSQL's max_connections
# The HMAC keys among the settings: their least length in bytes, and why (`Settings._hmac_key`).
_HMAC_KEYS = {"jwt_secret": (MIN_JWT_SECRET_BYTES, " (HS256 wants a 256-bit key)"),
              "end_user_secret": (MIN_END_USER_SECRET_BYTES, "")}
# Settings holding a URL: never quoted back in an error (credentials may sit in any part of one).
URL_FIELDS = frozenset(
    {"redis_url", "database_url", "openai_api_url", "anthropic_api_url", "zion_api_url", "jwt_jwks_url", "otel_endpoint"}
)

# Settings naming a file, which may hold any bytes the environment had (a SQLite DATABASE_URL too).
_FILE_SETTINGS = frozenset({"providers_file"})
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, as Python decodes the environment

# Settings whose values are never shown (not in errors, not in logs, not in repr).
SECRET_FIELDS = frozenset(
    {"openai_api_key", "anthropic_api_key", "zion_api_key", "jwt_secret", "docs_api_key", "admin_key",
     "end_user_secret", "metrics_token"}
)


def reveal(value: SecretStr | str | None) -> str | None:
    """The plain value of a secret setting (where it is injected upstream, and nowhere else)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


def _check_ports(url: str) -> None:
    """ValueError when a host of `url` (`scheme://[userinfo@]host[:port][,host[:port]...]/...`) names
    a port outside 1-65535: the driver's OverflowError or ValueError was a traceback. Never echoes
    the URL (it may carry a password)."""
    location = url.partition("://")[2].rpartition("@")[2].partition("/")[0].partition("?")[0]
    for host in location.split(","):
        port = host.rpartition(":")[2] if ":" in host and not host.endswith("]") else ""
        if port and not (port.isascii() and port.isdigit()):
            # The driver's `int()` was a traceback; the text is not shown (it may be a password: `u:pw/db`).
            raise ValueError("names a port that is not a number")
        if port and not 0 < int(port) <= 65535:
            raise ValueError(f"port {int(port)} is not a TCP port (1-65535)")


# What a PostgreSQL DATABASE_URL's query may hold: asyncpg's `connect()` arguments that take text
# (each is passed to it as such), and the values it takes where it takes only some.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_POSTGRES_QUERY: dict[str, tuple[str, ...] | None] = {
    "ssl": _SSL_MODES, "sslmode": _SSL_MODES,
    "target_session_attrs": ("any", "primary", "standby", "prefer-standby", "read-write", "read-only"),
    "host": None, "user": None, "password": None, "database": None, "passfile": None,
    "prepared_statement_cache_size": None,
}


def _postgres_query(url: str) -> str:
    """`url` (postgresql+asyncpg://) with its query checked, `sslmode` (libpq's name) spelt `ssl` (asyncpg's).
    ValueError naming what is wrong, never a value (a query may hold the password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError("is not a valid URL: expected postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB (several "
                         "hosts: postgresql+asyncpg://USER:PASSWORD@/DB?host=HOST1:PORT&host=HOST2:PORT)") from None
    for name, given in parsed.query.items():
        if name not in _POSTGRES_QUERY:
            shown = f" {name!r}" if re.fullmatch(r"[A-Za-z_]{1,40}", name) else ""
            raise ValueError(f"query parameter{shown} is not one the PostgreSQL driver (asyncpg) takes: "
                             f"{', '.join(_POSTGRES_QUERY)}")
        if name == "host":  # repeated: several hosts, each HOST:PORT (as SQLAlchemy reads them)
            hosts = [given] if isinstance(given, str) else list(given)
            _check_ports("postgresql://" + ",".join(hosts))
            if len(hosts) > 1 and not all(host.rpartition(":")[2].isdigit() for host in hosts):
                raise ValueError("several hosts each need a port: ?host=HOST1:PORT&host=HOST2:PORT")
            continue
        if not isinstance(given, str):
            raise ValueError(f"query parameter {name!r} is given more than once")
        allowed = _POSTGRES_QUERY[name]
        if allowed is not None and given not in allowed:
            raise ValueError(f"query parameter {name!r} must be one of {', '.join(allowed)}")
        if name == "prepared_statement_cache_size" and not (given.isascii() and given.isdigit()):
            raise ValueError("query parameter 'prepared_statement_cache_size' must be a whole number")
    if "sslmode" in parsed.query:
        if "ssl" in parsed.query:
            raise ValueError("query parameters 'ssl' and 'sslmode' are the same setting: give one")
        mode = parsed.query["sslmode"]
        assert isinstance(mode, str)
        url = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode}).render_as_string(
            hide_password=False)
    return url


# What a standalone REDIS_URL's query may hold: the client's (redis-py) connection options that it
# reads from text and that leave replies as Sentinel reads them (`decode_responses`, `protocol` and
# `encoding` would not); the credentials (redis-py documents `unix:///path.sock?db=0&password=...`:
# a socket file has no host to put them before); the TLS ones on rediss:// only, `socket_keepalive`
# not on a socket file (unix://). Any other name reached the connection as a keyword it does not
# take: a traceback at start.
_REDIS_QUERY = (
    "db", "username", "password", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size",
    "health_check_interval", "max_connections", "retry_on_timeout", "client_name", "lib_name", "lib_version",
)
_REDIS_TLS_QUERY = (
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password",
    "ssl_check_hostname", "ssl_ciphers", "ssl_min_version", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
)
_REDIS_CERT_REQS = ("none", "optional", "required")


def _redis_query(url: str) -> None:
    """ValueError naming the first query parameter of `url` (redis://, rediss://, unix://) the client
    would not take, never a value (a query may hold the password)."""
    from urllib.parse import parse_qs, urlsplit

    scheme = url.partition("://")[0].lower()
    allowed = _REDIS_QUERY + (_REDIS_TLS_QUERY if scheme == "rediss" else ())
    if scheme == "unix":
        allowed = tuple(name for name in allowed if name != "socket_keepalive")
    for name, given in parse_qs(urlsplit(url).query, keep_blank_values=True).items():
        if name not in allowed:
            shown = f" {name!r}" if re.fullmatch(r"[A-Za-z_]{1,40}", name) else ""
            tls = " (TLS options need rediss://)" if name in _REDIS_TLS_QUERY else ""
            raise ValueError(f"query parameter{shown} is not one the Redis client takes{tls}: {', '.join(allowed)}")
        if len(given) > 1:
            raise ValueError(f"query parameter {name!r} is given more than once")
        if name == "ssl_cert_reqs" and given[0] not in _REDIS_CERT_REQS:
            raise ValueError(f"query parameter 'ssl_cert_reqs' must be one of {', '.join(_REDIS_CERT_REQS)}")


class Settings(BaseSettings):
    """Sentinel's whole configuration. Build with `Settings()` (environment) or keyword overrides
    (by field name or environment name)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # No `populate_by_name`: pydantic-settings then read every field's own name from the
        # environment and `.env` too, so a container's `DEBUG=1` opened /debug/* and uvicorn's
        # `FORWARDED_ALLOW_IPS=*` made every client's X-Forwarded-For believed. Field names given
        # as keywords are turned into the environment names in `__init__`.
        case_sensitive=False,
        allow_inf_nan=False,  # `inf` seconds turned the slow-client limits off and broke aiohttp's timeouts
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**{_ALIASES.get(key, key): value for key, value in values.items()})

    # --- server -------------------------------------------------------------------------------
    host: str = env("SENTINEL_HOST", "0.0.0.0")
    port: int = env("SENTINEL_PORT", 8080, ge=1, le=65535)
    log_level: str = env("SENTINEL_LOG_LEVEL", "info")
    debug: bool = env("SENTINEL_DEBUG", False)
    max_body_bytes: int = env("SENTINEL_MAX_BODY_BYTES", 10 * 1024 * 1024, ge=1024)
    # Bytes of request bodies all of this process's requests may hold at once (503 beyond).
    max_body_bytes_in_flight: int = env("SENTINEL_MAX_BODY_BYTES_IN_FLIGHT", 1024 * 1024 * 1024, ge=1024)
    # One caller's share of those (429 beyond); unset: an eighth of them, at least SENTINEL_MAX_BODY_BYTES.
    max_body_bytes_in_flight_per_user: int | None = env("SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER", None, ge=1024)
    max_in_flight: int = env("SENTINEL_MAX_IN_FLIGHT", 1024, ge=1)
    # One caller's share of those slots (per process): one key cannot hold a process's every slot.
    max_in_flight_per_user: int = env("SENTINEL_MAX_IN_FLIGHT_PER_USER", 128, ge=1)
    shutdown_timeout_seconds: float = env("SENTINEL_SHUTDOWN_TIMEOUT_SECONDS", 30.0, gt=0)
    access_log: bool = env("SENTINEL_ACCESS_LOG", True)
    # Processes serving the port (`auto`: one per CPU); more than one needs REDIS_URL.
    workers: int = env("SENTINEL_WORKERS", 1, ge=1, le=MAX_WORKERS)
    # Connection limits: a client that trickles its headers or body is cut off.
    header_timeout_seconds: float = env("SENTINEL_HEADER_TIMEOUT_SECONDS", 10.0, gt=0)
    body_timeout_seconds: float = env("SENTINEL_BODY_TIMEOUT_SECONDS", 30.0, gt=0)
    keepalive_timeout_seconds: float = env("SENTINEL_KEEPALIVE_TIMEOUT_SECONDS", 5.0, gt=0)
    # A client that stops reading its answer (the socket's send buffer stays full) is cut off.
    send_timeout_seconds: float = env("SENTINEL_SEND_TIMEOUT_SECONDS", 60.0, gt=0)
    max_header_bytes: int = env("SENTINEL_MAX_HEADER_BYTES", 16 * 1024, ge=1024)
    max_headers: int = env("SENTINEL_MAX_HEADERS", 100, ge=8)
    auth_failures_per_minute: int = env("SENTINEL_AUTH_FAILURES_PER_MINUTE", 30, ge=1)
    # Proxies (comma list of addresses or networks) whose X-Forwarded-For/-Proto are believed: the
    # client's address (throttles, logs) and scheme (Secure cookies) then come from them. Unset: the
    # socket's. `*` is refused (see `_forwarded_allow_ips`).
    forwarded_allow_ips: str | None = env("SENTINEL_FORWARDED_ALLOW_IPS", None)

    # --- storage ------------------------------------------------------------------------------
    redis_url: str | None = env("REDIS_URL", None)
    redis_timeout_seconds: float = env("REDIS_TIMEOUT_SECONDS", 0.25, gt=0)
    database_url: str = env("DATABASE_URL", "sqlite+aiosqlite:///./data/sentinel.db")
    # The longest wait for the database: a connect, a pooled connection, a statement's answer (then 503).
    database_timeout_seconds: float = env("DATABASE_TIMEOUT_SECONDS", 5.0, gt=0)
    # The longest statement of the operators' usage reports on PostgreSQL (exports, totals, top lists
    # read the whole ledger: longer than a request may wait, but bounded; then 503).
    database_report_timeout_seconds: float = env("DATABASE_REPORT_TIMEOUT_SECONDS", 120.0, gt=0)
    # Each process's pool of PostgreSQL connections for requests: this many kept, `overflow` more
    # opened under load (and closed once returned). Not used on SQLite (its own pool: 5, 10 more).
    database_pool_size: int = env("DATABASE_POOL_SIZE", 10, ge=1, le=MAX_POOL_CONNECTIONS)
    database_max_overflow: int = env("DATABASE_MAX_OVERFLOW", 10, ge=0, le=MAX_POOL_CONNECTIONS)

    # --- upstream providers ---------------------------------------------------------------------
    openai_api_url: str | None = env("OPENAI_API_URL", None)
    openai_api_key: SecretStr | None = env("OPENAI_API_KEY", None)
    anthropic_api_url: str | None = env("ANTHROPIC_API_URL", None)
    anthropic_api_key: SecretStr | None = env("ANTHROPIC_API_KEY", None)
    upstream_timeout_seconds: float = env("SENTINEL_UPSTREAM_TIMEOUT_SECONDS", 300.0, gt=0)
    upstream_connect_timeout_seconds: float = env("SENTINEL_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10.0, gt=0)
    # The longest an answer's body is read, streamed or not (the read timeout bounds only the gap
    # between bytes): past it a stream ends with an error event, recorded as a cut stream; a body
    # read before anything was answered is 504 `answer_time_limit`.
    stream_max_seconds: float = env("SENTINEL_STREAM_MAX_SECONDS", 900.0, gt=0)
    # The longest an Anthropic stream's opening (`message_start`, `ping`s) and headers are held back,
    # waiting for its first block (an overload before it is retried elsewhere): then relayed as it comes.
    stream_hold_seconds: float = env("SENTINEL_STREAM_HOLD_SECONDS", 5.0, gt=0)
    # Idle upstream connections are dropped sooner than providers drop them (so a reused one is alive).
    upstream_keepalive_seconds: float = env("SENTINEL_UPSTREAM_KEEPALIVE_SECONDS", 15.0, gt=0)
    providers_file: Path | None = env("SENTINEL_CONFIG", None)
    # Extra `/v1/*` paths forwarded (authenticated, metered, recorded): e.g. `/v1/moderations,/v1/images/*`.
    passthrough: str = env("SENTINEL_PASSTHROUGH", "")
    # Browser origins allowed to call `/v1/*` and `/native/*` (CORS): `https://app.example.com,...` or `*`.
    cors_origins: str = env("SENTINEL_CORS_ORIGINS", "")

    # --- auth and governance --------------------------------------------------------------------
    governance: GovernanceKind = env("GOVERNANCE", GovernanceKind.builtin)
    zion_api_url: str | None = env("ZION_API_URL", None)
    zion_api_key: SecretStr | None = env("ZION_API_KEY", None)
    # A usage batch's call to Zion (up to 500 increments, applied one by one) may take longer than the
    # 3 s an identity or limits lookup gets on the request path; a batch whose call timed out is not
    # sent again before this much more has passed (Zion may still be applying it). At most
    # MAX_SINK_WAIT (the deliverer's longest wait).
    zion_usage_timeout_seconds: float = env("ZION_USAGE_TIMEOUT_SECONDS", 30.0, gt=0, le=300)
    jwt_jwks_url: str | None = env("JWT_JWKS_URL", None)
    jwt_secret: SecretStr | None = env("JWT_SECRET", None)
    jwt_audience: str | None = env("JWT_AUDIENCE", None)
    jwt_issuer: str | None = env("JWT_ISSUER", None)
    jwt_cache_ttl_seconds: int = env("JWT_CACHE_TTL_SECONDS", 300, ge=1)
    # The JWKS is refreshed once this old; while refetches fail it is used up to `max_stale` old, then 503.
    jwt_jwks_max_age_seconds: int = env("JWT_JWKS_MAX_AGE_SECONDS", 3600, ge=1)
    jwt_jwks_max_stale_seconds: int = env("JWT_JWKS_MAX_STALE_SECONDS", 86400, ge=1)
    cache_ttl_seconds: int = env("CACHE_TTL_SECONDS", 300, ge=1)
    governance_grace_seconds: int = env("GOVERNANCE_GRACE_SECONDS", 900, ge=0)
    docs_api_key: SecretStr | None = env("DOCS_API_KEY", None)
    # The operator console and admin API (`/admin*`): without it every `/admin*` path is 404.
    admin_key: SecretStr | None = env("SENTINEL_ADMIN_KEY", None)
    # The key of the pseudonym each provider is told a caller by (`sentinel.domain.end_user`): the same
    # on every replica, and kept (a new one gives every user a new pseudonym). Unset: keyless SHA-256.
    end_user_secret: SecretStr | None = env("SENTINEL_END_USER_SECRET", None)

    # --- observability --------------------------------------------------------------------------
    # OTLP/HTTP collector base URL (traces go to <url>/v1/traces); unset: no tracing at all.
    otel_endpoint: str | None = env("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    otel_service_name: str = env("OTEL_SERVICE_NAME", "sentinel")
    # The bearer token `/metrics` asks for (Prometheus `authorization: credentials:`); unset: public.
    metrics_token: SecretStr | None = env("METRICS_TOKEN", None)

    # --- quotas and usage -----------------------------------------------------------------------
    default_plan: str = env("DEFAULT_PLAN", "requests=100/60s")
    # GOVERNANCE=zion: enforce DEFAULT_PLAN's limits (the original's per-minute throttle) on top of each
    # user's Zion limits; a request must fit both. false: Zion's limits alone.
    zion_apply_default_plan: bool = env("ZION_APPLY_DEFAULT_PLAN", True)
    quota_failure_mode: QuotaFailureMode = env("QUOTA_FAILURE_MODE", QuotaFailureMode.closed)
    default_max_output_tokens: int = env("DEFAULT_MAX_OUTPUT_TOKENS", 4096, ge=1)
    # Input reserved for each stored item, reusable prompt or audio answer a request names by id, and
    # each MCP server it names: the provider holds or fetches its text, Sentinel cannot read it
    # (`sentinel.quota.estimate.REFERENCE_TOKENS`).
    reference_input_tokens: int = env("SENTINEL_REFERENCE_INPUT_TOKENS", 4096, ge=0, le=1_000_000_000)
    usage_lease_seconds: float = env("USAGE_LEASE_SECONDS", 30.0, gt=0)
    usage_flush_interval_seconds: float = env("USAGE_FLUSH_INTERVAL_SECONDS", 0.5, gt=0)
    # Replicas that must confirm a usage record in the Redis stream (WAIT) before it counts as stored.
    usage_stream_replicas: int = env("USAGE_STREAM_REPLICAS", 0, ge=0)
    usage_stream_replica_timeout_ms: int = env("USAGE_STREAM_REPLICA_TIMEOUT_MS", 100, ge=1)
    # Usage records this process may hold in memory when no durable outbox takes them (0.5-1 KB each);
    # at the limit new metered requests get 503 `usage_unrecordable` until an outbox stores them.
    max_unstored_records: int = env("SENTINEL_MAX_UNSTORED_RECORDS", 100_000, ge=1)

    # --- native API, tiers, sessions --------------------------------------------------------------
    session_ttl_seconds: int = env("SESSION_TTL_SECONDS", 86400, ge=1)
    tier_config_ttl_seconds: int = env("TIER_CONFIG_TTL_SECONDS", 1800, ge=1)
    session_failover: SessionFailover = env("SESSION_FAILOVER", SessionFailover.keep)
    session_auto_key: bool = env("SESSION_AUTO_KEY", False)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # Empty is unset (`SENTINEL_HOST=` in a compose file, `--host ""`): it listened on every
        # interface while the start-up lines printed `http://:8080` and a curl line that failed.
        return value.strip() or "0.0.0.0"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return os.cpu_count() or 1
        return value

    @field_validator("default_plan")
    @classmethod
    def _default_plan(cls, value: str) -> str:
        limits = parse_plan_spec(value).limits
        if not limits:
            # Every user without a plan of their own would be unlimited, and nothing would say so.
            raise ValueError("names no limit: every user without a plan would be unlimited; give "
                             "limits like requests=100/60s (or leave it unset for that default)")
        if len(limits) > MAX_PLAN_LIMITS:  # as every plan an operator sets (each limit: a counter per request)
            raise ValueError(f"a plan may have at most {MAX_PLAN_LIMITS} limits, got {len(limits)}")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, value: str | None) -> str | None:
        entries = [entry.strip() for entry in (value or "").split(",") if entry.strip()]
        if not entries:
            return None
        if "*" in entries:
            # uvicorn would believe every hop and take the leftmost X-Forwarded-For entry, which the
            # client writes: every per-client throttle bypassed, any address in the audit log.
            raise ValueError("'*' would believe any client's X-Forwarded-For (throttles bypassed, audit "
                             "addresses forged): list the proxies' addresses or networks, e.g. "
                             "10.0.0.5,10.1.0.0/16")
        for entry in entries:
            try:  # as uvicorn reads them: a network when there is a `/`, else one address
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                # uvicorn would compare it as text with the peer's address: never trusted, no error.
                raise ValueError(f"bad entry {entry!r}: expected an IP address (10.0.0.5) or a network "
                                 "(10.1.0.0/16, no host bits set)") from None
        return ",".join(entries)

    @field_validator("providers_file", mode="before")
    @classmethod
    def _providers_file(cls, value: Any) -> Any:
        # Empty is unset, as for every other setting (`SENTINEL_CONFIG=` in a compose file or `.env`):
        # it was read as the path `.`, and every start and command stopped on "cannot read .".
        return None if value == "" else value

    @field_validator("passthrough")
    @classmethod
    def _passthrough(cls, value: str) -> str:
        for pattern in filter(None, (p.strip() for p in value.split(","))):
            if not pattern.startswith("/v1/") or "//" in pattern or ".." in pattern or "*" in pattern[:-1].replace("/*/", ""):
                raise ValueError(f"bad pattern {pattern!r}: expected paths like /v1/moderations or /v1/images/*")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, value: str) -> str:
        origins = [o.strip() for o in value.split(",") if o.strip()]
        if "*" in origins and len(origins) > 1:
            raise ValueError("'*' allows every origin: list origins or give '*' alone")
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"bad origin {origin!r}: expected scheme://host[:port] (no path, no trailing slash)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(REDIS_URL_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_URL_SCHEMES)}")
        _check_ports(value)
        if not value.startswith(("redis+cluster://", "rediss+cluster://")):
            from redis.asyncio.connection import parse_url

            try:  # a query value the client cannot read (`?socket_timeout=abc`) was a traceback out of every command
                parse_url(value)
            except ValueError as exc:  # its message names the parameter, never a value
                raise ValueError(str(exc).rstrip(".")) from None
            _redis_query(value)  # a name the client does not take (`?sockettimeout=1`) was a traceback at start
        else:  # was refused only when the store was built: a failed start, not a configuration error
            from sentinel.store.cluster import parse_cluster_url

            parse_cluster_url(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # The async engine needs an async driver; accept the common spelling.
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        if value.startswith("postgresql+asyncpg://"):
            # Checked here, for `postgresql://` too (it skipped the port check): a port past 65535, one
            # that is not a number, or a query parameter asyncpg does not take (`?sslmode=require`, as
            # libpq spells it) was a traceback out of every command, and `serve` failed at start.
            _check_ports(value)
            value = _postgres_query(value)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _text_is_utf8(cls, value: Any, info: ValidationInfo) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if info.field_name in _FILE_SETTINGS or not isinstance(text, str):
            return value  # a file's name may be any bytes (the OS takes them back as they came)
        if (info.field_name == "database_url" and text.startswith("sqlite")) or not _NOT_UTF8.search(text):
            return value
        # Bytes the environment held that are not UTF-8 (Python keeps them as lone surrogates):
        # accepted, they were a traceback later — SENTINEL_ADMIN_KEY's at start-up, another's
        # wherever it was first encoded.
        raise ValueError("is not valid UTF-8 text")

    @field_validator("*")
    @classmethod
    def _seconds_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if (info.field_name or "").endswith("_seconds") and isinstance(value, int | float) and value > MAX_SECONDS:
            raise ValueError(f"must be at most {MAX_SECONDS} seconds")
        return value

    @field_validator("jwt_secret", "end_user_secret")
    @classmethod
    def _hmac_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """An HMAC key: empty is unset, short is refused — an offline guess of a short key, checked
        against one stolen token (JWT_SECRET: then tokens for every user are minted) or one known
        user's pseudonym (SENTINEL_END_USER_SECRET: then every user's pseudonym is computed)."""
        if value is None or not value.get_secret_value():
            return None
        least, why = _HMAC_KEYS[info.field_name or ""]
        if len(value.get_secret_value().encode()) < least:
            raise ValueError(f"must be at least {least} bytes{why}")
        return value

    @field_validator("admin_key", "docs_api_key", "metrics_token", "openai_api_key", "anthropic_api_key",
                     "zion_api_key")
    @classmethod
    def _no_surrounding_space(cls, value: SecretStr | None) -> SecretStr | None:
        return header_secret(value)

    @field_validator("admin_key")
    @classmethod
    def _admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_OPERATOR_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_OPERATOR_KEY_CHARS} characters")
        if secret.startswith("sk-sentinel-"):
            raise ValueError("must not look like a user API key (sk-sentinel-...): the admin credential is separate")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_OPERATOR_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_OPERATOR_KEY_CHARS} characters (it is the only thing between "
                             "anyone and /metrics)")
        return value

    @field_validator("docs_api_key")
    @classmethod
    def _docs_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A short docs key was accepted: easy to guess, and one under the log redactor's minimum
        (`MIN_REDACTED`, 8) was never blanked from the logs (a client sending it in a path, a header)."""
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_OPERATOR_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_OPERATOR_KEY_CHARS} characters (it guards /native/docs, and "
                             "a shorter key is easy to guess)")
        return value

    @field_validator("openai_api_url", "anthropic_api_url", "zion_api_url", "jwt_jwks_url", "otel_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("openai_api_url", "anthropic_api_url")
    @classmethod
    def _provider_url(cls, value: str | None) -> str | None:
        return None if value is None else provider_base_url(value)

    @field_validator("zion_api_url")
    @classmethod
    def _zion_url(cls, value: str | None) -> str | None:
        return None if value is None else no_credentials(value)

    @model_validator(mode="after")
    def _replica_wait_fits(self) -> Settings:
        if self.usage_stream_replicas and self.usage_stream_replica_timeout_ms >= self.redis_timeout_seconds * 1000:
            # The WAIT runs inside one Redis call, bounded by the socket timeout.
            raise ValueError("USAGE_STREAM_REPLICA_TIMEOUT_MS must be below REDIS_TIMEOUT_SECONDS x 1000")
        return self

    @model_validator(mode="after")
    def _bodies_fit_in_flight(self) -> Settings:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("SENTINEL_MAX_BODY_BYTES_IN_FLIGHT must be at least SENTINEL_MAX_BODY_BYTES")
        share = self.max_body_bytes_in_flight_per_user
        if share is not None and not self.max_body_bytes <= share <= self.max_body_bytes_in_flight:
            raise ValueError(
                "SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER must be at least SENTINEL_MAX_BODY_BYTES and at most "
                "SENTINEL_MAX_BODY_BYTES_IN_FLIGHT"
            )
        return self

    @model_validator(mode="after")
    def _jwks_names_its_audience(self) -> Settings:
        if self.jwt_jwks_url and not self.jwt_audience:
            # A JWKS usually belongs to an identity provider that signs tokens for many applications:
            # without an audience check, a token it issued for any of them would be accepted here.
            raise ValueError("JWT_JWKS_URL needs JWT_AUDIENCE (the audience Sentinel's tokens are issued for)")
        return self

    @model_validator(mode="after")
    def _jwks_names_its_issuer(self) -> Settings:
        if self.jwt_jwks_url and not self.jwt_issuer:
            # A key set shared by many issuers (Azure AD's `common`, a multi-tenant identity provider)
            # signs every tenant's tokens with the same keys, under the same audience: without an
            # issuer check, any tenant's user was let in (on the default plan).
            raise ValueError("JWT_JWKS_URL needs JWT_ISSUER (the `iss` of the tokens Sentinel accepts)")
        return self

    @model_validator(mode="after")
    def _jwks_staleness_ordered(self) -> Settings:
        if self.jwt_jwks_max_stale_seconds < self.jwt_jwks_max_age_seconds:
            raise ValueError("JWT_JWKS_MAX_STALE_SECONDS must be at least JWT_JWKS_MAX_AGE_SECONDS")
        return self

    @model_validator(mode="after")
    def _docs_key_is_not_the_admin_key(self) -> Settings:
        admin = reveal(self.admin_key)
        if admin and admin == reveal(self.docs_api_key):
            # The docs key is handed to the API's users (they read the docs with it): the same value
            # would let every one of them sign in to the console and use the admin API.
            raise ValueError("DOCS_API_KEY must differ from SENTINEL_ADMIN_KEY (the docs key is given to the API's "
                             "users; the same value would make each of them an operator)")
        return self

    @model_validator(mode="after")
    def _metrics_token_is_its_own(self) -> Settings:
        token = reveal(self.metrics_token)
        if token and token == reveal(self.docs_api_key):
            # The docs key is handed to the API's users: each of them would read /metrics too (the
            # provider account's spend, tokens and requests by model).
            raise ValueError("METRICS_TOKEN must differ from DOCS_API_KEY (the docs key is given to the API's users; "
                             "the same value would let each of them read /metrics)")
        if token and token == reveal(self.admin_key):
            # The metrics token sits in the scraper's configuration: there, it would be the admin key.
            raise ValueError("METRICS_TOKEN must differ from SENTINEL_ADMIN_KEY (the token sits in the scraper's "
                             "configuration; the same value would make whoever reads it an operator)")
        return self

    @model_validator(mode="after")
    def _governance_complete(self) -> Settings:
        if self.governance is GovernanceKind.zion and not (self.zion_api_url and reveal(self.zion_api_key)):
            raise ValueError("GOVERNANCE=zion needs ZION_API_URL and ZION_API_KEY")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def use_embedded_mock(self) -> bool:
        """No upstream configured at all: serve the built-in mock in-process (the demo default)."""
        return not (
            reveal(self.openai_api_key) or self.openai_api_url or reveal(self.anthropic_api_key)
            or self.anthropic_api_url
        )

    def served_by_mock(self, url: str, key: str | None = None) -> Settings:
        """These settings with the built-in mock upstream at `url` as both providers (and `key` as
        both provider keys), as `sentinel serve` runs them when no upstream is configured
        (`use_embedded_mock`); the CLI reads the tiers in effect from them."""
        update: dict[str, Any] = {"openai_api_url": url + "/v1", "anthropic_api_url": url}
        if key is not None:
            update |= {"openai_api_key": key, "anthropic_api_key": key}
        return self.model_copy(update=update)

    @property
    def body_bytes_per_user(self) -> int:
        """One caller's share of the request-body bytes in flight: `SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER`,
        else an eighth of `SENTINEL_MAX_BODY_BYTES_IN_FLIGHT` (as 128 of 1024 slots) but never less than one
        body of `SENTINEL_MAX_BODY_BYTES`."""
        if self.max_body_bytes_in_flight_per_user is not None:
            return self.max_body_bytes_in_flight_per_user
        return max(self.max_body_bytes_in_flight // 8, self.max_body_bytes)

    @property
    def effective_openai_url(self) -> str:
        return self.openai_api_url or "https://api.openai.com/v1"

    @property
    def effective_anthropic_url(self) -> str:
        return self.anthropic_api_url or "https://api.anthropic.com"

    @property
    def cors_origin_list(self) -> list[str]:
        """The `SENTINEL_CORS_ORIGINS` entries (`["*"]` for any origin; empty: CORS is off)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def passthrough_patterns(self) -> list[str]:
        """The `SENTINEL_PASSTHROUGH` patterns, in order."""
        return [p.strip() for p in self.passthrough.split(",") if p.strip()]


# A field's name -> its environment name (what keyword overrides by field name are passed on as).
_ALIASES = {name: str(field.validation_alias) for name, field in Settings.model_fields.items()}
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class ConfigError(Exception):
    """Raised with one human line naming the variable and what is wrong."""


def _shown(field: str, value: Any) -> str:
    """What an error may show of a bad value: never a secret, never a URL (a mistyped one is no
    easier to strip of its credentials than a good one: `redis:/:pw@host`, `?password=`)."""
    if field in SECRET_FIELDS or field in URL_FIELDS or not isinstance(value, str | int | float):
        return ""
    text = str(value)
    return "" if "://" in text or "@" in text else f" (got {text!r})"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings(**overrides)
    except UnicodeDecodeError as exc:  # only `.env` is read as text here; its contents are never shown
        raise ConfigError(f"invalid configuration: .env (in the working directory) is not UTF-8 text (byte "
                          f"{exc.start + 1} of the file)") from None
    except ValidationError as exc:
        names = {str(f.validation_alias).lower(): name for name, f in Settings.model_fields.items()}
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "configuration"
            field = names.get(loc.lower(), loc.lower())
            msg = err["msg"].removeprefix("Value error, ")
            shown = "" if loc == "configuration" else _shown(field, err.get("input"))
            parts.append(f"{loc.upper()}: {msg}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from None


def header_secret(value: SecretStr | None) -> SecretStr | None:
    """A key sent in an HTTP header, checked (never shown): no whitespace around it, printable ASCII.

    Clients' credentials are stripped where they are read (a bearer token, a header value): the admin
    or docs key with a space or line break around it could never match, nor be known as reserved on
    /v1. Header bytes are read as Latin-1: one holding `é` matched in the sign-in form only, and every
    script's try counted as a failed authentication, until its address was refused (429). A provider's
    or Zion's key is sent upstream in a header: one with a line break (a secret file's trailing
    newline) started the server, then every upstream call was a 500 (the HTTP client refuses it)."""
    secret = value.get_secret_value() if value is not None else ""
    if secret != secret.strip():
        raise ValueError("must not start or end with whitespace (a stray space or newline?)")
    if not all(" " <= ch <= "~" for ch in secret):
        raise ValueError("must be printable ASCII (it is sent in an HTTP header: other characters never match there)")
    return value


def provider_base_url(value: str) -> str:
    """A provider's base URL as given, checked: http(s), no credentials (`no_credentials`), and no
    query or fragment — request paths are appended to it, so with a `?api-version=…` every call went
    to the base URL itself, the path read as part of the query (put such a parameter in a gateway in
    front, not in the URL)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    if "?" in value or "#" in value:
        raise ValueError("must not carry a query or a fragment: request paths are appended to it")
    return no_credentials(value)


def no_credentials(value: str) -> str:
    """`value` (an http(s) URL Sentinel sends a key to in `Authorization`: a provider's, Zion's) unless
    it carries credentials (`user:password@`): the HTTP client refuses them beside that header, so the
    server started and every call to it was a 500 `internal_error`. The key goes in its own setting."""
    authority = value.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    if "@" in authority:
        raise ValueError("must not carry credentials (user:password@): give the key in its own setting "
                         "(OPENAI_API_KEY, ANTHROPIC_API_KEY, ZION_API_KEY, a provider's api_key)")
    return value


# --- the providers file (SENTINEL_CONFIG) ---------------------------------------------------------
# The providers built from the environment (OPENAI_API_URL/KEY, ANTHROPIC_API_URL/KEY), by name: their
# wire format. A providers-file entry of the same name replaces one (`sentinel.wiring.build_catalog`).
BUILT_IN_PROVIDERS: dict[str, Literal["openai", "anthropic"]] = {"openai": "openai", "anthropic": "anthropic"}
BUILT_IN_TITLES = {"openai": "OpenAI", "anthropic": "Anthropic"}


class ProviderEntry(BaseModel):
    """One named upstream: `kind` is its wire format (openai-compatible or anthropic)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")
    kind: Literal["openai", "anthropic"]
    base_url: str
    api_key: SecretStr | None = None
    cheap_model: UpstreamModelName | None = None
    mid_model: UpstreamModelName | None = None
    # The field an OpenAI-format provider is told the end user in (`sentinel.native.end_user`); unset:
    # `safety_identifier` on OpenAI's own API, elsewhere none added (one the client sent is replaced).
    end_user_field: EndUserField | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return provider_base_url(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return header_secret(value)

    @model_validator(mode="after")
    def _end_user_field(self) -> ProviderEntry:
        if self.end_user_field is not None and self.kind != "openai":
            raise ValueError("end_user_field is for kind: openai only (an Anthropic-format provider is told "
                             "the end user in metadata.user_id)")
        return self


AliasName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class ProvidersFile(BaseModel):
    """The YAML file named by SENTINEL_CONFIG: extra providers and, optionally, the tier table and the
    model catalogue of the `/v1` surfaces (`models:`, `aliases:`; see `sentinel.routing.catalogue`)."""

    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderEntry] = Field(default_factory=list)
    tiers: dict[Tier, list[TierModelEntry]] | None = None
    models: list[CatalogueModel] | None = None
    aliases: dict[AliasName, AliasName | list[AliasName]] | None = None

    @field_validator("providers")
    @classmethod
    def _one_upstream_a_name(cls, value: list[ProviderEntry]) -> list[ProviderEntry]:
        # A name is one upstream on every surface (`sentinel.wiring.build_catalog`): an entry named
        # like a built-in provider replaces it, so it keeps its wire format (the `/v1` calls that
        # name no model go to `openai`), and a name listed twice would be whichever came last.
        seen: set[str] = set()
        for entry in value:
            if entry.name in seen:
                raise ValueError(f"provider {entry.name!r} is listed twice")
            seen.add(entry.name)
            kind = BUILT_IN_PROVIDERS.get(entry.name)
            if kind is not None and entry.kind != kind:
                raise ValueError(f"{entry.name!r} is the built-in {BUILT_IN_TITLES[kind]} provider's name: its kind "
                                 f"must be {kind} (the entry replaces the built-in one on every surface)")
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_targets(cls, value: dict[str, str | list[str]] | None) -> dict[str, str | list[str]] | None:
        for name, targets in (value or {}).items():
            if isinstance(targets, list) and not targets:
                raise ValueError(f"alias {name!r} names no model")
        return value

    def alias_table(self) -> dict[str, list[str]]:
        """The aliases with every target list spelled as a list."""
        return {name: [t] if isinstance(t, str) else list(t) for name, t in (self.aliases or {}).items()}


_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def load_providers_file(path: Path) -> ProvidersFile:
    """Parse the providers file; `${VAR}` in values is replaced from the environment (keys stay out of it)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # was a traceback out of `serve` and every command
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): not UTF-8 text (byte "
                          f"{exc.start + 1} of the file)") from None
    missing = [name for name in _ENV_REF.findall(text) if name not in os.environ]
    if missing:
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG: {', '.join(missing)} not set in the environment")
    text = _ENV_REF.sub(lambda m: os.environ[m.group(1)], text)
    try:
        data = yaml.load(text, Loader=_loader()) or {}  # a SafeLoader (`_loader`)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): {problem}{where}") from None
    except RecursionError:  # the YAML reader recurses per level: `[[[[...` was a traceback out of every command
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): expected a mapping of providers:, "
                          "tiers:, models:, aliases: (the file holds a single value or a list)") from None
    try:
        return ProvidersFile.model_validate(data)
    except ValidationError as exc:
        # Values are never quoted back: a provider entry holds its API key.
        errors = exc.errors(include_input=False)
        details = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:_ERRORS_SHOWN])
        more = f"; and {len(errors) - _ERRORS_SHOWN} more" if len(errors) > _ERRORS_SHOWN else ""
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG ({path}): {details}{more}") from None


_ERRORS_SHOWN = 10  # of a providers file's mistakes, in its one line (a file of 10,000 bad entries was a 1 MB line)


def _loader() -> type:
    """PyYAML's SafeLoader refusing a key given twice in one mapping: it kept the last one silently
    (a second `tiers:` or `providers:` block dropped the first). Keys a merge (`<<: *base`) brings may
    be overridden, as YAML says."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # unhashable: the SafeLoader says so
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"the key {_quoted_key(key)} is given twice in one mapping", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _quoted_key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."

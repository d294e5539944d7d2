"""Settings: defaults, environment names, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.config import SECRET_FIELDS, ConfigError, Settings, load_providers_file, load_settings, reveal
from sentinel.domain.plans import MAX_PLAN_LIMITS


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "DATABASE_URL", "OPENAI_API_KEY", "OPENAI_API_URL", "SENTINEL_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.host == "0.0.0.0" and s.port == 8080
    assert s.redis_url is None
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.jwt_cache_ttl_seconds == 300
    assert s.stream_max_seconds == 900
    assert s.max_unstored_records == 100_000
    assert s.database_pool_size == 10 and s.database_max_overflow == 10
    assert s.zion_usage_timeout_seconds == 30
    assert s.use_embedded_mock
    assert s.effective_openai_url == "https://api.openai.com/v1"


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_PORT", "9001")
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/2")
    monkeypatch.setenv("OPENAI_API_URL", "http://upstream:1/v1/")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("SENTINEL_DEBUG", "true")
    s = load_settings()
    assert s.port == 9001
    assert s.redis_url == "redis://localhost:6379/2"
    assert s.openai_api_url == "http://upstream:1/v1"
    assert s.database_url == "postgresql+asyncpg://u@h/db"
    assert s.debug is True and not s.use_embedded_mock


def test_an_empty_providers_file_setting_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SENTINEL_CONFIG=` (a compose file's or `.env`'s empty line) was the path `.`: every start and
    command stopped on "cannot read .", and it was no demo start."""
    monkeypatch.setenv("SENTINEL_CONFIG", "")
    assert load_settings().providers_file is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SENTINEL_PORT", "eighty"),
        ("SENTINEL_PORT", "70000"),
        ("REDIS_URL", "localhost:6379"),
        ("SENTINEL_MAX_BODY_BYTES", "-1"),
        ("SENTINEL_LOG_LEVEL", "chatty"),
        ("DATABASE_URL", "mysql://x"),
        ("QUOTA_FAILURE_MODE", "sometimes"),
        ("SENTINEL_STREAM_MAX_SECONDS", "0"),
        ("SENTINEL_STREAM_MAX_SECONDS", "-5"),
        ("SENTINEL_MAX_UNSTORED_RECORDS", "0"),
        ("SENTINEL_MAX_UNSTORED_RECORDS", "many"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "-3"),
        ("DATABASE_POOL_SIZE", "1001"),
        ("DATABASE_POOL_SIZE", "ten"),
        ("DATABASE_POOL_SIZE", "2.5"),
        ("DATABASE_POOL_SIZE", ""),
        ("DATABASE_MAX_OVERFLOW", "-1"),
        ("DATABASE_MAX_OVERFLOW", "1001"),
        ("DATABASE_MAX_OVERFLOW", "lots"),
        ("ZION_USAGE_TIMEOUT_SECONDS", "0"),
        ("ZION_USAGE_TIMEOUT_SECONDS", "301"),
        ("ZION_USAGE_TIMEOUT_SECONDS", "soon"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_providers_file_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "models:\n"
        "  - {name: gpt-4o-mini, provider: openai, input_price_per_million: 0.15, output_price_per_million: 0.6}\n"
        "  - {name: house, provider: anthropic, upstream_name: claude-3-5-haiku-20241022,\n"
        "     cache_write_price_per_million: 1.0, cache_read_price_per_million: 0.08}\n"
        "aliases:\n  fast: gpt-4o-mini\n  smart: [house, gpt-4o-mini]\n"
    )
    file = load_providers_file(path)
    assert file.models is not None and file.models[1].upstream == "claude-3-5-haiku-20241022"
    assert file.alias_table() == {"fast": ["gpt-4o-mini"], "smart": ["house", "gpt-4o-mini"]}
    for bad in ("models: [{name: 'bad name', provider: openai}]\n", "aliases: {a: []}\n",
                "models: [{name: m, provider: openai, price: 1}]\n",
                # A provider's model name outside printable ASCII: `X-Sentinel-Model` cannot carry it.
                'models: [{name: m, provider: openai, upstream_name: "gpt\\u2011x"}]\n',
                'tiers: {simple: [{provider: openai, model: "gpt-4o\\nX-Injected: 1"}]}\n',
                'providers: [{name: p, kind: openai, base_url: "http://x", cheap_model: "m\\u2713"}]\n'):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="SENTINEL_CONFIG"):
            load_providers_file(path)


def test_console_and_tracing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SENTINEL_ADMIN_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    off = Settings(_env_file=None)  # type: ignore[call-arg]
    assert off.admin_key is None and off.otel_endpoint is None and off.otel_service_name == "sentinel"
    monkeypatch.setenv("SENTINEL_ADMIN_KEY", "a-long-enough-admin-key")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    on = load_settings()
    assert on.admin_key is not None and on.admin_key.get_secret_value() == "a-long-enough-admin-key"
    assert "a-long-enough-admin-key" not in repr(on)
    assert on.otel_endpoint == "http://collector:4318"


@pytest.mark.parametrize("value", ["too-short", "sk-sentinel-looks-like-a-user-key"])
def test_a_weak_or_confusable_admin_key_is_refused_without_being_shown(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SENTINEL_ADMIN_KEY", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "SENTINEL_ADMIN_KEY" in str(refused.value) and value not in str(refused.value)


@pytest.mark.parametrize("value", ["too-short", " a-long-enough-metrics-token", "a-long-enough-metrics-t\u00f6ken"])
def test_a_weak_or_unsendable_metrics_token_is_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("METRICS_TOKEN", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "METRICS_TOKEN" in str(refused.value) and value.strip() not in str(refused.value)


@pytest.mark.parametrize("value", ["docs-7", "docs-key-15-chr"])
def test_a_short_docs_key_is_refused_without_being_shown(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """DOCS_API_KEY had no minimum length: a key easy to guess, and one under the log redactor's
    minimum (8 characters) was never blanked from the logs. It takes the other operator keys' minimum."""
    monkeypatch.setenv("DOCS_API_KEY", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    from sentinel.config import MIN_OPERATOR_KEY_CHARS
    from sentinel.observability.redaction import MIN_REDACTED

    assert "DOCS_API_KEY" in str(refused.value) and f"at least {MIN_OPERATOR_KEY_CHARS} characters" in str(refused.value)
    assert value not in str(refused.value)
    assert MIN_OPERATOR_KEY_CHARS >= MIN_REDACTED  # every key accepted is one the redactor looks for
    monkeypatch.setenv("DOCS_API_KEY", value + "x" * (MIN_OPERATOR_KEY_CHARS - len(value)))
    assert reveal(load_settings().docs_api_key) == value.ljust(MIN_OPERATOR_KEY_CHARS, "x")
    monkeypatch.setenv("DOCS_API_KEY", "")
    assert load_settings().docs_api_key is None  # empty: unset (the docs open, warned at start)


def test_a_metrics_token_is_a_secret_and_an_empty_one_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "")
    assert load_settings().metrics_token is None
    monkeypatch.setenv("METRICS_TOKEN", "a-long-enough-metrics-token")
    on = load_settings()
    assert reveal(on.metrics_token) == "a-long-enough-metrics-token" and "a-long-enough-metrics-token" not in repr(on)
    assert "metrics_token" in SECRET_FIELDS  # redacted from log lines and spans like every configured secret


def test_the_docs_key_cannot_be_the_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs key is handed to the API's users: the same value as the admin key made each of them
    an operator (console sign-in, admin API)."""
    monkeypatch.setenv("SENTINEL_ADMIN_KEY", "one-long-enough-operator-key")
    monkeypatch.setenv("DOCS_API_KEY", "one-long-enough-operator-key")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "DOCS_API_KEY must differ from SENTINEL_ADMIN_KEY" in str(refused.value)
    assert "one-long-enough-operator-key" not in str(refused.value)
    monkeypatch.setenv("DOCS_API_KEY", "another-key-for-the-docs")
    assert reveal(load_settings().docs_api_key) == "another-key-for-the-docs"


@pytest.mark.parametrize("other", ["DOCS_API_KEY", "SENTINEL_ADMIN_KEY"])
def test_the_metrics_token_is_neither_the_docs_key_nor_the_admin_key(monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    """The docs key is given to the API's users and the metrics token sits in a scraper's
    configuration: one value for both let every user read /metrics (the provider account's spend),
    or whoever reads the scraper's configuration use the admin API."""
    monkeypatch.setenv("METRICS_TOKEN", "one-long-enough-shared-token")
    monkeypatch.setenv(other, "one-long-enough-shared-token")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert f"METRICS_TOKEN must differ from {other}" in str(refused.value)
    assert "one-long-enough-shared-token" not in str(refused.value)
    monkeypatch.setenv(other, "another-long-enough-key")
    assert reveal(load_settings().metrics_token) == "one-long-enough-shared-token"


@pytest.mark.parametrize("name", ["SENTINEL_ADMIN_KEY", "DOCS_API_KEY"])
@pytest.mark.parametrize("value", [" a-long-enough-secret-key", "a-long-enough-secret-key\n", "\ta-long-enough-secret-key "])
def test_a_key_with_surrounding_whitespace_is_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str,
) -> None:
    """Clients' credentials are stripped (a bearer token, a header value): an admin key with a space
    or newline around it was never known as reserved on /v1 (it went to the identity sources) and its
    Bearer use never matched; a docs key so set could never be sent in its header."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert name in str(refused.value) and "whitespace" in str(refused.value)
    assert value.strip() not in str(refused.value)


@pytest.mark.parametrize("name", ["SENTINEL_ADMIN_KEY", "DOCS_API_KEY"])
@pytest.mark.parametrize("value", ["clé-d-administration-très-longue", "a-long-enough\x7fsecret-key", "a-long-enough\tsecret-key"])
def test_a_key_a_header_cannot_carry_is_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str,
) -> None:
    """A header's bytes are read as Latin-1: a key holding `é` (or a control character) signed in
    through the form but never matched as `Authorization: Bearer` or `X-Docs-Key`, and each script's
    try counted as a failed authentication of its address."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert name in str(refused.value) and "printable ASCII" in str(refused.value)
    assert value not in str(refused.value)
    monkeypatch.setenv(name, "a long enough key with spaces ~!")  # printable ASCII, spaces inside
    assert reveal(getattr(load_settings(), name.removeprefix("SENTINEL_").lower())) == "a long enough key with spaces ~!"


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ZION_API_KEY"])
@pytest.mark.parametrize(("value", "says"), [("sk-upstream-key-0123\n", "whitespace"), (" sk-upstream-key-0123", "whitespace"),
                                             ("sk-upstream\r\nX-Injected: 1", "printable ASCII"),
                                             ("sk-upstream-clé-0123", "printable ASCII")])
def test_an_upstream_key_a_header_cannot_carry_is_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str,
) -> None:
    """A provider's (or Zion's) key is sent in a header: one with a secret file's trailing newline
    started the server, then every upstream call was a 500 (aiohttp refuses the header)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert name in message and says in message and "sk-upstream" not in message, message
    monkeypatch.setenv(name, "sk-upstream-key-0123")
    assert reveal(getattr(load_settings(_env_file=None), name.lower())) == "sk-upstream-key-0123"


def test_a_providers_file_api_key_a_header_cannot_carry_is_refused_without_being_shown(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As the environment's keys: a `${VAR}` whose value ends in a newline included."""
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  - {name: groq, kind: openai, base_url: 'https://api.groq.com/openai/v1', "
                    "api_key: '${GROQ_KEY}'}\n")
    for value in ("sk-in-file-0123\n", "sk-in-file-\u00e9"):
        monkeypatch.setenv("GROQ_KEY", value)
        with pytest.raises(ConfigError, match="SENTINEL_CONFIG") as refused:
            load_providers_file(path)
        message = str(refused.value)
        assert "providers.0.api_key" in message and "sk-in-file" not in message and "\n" not in message, message
    monkeypatch.setenv("GROQ_KEY", "sk-in-file-0123")
    assert reveal(load_providers_file(path).providers[0].api_key) == "sk-in-file-0123"


def test_a_postgres_url_s_sslmode_is_given_to_the_driver_as_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg takes libpq's `sslmode` as `ssl`; the password (quoted characters included) is kept."""
    monkeypatch.setenv("DATABASE_URL", "postgres://app:p%40ss%2Fw0rd@db.internal:5433/sentinel?sslmode=verify-full")
    url = load_settings(_env_file=None).database_url
    assert url == "postgresql+asyncpg://app:p%40ss%2Fw0rd@db.internal:5433/sentinel?ssl=verify-full"
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.internal/sentinel?ssl=require")
    assert load_settings(_env_file=None).database_url == "postgresql+asyncpg://app@db.internal/sentinel?ssl=require"
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal/sentinel?ssl=require&sslmode=disable")
    with pytest.raises(ConfigError, match="DATABASE_URL: query parameters 'ssl' and 'sslmode'"):
        load_settings(_env_file=None)


def test_a_providers_file_key_given_twice_is_refused(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `tiers:` block dropped the first, a provider
    entry's second `base_url` won, and nothing said so. Keys a merge brings may still be overridden."""
    path = tmp_path / "providers.yaml"
    for text, key, line in (
        ("tiers:\n  simple: [{provider: openai, model: gpt-4o-mini}]\ntiers:\n  simple: []\n", "'tiers'", 3),
        ("providers:\n  - {name: groq, kind: openai, base_url: 'https://a.example/v1', base_url: 'https://b.example/v1'}\n",
         "'base_url'", 2),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as refused:
            load_providers_file(path)
        message = str(refused.value)
        assert f"the key {key} is given twice" in message and f"line {line}" in message, message
        assert "example" not in message
    path.write_text("x-base: &base {kind: openai, base_url: 'https://a.example/v1'}\n")
    with pytest.raises(ConfigError, match="x-base: Extra inputs"):  # read (no key twice), then refused as unknown
        load_providers_file(path)
    path.write_text("providers:\n  - &groq {name: groq, kind: openai, base_url: 'https://a.example/v1'}\n"
                    "  - {<<: *groq, name: groq2}\n")
    assert [entry.name for entry in load_providers_file(path).providers] == ["groq", "groq2"]


@pytest.mark.parametrize(("text", "says"), [
    ("providers: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),  # was a RecursionError traceback
    ("just a string\n", "expected a mapping"),
    ("- providers\n", "expected a mapping"),
])
def test_a_providers_file_of_the_wrong_shape_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_providers_file(path)
    assert says in str(refused.value) and "SENTINEL_CONFIG" in str(refused.value)


def test_a_providers_file_s_mistakes_are_said_in_a_line_of_bounded_length(tmp_path: Path) -> None:
    """Every mistake was listed: 10,000 bad entries made a line of a megabyte."""
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n" + "  - {name: 'Bad Name', kind: openai, base_url: 'https://a.example/v1'}\n" * 10_000)
    with pytest.raises(ConfigError) as refused:
        load_providers_file(path)
    message = str(refused.value)
    assert message.count(".name: ") == 10 and message.endswith("; and 9990 more") and len(message) < 2000, message


def test_the_jwks_staleness_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long a JWKS is used before a refresh, and at most while refetches fail (then 503)."""
    s = load_settings()
    assert (s.jwt_jwks_max_age_seconds, s.jwt_jwks_max_stale_seconds) == (3600, 86400)
    monkeypatch.setenv("JWT_JWKS_MAX_AGE_SECONDS", "600")
    monkeypatch.setenv("JWT_JWKS_MAX_STALE_SECONDS", "300")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "JWT_JWKS_MAX_STALE_SECONDS must be at least JWT_JWKS_MAX_AGE_SECONDS" in str(refused.value)
    monkeypatch.setenv("JWT_JWKS_MAX_STALE_SECONDS", "7200")
    assert load_settings().jwt_jwks_max_stale_seconds == 7200


def test_a_jwks_without_an_audience_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JWKS is an identity provider's, signing tokens for many applications: without
    JWT_AUDIENCE a token it issued for any of them was accepted."""
    monkeypatch.setenv("JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "JWT_AUDIENCE" in str(refused.value)
    monkeypatch.setenv("JWT_AUDIENCE", "sentinel")
    monkeypatch.setenv("JWT_ISSUER", "https://idp.example/")
    assert load_settings().jwt_audience == "sentinel"


def test_a_jwks_without_an_issuer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key set shared by many issuers (Azure AD's `common`, a multi-tenant identity provider) signs
    every tenant's tokens, for the same audience: without JWT_ISSUER any tenant's user was let in."""
    monkeypatch.setenv("JWT_JWKS_URL", "https://login.example/common/discovery/keys")
    monkeypatch.setenv("JWT_AUDIENCE", "sentinel")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "JWT_JWKS_URL needs JWT_ISSUER" in str(refused.value)
    monkeypatch.setenv("JWT_ISSUER", "https://login.example/tenant-a/v2.0")
    assert load_settings().jwt_issuer == "https://login.example/tenant-a/v2.0"
    monkeypatch.delenv("JWT_JWKS_URL")
    monkeypatch.delenv("JWT_ISSUER")
    assert load_settings().jwt_issuer is None  # a secret is Sentinel's own: its tokens need no issuer


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SENTINEL_SEND_TIMEOUT_SECONDS", "inf"),  # the slow-client limits, silently off
        ("SENTINEL_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "infinity"),  # every upstream call a 500
        ("REDIS_TIMEOUT_SECONDS", "1e400"),  # a hung Redis never failed over
        ("SENTINEL_SHUTDOWN_TIMEOUT_SECONDS", "inf"),  # a traceback at start
        ("USAGE_LEASE_SECONDS", "1e300"),  # a timedelta overflow at start
        ("SENTINEL_WORKERS", "100000"),  # as many processes forked
        ("SENTINEL_STREAM_MAX_SECONDS", "inf"),  # streams without end again
        ("SENTINEL_STREAM_MAX_SECONDS", "2e9"),  # past MAX_SECONDS (a loop timer that far off)
    ],
)
def test_durations_must_be_finite_and_bounded(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name.removeprefix("SENTINEL_")):
        load_settings(_env_file=None)


def test_a_short_jwt_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """One stolen token and an offline guess of a one-byte HMAC key would mint tokens for anyone."""
    monkeypatch.setenv("JWT_SECRET", "x" * 31)
    with pytest.raises(ConfigError, match="JWT_SECRET: must be at least 32 bytes") as refused:
        load_settings(_env_file=None)
    assert "x" * 31 not in str(refused.value)
    monkeypatch.setenv("JWT_SECRET", "x" * 32)
    assert load_settings(_env_file=None).jwt_secret is not None


def test_a_short_end_user_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key of the pseudonyms providers are told (`sentinel.domain.end_user`): a short one could be
    found by trying keys against one known user's pseudonym. Never quoted back; empty is unset."""
    monkeypatch.setenv("SENTINEL_END_USER_SECRET", "y" * 31)
    with pytest.raises(ConfigError, match="SENTINEL_END_USER_SECRET: must be at least 32 bytes") as refused:
        load_settings(_env_file=None)
    assert "y" * 31 not in str(refused.value)
    monkeypatch.setenv("SENTINEL_END_USER_SECRET", "")
    assert load_settings(_env_file=None).end_user_secret is None
    monkeypatch.setenv("SENTINEL_END_USER_SECRET", "y" * 32)
    settings = load_settings(_env_file=None)
    assert settings.end_user_secret is not None and "y" * 32 not in repr(settings)


@pytest.mark.parametrize("url", [
    "redis://cache:6379/0?socket_timeout=1&socket_connect_timeout=2&client_name=sentinel&db=3&max_connections=64",
    "rediss://:pw@cache:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=true",
    "unix:///run/redis.sock?db=1&health_check_interval=5",
])
def test_a_redis_url_with_options_the_client_takes_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings(_env_file=None).redis_url == url


@pytest.mark.parametrize("query", ["username=default&password=s3cret-pw", "password=s3cret-pw&db=0"])
async def test_a_redis_url_naming_its_credentials_in_the_query_is_accepted_and_connects(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, query: str,
) -> None:
    """redis-py documents `unix:///path/redis.sock?db=0&password=...` (a socket file has no host to put
    the password before) and reads `username` and `password` from any URL's query: such a URL that
    served was refused at start as naming a query parameter the client does not take."""
    from sentinel.store.redis import RedisStore

    url = f"{redis_url}?{query}"  # (the test server's default user takes any password: `nopass`)
    monkeypatch.setenv("REDIS_URL", url)
    settings = load_settings(_env_file=None)
    assert settings.redis_url == url
    store = RedisStore(url)
    try:
        assert await store.set("sentinel:test:credentials-in-query", b"1", 5)
        assert await store.get("sentinel:test:credentials-in-query") == b"1"
    finally:
        await store.close()
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock?db=0&password=s3cret-pw")
    assert load_settings(_env_file=None).redis_url == "unix:///run/redis.sock?db=0&password=s3cret-pw"


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("REDIS_URL", "redis:/:s3cret@cache:6379", "s3cret"),  # a mistyped scheme
        ("DATABASE_URL", "mysql://u:p@ss@h/db", "ss@h"),  # an '@' inside the password
        ("DATABASE_URL", "postgresq://h/db?password=hunter2", "hunter2"),  # a password in the query
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "htps://alice:s3cretpw@collector:4318", "s3cretpw"),
    ],
)
def test_a_bad_url_is_never_quoted_back(monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as refused:
        load_settings(_env_file=None)
    assert secret not in str(refused.value)


@pytest.mark.parametrize(("name", "value"), [
    ("OPENAI_API_URL", "https://res.openai.azure.com/openai/v1?api-version=preview"),
    ("ANTHROPIC_API_URL", "https://gateway.example/anthropic#s3cret"),
])
def test_a_provider_url_with_a_query_or_fragment_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Request paths are appended to a provider's base URL: with `?api-version=…` every call went to the
    base URL itself, `/chat/completions` read as part of the query value."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}: .*query or a fragment") as refused:
        load_settings(_env_file=None)
    assert value.split("/")[-1] not in str(refused.value)
    monkeypatch.setenv(name, value.partition("?")[0].partition("#")[0] + "/")
    assert getattr(load_settings(_env_file=None), name.lower()) == value.partition("?")[0].partition("#")[0]


def test_a_providers_file_base_url_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    for bad in ("https://api.groq.com/openai/v1?x=1", "https://api.groq.com/openai/v1#x", "api.groq.com/openai/v1"):
        path.write_text(f"providers:\n  - {{name: groq, kind: openai, base_url: '{bad}'}}\n")
        with pytest.raises(ConfigError, match="SENTINEL_CONFIG"):
            load_providers_file(path)
    path.write_text("providers:\n  - {name: groq, kind: openai, base_url: 'https://api.groq.com/openai/v1'}\n")
    assert load_providers_file(path).providers[0].base_url == "https://api.groq.com/openai/v1"


def test_a_providers_file_end_user_field_is_checked(tmp_path: Path) -> None:
    """`end_user_field` (which field an OpenAI-format provider is told the end user in) is one of
    `user`, `safety_identifier`, `none`, on an OpenAI-format provider only; anything else stops
    start-up in one line naming the entry and what it may be, never quoting the file's values."""
    path = tmp_path / "providers.yaml"
    entry = "providers:\n  - {name: mistral, kind: %s, base_url: 'https://api.mistral.ai/v1', api_key: sk-in-file%s}\n"
    for rule in ("user", "safety_identifier", "none"):
        path.write_text(entry % ("openai", f", end_user_field: {rule}"))
        assert load_providers_file(path).providers[0].end_user_field == rule
    path.write_text(entry % ("openai", ""))
    assert load_providers_file(path).providers[0].end_user_field is None
    for kind, extra, says in (("openai", ", end_user_field: User", "providers.0.end_user_field"),
                              ("openai", ", end_user_field: metadata", "'safety_identifier'"),
                              ("openai", ", end_user_field: ''", "'none'"),
                              ("anthropic", ", end_user_field: user", "kind: openai only")):
        path.write_text(entry % (kind, extra))
        with pytest.raises(ConfigError, match="SENTINEL_CONFIG") as refused:
            load_providers_file(path)
        message = str(refused.value)
        assert says in message and "sk-in-file" not in message and "\n" not in message, message


# Field names that are common variables of other programs (uvicorn's FORWARDED_ALLOW_IPS, a
# container's DEBUG, HOST...), each with a value that would change the setting, and its default.
NOT_OURS = {
    "DEBUG": ("true", "debug", False),
    "FORWARDED_ALLOW_IPS": ("*", "forwarded_allow_ips", None),
    "ADMIN_KEY": ("an-admin-key-from-elsewhere", "admin_key", None),
    "HOST": ("10.9.9.9", "host", "0.0.0.0"),
    "CORS_ORIGINS": ("*", "cors_origins", ""),
    "MAX_IN_FLIGHT": ("7", "max_in_flight", 1024),
    "AUTH_FAILURES_PER_MINUTE": ("100000", "auth_failures_per_minute", 30),
    "PASSTHROUGH": ("/v1/moderations", "passthrough", ""),
}


def test_only_the_environment_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`populate_by_name` made pydantic-settings read every field's own name from the environment and
    `.env` as well: a container's `DEBUG=1` opened /debug/*, uvicorn's `FORWARDED_ALLOW_IPS=*` made
    every client's X-Forwarded-For believed. Only the documented names are read now."""
    for name, (value, field, _) in NOT_OURS.items():
        monkeypatch.setenv(name, value)
        monkeypatch.delenv(str(Settings.model_fields[field].validation_alias), raising=False)
    for alias in ("SENTINEL_MAX_IN_FLIGHT_PER_USER", "SENTINEL_SEND_TIMEOUT_SECONDS", "SENTINEL_MAX_HEADERS"):
        monkeypatch.delenv(alias, raising=False)
    (tmp_path / ".env").write_text("MAX_IN_FLIGHT_PER_USER=5\nsend_timeout_seconds=1\nSENTINEL_MAX_HEADERS=50\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert {field: getattr(s, field) for _, field, _ in NOT_OURS.values()} == {
        field: default for _, field, default in NOT_OURS.values()
    }
    assert (s.max_in_flight_per_user, s.send_timeout_seconds) == (128, 60.0)
    assert s.max_headers == 50  # the `.env` file is read, by the documented names
    # The documented names still set them, from the environment and from `.env`.
    monkeypatch.setenv("SENTINEL_DEBUG", "true")
    monkeypatch.setenv("SENTINEL_MAX_IN_FLIGHT", "7")
    (tmp_path / ".env").write_text("SENTINEL_MAX_IN_FLIGHT_PER_USER=5\n")
    s = load_settings()
    assert (s.debug, s.max_in_flight, s.max_in_flight_per_user) == (True, 7, 5)


def test_code_gives_settings_by_field_name_or_environment_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTINEL_DEBUG", raising=False)
    s = Settings(_env_file=None, debug=True, max_in_flight=3, forwarded_allow_ips="10.0.0.5")  # type: ignore[call-arg]
    assert (s.debug, s.max_in_flight, s.forwarded_allow_ips) == (True, 3, "10.0.0.5")
    s = load_settings(_env_file=None, host="127.0.0.1", port=9, USAGE_STREAM_REPLICAS="1")  # as `serve --host` does
    assert (s.host, s.port, s.usage_stream_replicas) == ("127.0.0.1", 9, 1)


@pytest.mark.parametrize("value", ["*", "10.0.0.5,*", " * "])
def test_trusting_every_proxy_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """With `*` uvicorn believes every hop and takes the leftmost X-Forwarded-For entry, which the
    client writes: rotating it escaped every per-client throttle and forged audit-log addresses."""
    monkeypatch.setenv("SENTINEL_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert "SENTINEL_FORWARDED_ALLOW_IPS: '*' would believe any client's X-Forwarded-For" in str(refused.value)
    assert "list the proxies' addresses or networks" in str(refused.value)


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1/8", "10.0.0.300"])
def test_a_proxy_entry_uvicorn_would_never_match_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """uvicorn keeps an entry it cannot read as an address or network as text, compared with the
    peer's address: that proxy was silently never believed."""
    monkeypatch.setenv("SENTINEL_FORWARDED_ALLOW_IPS", f"10.0.0.5,{value}")
    with pytest.raises(ConfigError, match=f"SENTINEL_FORWARDED_ALLOW_IPS: bad entry '{value}'"):
        load_settings(_env_file=None)


def test_proxies_are_addresses_and_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_FORWARDED_ALLOW_IPS", " 10.0.0.5, 10.1.0.0/16 ,::1,fd00::/8")
    assert load_settings(_env_file=None).forwarded_allow_ips == "10.0.0.5,10.1.0.0/16,::1,fd00::/8"
    monkeypatch.setenv("SENTINEL_FORWARDED_ALLOW_IPS", " ")
    assert load_settings(_env_file=None).forwarded_allow_ips is None  # blank: the socket's address


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_a_default_plan_without_limits_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A blank DEFAULT_PLAN was a plan with no limits: every user without a plan was unlimited."""
    monkeypatch.setenv("DEFAULT_PLAN", value)
    with pytest.raises(ConfigError, match="DEFAULT_PLAN: names no limit: every user without a plan would be unlimited"):
        load_settings(_env_file=None)


def test_a_default_plan_holds_at_most_as_many_limits_as_any_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan an operator sets holds at most MAX_PLAN_LIMITS limits (each a counter every request
    checks); DEFAULT_PLAN, every plan-less user's, took any number."""
    limits = [f"requests={n}/{n}s" for n in range(1, MAX_PLAN_LIMITS + 2)]
    monkeypatch.setenv("DEFAULT_PLAN", ",".join(limits))
    with pytest.raises(ConfigError, match=f"DEFAULT_PLAN: a plan may have at most {MAX_PLAN_LIMITS} limits, got 51"):
        load_settings(_env_file=None)
    monkeypatch.setenv("DEFAULT_PLAN", ",".join(limits[:MAX_PLAN_LIMITS]))
    assert load_settings(_env_file=None).default_plan == ",".join(limits[:MAX_PLAN_LIMITS])


def test_the_default_plan_when_unset_and_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEFAULT_PLAN", raising=False)
    assert load_settings(_env_file=None).default_plan == "requests=100/60s"
    monkeypatch.setenv("DEFAULT_PLAN", "requests=5/1m,")
    assert load_settings(_env_file=None).default_plan == "requests=5/1m,"


def test_one_callers_share_of_the_body_bytes_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """An eighth of SENTINEL_MAX_BODY_BYTES_IN_FLIGHT unless set, never less than one body of
    SENTINEL_MAX_BODY_BYTES (a share below it would refuse such a body for ever), never more than the total."""
    for name in ("SENTINEL_MAX_BODY_BYTES", "SENTINEL_MAX_BODY_BYTES_IN_FLIGHT", "SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings(_env_file=None).body_bytes_per_user == 128 * 1024 * 1024
    assert load_settings(_env_file=None, max_body_bytes_in_flight=40 * 1024 * 1024).body_bytes_per_user == 10 * 1024 * 1024
    monkeypatch.setenv("SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER", str(64 * 1024 * 1024))
    assert load_settings(_env_file=None).body_bytes_per_user == 64 * 1024 * 1024
    for share in (1024 * 1024, 2 * 1024 * 1024 * 1024):
        monkeypatch.setenv("SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER", str(share))
        with pytest.raises(ConfigError, match="SENTINEL_MAX_BODY_BYTES_IN_FLIGHT_PER_USER must be at least"):
            load_settings(_env_file=None)


def test_the_database_pool_is_sized_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "40")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    s = load_settings(_env_file=None)
    assert s.database_pool_size == 40 and s.database_max_overflow == 0
    monkeypatch.setenv("DATABASE_POOL_SIZE", "1000")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "1000")
    s = load_settings(_env_file=None)
    assert s.database_pool_size == 1000 and s.database_max_overflow == 1000
    assert Settings(_env_file=None, database_pool_size=1).database_pool_size == 1  # type: ignore[call-arg]


def test_a_bad_pool_size_is_one_line_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert str(info.value) == (
        "invalid configuration: DATABASE_POOL_SIZE: Input should be greater than or equal to 1 (got '0')"
    )


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("SENTINEL_ADMIN_KEY", "an-admin-key-\udcff-here", False),  # a traceback at start-up (its digest)
        ("OPENAI_API_KEY", "sk-upstream-\udce9", False),
        ("REDIS_URL", "redis://:p\udcffw@cache:6379/0", False),
        ("DATABASE_URL", "postgresql://u:p\udcffw@db/sentinel", False),
        ("SENTINEL_HOST", "127.0.0.\udcb1", True),
        ("OTEL_SERVICE_NAME", "gate\udcff", True),
    ],
)
def test_a_value_that_is_not_utf8_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str, shown: bool) -> None:
    """The environment's bytes that are not UTF-8 (kept by Python as lone surrogates) were accepted and
    failed wherever the value was first encoded: SENTINEL_ADMIN_KEY's as a traceback at start-up."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert f"{name}: is not valid UTF-8 text" in message and "\n" not in message
    if not shown:
        assert "(got" not in message and "p\\udcffw" not in message


def test_a_file_named_by_a_setting_may_have_any_bytes_in_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./data/s\udcff.db")
    monkeypatch.setenv("SENTINEL_CONFIG", "/etc/sentinel/providers-\udcff.yaml")
    s = load_settings(_env_file=None)
    assert s.database_url.endswith("s\udcff.db") and str(s.providers_file).endswith("-\udcff.yaml")


def test_a_dotenv_or_providers_file_that_is_not_utf8_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each was a UnicodeDecodeError traceback out of `serve` and every command."""
    (tmp_path / ".env").write_bytes(b"SENTINEL_ADMIN_KEY=k\xe9y-in-latin-1-0123456789\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert ".env" in str(refused.value) and "UTF-8" in str(refused.value) and "latin" not in str(refused.value)
    (tmp_path / "providers.yaml").write_bytes(b"providers: []\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"SENTINEL_CONFIG \(.*providers.yaml\): not UTF-8 text \(byte 20 "):
        load_providers_file(tmp_path / "providers.yaml")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_host_is_the_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """`SENTINEL_HOST=` listened on every interface, but `serve` printed `http://:8080` and a curl
    line to it that failed."""
    from sentinel.server import listening_line

    monkeypatch.setenv("SENTINEL_HOST", value)
    s = load_settings(_env_file=None)
    assert s.host == "0.0.0.0"
    assert "http://127.0.0.1:8080" in listening_line(s)
    assert load_settings(_env_file=None, host=" 127.0.0.1 ").host == "127.0.0.1"


def test_a_providers_file_name_is_one_upstream(tmp_path: Path) -> None:
    """An entry named like a built-in provider replaces it on every surface, so it keeps the built-in's
    wire format (an Anthropic-format `openai` left the `/v1` calls that name no model to the
    environment's upstream of that name); a name listed twice was the last entry, silently. Both stop
    start-up in one line naming SENTINEL_CONFIG, never quoting the file's values."""
    path = tmp_path / "providers.yaml"
    entry = "  - {name: %s, kind: %s, base_url: 'https://api.example.com/v1', api_key: sk-in-file}\n"
    cases = {
        "'openai' is the built-in OpenAI provider's name: its kind must be openai": entry % ("openai", "anthropic"),
        "'anthropic' is the built-in Anthropic provider's name: its kind must be anthropic":
            entry % ("anthropic", "openai"),
        "provider 'groq' is listed twice": entry % ("groq", "openai") * 2,
    }
    for says, providers in cases.items():
        path.write_text("providers:\n" + providers)
        with pytest.raises(ConfigError, match="SENTINEL_CONFIG") as refused:
            load_providers_file(path)
        message = str(refused.value)
        assert says in message and "sk-in-file" not in message and "\n" not in message, message
    path.write_text("providers:\n" + entry % ("openai", "openai") + entry % ("anthropic", "anthropic")
                    + entry % ("groq", "openai"))
    assert [p.name for p in load_providers_file(path).providers] == ["openai", "anthropic", "groq"]


def test_a_providers_file_built_in_name_replaces_the_environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog is the one place a name gets its upstream: the file's `openai` (URL, key,
    `end_user_field`) over OPENAI_API_URL/KEY's, and it is also where the `/v1` calls that name no
    model go. Without a `cheap_model` it serves the built-in's default models, environment or not."""
    from sentinel.providers.catalog import DEFAULT_MODELS
    from sentinel.wiring import build_catalog, relay_default

    for name in ("OPENAI_API_URL", "OPENAI_API_KEY", "ANTHROPIC_API_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  - {name: openai, kind: openai, base_url: 'https://proxy.example.com/v1', "
                    "api_key: sk-in-file, end_user_field: user}\n")
    for env in ({"openai_api_url": "https://env.example.com/v1", "openai_api_key": "sk-env"}, {}):
        settings = Settings(_env_file=None, providers_file=path, **env)  # type: ignore[call-arg]
        catalog = build_catalog(settings)
        spec = catalog.providers["openai"]
        assert (spec.base_url, spec.api_key, spec.end_user_field) == ("https://proxy.example.com/v1", "sk-in-file", "user")
        assert relay_default(settings, catalog) is spec
        cheap, mid = DEFAULT_MODELS["openai"]
        assert catalog.tiers["simple"] == [cheap] and catalog.tiers["complex"] == [mid]

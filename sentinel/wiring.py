"""The composition root: every service built from the settings, once, inside the running loop.

`build_runtime(settings, metrics)` opens the shared clients (the store's pool, the SQL engine, the
upstream HTTP session), builds the governance parts for the configured mode, the meter, the router
and the services, and returns them with the closers shutdown runs in order. Only this module and
`sentinel.app` read `Settings`; every service below takes plain values.

- `GOVERNANCE=builtin`: Sentinel's database holds keys, plans and the usage ledger; tiers come from
  the database (`sentinel tiers set`) over the catalog (defaults or the providers file). JWTs are
  accepted too when JWT_SECRET/JWT_JWKS_URL is set (verified locally).
- `GOVERNANCE=zion`: Zion JWTs are validated by Zion (or locally with JWT_SECRET/JWT_JWKS_URL),
  limits come from Zion, usage goes to Zion's batch endpoint, tiers from Zion's tier config (the
  catalog's table is the fallback when Zion has never answered). Sentinel API keys keep working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.config import (
    SECRET_FIELDS,
    ConfigError,
    GovernanceKind,
    ProviderEntry,
    ProvidersFile,
    Settings,
    load_providers_file,
    reveal,
)
from sentinel.db.engine import close_engine, create_engine, migrate, session_factory
from sentinel.db.sqlite_writer import SqliteWriter
from sentinel.domain.end_user import EndUsers
from sentinel.domain.plans import PlanSource, parse_plan_spec
from sentinel.domain.tiers import TIERS, TierModelEntry, TierSource, TierTable
from sentinel.governance.applied_settings import AppliedSettings
from sentinel.governance.auth import Authenticator
from sentinel.governance.identity import IdentitySource
from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource
from sentinel.governance.keys import KeyService, hash_key
from sentinel.governance.ledger import SqlLedger, SqlLedgerSink
from sentinel.governance.ownership import Ownership
from sentinel.governance.plan_source import BuiltinPlanSource, CachedPlans, plan_basis
from sentinel.governance.plans import PlanRepository
from sentinel.governance.request_stats import RequestStatsWriter
from sentinel.governance.rollups import RollupWorker
from sentinel.governance.tier_store import DbTiers, TierRepository
from sentinel.governance.zion import ZionClient, ZionIdentitySource
from sentinel.governance.zion_sources import ZionPlans, ZionSink, ZionTiers
from sentinel.observability.metrics import Metrics
from sentinel.observability.outcomes import RequestOutcomes
from sentinel.observability.redaction import SENTINEL_KEYS_ONLY, Redactor
from sentinel.observability.tracing import NOOP_TRACING, OtelTracing, Tracing, build_tracing
from sentinel.providers.anthropic import AnthropicUpstream
from sentinel.providers.catalog import DEFAULT_MODELS, WELL_KNOWN_MODELS, Catalog, ProviderSpec
from sentinel.providers.chat import ChatProvider, make_provider
from sentinel.providers.http import BodyLimit, create_session
from sentinel.providers.openai import OpenAICompatUpstream
from sentinel.quota.deliverer import UsageDeliverer, delivery_backoff
from sentinel.quota.limiter import SETTLE_WITHIN, QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.meter import QuotaMeter
from sentinel.quota.outbox import DurableOutbox, LedgerOutbox, RedisStreamOutbox, SqlOutbox
from sentinel.quota.sink import UsageSink
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.catalogue import CatalogueError, ModelCatalogue, default_models
from sentinel.routing.health import READ_REUSE_SECONDS, ProviderHealth
from sentinel.routing.model_routes import ModelRoutes
from sentinel.routing.router import TierRouter
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import SessionStore
from sentinel.services.admin import AdminService
from sentinel.services.admin_live import LiveState
from sentinel.services.messages import MessagesService
from sentinel.services.models import ModelList
from sentinel.services.native_chat import NativeChat
from sentinel.services.plan_finisher import PlanFinisher
from sentinel.services.relay import OpenAIRelay
from sentinel.services.startup_seed import StartupSeed
from sentinel.services.store_loss import StoreLoss
from sentinel.services.translated_chat import TranslatedChat
from sentinel.services.window_seed import WindowSeeder
from sentinel.store import Store, check_eviction, create_store

# With Redis, identities and plans are also kept per process for at most this long (never past
# the stored entry's freshness), sparing two Redis round trips per request under load.
LOCAL_CACHE_SECONDS = 1.0
# The SQL outbox and the ledger's rows awaiting roll-up are empty nearly always: once a poll found
# nothing, the next one looks after this long, or at once after this process added work there.
IDLE_RECHECK_SECONDS = 5.0


def read_providers_file(settings: Settings) -> ProvidersFile | None:
    """The providers file (SENTINEL_CONFIG), or None when none is configured."""
    return None if settings.providers_file is None else load_providers_file(settings.providers_file)


def check_providers(settings: Settings) -> None:
    """ConfigError when the providers file (SENTINEL_CONFIG) cannot be read or its catalogue is
    inconsistent: what `build_runtime` would refuse, found before anything starts (`sentinel serve`)."""
    served = settings.served_by_mock("http://mock") if settings.use_embedded_mock else settings
    file = read_providers_file(served)
    build_model_catalogue(build_catalog(served, file), file)


def build_catalog(settings: Settings, file: ProvidersFile | None = None) -> Catalog:
    """The providers and the (default or configured) tier table: the one place a provider name gets
    its upstream. The built-in `openai` and `anthropic` come from the environment when its key or URL
    is set; a providers-file entry of the same name replaces the built-in one (URL, key, options) for
    every surface — `/v1` relayed and its calls that name no model, translated chat, `/v1/messages`,
    the native API — which all take their providers from here (`build_runtime`)."""
    if file is None:
        file = read_providers_file(settings)
    providers: dict[str, ProviderSpec] = {}
    defaults: dict[str, tuple[TierModelEntry, TierModelEntry]] = {}
    for name, configured_by in (("openai", reveal(settings.openai_api_key) or settings.openai_api_url),
                                ("anthropic", reveal(settings.anthropic_api_key) or settings.anthropic_api_url)):
        if configured_by:
            providers[name] = built_in_spec(settings, name)
            defaults[name] = DEFAULT_MODELS[name]
    configured = None
    if file is not None:
        for entry in file.providers:
            providers[entry.name] = _spec(entry)
            if entry.cheap_model:
                cheap = TierModelEntry(provider=entry.name, model=entry.cheap_model, relative_cost=1)
                mid = TierModelEntry(provider=entry.name, model=entry.mid_model or entry.cheap_model, relative_cost=5)
                defaults[entry.name] = (cheap, mid)
            elif entry.name in DEFAULT_MODELS:  # a built-in's replacement: the built-in's models
                defaults[entry.name] = DEFAULT_MODELS[entry.name]
        configured = file.tiers
    tiers: TierTable
    if configured is not None:
        tiers = {tier: list(configured.get(tier, [])) for tier in TIERS}
    else:
        tiers = {
            "simple": [cheap for cheap, _ in defaults.values()],
            "moderate": [mid for _, mid in defaults.values()],
            "complex": [mid for _, mid in defaults.values()],
        }
    return Catalog(providers=providers, tiers=tiers)


def built_in_spec(settings: Settings, name: str) -> ProviderSpec:
    """The built-in provider `name` (`openai` or `anthropic`) as the environment gives it: its URL
    (the public API's when unset) and key."""
    if name == "openai":
        return ProviderSpec("openai", "openai", settings.effective_openai_url, reveal(settings.openai_api_key))
    return ProviderSpec("anthropic", "anthropic", settings.effective_anthropic_url, reveal(settings.anthropic_api_key))


def relay_default(settings: Settings, catalog: Catalog) -> ProviderSpec:
    """Where the `/v1` calls that name no model go (stored objects, pass-through): the catalog's
    `openai` — the providers file's entry of that name, else OPENAI_API_URL/KEY's — or, when no
    `openai` is configured, OpenAI's public API without a key (as the environment leaves it)."""
    return catalog.providers.get("openai") or built_in_spec(settings, "openai")


def _spec(entry: ProviderEntry) -> ProviderSpec:
    return ProviderSpec(entry.name, entry.kind, entry.base_url.rstrip("/"), reveal(entry.api_key), entry.end_user_field)


def build_model_catalogue(catalog: Catalog, file: ProvidersFile | None) -> ModelCatalogue:
    """The `/v1` surfaces' model catalogue: the file's `models:` and `aliases:`, or (no `models:`) the
    configured providers' well-known models plus every model the tier table and the file name.
    ConfigError when the file's catalogue is inconsistent."""
    kinds = {name: spec.kind for name, spec in catalog.providers.items()}
    if file is not None and file.models is not None:
        models = list(file.models)
    else:
        extra = [entry for entries in catalog.tiers.values() for entry in entries]
        for entry in file.providers if file is not None else ():
            for model in filter(None, (entry.cheap_model, entry.mid_model)):
                extra.append(TierModelEntry(provider=entry.name, model=model))
        models = default_models(WELL_KNOWN_MODELS, kinds, extra)
    try:
        return ModelCatalogue(models, file.alias_table() if file is not None else {}, kinds)
    except CatalogueError as exc:
        raise ConfigError(f"invalid configuration: SENTINEL_CONFIG: {exc}") from None


def known_models(catalog: Catalog, models: ModelCatalogue) -> set[str]:
    """Model names that may appear as metric labels (everything else is reported as `other`)."""
    names = {entry.model for entries in catalog.tiers.values() for entry in entries}
    names.update(entry.model for pair in DEFAULT_MODELS.values() for entry in pair)
    names.update(models.names())
    return names


@dataclass
class Governance:
    """The parts that depend on the governance mode."""

    jwt: IdentitySource | None
    plans: PlanSource
    sink: UsageSink
    tiers: TierSource


def zion_window(s: Settings) -> int:
    """The longest window of a Zion limit (how long the local count of one reading is kept)."""
    return int(s.cache_ttl_seconds + s.governance_grace_seconds + 60)


def plans_basis(s: Settings) -> str:
    """`CachedPlans`' `basis`: the settings the plans of `s.governance`'s source are made from."""
    zion = s.governance is GovernanceKind.zion
    return plan_basis(s.governance.value, parse_plan_spec(s.default_plan),
                      (s.zion_apply_default_plan, zion_window(s)) if zion else None)


def build_governance(
    s: Settings,
    *,
    store: Store,
    sessions: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    catalog_tiers: TierTable,
    metrics: Metrics | None = None,
    ledger: SqlLedger | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Governance:
    """Identity sources, plan source, usage sink and tier source for `s.governance` (`ledger`: the
    built-in ledger to record usage in, default one over `sessions`; `wall_clock`: the Unix clock a
    JWT's `exp`, `nbf` and `iat` are read against)."""
    default_plan = parse_plan_spec(s.default_plan)
    local_jwt: IdentitySource | None = None
    zion: ZionClient | None = None
    if s.governance is GovernanceKind.zion:
        zion_key = reveal(s.zion_api_key)
        assert s.zion_api_url and zion_key  # checked by Settings
        zion = ZionClient(s.zion_api_url, zion_key, session=http, usage_timeout=s.zion_usage_timeout_seconds)
    if reveal(s.jwt_secret) or s.jwt_jwks_url:
        verifier = JwtVerifier(reveal(s.jwt_secret), s.jwt_jwks_url, s.jwt_audience, s.jwt_issuer, http,
                               max_age=s.jwt_jwks_max_age_seconds, max_stale=s.jwt_jwks_max_stale_seconds,
                               wall_clock=wall_clock)
        local_jwt = LocalJwtIdentitySource(verifier, profile_source=ZionIdentitySource(zion) if zion else None)
    if zion is None:
        return Governance(
            jwt=local_jwt,
            plans=BuiltinPlanSource(PlanRepository(sessions), default_plan),
            sink=SqlLedgerSink(ledger or SqlLedger(sessions)),
            tiers=DbTiers(TierRepository(sessions), catalog_tiers, s.tier_config_ttl_seconds),
        )
    window = zion_window(s)
    return Governance(
        jwt=local_jwt or ZionIdentitySource(zion),
        plans=ZionPlans(zion, default_plan, max_window_seconds=window, apply_default=s.zion_apply_default_plan),
        sink=ZionSink(zion),
        tiers=ZionTiers(zion.tier_config, store, s.tier_config_ttl_seconds, fallback=catalog_tiers, metrics=metrics),
    )


@dataclass
class Runtime:
    """Everything the app serves with, and what shutdown closes (in order)."""

    settings: Settings
    store: Store
    engine: AsyncEngine
    authenticator: Authenticator
    relay: OpenAIRelay
    messages: MessagesService
    models: ModelList
    native: NativeChat
    router: TierRouter
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    admin: AdminService | None = None
    tracing: Tracing = NOOP_TRACING
    outcomes: RequestOutcomes | None = None
    # Takes every configured secret (`configured_secrets`) and Sentinel API keys out of what is
    # logged or traced: the access log's paths, the request span's, a failed span's message.
    redact: Redactor = SENTINEL_KEYS_ONLY
    # Finishes the plan changes whose follow-up the store or the database did not take (built-in plans only).
    plan_finisher: PlanFinisher | None = None
    # Notices a shared store that lost its data and seeds every window again (a shared store only).
    store_loss: StoreLoss | None = None


def configured_secrets(s: Settings, catalog: Catalog) -> tuple[str, ...]:
    """Every secret the configuration holds: the settings' (SECRET_FIELDS: provider, admin, docs and
    Zion keys, the JWT and end-user secrets) and each provider's key from the providers file."""
    found = [reveal(getattr(s, name)) for name in sorted(SECRET_FIELDS)]
    found += [spec.api_key for spec in catalog.providers.values()]
    return tuple(value for value in found if value)


def build_admin(
    s: Settings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    catalog_tiers: TierTable,
    live: LiveState | None = None,
    identities: Authenticator | None = None,
    plan_cache: CachedPlans | None = None,
    db_tiers: DbTiers | None = None,
    report_sessions: async_sessionmaker[AsyncSession] | None = None,
    providers: Collection[str] = (),
    limiter: QuotaLimiter | None = None,
    usage_stream: RedisStreamOutbox | None = None,
) -> AdminService:
    """The operator service (console, admin API, CLI) on the database and what of the runtime is given
    (`report_sessions`: the usage reports' own, whose statements may run long; else `sessions`)."""
    zion = s.governance is GovernanceKind.zion
    return AdminService(
        sessions, keys=KeyService(sessions, require_email=zion), default_plan=parse_plan_spec(s.default_plan),
        catalog_tiers=catalog_tiers, live=live, identities=identities, plan_cache=plan_cache, db_tiers=db_tiers,
        builtin=not zion, report_sessions=report_sessions, providers=providers, limiter=limiter,
        usage_stream=usage_stream,
    )


def build_cli_admin(s: Settings, sessions: async_sessionmaker[AsyncSession], store: Store) -> AdminService:
    """The operator service for the command line: the database, plus the store's caches so that a
    revoked key or a changed plan applies at once on a shared Redis."""
    plan_cache = CachedPlans(
        store, BuiltinPlanSource(PlanRepository(sessions), parse_plan_spec(s.default_plan)),
        ttl=s.cache_ttl_seconds, grace=s.governance_grace_seconds, basis=plans_basis(s),
    )
    identities = Authenticator(store, api_keys=None, ttl=s.jwt_cache_ttl_seconds, grace=s.governance_grace_seconds)
    # The gateway's quota counters, on the same store (a plan change seeds its new windows' counters).
    limiter = QuotaLimiter(store, settle_within=SETTLE_WITHIN + s.stream_max_seconds)
    # `sentinel serve` on settings with no upstream runs the built-in mock as both providers: their
    # default tiers are the table in effect (`tiers show` printed none). Only the tiers are read.
    served = s.served_by_mock("http://mock") if s.use_embedded_mock else s
    catalog = build_catalog(served)
    return build_admin(
        s, sessions, catalog_tiers=catalog.tiers, identities=identities, plan_cache=plan_cache,
        providers=catalog.providers, limiter=limiter, usage_stream=RedisStreamOutbox(store) if store.shared else None,
    )


def operator_key_digests(s: Settings) -> list[str]:
    """`hash_key` of the keys operators sign in with (admin, docs, metrics): never a user's
    credential, and refused saying so (see `Authenticator`)."""
    keys = (reveal(s.admin_key), reveal(s.docs_api_key), reveal(s.metrics_token))
    return [hash_key(key) for key in keys if key]


def secret_digests(s: Settings, catalog: Catalog) -> list[str]:
    """`hash_key` of every secret of the configuration (`configured_secrets`): never a user's
    credential, never sent to an identity source. Only the admin and docs keys were withheld, and
    with GOVERNANCE=zion the others went to Zion's `/users/me` as a user's bearer token."""
    return [hash_key(secret) for secret in configured_secrets(s, catalog)]


async def build_runtime(
    s: Settings, metrics: Metrics, tracing: Tracing | None = None, *, stream_clock: Callable[[], float] = time.monotonic,
    upstream_clock: Callable[[], float] = time.monotonic, window_clock: Callable[[], float] = time.time,
) -> Runtime:
    """Open the shared clients and build every service (call inside the running event loop).

    `tracing` replaces the one OTEL_EXPORTER_OTLP_ENDPOINT selects (tests pass an in-memory one);
    `stream_clock` is what the time limit of an answer's body (`SENTINEL_STREAM_MAX_SECONDS`) is read on,
    `upstream_clock` what an upstream request's sending is timed on (how soon a dropped connection
    dropped: `sentinel.routing.failover`), `window_clock` the Unix clock the quota windows are read on
    (and every time claim of a JWT — `exp`, `nbf`, `iat` — by the verifier and the authenticator's
    expiry checks alike, and the identity cache's ages); tests pass ones they move."""
    file = read_providers_file(s)  # before any pool is opened: a bad file stops start-up with nothing to close
    catalog = build_catalog(s, file)
    catalogue = build_model_catalogue(catalog, file)
    tracing = tracing or build_tracing(s.otel_endpoint, s.otel_service_name)
    store = create_store(s.redis_url, timeout=s.redis_timeout_seconds)
    await check_eviction(store)
    engine = create_engine(  # the pool's size applies to PostgreSQL; SQLite keeps its own pool
        s.database_url, pool_size=s.database_pool_size, max_overflow=s.database_max_overflow,
        timeout=s.database_timeout_seconds,
    )
    # The operators' usage reports (exports, totals, top lists) read the whole ledger: their
    # statements may outlast DATABASE_TIMEOUT_SECONDS, up to DATABASE_REPORT_TIMEOUT_SECONDS (a
    # database that never answers is then a 503, not a wait until the operator gives up). On
    # PostgreSQL they get a small engine of their own (connects and pool waits bounded as a request's).
    report_engine = (
        create_engine(s.database_url, pool_size=2, max_overflow=2, timeout=s.database_timeout_seconds,
                      statement_timeout=s.database_report_timeout_seconds)
        if engine.dialect.name == "postgresql" else None
    )
    await migrate(engine, connect_timeout=s.database_timeout_seconds)
    sessions = session_factory(engine)
    http = create_session(
        read_timeout=s.upstream_timeout_seconds, connect_timeout=s.upstream_connect_timeout_seconds,
        keepalive=s.upstream_keepalive_seconds, trace_configs=tracing.trace_configs(),
    )
    local_ttl = LOCAL_CACHE_SECONDS if s.redis_url else 0.0
    metrics.known_models.update(known_models(catalog, catalogue))
    # On a SQLite file, usage records are inserted through a private connection (one hop a batch).
    sqlite_writer = SqliteWriter.for_url(s.database_url, busy_timeout=s.database_timeout_seconds)
    ledger = SqlLedger(sessions, sqlite_writer, idle_recheck=IDLE_RECHECK_SECONDS)
    governance = build_governance(
        s, store=store, sessions=sessions, http=http, catalog_tiers=catalog.tiers, metrics=metrics, ledger=ledger,
        wall_clock=window_clock,
    )
    zion_mode = s.governance is GovernanceKind.zion  # usage is reported by email: identities need one
    authenticator = Authenticator(
        store, api_keys=KeyService(sessions, require_email=zion_mode), jwt=governance.jwt,
        ttl=s.jwt_cache_ttl_seconds, grace=s.governance_grace_seconds, metrics=metrics, local_ttl=local_ttl,
        require_email=zion_mode, withheld=secret_digests(s, catalog),
        operator_keys=operator_key_digests(s), clock=window_clock,  # the verifier's clock: one `exp` verdict
    )
    fallbacks = metrics.tokenizer_fallback  # (counts run in worker threads too: inc, never the loop's `add`)
    counter = TokenCounter(on_fallback=lambda wanted, used: metrics.child(fallbacks, wanted, used).inc())
    await asyncio.to_thread(counter.warm)
    plans = CachedPlans(
        store, governance.plans, ttl=s.cache_ttl_seconds, grace=s.governance_grace_seconds, local_ttl=local_ttl,
        metrics=metrics, basis=plans_basis(s), clock=window_clock,  # a reading's period ends on the windows' clock
    )
    # A stream outbox only where every replica sees the same stream (Redis, Redis Cluster).
    stream_outbox = (
        RedisStreamOutbox(
            store, lease_seconds=s.usage_lease_seconds, replicas=s.usage_stream_replicas,
            replica_timeout_ms=s.usage_stream_replica_timeout_ms,
        )
        if store.shared
        else None
    )
    # The built-in ledger on one process: records go straight to the ledger (it is durable and
    # exactly-once by request id); an outbox would be a second copy written and deleted again.
    ledger_outbox = LedgerOutbox(governance.sink) if not zion_mode and not store.shared else None
    outbox = DurableOutbox(
        SqlOutbox(sessions, lease_seconds=s.usage_lease_seconds, idle_recheck=IDLE_RECHECK_SECONDS),
        stream_outbox, ledger=ledger_outbox,
        max_unstored=s.max_unstored_records, on_unstored=metrics.unstored_records.set,
    )
    deliverer = UsageDeliverer(outbox, governance.sink, metrics, interval=s.usage_flush_interval_seconds,
                               backoff=delivery_backoff(s.usage_lease_seconds))
    # A reservation's marker outlives the longest answer by a day (a settlement after it changes nothing).
    limiter = QuotaLimiter(store, settle_within=SETTLE_WITHIN + s.stream_max_seconds, clock=window_clock)
    local_limiter = LocalLimiter(clock=window_clock)
    seeder = WindowSeeder(ledger, limiter, outbox.sql, stream_outbox)
    # A shared store that lost its data is noticed (a marker read every few seconds) and every window
    # seeded again from the ledger (built-in plans only: Zion's usage is not in the local ledger).
    store_loss = (
        StoreLoss(store, None if zion_mode else seeder, None if zion_mode else PlanRepository(sessions),
                  parse_plan_spec(s.default_plan), metrics, local=local_limiter)
        if store.shared else None
    )
    meter = QuotaMeter(
        plans=plans, limiter=limiter, local_limiter=local_limiter, failure_mode=s.quota_failure_mode,
        counter=counter, outbox=outbox, metrics=metrics, default_max_output=s.default_max_output_tokens,
        unrecordable=lambda: outbox.full, referenced=s.reference_input_tokens,
        before_hand_back=store_loss.check if store_loss is not None else None,
    )
    body_limit = BodyLimit(s.stream_max_seconds, stream_clock, s.stream_hold_seconds)  # every answer's body
    chat_providers: dict[str, ChatProvider] = {
        name: make_provider(spec, http, default_max_tokens=s.default_max_output_tokens, clock=upstream_clock,
                            body_limit=body_limit)
        for name, spec in catalog.providers.items()
    }
    health = ProviderHealth(store, metrics, reuse_seconds=READ_REUSE_SECONDS)
    router = TierRouter(
        tiers=governance.tiers, providers=list(chat_providers), health=health,
        sessions=SessionStore(store, s.session_ttl_seconds, metrics=metrics), selector=WeightedSelector(),
        metrics=metrics,
        failover=s.session_failover, auto_key=s.session_auto_key,
    )
    relays = {
        name: OpenAICompatUpstream(name, spec.base_url, spec.api_key, http, upstream_clock, body_limit,
                                   spec.end_user_field)
        for name, spec in catalog.providers.items() if spec.kind == "openai"
    }
    # The same `openai` as every other surface's (the catalog's), the one object: a batch's models
    # are checked against the upstream it is sent to (`OpenAIRelay._batch_model`).
    default = relay_default(s, catalog)
    openai = relays.get(default.name) or OpenAICompatUpstream(
        default.name, default.base_url, default.api_key, http, upstream_clock, body_limit, default.end_user_field)
    anthropic_relays = {
        name: AnthropicUpstream(name, spec.base_url, spec.api_key, http, upstream_clock, body_limit)
        for name, spec in catalog.providers.items() if spec.kind == "anthropic"
    }
    routes = ModelRoutes(health)
    translated = TranslatedChat(chat_providers, meter, counter, metrics, default_max_tokens=s.default_max_output_tokens,
                                routes=routes)
    secret = reveal(s.end_user_secret)
    end_users = EndUsers(secret.encode() if secret else None)  # what providers are told a caller is
    live = LiveState(
        plans=plans, limiter=limiter, health=router.health, tiers=governance.tiers, providers=set(chat_providers),
        sessions=router.sessions, outbox=outbox,
    )
    admin = build_admin(
        s, sessions, catalog_tiers=catalog.tiers, live=live, identities=authenticator, plan_cache=plans,
        db_tiers=governance.tiers if isinstance(governance.tiers, DbTiers) else None,
        report_sessions=session_factory(report_engine) if report_engine is not None else None,
        usage_stream=stream_outbox,
    )
    outcomes = RequestOutcomes()
    stats_writer = RequestStatsWriter(sessions, outcomes)
    # The ledger is rolled up after the fact (recording stays one insert); only the built-in ledger has one.
    rollups = RollupWorker(ledger.roll_up) if not zion_mode else None
    # Plan changes kept unfinished (the store or the database down), by this process or another (the CLI).
    finisher = PlanFinisher(admin.finish_plan_changes) if not zion_mode else None
    # A DEFAULT_PLAN changed since the last start seeds its new windows — on the in-process store, which
    # kept no counter, every window of every user's plan (built-in plans only: Zion's usage is not in
    # the local ledger); start-up waits for it within a bound, then it goes on in the background.
    startup_seed = (
        StartupSeed(AppliedSettings(sessions), seeder, admin.default_plan, plans=None if store.shared else PlanRepository(sessions))
        if not zion_mode else None
    )
    # The seed's first attempt before the deliverer starts: records a crash left in the outbox are read
    # there by the seed, not moved to the ledger between its reads of the two (missed by both).
    if startup_seed is not None:
        startup_seed.start()
        await startup_seed.wait(s.database_timeout_seconds)
    if store_loss is not None:
        await store_loss.begin()
        store_loss.start()
    deliverer.start()
    stats_writer.start()
    if rollups is not None:
        rollups.start()
    if finisher is not None:
        finisher.start()
    redact = Redactor(configured_secrets(s, catalog))
    if isinstance(tracing, OtelTracing):
        tracing.redact = redact
    return Runtime(
        settings=s,
        store=store,
        engine=engine,
        authenticator=authenticator,
        relay=OpenAIRelay(
            relays, openai, meter, Ownership(store), metrics, catalogue=catalogue, routes=routes, translated=translated,
            end_users=end_users, counter=counter,
        ),
        messages=MessagesService(
            anthropic_relays, meter, metrics, counter, catalogue=catalogue, routes=routes, translated=translated,
            end_users=end_users,
        ),
        models=ModelList(catalogue, meter),
        native=NativeChat(router, chat_providers, meter, counter, end_users, reasons=catalogue.reasons,
                          max_output=catalogue.max_output, metrics=metrics),
        router=router,
        # Settlements under way first (requests cancelled past the shutdown deadline finish theirs):
        # their records go to the outbox and the ledger the next closers flush and close (the streams
        # read on after their clients left cut before: each settles as it stands).
        closers=[lambda: meter.drain(s.shutdown_timeout_seconds), *([startup_seed.stop] if startup_seed else []),
                 lambda: deliverer.stop(s.shutdown_timeout_seconds), *([rollups.stop] if rollups else []),
                 *([finisher.stop] if finisher else []), *([store_loss.stop] if store_loss else []),
                 http.close, stats_writer.stop, *([sqlite_writer.close] if sqlite_writer else []),
                 lambda: close_engine(engine, s.database_timeout_seconds),
                 *([lambda: close_engine(report_engine, s.database_timeout_seconds)] if report_engine else []),
                 store.close, lambda: asyncio.to_thread(tracing.shutdown)],
        admin=admin,
        tracing=tracing,
        outcomes=outcomes,
        redact=redact,
        plan_finisher=finisher,
        store_loss=store_loss,
    )


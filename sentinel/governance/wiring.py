"""Picks the governance parts for the configured mode: identity sources, plans, usage sink, tiers.

- `GOVERNANCE=builtin`: Sentinel's database holds keys, plans and the usage ledger; tiers come from
  the database (`sentinel tiers set`) over the catalog (defaults or the providers file). JWTs are accepted too when JWT_SECRET/JWT_JWKS_URL
  is set (verified locally).
- `GOVERNANCE=zion`: Zion JWTs are validated by Zion (or locally with JWT_SECRET/JWT_JWKS_URL),
  limits come from Zion, usage goes to Zion's batch endpoint, tiers from Zion's tier config (the
  catalog's table is the fallback when Zion has never answered). Sentinel API keys keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.config import GovernanceKind, Settings
from sentinel.governance.identity import IdentitySource
from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.plan_source import BuiltinPlanSource, PlanSource
from sentinel.governance.plans import PlanRepository
from sentinel.governance.tier_store import DbTiers, TierRepository
from sentinel.governance.zion import ZionClient, ZionIdentitySource
from sentinel.governance.zion_sources import ZionPlans, ZionSink
from sentinel.quota.deliverer import SqlLedgerSink, UsageSink
from sentinel.quota.limits import parse_plan_spec
from sentinel.routing.tiers import TierSource, TierTable, ZionTiers
from sentinel.store import Store


@dataclass
class Governance:
    jwt: IdentitySource | None
    plans: PlanSource
    sink: UsageSink
    tiers: TierSource


def build_governance(
    s: Settings,
    *,
    store: Store,
    sessions: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    catalog_tiers: TierTable,
) -> Governance:
    default_plan = parse_plan_spec(s.default_plan, "default")
    local_jwt: IdentitySource | None = None
    zion: ZionClient | None = None
    if s.governance is GovernanceKind.zion:
        assert s.zion_api_url and s.zion_api_key  # checked by Settings
        zion = ZionClient(s.zion_api_url, s.zion_api_key, session=http)
    if s.jwt_secret or s.jwt_jwks_url:
        verifier = JwtVerifier(s.jwt_secret, s.jwt_jwks_url, s.jwt_audience, s.jwt_issuer, http)
        local_jwt = LocalJwtIdentitySource(verifier, profile_source=ZionIdentitySource(zion) if zion else None)
    if zion is None:
        return Governance(
            jwt=local_jwt,
            plans=BuiltinPlanSource(PlanRepository(sessions), default_plan),
            sink=SqlLedgerSink(SqlLedger(sessions)),
            tiers=DbTiers(TierRepository(sessions), catalog_tiers, s.tier_config_ttl_seconds),
        )
    window = int(s.cache_ttl_seconds + s.governance_grace_seconds + 60)
    return Governance(
        jwt=local_jwt or ZionIdentitySource(zion),
        plans=ZionPlans(zion, default_plan, max_window_seconds=window),
        sink=ZionSink(zion),
        tiers=ZionTiers(zion.tier_config, store, s.tier_config_ttl_seconds, fallback=catalog_tiers),
    )

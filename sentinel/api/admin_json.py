"""The admin API's JSON shapes (documented in `sentinel.api.admin_openapi`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sentinel.domain.plans import Plan
from sentinel.domain.tiers import TierTable
from sentinel.governance.audit import AuditEntry
from sentinel.governance.keys import ApiKeyInfo
from sentinel.governance.usage_stats import LedgerEntry
from sentinel.governance.users import UserSummary
from sentinel.services.admin import Overview, TiersView, UserDetail
from sentinel.services.admin_live import ProviderView
from sentinel.services.admin_usage import ranked_json


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def key_json(info: ApiKeyInfo, now: datetime) -> dict[str, Any]:
    """A key as the admin API shows it: `active` is False once it is revoked or expired (at `now`),
    `status` says which."""
    return {
        "id": info.id, "user": info.external_id, "name": info.name, "prefix": info.prefix,
        "created_at": iso(info.created_at), "last_used_at": iso(info.last_used_at),
        "revoked_at": iso(info.revoked_at), "expires_at": iso(info.expires_at), "active": info.status(now) == "active",
        "status": info.status(now),
    }


def plan_json(plan: Plan, users: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": plan.name,
        "spec": plan.spec(),
        "limits": [{"metric": lim.metric, "limit": lim.limit, "window_seconds": lim.window_seconds} for lim in plan.limits],
    }
    if users is not None:
        out["users"] = users
    return out


def user_summary_json(user: UserSummary) -> dict[str, Any]:
    return {
        "external_id": user.external_id, "email": user.email, "plan": user.plan_name,
        "created_at": iso(user.created_at), "active_keys": user.active_keys, "last_used_at": iso(user.last_used_at),
    }


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "request_id": entry.request_id, "model": entry.model, "provider": entry.provider, "endpoint": entry.endpoint,
        "status": entry.status, "input_tokens": entry.input_tokens, "output_tokens": entry.output_tokens,
        "cost_usd": entry.cost_usd, "started_at": iso(entry.started_at), "finished_at": iso(entry.finished_at),
        "latency_ms": entry.latency_ms,
    }


def user_json(detail: UserDetail, now: datetime) -> dict[str, Any]:
    return {
        "external_id": detail.external_id,
        "user": None if detail.summary is None else user_summary_json(detail.summary),
        "plan_origin": detail.plan_origin,
        "quota": None if detail.quota is None else detail.quota.to_json(),
        "keys": [key_json(k, now) for k in detail.keys],
        "more_keys": detail.more_keys,
        "recent_requests": [entry_json(e) for e in detail.recent],
        "usage_30d": ranked_json(detail.usage_30d),
        "models_24h": detail.models_24h,
    }


def provider_json(view: ProviderView) -> dict[str, Any]:
    return {
        "provider": view.provider, "model": view.model or None, "tiers": view.tiers, "configured": view.configured,
        "available": view.available, "failures": view.failures, "backoff_seconds": view.backoff_seconds,
        "remaining_seconds": view.remaining_seconds, "state": view.state, "soft": view.soft,
    }


def overview_json(view: Overview) -> dict[str, Any]:
    return {
        "period": view.period,
        "series": view.series.to_json(),
        "top_users": [ranked_json(r) for r in view.top_users],
        "top_models": [ranked_json(r) for r in view.top_models],
        "top_since": iso(view.top_since),
        "providers": [provider_json(p) for p in view.providers],
        "providers_error": view.providers_error,
        "outbox_depth": view.outbox_depth,
    }


def table_json(table: TierTable) -> dict[str, Any]:
    return {tier: [entry.model_dump() for entry in entries] for tier, entries in table.items()}


def tiers_json(view: TiersView) -> dict[str, Any]:
    """The tier table; `not_configured` names each candidate in effect whose provider is not configured
    (never chosen: a typo such as `opnai/...` can leave a tier without one), as the console and
    `sentinel tiers set` flag it — the admin API said nothing."""
    unserved = {
        tier: [f"{e.provider}/{e.model}" for e in entries if e.provider not in view.providers]
        for tier, entries in view.effective.items()
    } if view.providers else {}
    return {
        "effective": table_json(view.effective), "overrides": table_json(view.overrides),
        "fallback": table_json(view.fallback), "editable": view.editable,
        "not_configured": {tier: names for tier, names in unserved.items() if names},
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "at": iso(entry.at), "actor": entry.actor, "action": entry.action, "target": entry.target,
        "details": entry.details, "address": entry.address,
    }

"""The admin API's OpenAPI 3.1 document (served at `/admin/api/openapi.json`, behind admin auth)."""

from __future__ import annotations

from typing import Any

from sentinel import __version__
from sentinel.domain.plans import METRICS
from sentinel.domain.tiers import TIERS
from sentinel.governance.keys import MAX_KEY_LIFETIME
from sentinel.routing.health import PHASES
from sentinel.services.admin_usage import PERIODS, STEPS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _input(required: list[str], **props: Any) -> dict[str, Any]:
    """A request body's object: a field the route does not take is refused (400), not ignored."""
    return {**_obj(required, **props), "additionalProperties": False}


_NULL_STR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
MAX_KEY_LIFETIME_SECONDS = int(MAX_KEY_LIFETIME.total_seconds())
_MOMENT = {"type": "string", "description": "a window back from now (`1h`, `7d`) or an ISO 8601 date/time"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(
        ["message", "type", "code"], message={"type": "string"}, type={"type": "string"}, code={"type": "string"},
        param={**_NULL_STR, "description": "the request parameter the error is about, null when none"},
        details={"type": "object", "description": "`fields` maps a field (`limits.0.window`) to its message"},
    )),
    "Limit": _obj(["metric", "limit", "window_seconds"], metric={"enum": list(METRICS)}, limit=_INT,
                  window_seconds=_INT),
    "LimitInput": _input(["metric", "limit", "window"], metric={"enum": list(METRICS)},
                       limit={"type": ["integer", "string"]},
                       window={"type": ["string", "integer"], "description": "`90s`, `1m`, `1h`, `1d`, `30d`, `2w`"}),
    "Plan": _obj(["name", "spec", "limits"], name={"type": "string"}, spec={"type": "string"},
                 limits={"type": "array", "items": _ref("Limit")}, users=_INT),
    "Key": _obj(["id", "user", "prefix", "created_at", "active"], id={"type": "string"}, user={"type": "string"},
                name=_NULL_STR, prefix={"type": "string"}, created_at=_TIME, last_used_at=_NULL_TIME,
                revoked_at=_NULL_TIME,
                expires_at={**_NULL_TIME, "description": "when the key stops working; null: never (until revoked)"},
                active={"type": "boolean", "description": "neither revoked nor expired"},
                status={"enum": ["active", "expired", "revoked"]}),
    "NewKey": {"allOf": [_ref("Key"), _obj(["key"], key={"type": "string", "description": "shown this once"})]},
    "UserSummary": _obj(["external_id", "plan", "active_keys"], external_id={"type": "string"}, email=_NULL_STR,
                        plan=_NULL_STR, created_at=_TIME, active_keys=_INT, last_used_at=_NULL_TIME),
    "LimitState": _obj(["metric", "window_seconds", "limit", "used", "remaining", "reset_at"],
                       metric={"type": "string"}, window_seconds=_INT, limit=_INT, used=_INT, remaining=_INT,
                       reset_at=_TIME),
    "Quota": _obj(["plan", "limits", "error"], plan=_NULL_STR,
                  limits={"type": "array", "items": _ref("LimitState")}, error=_NULL_STR),
    "LedgerEntry": _obj(["request_id", "endpoint", "status"], request_id={"type": "string"}, model=_NULL_STR,
                        provider=_NULL_STR, endpoint={"type": "string"}, status=_INT, input_tokens=_INT,
                        output_tokens=_INT, cost_usd={"type": ["number", "null"]}, started_at=_TIME,
                        finished_at=_TIME, latency_ms=_INT),
    "ModelTotals": _obj(["model", "requests", "input_tokens", "output_tokens"], model=_NULL_STR, requests=_INT,
                        input_tokens=_INT, output_tokens=_INT),
    "User": _obj(["external_id", "keys", "recent_requests"], external_id={"type": "string"},
                 user={"oneOf": [_ref("UserSummary"), {"type": "null"}]}, plan_origin={"type": "string"},
                 quota={"oneOf": [_ref("Quota"), {"type": "null"}]},
                 keys={"type": "array", "items": _ref("Key"), "description": "the newest 100, oldest first"},
                 more_keys={"type": "boolean", "description": "the user has more keys (`keys?user=` pages them)"},
                 recent_requests={"type": "array", "items": _ref("LedgerEntry")},
                 usage_30d=_ref("Ranked"), models_24h={"type": "array", "items": _ref("ModelTotals")}),
    "Point": _obj(["start", "requests", "errors", "error_rate", "input_tokens", "output_tokens", "cost_usd"],
                  start=_TIME, requests={**_INT, "description": "served requests (ledger)"}, errors=_INT,
                  input_tokens=_INT, output_tokens=_INT, cost_usd=_NUM, p50_ms={"type": ["number", "null"]},
                  p99_ms={"type": ["number", "null"]},
                  answers={**_INT, "description": "every API answer, refused and failed ones too"},
                  client_errors=_INT, rate_limited=_INT, server_errors=_INT,
                  error_rate={**_NUM, "description": "server_errors / answers"},
                  refused_rate={**_NUM, "description": "client_errors / answers"}),
    "Series": _obj(["start", "step_seconds", "points", "totals"], start=_TIME, step_seconds=_INT,
                   points={"type": "array", "items": _ref("Point")}, totals=_ref("Point")),
    "Ranked": _obj(["name", "requests"], name={"type": "string"}, provider=_NULL_STR, requests=_INT, errors=_INT,
                   input_tokens=_INT, output_tokens=_INT, cost_usd=_NUM),
    "Provider": _obj(["provider", "available"], provider={"type": "string"}, model=_NULL_STR,
                     tiers={"type": "array", "items": {"type": "string"}}, configured={"type": "boolean"},
                     available={"type": "boolean"}, failures=_INT, backoff_seconds=_NUM, remaining_seconds=_NUM,
                     state={"enum": list(PHASES)},
                     soft={"type": "boolean", "description": "in a soft backoff (client-causable failures alone):"
                                                             " avoided while another candidate may serve, never"
                                                             " a reason to refuse a request"}),
    "Overview": _obj(["period", "series", "top_users", "top_models", "providers", "outbox_depth"],
                     period={"enum": list(PERIODS)}, series=_ref("Series"),
                     top_users={"type": "array", "items": _ref("Ranked")},
                     top_models={"type": "array", "items": _ref("Ranked")}, top_since=_TIME,
                     providers={"type": "array", "items": _ref("Provider")}, providers_error=_NULL_STR,
                     outbox_depth={"type": ["integer", "null"]}),
    "TierTable": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}},
    "Tiers": _obj(["effective", "overrides", "fallback", "editable", "not_configured"], effective=_ref("TierTable"),
                  overrides=_ref("TierTable"), fallback=_ref("TierTable"), editable={"type": "boolean"},
                  not_configured={"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                                  "description": "by tier, each candidate in effect (`provider/model`) whose provider "
                                                 "is not configured: never chosen"}),
    "AuditEntry": _obj(["id", "at", "actor", "action", "target"], id=_INT, at=_TIME, actor={"type": "string"},
                       action={"type": "string"}, target={"type": "string"}, details={"type": "object"},
                       address=_NULL_STR),
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    text = {"400": "Invalid input (`details.fields`)", "401": "No admin key or session", "403": "CSRF token missing",
            "404": "Not found", "409": "`plans_managed_by_governance`: with GOVERNANCE=zion the plans are Zion's "
                                       "(Sentinel's would never be enforced); nothing is changed",
            "429": "Too many failed sign-ins from this address",
            "503": "Unavailable (`revocation_incomplete`: the key is revoked in the database but the store could "
                   "not drop its cached validation; revoke it again once the store answers. "
                   "`plan_change_incomplete`: the plan change is saved but the store could not drop its users' "
                   "cached plans (`details.users`) or the store or the database seed its new windows' counters; "
                   "it is kept (`details.finishing`: always true) and a running gateway finishes it by itself "
                   "once they answer; making it again finishes it at once)"}
    return {code: _json(_ref("Error"), text[code]) for code in ("401", "429", *codes)}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, errors: tuple[str, ...] = (), status: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_USER_ID = {"name": "id", "in": "query", "required": True, "schema": {"type": "string"},
            "description": "the user's external id, percent-encoded (`a%2Fb` for `a/b`)"}


def _by_query(paths: dict[str, Any]) -> dict[str, Any]:
    """`/admin/api/user...?id=` for every `/admin/api/users/{external_id}...` operation: the same
    answers, for ids the canonical-path check refuses as a path segment (`/`, `\\`, `?`, `#`, `%`,
    `.`, `..`)."""
    out: dict[str, Any] = {}
    prefix = "/admin/api/users/{external_id}"
    for path, item in paths.items():
        if not path.startswith(prefix):
            continue
        ops = {}
        for method, op in item.items():
            params = [_USER_ID if p.get("name") == "external_id" else p for p in op.get("parameters", [])]
            ops[method] = {**op, "summary": op["summary"] + " (the user named by `id`)", "parameters": params,
                           "responses": {**op["responses"], **_errors("400")}}  # no `id`: 400
        out["/admin/api/user" + path[len(prefix):]] = ops
    return out


def build_admin_openapi() -> dict[str, Any]:
    """The document (OpenAPI 3.1)."""
    def array(name: str, item: str) -> dict[str, Any]:
        return _json(_obj([name], **{name: {"type": "array", "items": _ref(item)}}))

    since_until = [_query("since", _MOMENT), _query("until", _MOMENT)]
    change = ("400", "403")
    paths: dict[str, Any] = {
        "/admin/api/overview": {"get": _op("Requests, tokens, cost, errors, p50/p99 over time; top users and models; "
                                           "providers; outbox depth", _json(_ref("Overview")),
                                           params=[_query("period", {"enum": list(PERIODS)})], errors=("400",))},
        "/admin/api/usage": {"get": _op("Usage in time buckets", _json(_ref("Series")),
                                        params=[*since_until, _query("step", {"enum": list(STEPS)})], errors=("400",))},
        "/admin/api/usage/totals": {"get": _op(
            "One user's usage by model (what `sentinel usage show` prints)",
            _json(_obj(["user", "models"], user={"type": "string"}, models={"type": "array", "items": _ref("ModelTotals")})),
            params=[{**_query("user", {"type": "string"}), "required": True}, *since_until], errors=("400",))},
        "/admin/api/usage.csv": {"get": _op(
            "Usage per user and model as CSV: external_id, model, requests, input_tokens, output_tokens, cost_usd",
            {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}, params=since_until,
            errors=("400",))},
        "/admin/api/users": {"get": _op("Find users (external id or email contains `q`)", array("users", "UserSummary"),
                                        params=[_query("q", {"type": "string"}), _query("limit", _INT),
                                                _query("offset", _INT)])},
        "/admin/api/users/{external_id}": {"get": _op("A user: plan, live quota, keys, recent requests",
                                                      _json(_ref("User")), params=[_path("external_id")],
                                                      errors=("404",))},
        "/admin/api/users/{external_id}/plan": {"put": _op(
            "Put a user on a plan (null: the default plan)",
            _json(_obj(["external_id", "plan"], external_id={"type": "string"}, plan=_NULL_STR)),
            params=[_path("external_id")], body=_input(["plan"], plan=_NULL_STR),
            errors=(*change, "404", "409", "503"))},
        "/admin/api/users/{external_id}/quota": {"get": _op("The user's live quota counters", _json(_ref("Quota")),
                                                            params=[_path("external_id")], errors=("404",))},
        "/admin/api/users/{external_id}/keys": {"post": _op(
            "Issue a key (shown once)", _json(_ref("NewKey"), "Created"), params=[_path("external_id")],
            body=_input([], name=_NULL_STR,
                      email={**_NULL_STR, "description": "sets or replaces the user's email (the `key.create` "
                             "audit entry records the change: `email: {from, to}`)"},
                      expires_in_seconds={"type": ["integer", "null"], "minimum": 1, "maximum": MAX_KEY_LIFETIME_SECONDS,
                                          "description": "the key's lifetime (null: it never expires)"},
                      expires_at={**_NULL_TIME, "description": "when the key stops working (ISO 8601, UTC unless "
                                  "it says otherwise; not with `expires_in_seconds`)"}),
            errors=change, status="201")},
        "/admin/api/keys": {"get": _op("Keys (prefixes only), oldest first, a page of `limit` (at most 500) from "
                                       "`offset` on", array("keys", "Key"),
                                       params=[_query("user", {"type": "string"}), _query("limit", _INT),
                                               _query("offset", _INT)], errors=("400",))},
        "/admin/api/keys/{key_id}/revoke": {"post": _op(
            "Revoke a key (its cached validation is dropped; a revoked key again: the drop is sent again)",
            _json(_ref("Key")), params=[_path("key_id")], errors=("400", "403", "404", "503"))},
        "/admin/api/plans": {"get": _op("Plans with their users' count", array("plans", "Plan"))},
        "/admin/api/plans/{name}": {
            "get": _op("A plan", _json(_ref("Plan")), params=[_path("name")], errors=("404",)),
            "put": _op("Create (with `create: true`, refused when it exists) or replace a plan's limits (at "
                       "least one; a new plan's name may not equal an existing one's but for case, nor be `default` in "
                       "any case: DEFAULT_PLAN's name)",
                       _json(_ref("Plan")), params=[_path("name")],
                       body=_input(["limits"], limits={"type": "array", "items": _ref("LimitInput"), "minItems": 1},
                                 create={"type": "boolean"}), errors=(*change, "409", "503")),
            "delete": _op("Delete a plan (its users get the default plan)",
                          _json(_obj(["deleted"], deleted={"type": "string"})), params=[_path("name")],
                          errors=("403", "404", "409", "503")),
        },
        "/admin/api/tiers": {"get": _op("The tier table in effect, the database's overrides and the fallback",
                                        _json(_ref("Tiers")))},
        "/admin/api/tiers/{tier}": {
            "put": _op("Replace a tier's candidates", _json(_ref("Tiers")),
                       params=[{**_path("tier"), "schema": {"enum": list(TIERS)}}],
                       body=_input(["entries"], entries={"type": "array", "items": {
                           "type": "string", "description": "provider/model:cost[:input_price:output_price]"}}),
                       errors=change),
            "delete": _op("Drop a tier's overrides", _json(_obj(["reset"], reset={"type": "string"})),
                          params=[_path("tier")], errors=change),
        },
        "/admin/api/providers": {"get": _op("Tier candidates with their health and backoff",
                                            _json(_obj(["providers"], providers={"type": "array", "items": _ref("Provider")},
                                                       error=_NULL_STR)))},
        "/admin/api/users/{external_id}/sessions/{conversation_id}": {"get": _op(
            "A user's conversation's session", _json({"type": "object"}),
            params=[_path("external_id"), _path("conversation_id")], errors=("404",))},
        "/admin/api/users/{external_id}/session": {"get": _op(
            "A user's conversation's session, the conversation named by `conversation_id` (an id no path "
            "segment can hold: `a/b`, `50%`)", _json({"type": "object"}),
            params=[_path("external_id"), {**_query("conversation_id", {"type": "string"}), "required": True}],
            errors=("400", "404"))},
        "/admin/api/outbox": {"get": _op("Usage records waiting for delivery",
                                         _json(_obj(["depth"], depth={"type": ["integer", "null"]})))},
        "/admin/api/audit": {"get": _op("The audit log, newest first", array("entries", "AuditEntry"),
                                        params=[_query("limit", _INT), _query("before", _INT),
                                                _query("target", {"type": "string"})], errors=("400",))},
        "/admin/api/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
    }
    paths.update(_by_query(paths))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinel Admin API", "version": __version__,
            "description": "Operator API behind the console. Authenticate with `Authorization: Bearer "
                           "<SENTINEL_ADMIN_KEY>` (scripts), or the console's session cookie plus an "
                           "`X-CSRF-Token` header on every call that changes something.",
        },
        "servers": [{"url": "/"}],
        "security": [{"adminKey": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer", "description": "SENTINEL_ADMIN_KEY"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sentinel_admin"},
            },
        },
    }

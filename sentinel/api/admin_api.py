"""The admin JSON API under `/admin/api/`: thin handlers over `AdminService`.

Every route needs the admin key (`Authorization: Bearer`) or the console's session cookie, and
with the cookie every state-changing call needs `X-CSRF-Token` (see `sentinel.api.admin_auth`).
The routes are only registered with SENTINEL_ADMIN_KEY set. The document describing them is
`GET /admin/api/openapi.json` (`sentinel.api.admin_openapi`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.admin_auth import AdminAccess, AdminGate
from sentinel.api.admin_json import (
    audit_json,
    key_json,
    overview_json,
    plan_json,
    provider_json,
    tiers_json,
    user_json,
    user_summary_json,
)
from sentinel.api.bodies import (
    is_read,
    parse_json_object,
    path_or_query,
    refuse_control_characters,
    refuse_unreadable_query,
)
from sentinel.api.deps import Deps
from sentinel.api.responses import NO_STORE, NOSNIFF, RawResponse, operator_json
from sentinel.api.throttle import address_of, client_of
from sentinel.domain.numbers import MAX_INT64, parse_whole
from sentinel.errors import InvalidRequest
from sentinel.services.admin import Actor, AdminService
from sentinel.services.admin_forms import MAX_ITEMS, limit_inputs, refuse
from sentinel.services.admin_usage import EMPTY_WINDOW, STEPS, empty_window, parse_moment
from sentinel.services.objects import repeated_key

PREFIX = "/admin/api"


def _json(data: Any, status: int = 200) -> RawResponse:
    """Every admin API answer: operator data, never cached (`no-store`), never sniffed."""
    return operator_json(data, status, no_store=True)


def moment_param(request: Request, name: str, now: datetime) -> datetime | None:
    """A `since`/`until` query parameter: a window back from now (`7d`) or an ISO date/time."""
    try:
        return parse_moment(request.query_params.get(name), now)
    except ValueError:
        raise refuse({name: "a window back from now (1h, 7d) or an ISO date/time"}) from None


def window_params(request: Request, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The `since` and `until` query parameters; 400 naming the bound at fault for a window holding no
    moment that can have been recorded (`since` not before `until` and now, `until` at 1970 or before)."""
    since, until = moment_param(request, "since", now), moment_param(request, "until", now)
    if (bound := empty_window(since, until, now)) is not None:
        raise refuse({bound: EMPTY_WINDOW[bound]})
    return since, until


def user_param(request: Request) -> str:
    """The user an admin API or console route is about: its `{external_id}` path segment, or
    (`/admin/api/user...`, `/admin/user...`, for ids no path segment can hold: `a/b`, `50%`, `..`) its
    `id` query parameter, exactly as given; 400 (`validation_failed`, field `id`) without one."""
    found: str | None = request.path_params.get("external_id")
    if found is None:
        found = request.query_params.get("id", "")
        if not found:
            raise refuse({"id": "the user's external id"})
    return found


def conversation_param(request: Request) -> str:
    """The conversation a session route is about: its `{conversation_id}` path segment, or (`.../session`,
    for ids no path segment can hold — a native `conversation_id` may be any text: `a/b`, `50%`) its
    `conversation_id` query parameter; 400 (field `conversation_id`) without one."""
    found = path_or_query(request, "conversation_id")
    if not found:
        raise refuse({"conversation_id": "the conversation's id"})
    return found


def unknown_fields(body: dict[str, Any], taken: tuple[str, ...]) -> dict[str, str]:
    """A message per field of `body` the route does not read (`taken`). Ignored, each changed what was
    done without a word: `expires_in` (the CLI's option's name) issued a key that never expires, a
    misspelt `create` replaced an existing plan's limits."""
    why = f"unknown field: this route takes {', '.join(taken)}"
    return {name: why for name in body if name not in taken}


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter from `low` to `high`, `default` when absent or empty."""
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    value = parse_whole(text, high)
    if value is None or value < low:
        raise refuse({name: f"a whole number from {low} to {high}"})
    return value


class AdminApiRoutes:
    """Handlers of `/admin/api/*` (see the module docstring)."""

    def __init__(self, deps: Deps, service: AdminService, gate: AdminGate, document: dict[str, Any]) -> None:
        self.deps = deps
        self.service = service
        self.gate = gate
        self.document = orjson.dumps(document)

    def routes(self) -> list[Route]:
        p = PREFIX
        return [
            Route(f"{p}/openapi.json", self.openapi, methods=["GET"]),
            Route(f"{p}/overview", self.overview, methods=["GET"]),
            Route(f"{p}/usage", self.usage_series, methods=["GET"]),
            Route(f"{p}/usage/totals", self.usage_totals, methods=["GET"]),
            Route(f"{p}/usage.csv", self.usage_csv, methods=["GET"]),
            Route(f"{p}/users", self.users, methods=["GET"]),
            Route(f"{p}/users/{{external_id}}", self.user, methods=["GET"]),
            Route(f"{p}/users/{{external_id}}/plan", self.set_user_plan, methods=["PUT"]),
            Route(f"{p}/users/{{external_id}}/quota", self.quota, methods=["GET"]),
            Route(f"{p}/users/{{external_id}}/keys", self.create_key, methods=["POST"]),
            Route(f"{p}/keys", self.keys, methods=["GET"]),
            Route(f"{p}/keys/{{key_id}}/revoke", self.revoke_key, methods=["POST"]),
            Route(f"{p}/plans", self.plans, methods=["GET"]),
            Route(f"{p}/plans/{{name}}", self.plan, methods=["GET", "PUT", "DELETE"]),
            Route(f"{p}/tiers", self.tiers, methods=["GET"]),
            Route(f"{p}/tiers/{{tier}}", self.tier, methods=["PUT", "DELETE"]),
            Route(f"{p}/providers", self.providers, methods=["GET"]),
            Route(f"{p}/users/{{external_id}}/sessions/{{conversation_id}}", self.session, methods=["GET"]),
            # The same, the conversation named by `?conversation_id=` (any text a client chose).
            Route(f"{p}/users/{{external_id}}/session", self.session, methods=["GET"]),
            # The same, the user named by `?id=`: for ids the canonical-path check refuses as a segment.
            Route(f"{p}/user", self.user, methods=["GET"]),
            Route(f"{p}/user/plan", self.set_user_plan, methods=["PUT"]),
            Route(f"{p}/user/quota", self.quota, methods=["GET"]),
            Route(f"{p}/user/keys", self.create_key, methods=["POST"]),
            Route(f"{p}/user/sessions/{{conversation_id}}", self.session, methods=["GET"]),
            Route(f"{p}/user/session", self.session, methods=["GET"]),
            Route(f"{p}/outbox", self.outbox, methods=["GET"]),
            Route(f"{p}/audit", self.audit, methods=["GET"]),
        ]

    async def _access(self, request: Request, *, client_text: tuple[str, ...] = ()) -> AdminAccess:
        access = await self.gate.authorize(request.method, request.headers, client_of(request))
        refuse_unreadable_query(request, client_text=client_text)
        return access

    async def _actor(self, request: Request) -> Actor:
        await self._access(request)
        return Actor("admin", address_of(request))

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await self.deps.read_body(request)
        body = parse_json_object(raw)
        # `{"limits": [...], "limits": []}` saved the plan without limits (orjson keeps the last value)
        if (why := repeated_key(raw, body)) is not None:
            raise InvalidRequest(f"Invalid JSON body: {why}", code="invalid_json")
        refuse_control_characters(body, "the body")
        return body

    async def openapi(self, request: Request) -> RawResponse:
        await self._access(request)
        return RawResponse(200, self.document, [(b"content-type", b"application/json"), NO_STORE, NOSNIFF])

    async def overview(self, request: Request) -> RawResponse:
        await self._access(request)
        view = await self.service.overview(request.query_params.get("period", "24h"))
        return _json(overview_json(view))

    async def usage_series(self, request: Request) -> RawResponse:
        await self._access(request)
        now = self.service.clock()
        step = request.query_params.get("step", "1h")
        if step not in STEPS:
            raise refuse({"step": f"one of {', '.join(STEPS)}"})
        since = moment_param(request, "since", now) or now - timedelta(days=1)
        until = moment_param(request, "until", now) or now
        if (bound := empty_window(since, until, now)) is not None:
            raise refuse({bound: EMPTY_WINDOW[bound]})
        series = await self.service.reports.series(since, until, STEPS[step])
        return _json(series.to_json())

    async def usage_totals(self, request: Request) -> RawResponse:
        await self._access(request)
        user = request.query_params.get("user")
        if not user:
            raise refuse({"user": "the user's external id"})
        now = self.service.clock()
        rows = await self.service.usage_totals(user, *window_params(request, now))
        return _json({"user": user, "models": rows})

    async def usage_csv(self, request: Request) -> RawResponse:
        await self._access(request)
        now = self.service.clock()
        text = await self.service.usage_csv(*window_params(request, now))
        headers = [
            (b"content-type", b"text/csv; charset=utf-8"),
            (b"content-disposition", b'attachment; filename="sentinel-usage.csv"'),
            NO_STORE, NOSNIFF,
        ]
        return RawResponse(200, text.encode(), headers)

    async def users(self, request: Request) -> RawResponse:
        await self._access(request)
        found = await self.service.find_users(
            request.query_params.get("q"), limit=int_param(request, "limit", 50, 1, 500),
            offset=int_param(request, "offset", 0, 0, 10_000_000),
        )
        return _json({"users": [user_summary_json(u) for u in found]})

    async def user(self, request: Request) -> RawResponse:
        await self._access(request)
        return _json(user_json(await self.service.user(user_param(request)), self.service.clock()))

    async def set_user_plan(self, request: Request) -> RawResponse:
        actor = await self._actor(request)
        self.service.plans_editable()  # 409 under GOVERNANCE=zion, before the body is read
        body = await self._body(request)
        plan = body.get("plan")
        # `plan` is required (null for the default plan): `{}` or a misspelt `{"plan_name": "team"}`
        # put the user back on the default plan, silently and audited as asked for; so did `""` (a
        # script's unset variable), which `sentinel users set-plan` refuses.
        if "plan" not in body or (plan is not None and (not isinstance(plan, str) or not plan)):
            raise refuse({"plan": "a plan name, or null for the default plan"})
        if unknown := unknown_fields(body, ("plan",)):
            raise refuse(unknown)
        external_id = user_param(request)
        await self.service.set_user_plan(external_id, plan, actor)
        return _json({"external_id": external_id, "plan": plan})

    async def quota(self, request: Request) -> RawResponse:
        await self._access(request)
        detail = await self.service.user(user_param(request))
        return _json(None if detail.quota is None else detail.quota.to_json())

    async def create_key(self, request: Request) -> RawResponse:
        actor = await self._actor(request)
        body = await self._body(request)
        name, email = body.get("name"), body.get("email")
        expires_in, expires_at = body.get("expires_in_seconds"), body.get("expires_at")
        wrong = {field: "text or null" for field, value in (("name", name), ("email", email))
                 if not isinstance(value, str | None)}
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int)):
            wrong["expires_in_seconds"] = "a whole number of seconds, or null"  # not "30d": that is the CLI's
        if not isinstance(expires_at, str | None):
            wrong["expires_at"] = "an ISO-8601 date/time (text), or null"
        wrong.update(unknown_fields(body, ("name", "email", "expires_in_seconds", "expires_at")))
        if wrong:  # only the fields at fault (`details.fields` named both, however right one was)
            raise refuse(wrong)
        info, key = await self.service.create_key(user_param(request), name, email, actor, expires_in=expires_in,
                                                  expires_at=expires_at, in_field="expires_in_seconds")
        return _json({**key_json(info, self.service.clock()), "key": key}, 201)

    async def keys(self, request: Request) -> RawResponse:
        await self._access(request)
        found = await self.service.keys.list_keys(
            request.query_params.get("user") or None, limit=int_param(request, "limit", 50, 1, 500),
            offset=int_param(request, "offset", 0, 0, 10_000_000),
        )
        now = self.service.clock()
        return _json({"keys": [key_json(k, now) for k in found]})

    async def revoke_key(self, request: Request) -> RawResponse:
        actor = await self._actor(request)
        info = await self.service.revoke_key(request.path_params["key_id"], actor)
        return _json(key_json(info, self.service.clock()))

    async def plans(self, request: Request) -> RawResponse:
        await self._access(request)
        return _json({"plans": [plan_json(plan, users) for plan, users in await self.service.plans()]})

    async def plan(self, request: Request) -> RawResponse:
        name = request.path_params["name"]
        if is_read(request):
            await self._access(request)
            return _json(plan_json(await self.service.plan(name)))
        actor = await self._actor(request)
        self.service.plans_editable()  # 409 under GOVERNANCE=zion, before the body is read
        if request.method == "DELETE":
            await self.service.delete_plan(name, actor)
            return _json({"deleted": name})
        body = await self._body(request)
        create = body.get("create", False)
        if not isinstance(create, bool):
            raise refuse({"create": "true or false"})
        if unknown := unknown_fields(body, ("limits", "create")):
            raise refuse(unknown)
        saved = await self.service.save_plan_input(name, limit_inputs(body.get("limits")), actor, create=create)
        return _json(plan_json(saved))

    async def tiers(self, request: Request) -> RawResponse:
        await self._access(request)
        return _json(tiers_json(await self.service.tiers()))

    async def tier(self, request: Request) -> RawResponse:
        actor = await self._actor(request)
        tier = request.path_params["tier"]
        if request.method == "DELETE":
            await self.service.reset_tier(tier, actor)
            return _json({"reset": tier})
        body = await self._body(request)
        entries = body.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries) or len(entries) > MAX_ITEMS:
            raise refuse({"entries": "a list of provider/model:cost[:input_price:output_price] strings"})
        if unknown := unknown_fields(body, ("entries",)):
            raise refuse(unknown)
        await self.service.set_tier(tier, entries, actor)
        return _json(tiers_json(await self.service.tiers()))

    async def providers(self, request: Request) -> RawResponse:
        await self._access(request)
        views, error = await self.service.require_live().provider_health()
        return _json({"providers": [provider_json(v) for v in views], "error": error})

    async def session(self, request: Request) -> RawResponse:
        # a `conversation_id` is the client's, any text its native request could hold (as in the path)
        await self._access(request, client_text=("conversation_id",))
        user = user_param(request)
        return _json(await self.service.require_live().session(user, conversation_param(request)))

    async def outbox(self, request: Request) -> RawResponse:
        await self._access(request)
        return _json({"depth": await self.service.require_live().outbox_depth()})

    async def audit(self, request: Request) -> RawResponse:
        await self._access(request)
        before = int_param(request, "before", -1, 0, MAX_INT64)  # an entry id; -1: absent
        entries = await self.service.audit(
            int_param(request, "limit", 50, 1, 500), None if before < 0 else before,
            request.query_params.get("target") or None,
        )
        return _json({"entries": [audit_json(e) for e in entries]})

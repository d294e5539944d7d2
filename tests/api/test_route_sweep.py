"""Every route the app serves refuses a request without the credential it takes.

The route table is read from the app itself (its dispatcher), for every method each route accepts,
with every optional surface on (the console and admin API, debug, docs, a metrics token, every `/v1`
path pass-through): a route added without authentication fails here unless it is named public.
Each request is refused in its surface's own shape and nothing of it reaches the provider.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sentinel.app import SentinelApp, create_app
from sentinel.config import Settings
from sentinel.governance.keys import KeyService
from tests.api.conftest import UPSTREAM_KEY
from tests.support.accounts import create_key, database, revoke_key
from tests.support.attack import SpyUpstream, openai_error
from tests.support.inprocess import Answer, call, route_table

ADMIN_KEY = "admin-key-for-the-route-sweep-0123"
DOCS_KEY = "docs-key-for-the-route-sweep-0123"
METRICS_TOKEN = "metrics-token-for-the-route-sweep"

# Routes anyone may call: the probes, the sign-in forms and the static assets they load.
PUBLIC = frozenset({
    "/health", "/health/live", "/health/ready",
    "/native/docs/signin", "/native/docs/assets/{name}",
    "/admin/signin", "/admin/assets/{name}",
})


@dataclass
class Swept:
    app: SentinelApp
    spy: SpyUpstream
    keys: dict[str, str]  # credential name -> its token


@pytest.fixture
async def swept(tmp_path: Path, spy: SpyUpstream) -> AsyncIterator[Swept]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/sweep.db", access_log=False, redis_url=None,
        openai_api_url=spy.url + "/v1", openai_api_key=UPSTREAM_KEY, anthropic_api_url=spy.url,
        anthropic_api_key="sk-ant-upstream-secret", admin_key=ADMIN_KEY, docs_api_key=DOCS_KEY,
        metrics_token=METRICS_TOKEN, debug=True, passthrough="/v1/*", auth_failures_per_minute=1_000_000,
    )
    _, user = await create_key(settings.database_url, "alice")
    revoked_id, revoked = await create_key(settings.database_url, "alice", "revoked")
    await revoke_key(settings.database_url, revoked_id)
    async with database(settings.database_url) as sessions:
        _, expired = await KeyService(sessions).create_key(
            "alice", "expired", expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
    app = create_app(settings)
    await app.startup()
    try:
        yield Swept(app, spy, {"user": user, "revoked": revoked, "expired": expired})
    finally:
        await app.shutdown()


def realm(template: str) -> str:
    """Which credential a route takes, by its path template."""
    if template in PUBLIC:
        return "public"
    if template.startswith("/admin/api"):
        return "admin_api"
    if template == "/admin" or template.startswith("/admin/"):
        return "console"
    if template.startswith("/native/docs"):
        return "docs"
    if template == "/metrics":
        return "metrics"
    return "user"  # anything else, a route added tomorrow too


def credentials(keys: dict[str, str]) -> dict[str, tuple[dict[str, str], frozenset[str]]]:
    """Credential name -> (its headers, the realms that take it)."""
    return {
        "none": ({}, frozenset()),
        "user key": ({"Authorization": f"Bearer {keys['user']}"}, frozenset({"user"})),
        "user key as x-api-key": ({"x-api-key": keys["user"]}, frozenset({"user"})),
        "revoked user key": ({"Authorization": f"Bearer {keys['revoked']}"}, frozenset()),
        "expired user key": ({"x-api-key": keys["expired"]}, frozenset()),
        "admin key": ({"Authorization": f"Bearer {ADMIN_KEY}"}, frozenset({"admin_api"})),
        "admin key as x-api-key": ({"x-api-key": ADMIN_KEY}, frozenset()),
        "docs key": ({"X-Docs-Key": DOCS_KEY}, frozenset({"docs"})),
        "docs key as bearer": ({"Authorization": f"Bearer {DOCS_KEY}"}, frozenset()),
        "metrics token": ({"Authorization": f"Bearer {METRICS_TOKEN}"}, frozenset({"metrics"})),
        "garbage": ({"Authorization": "Bearer sk-sentinel-not-a-key"}, frozenset()),
    }


def concrete(template: str) -> str:
    """A path the template matches (each parameter `x`)."""
    return re.sub(r"\{[^}]+\}", "x", template)


def assert_refused(answer: Answer, template: str, method: str, why: str) -> None:
    """The refusal of an unauthenticated request to `template`, in its surface's shape."""
    where = f"{method} {template} ({why}): {answer.status} {answer.body[:300]!r}"
    kind = realm(template)
    if kind == "console":
        if method in ("GET", "HEAD"):  # a page: to the sign-in form
            assert answer.status == 303 and answer.headers["location"] == "/admin/signin", where
        else:  # a form post: the "signed out" page
            assert answer.status == 401 and answer.headers["content-type"].startswith("text/html"), where
        return
    if kind == "docs" and not template.endswith(".json"):  # the page: 401 with the sign-in form
        assert answer.status == 401 and answer.headers["content-type"].startswith("text/html"), where
        return
    assert answer.status == 401, where
    if method == "HEAD":
        return
    body = answer.json()
    if template.startswith("/v1/messages"):  # Anthropic's surface
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error", where
        return
    error = openai_error(body)
    assert error["type"] == "authentication_error", where
    if kind == "admin_api":
        assert error["code"] == "admin_auth_required", where
    elif kind == "user":
        assert answer.headers.get("www-authenticate", "").startswith("Bearer"), where
        if why == "expired user key":
            assert error["code"] == "token_expired", where


def body_for(template: str, method: str) -> tuple[dict[str, str], bytes]:
    """A plausible body for a call (what a client would send), so a refusal is not a body's."""
    if method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        return {}, b""
    if template.startswith("/admin") and not template.startswith("/admin/api"):
        return {"Content-Type": "application/x-www-form-urlencoded"}, b"csrf=x&plan=x"
    if template.startswith("/v1/messages"):
        return {"Content-Type": "application/json"}, (
            b'{"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}'
        )
    if template.startswith("/native/v1"):
        return {"Content-Type": "application/json"}, b'{"tier": "simple", "messages": [{"role": "user", "content": "x"}]}'
    return {"Content-Type": "application/json"}, b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'


async def test_every_route_refuses_a_request_without_its_credential(swept: Swept) -> None:
    table = route_table(swept.app)
    templates = {template for template, _ in table}
    # The table is the app's whole surface: a sample of what each part serves is in it.
    assert {"/v1/chat/completions", "/v1/messages", "/native/v1/chat/completions", "/v1/{path:path}",
            "/admin/api/users", "/admin/users/{external_id}", "/debug/health", "/native/docs/openapi.json",
            "/metrics"} <= templates
    assert PUBLIC <= templates, PUBLIC - templates  # the allowlist names no route that is gone
    swept.spy.clear()
    tried = 0
    for template, methods in sorted(table):
        if realm(template) == "public":
            continue
        assert methods, template  # every route says what it accepts
        for method in sorted(methods):
            extra, body = body_for(template, method)
            for why, (headers, takes) in credentials(swept.keys).items():
                if realm(template) in takes:
                    continue
                answer = await call(swept.app, method, concrete(template), headers={**headers, **extra}, body=body)
                assert_refused(answer, template, method, why)
                tried += 1
    assert tried > 500
    assert swept.spy.seen == []  # nothing refused reached the provider


async def test_the_public_routes_need_no_credential(swept: Swept) -> None:
    """The allowlist is what it says: each public route answers without any credential (no 401)."""
    for template, methods in route_table(swept.app):
        if template not in PUBLIC:
            continue
        for method in methods:
            answer = await call(swept.app, method, concrete(template))
            assert answer.status != 401 or template.endswith("signin") and method == "POST", (method, template)
            assert answer.status < 500, (method, template, answer.status)


async def test_a_credential_of_the_right_kind_is_taken(swept: Swept) -> None:
    """The refusals above are the credential's: the same routes take the right one."""
    user = {"Authorization": f"Bearer {swept.keys['user']}"}
    assert (await call(swept.app, "GET", "/v1/models", headers=user)).status == 200
    assert (await call(swept.app, "GET", "/debug/health", headers=user)).status == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await call(swept.app, "GET", "/admin/api/users", headers=admin)).status == 200
    assert (await call(swept.app, "GET", "/native/docs/openapi.json", headers={"X-Docs-Key": DOCS_KEY})).status == 200
    assert (await call(swept.app, "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).status == 200


async def test_a_revoked_key_is_answered_as_a_key_that_never_existed(swept: Swept) -> None:
    """Nothing tells a revoked key from one never issued (nor a well-formed guess): the same status,
    headers that matter and body, on each surface. An expired key says `token_expired`, which only
    its holder can learn."""
    made_up = "sk-sentinel-" + "A" * 40  # the shape of a real key
    for path, method, extra, body in (
        ("/v1/models", "GET", {}, b""),
        ("/v1/messages", "POST", *body_for("/v1/messages", "POST")),
        ("/native/v1/chat/completions", "POST", *body_for("/native/v1/chat/completions", "POST")),
    ):
        answers = [
            await call(swept.app, method, path, headers={**extra, "Authorization": f"Bearer {token}"}, body=body)
            for token in (swept.keys["revoked"], made_up)
        ]
        assert answers[0].status == answers[1].status == 401, path
        bodies = [answer.json() for answer in answers]
        for parsed in bodies:  # each answer's own id (Anthropic's shape carries it)
            parsed.pop("request_id", None)
        assert bodies[0] == bodies[1], (path, bodies)
        assert answers[0].headers.get("www-authenticate") == answers[1].headers.get("www-authenticate"), path

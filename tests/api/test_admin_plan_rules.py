"""The rules every surface saving a plan keeps (`AdminService.save_plan`), over HTTP: the admin API
and the console (the CLI's are in `tests/test_cli.py`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.api.test_console import ADMIN_KEY, Console, field_error

LIMIT = {"metric": "requests", "limit": 5, "window": "1h"}
LIMIT_FORM = [("metric", "requests"), ("limit", "5"), ("window", "1h")]


@pytest.fixture(params=["sqlite", "postgres"])
def gw(request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway]) -> Gateway:
    if request.param == "postgres":
        return gateway_factory(admin_key=ADMIN_KEY, database_url=request.getfixturevalue("pg_url"))
    return gateway_factory(admin_key=ADMIN_KEY)


def audit_actions(http: httpx.Client) -> list[str]:
    return [e["action"] for e in http.get("/admin/api/audit").json()["entries"]]


def test_a_plan_without_limits_is_refused_by_the_admin_api_and_the_console(gw: Gateway) -> None:
    """The CLI refused `plans set pro` naming no limit (its users would be unlimited), but the admin API
    saved `"limits": []` and the console a new-plan form holding only a name. Each
    is 400 on the field `limits`, nothing saved or audited; a plan's limits cannot be emptied either."""
    pro, empty = f"pro{uuid.uuid4().hex[:8]}", f"empty{uuid.uuid4().hex[:8]}"  # PostgreSQL's database is shared
    console = Console(gw)
    try:
        with gw.admin() as http:
            assert http.put(f"/admin/api/plans/{pro}", json={"create": True, "limits": [LIMIT]}).status_code == 200
            before, audited = http.get("/admin/api/plans").json(), audit_actions(http)
            for path, body in ((f"/admin/api/plans/{empty}", {"create": True, "limits": []}),
                               (f"/admin/api/plans/{pro}", {"limits": []}),
                               (f"/admin/api/plans/{pro}", {"limits": [{"metric": "", "limit": "", "window": ""}]})):
                refused = http.put(path, json=body)
                assert refused.status_code == 400, (path, body, refused.text)
                error = refused.json()["error"]
                assert error["code"] == "validation_failed", error
                assert "at least one limit" in error["details"]["fields"]["limits"], error
            page = console.post("/admin/plans", [("name", empty), ("metric", ""), ("limit", ""), ("window", "")])
            assert page.status_code == 400
            assert "at least one limit" in (field_error(page.text, "limits") or ""), page.text
            assert console.post(f"/admin/plans/{pro}", [("name", pro)]).status_code == 400
            assert http.get("/admin/api/plans").json() == before
            assert audit_actions(http) == audited
    finally:
        console.http.close()


def test_a_new_plan_named_as_another_but_for_case_is_refused(gw: Gateway) -> None:
    """`Pro` and `pro` could both be created, alike on the console: the second is 400 on `name`
    (naming the plan there), on the admin API and the console, nothing saved; `Pro` itself is
    edited as before."""
    tag = uuid.uuid4().hex[:8]  # PostgreSQL's database is shared by the tests
    console = Console(gw)
    try:
        with gw.admin() as http:
            assert http.put(f"/admin/api/plans/Pro{tag}", json={"create": True, "limits": [LIMIT]}).status_code == 200
            before, audited = http.get("/admin/api/plans").json(), audit_actions(http)
            for body in ({"create": True, "limits": [LIMIT]}, {"limits": [LIMIT]}):
                refused = http.put(f"/admin/api/plans/pro{tag}", json=body)
                assert refused.status_code == 400, refused.text
                message = refused.json()["error"]["details"]["fields"]["name"]
                assert f"'Pro{tag}' exists already" in message and "case" in message, message
            page = console.post("/admin/plans", [("name", f"PRO{tag}"), *LIMIT_FORM])
            assert page.status_code == 400 and f"Pro{tag}&#x27; exists already" in (field_error(page.text, "name") or "")
            assert http.get("/admin/api/plans").json() == before
            assert audit_actions(http) == audited
            edited = http.put(f"/admin/api/plans/Pro{tag}", json={"limits": [{**LIMIT, "limit": 7}]})
            assert edited.status_code == 200 and edited.json()["spec"] == "requests=7/1h"
    finally:
        console.http.close()


@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_a_plan_named_default_is_refused(gateway_factory: Callable[..., Gateway], name: str) -> None:
    """Users without a plan get DEFAULT_PLAN, which the admin API's quota view names `default`; a plan
    saved as `default` (other limits) read the same there, and `users set-plan alice default` put alice
    on it, not back on DEFAULT_PLAN. The name is refused in any case (400 on `name`) by the admin API and
    the console, nothing saved or audited; users keep DEFAULT_PLAN."""
    gw = gateway_factory(admin_key=ADMIN_KEY)  # SQLite: a plan the old code saved stays out of the shared database
    console = Console(gw)
    try:
        with gw.admin() as http:
            audited = audit_actions(http)
            refused = http.put(f"/admin/api/plans/{name}", json={"create": True, "limits": [LIMIT]})
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "validation_failed" and "DEFAULT_PLAN" in error["details"]["fields"]["name"], error
            page = console.post("/admin/plans", [("name", name), *LIMIT_FORM])
            assert page.status_code == 400 and "DEFAULT_PLAN" in (field_error(page.text, "name") or ""), page.text
            assert http.get("/admin/api/plans").json() == {"plans": []}
            assert audit_actions(http) == audited
            assert http.put("/admin/api/users/alice/plan", json={"plan": name}).status_code == 404
    finally:
        console.http.close()

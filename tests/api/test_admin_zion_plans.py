"""GOVERNANCE=zion: the plans are Zion's, so the admin API and the console refuse to edit Sentinel's own
(they were saved and never enforced: an operator believed a user limited whom Zion's plan governed)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator

import pytest

from sentinel.db.engine import create_engine, session_factory
from sentinel.domain.plans import Limit
from sentinel.governance.plans import PlanRepository
from tests.api.conftest import Gateway
from tests.api.test_console import ADMIN_KEY, Console
from tests.support.fake_zion import FakeZion
from tests.support.servers import serving


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    fake = FakeZion()
    with serving(fake) as srv:
        gateway = gateway_factory(governance="zion", zion_api_url=srv.url, zion_api_key=fake.api_key,
                                  admin_key=ADMIN_KEY)

        async def seed() -> None:  # a plan saved before GOVERNANCE=zion
            engine = create_engine(gateway.settings.database_url)
            try:
                await PlanRepository(session_factory(engine)).set_plan("pro", [Limit("requests", 60, 5)])
            finally:
                await engine.dispose()

        asyncio.run(seed())
        yield gateway


def stored(gw: Gateway) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], int]:
    """The plans' limits, the users' plans and the audit entries in the gateway's database."""
    path = gw.settings.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        return (db.execute('SELECT plan_name, metric, window_seconds, "limit" FROM plan_limits').fetchall(),
                db.execute("SELECT external_id, plan_name FROM users WHERE plan_name IS NOT NULL").fetchall(),
                db.execute("SELECT count(*) FROM audit_log").fetchone()[0])


def test_the_admin_api_refuses_plan_changes_with_409(gw: Gateway) -> None:
    before = stored(gw)
    with gw.admin() as api:
        limits = {"limits": [{"metric": "requests", "limit": 1, "window": "1m"}]}
        for method, path, body in (
            ("PUT", "/admin/api/plans/pro", limits), ("PUT", "/admin/api/plans/team", {"create": True, **limits}),
            ("DELETE", "/admin/api/plans/pro", None), ("PUT", "/admin/api/users/alice/plan", {"plan": "pro"}),
            ("PUT", "/admin/api/user/plan?id=a%2Fb", {"plan": None}), ("PUT", "/admin/api/users/alice/plan", "not json"),
        ):
            answer = api.request(method, path, json=body) if not isinstance(body, str) else api.request(method, path,
                                                                                                       content=body)
            assert answer.status_code == 409, (method, path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "plans_managed_by_governance" and "GOVERNANCE=zion" in error["message"]
        listed = api.get("/admin/api/plans")  # reading stays: what Sentinel holds (not in effect)
        assert listed.status_code == 200 and [p["name"] for p in listed.json()["plans"]] == ["pro"]
    assert stored(gw) == before  # nothing changed, nothing audited


def test_the_console_says_plans_are_zion_s_and_offers_no_plan_form(gw: Gateway) -> None:
    console = Console(gw)
    before = stored(gw)
    plans = console.get("/admin/plans").text
    assert "GOVERNANCE=zion" in plans and "not enforced" in plans
    assert 'action="/admin/plans"' not in plans and "/delete" not in plans and "Create plan" not in plans
    assert ">pro<" in plans  # listed
    plan = console.get("/admin/plans/pro")
    assert plan.status_code == 200 and "GOVERNANCE=zion" in plan.text and "Save plan" not in plan.text
    assert "requests" in plan.text and "not in effect" in plan.text
    user = console.get("/admin/users/alice").text
    assert "GOVERNANCE=zion" in user and "Change plan" not in user and "/admin/users/alice/plan" not in user
    for path, data in (("/admin/plans", {"name": "team", "metric": "requests", "limit": "1", "window": "1m"}),
                       ("/admin/plans/pro", {"name": "pro", "metric": "requests", "limit": "1", "window": "1m"}),
                       ("/admin/plans/pro/delete", {}), ("/admin/users/alice/plan", {"plan": "pro"})):
        refused = console.post(path, data)
        assert refused.status_code == 409, (path, refused.text[:300])
        assert "GOVERNANCE=zion" in refused.text
    assert stored(gw) == before
    console.http.close()

"""Every operator change and its audit entry are one: a change whose entry cannot be written is not
made (503, nothing changed), so the audit log never misses a change that took effect."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import Gateway

ADMIN_KEY = "admin-key-for-tests-0123"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(admin_key=ADMIN_KEY)


@contextlib.contextmanager
def audit_log_unwritable(gw: Gateway) -> Iterator[None]:
    """The audit table out of reach (as a database failing at that write): every write to it fails
    with `no such table`, an OperationalError like a lost connection's."""
    path = gw.settings.database_url.split(":///", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        db.commit()
    try:
        yield
    finally:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
            db.commit()


def state(http: httpx.Client, gw: Gateway) -> dict[str, Any]:
    """What the changes below could change: plans, alice's plan, keys, the tier table's overrides."""
    return {
        "plans": http.get("/admin/api/plans").json(),
        "alice": http.get("/admin/api/users/alice").json()["user"]["plan"],
        "keys": http.get("/admin/api/keys").json(),
        "tiers": http.get("/admin/api/tiers").json()["overrides"],
    }


def test_a_change_whose_audit_entry_cannot_be_written_is_not_made(gw: Gateway) -> None:
    """The entry was written after the change, in a transaction of its own: when that write failed
    the answer was 503 but the change stood, unaudited — and its retry was audited as nothing (a
    revocation or deletion done already is not done again) or as a change from the new value."""
    changes: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("PUT", "/admin/api/plans/gold", {"create": True, "limits": [{"metric": "requests", "limit": 5, "window": "1m"}]},
         "plan.create"),
        ("PUT", "/admin/api/plans/gold", {"limits": [{"metric": "requests", "limit": 7, "window": "1m"}]}, "plan.update"),
        ("PUT", "/admin/api/users/alice/plan", {"plan": "gold"}, "user.plan"),
        ("POST", "/admin/api/users/bob/keys", {"name": "ci"}, "key.create"),
        ("POST", f"/admin/api/keys/{gw.key_id}/revoke", None, "key.revoke"),
        ("PUT", "/admin/api/tiers/simple", {"entries": ["openai/gpt-4o-mini:2"]}, "tier.set"),
        ("DELETE", "/admin/api/tiers/simple", None, "tier.reset"),
        ("DELETE", "/admin/api/plans/gold", None, "plan.delete"),
    ]
    with gw.admin() as http:
        for method, path, body, action in changes:
            before = state(http, gw)
            with audit_log_unwritable(gw):
                refused = http.request(method, path, json=body)
            assert refused.status_code == 503, (path, refused.status_code, refused.text)
            assert refused.json()["error"]["type"] == "service_unavailable"
            assert state(http, gw) == before, path  # nothing changed
            done = http.request(method, path, json=body)
            assert done.status_code in (200, 201), (path, done.text)
            assert http.get("/admin/api/audit").json()["entries"][0]["action"] == action, path
        audit = [e["action"] for e in http.get("/admin/api/audit").json()["entries"]]
        assert audit == [action for _, _, _, action in reversed(changes)]
        deleted = http.get("/admin/api/audit").json()["entries"][0]
        assert deleted["details"] == {"from": "requests=7/1m", "users": 1}
    with gw.client() as alice:  # the key's revocation took effect once, when audited
        assert alice.post("/v1/chat/completions", json=CHAT).status_code == 401


def test_a_key_created_with_another_email_records_the_change(gw: Gateway) -> None:
    """A key created with an `email` other than its user's replaces the user's email (the one way an
    operator sets it), but the `key.create` entry did not say so: the change vanished from the log.
    The entry holds `email: {from, to}` when the email is set or replaced, and nothing when unchanged."""
    with gw.admin() as http:
        def create(body: dict[str, Any]) -> dict[str, Any]:
            created = http.post("/admin/api/users/carol/keys", json=body)
            assert created.status_code == 201, created.text
            entry: dict[str, Any] = http.get("/admin/api/audit").json()["entries"][0]
            assert entry["action"] == "key.create" and entry["target"] == created.json()["id"]
            return entry["details"]

        assert "email" not in create({"name": "a"})  # a new user, no email
        assert create({"email": "carol@example.com"})["email"] == {"from": None, "to": "carol@example.com"}
        assert "email" not in create({"email": "carol@example.com"})  # the same: no change
        assert "email" not in create({})  # none given: the stored one kept
        assert create({"email": "c@example.org"})["email"] == {"from": "carol@example.com", "to": "c@example.org"}
        assert http.get("/admin/api/users/carol").json()["user"]["email"] == "c@example.org"


def test_a_tier_edit_records_the_prices_and_what_it_replaced(gw: Gateway) -> None:
    """`tier.set` recorded `to: ["openai/gpt-4o:1"]` alone: an edit of a candidate's prices (what every
    request's `cost_usd` is reckoned with — zeroed, spend vanished from the reports) left an entry
    identical to the one before it, and neither it nor `tier.reset` said what the tier held before.
    Each entry holds `from` (the tier's overrides before; [] for none) and `to`, prices included."""
    with gw.admin() as http:
        def edit(method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            done = http.request(method, "/admin/api/tiers/simple", json=body)
            assert done.status_code == 200, done.text
            entry: dict[str, Any] = http.get("/admin/api/audit", params={"target": "simple"}).json()["entries"][0]
            return entry["details"]

        priced = edit("PUT", {"entries": ["openai/gpt-4o:1:2.5:10"]})
        assert priced == {"from": [], "to": ["openai/gpt-4o:1:2.5:10.0"]}
        free = edit("PUT", {"entries": ["openai/gpt-4o:1:0:0"]})
        assert free == {"from": ["openai/gpt-4o:1:2.5:10.0"], "to": ["openai/gpt-4o:1:0.0:0.0"]}
        assert edit("DELETE") == {"from": ["openai/gpt-4o:1:0.0:0.0"]}

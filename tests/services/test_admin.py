"""The admin service on a real database (SQLite, then PostgreSQL) and the in-memory store: field
errors, the audit log, caches dropped on change, live quota counters, the CSV export, tiers."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Limit, Plan, parse_plan_spec
from sentinel.domain.tiers import TierModelEntry
from sentinel.domain.usage import UsageRecord
from sentinel.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    RevocationIncomplete,
    StoreUnavailable,
)
from sentinel.governance.audit import AuditEntry
from sentinel.governance.auth import Authenticator
from sentinel.governance.keys import KeyService
from sentinel.governance.plan_source import BuiltinPlanSource, CachedPlans
from sentinel.governance.plans import PlanRepository
from sentinel.governance.request_stats import RequestStatsWriter
from sentinel.governance.tier_store import DbTiers, TierRepository
from sentinel.observability.outcomes import RequestOutcomes
from sentinel.quota.limiter import QuotaLimiter
from sentinel.services.admin import Actor, AdminService
from sentinel.services.admin_forms import LimitInput, field_errors
from sentinel.services.admin_live import LiveState
from tests.support.accounts import record_and_roll_up
from tests.support.clock import FakeClock
from tests.support.stores import FlakyStore

NOW = datetime(2030, 3, 1, 12, 30, 15, tzinfo=UTC)
ADMIN = Actor("admin", "10.0.0.9")
CATALOG = {"simple": [TierModelEntry(provider="openai", model="gpt-4o-mini")], "moderate": [], "complex": []}


@dataclass
class Setup:
    admin: AdminService
    identities: Authenticator
    plans: CachedPlans
    limiter: QuotaLimiter
    tiers: DbTiers
    sessions: async_sessionmaker[AsyncSession]
    store: FlakyStore


@pytest.fixture
def setup(sessions: async_sessionmaker[AsyncSession]) -> Setup:
    store = FlakyStore()
    clock = FakeClock(NOW.timestamp())
    keys = KeyService(sessions)
    default = parse_plan_spec("requests=100/60s", "default")
    plans = CachedPlans(store, BuiltinPlanSource(PlanRepository(sessions), default), ttl=300, grace=900, clock=clock)
    identities = Authenticator(store, api_keys=keys, ttl=300, clock=clock)
    limiter = QuotaLimiter(store, clock=clock)
    tiers = DbTiers(TierRepository(sessions), CATALOG, ttl=1800, clock=clock)
    live = LiveState(plans=plans, limiter=limiter, tiers=tiers, providers={"openai"})
    admin = AdminService(sessions, keys=keys, default_plan=default, catalog_tiers=CATALOG, live=live,
                         identities=identities, plan_cache=plans, db_tiers=tiers, clock=lambda: NOW)
    return Setup(admin, identities, plans, limiter, tiers, sessions, store)


def _fields(exc: pytest.ExceptionInfo[InvalidRequest]) -> dict[str, str]:
    return field_errors(exc.value)


# --- plans ---------------------------------------------------------------------------------------
async def test_every_bad_field_of_a_plan_is_reported_at_once(setup: Setup) -> None:
    rows = [
        LimitInput("requests", "100", "1m"),
        LimitInput("tokens", "5", "1h"),         # unknown metric
        LimitInput("input_tokens", "lots", "1h"),  # not a number
        LimitInput("output_tokens", "9", "soon"),  # not a window
        LimitInput("requests", "7", "60s"),        # the same window as row 0
        LimitInput("", "", ""),                    # blank rows are skipped
    ]
    with pytest.raises(InvalidRequest) as refused:
        await setup.admin.save_plan_input("bad name!", rows, ADMIN, create=True)
    assert set(_fields(refused)) == {"name", "limits.1.metric", "limits.2.limit", "limits.3.window", "limits.4.window"}
    assert refused.value.status == 400
    assert await setup.admin.plans() == []
    assert await setup.admin.audit() == []


async def test_create_edit_delete_a_plan_with_several_limits_is_audited(setup: Setup) -> None:
    admin = setup.admin
    rows = [LimitInput("requests", "600", "1h"), LimitInput("output_tokens", "5_000_000", "30d")]
    plan = await admin.save_plan_input("pro", rows, ADMIN, create=True)
    assert set(plan.limits) == {Limit("requests", 3600, 600), Limit("output_tokens", 30 * 86400, 5_000_000)}
    with pytest.raises(InvalidRequest) as again:
        await admin.save_plan_input("pro", rows, ADMIN, create=True)
    assert "exists" in _fields(again)["name"]
    edited = await admin.save_plan_input("pro", [LimitInput("requests", 10, 60)], ADMIN)
    assert edited.limits == (Limit("requests", 60, 10),)
    merged = await admin.save_plan("pro", [Limit("input_tokens", 60, 99)], ADMIN, merge=True)
    assert set(merged.limits) == {Limit("requests", 60, 10), Limit("input_tokens", 60, 99)}
    await admin.delete_plan("pro", ADMIN)
    with pytest.raises(NotFound):
        await admin.delete_plan("pro", ADMIN)
    actions = [(e.action, e.target, e.actor, e.address) for e in await admin.audit()]
    assert actions == [
        ("plan.delete", "pro", "admin", "10.0.0.9"), ("plan.update", "pro", "admin", "10.0.0.9"),
        ("plan.update", "pro", "admin", "10.0.0.9"), ("plan.create", "pro", "admin", "10.0.0.9"),
    ]
    latest_update = (await admin.audit())[2]
    assert latest_update.details == {"from": "output_tokens=5000000/30d,requests=600/1h", "to": "requests=10/1m"}


async def test_a_plan_change_reaches_the_enforced_plan_at_once(setup: Setup) -> None:
    alice = Identity("alice", "u1")
    assert (await setup.plans.plan_for(alice)).name == "default"  # now cached for 300 s
    await setup.admin.save_plan("team", [Limit("requests", 60, 5)], ADMIN)
    await setup.admin.set_user_plan("alice", "team", ADMIN)
    assert (await setup.plans.plan_for(alice)).name == "team"
    await setup.admin.save_plan("team", [Limit("requests", 60, 7)], ADMIN)  # editing the plan also drops it
    assert (await setup.plans.plan_for(alice)).limits == (Limit("requests", 60, 7),)
    with pytest.raises(NotFound):
        await setup.admin.set_user_plan("alice", "nope", ADMIN)
    await setup.admin.set_user_plan("alice", None, ADMIN)
    assert (await setup.plans.plan_for(alice)).name == "default"
    entries = [e for e in await setup.admin.audit() if e.action == "user.plan"]
    assert [e.details for e in entries] == [{"from": "team", "to": None}, {"from": None, "to": "team"}]


async def test_deleting_a_plan_moves_its_users_to_the_default_plan_for_good(setup: Setup) -> None:
    """The users of a deleted plan kept its name: enforced the default while no plan had it, shown as
    still assigned to it, and put on any plan created later under the name (a quota nobody chose)."""
    admin, alice = setup.admin, Identity("alice", "u1")
    await admin.save_plan("gold", [Limit("requests", 60, 1000)], ADMIN, create=True)
    await admin.save_plan("silver", [Limit("requests", 60, 10)], ADMIN, create=True)
    for user, plan in (("alice", "gold"), ("bob", "gold"), ("carol", "silver")):
        await admin.set_user_plan(user, plan, ADMIN)
    assert (await setup.plans.plan_for(alice)).name == "gold"  # cached for 300 s
    await admin.delete_plan("gold", ADMIN)
    assert await setup.plans.plan_for(alice) == setup.admin.default_plan  # the cached copy was dropped
    view = await admin.user("alice")
    assert view.summary is not None and view.summary.plan_name is None and view.plan_origin == "default"
    deleted = (await admin.audit())[0]
    assert (deleted.action, deleted.details) == ("plan.delete", {"from": "requests=1000/1m", "users": 2})
    await admin.save_plan("gold", [Limit("requests", 60, 999_999)], ADMIN, create=True)
    assert await setup.plans.plan_for(alice) == setup.admin.default_plan
    assert [(plan.name, users) for plan, users in await admin.plans()] == [("gold", 0), ("silver", 1)]
    with pytest.raises(NotFound):
        await admin.delete_plan("gold-plated", ADMIN)


async def test_a_plan_deleted_meanwhile_is_not_found_nor_audited_twice(setup: Setup) -> None:
    admin = setup.admin
    await admin.save_plan("gold", [Limit("requests", 60, 1000)], ADMIN, create=True)
    await admin.set_user_plan("alice", "gold", ADMIN)
    outcomes = await asyncio.gather(*(admin.delete_plan("gold", ADMIN) for _ in range(4)), return_exceptions=True)
    assert [o for o in outcomes if not isinstance(o, NotFound)] == [1], outcomes  # one moved alice, 3 found none
    entries = await admin.audit()
    assert [e.action for e in entries] == ["plan.delete", "user.plan", "plan.create"]
    assert entries[0].details == {"from": "requests=1000/1m", "users": 1}


async def test_concurrent_merges_into_one_plan_keep_every_operators_limit(setup: Setup) -> None:
    """Each `plans set --add` read the plan, then replaced its limits with what it read plus its own:
    operators adding limits at once lost all but the last one's (and the audit log showed each
    addition to a plan without the others)."""
    await setup.admin.save_plan("pro", [Limit("requests", 60, 10)], ADMIN)
    added = [Limit("output_tokens", 3600 * n, 100 * n) for n in range(1, 7)]
    await asyncio.gather(*(setup.admin.save_plan("pro", [limit], ADMIN, merge=True) for limit in added))
    assert set((await setup.admin.plan("pro")).limits) == {Limit("requests", 60, 10), *added}
    befores = [e.details["from"] for e in await setup.admin.audit() if e.action == "plan.update" and e.details]
    assert sorted(len(before.split(",")) for before in befores) == [1, 2, 3, 4, 5, 6]  # each saw the ones before it


async def test_concurrent_changes_are_audited_each_from_what_the_one_before_left(setup: Setup) -> None:
    """A plan assignment's `from` was read before its transaction, and every entry was written after
    its change had committed, in a transaction of its own: operators changing one user's plan (or one
    plan) at once were each audited as from the same plan, or in another order than the changes."""
    admin = setup.admin
    for n in range(1, 7):
        await admin.save_plan(f"p{n}", [Limit("requests", 60, n)], ADMIN, create=True)
    await asyncio.gather(*(admin.set_user_plan("alice", f"p{n}", ADMIN) for n in range(1, 7)))
    await asyncio.gather(*(admin.save_plan("p1", [Limit("requests", 60, 100 + n)], ADMIN) for n in range(6)))
    entries = list(reversed(await admin.audit()))  # oldest first
    for action, first in (("user.plan", None), ("plan.update", "requests=1/1m")):
        chain = [e.details for e in entries if e.action == action]
        assert len(chain) == 6 and chain[0]["from"] == first, chain
        assert [d["from"] for d in chain[1:]] == [d["to"] for d in chain[:-1]], chain
    assert (await admin.user("alice")).summary.plan_name == chain_end(entries, "user.plan")  # type: ignore[union-attr]
    assert (await admin.plan("p1")).spec() == chain_end(entries, "plan.update")


def chain_end(entries: list[AuditEntry], action: str) -> object:
    return [e.details for e in entries if e.action == action][-1]["to"]


async def test_of_operators_creating_one_plan_at_once_one_creates_it_the_others_are_refused(setup: Setup) -> None:
    """`create` (the console's and the admin API's "new plan") checked for the plan, then wrote it:
    two at once both created it, the second silently replacing the first's limits."""
    versions = [[Limit("requests", 60, n)] for n in range(1, 5)]
    outcomes = await asyncio.gather(
        *(setup.admin.save_plan("gold", v, ADMIN, create=True) for v in versions), return_exceptions=True
    )
    created = [o for o in outcomes if isinstance(o, Plan)]
    refused = [o for o in outcomes if isinstance(o, InvalidRequest)]
    assert len(created) == 1 and len(refused) == 3, outcomes
    assert all("exists" in field_errors(r)["name"] for r in refused)
    assert await setup.admin.plan("gold") == created[0]
    assert [e.action for e in await setup.admin.audit()] == ["plan.create"]


# --- keys ----------------------------------------------------------------------------------------
async def test_a_revoked_key_fails_at_its_next_use(setup: Setup) -> None:
    info, key = await setup.admin.create_key("bob", "laptop", None, ADMIN)
    assert key.startswith("sk-sentinel-") and info.prefix == key[: len(info.prefix)]
    assert (await setup.identities.authenticate(key)).external_id == "bob"  # cached for 300 s from here
    revoked = await setup.admin.revoke_key(info.id, ADMIN)
    assert revoked.external_id == "bob"
    with pytest.raises(AuthenticationError):
        await setup.identities.authenticate(key)
    again = await setup.admin.revoke_key(info.id, ADMIN)  # revoked already: the tombstone is sent again
    assert again.id == info.id and again.revoked_at is not None
    with pytest.raises(NotFound):
        await setup.admin.revoke_key("key_doesnotexist", ADMIN)
    audit = await setup.admin.audit()  # one revocation, however often it is sent
    assert [(e.action, e.target) for e in audit] == [("key.revoke", info.id), ("key.create", info.id)]
    assert key not in str([e.details for e in audit])  # the key itself is never logged
    with pytest.raises(InvalidRequest) as refused:
        await setup.admin.create_key(" ", "x" * 201, "not-an-email", ADMIN)
    assert set(_fields(refused)) == {"external_id", "name", "email"}


async def test_a_revocation_the_store_did_not_hear_about_is_not_reported_done_and_a_retry_completes_it(
    setup: Setup,
) -> None:
    """The store refused the tombstone (logged only) and the revocation was reported done, while the
    identity cached before the outage served the key again once the store was back, for up to the TTL."""
    info, key = await setup.admin.create_key("bob", "laptop", None, ADMIN)
    assert (await setup.identities.authenticate(key)).external_id == "bob"  # cached for 300 s from here
    setup.store.fail("set", "run")
    with pytest.raises(RevocationIncomplete) as incomplete:
        await setup.admin.revoke_key(info.id, ADMIN)
    assert isinstance(incomplete.value, StoreUnavailable) and incomplete.value.status == 503
    assert incomplete.value.code == "revocation_incomplete"
    assert "revoked in the database" in incomplete.value.message and "300 s" in incomplete.value.message
    assert incomplete.value.details == {"key_id": info.id, "user": "bob", "revoked": True}
    assert (await setup.admin.keys.get_key(info.id)).revoked_at is not None  # type: ignore[union-attr]
    setup.store.recover()
    assert (await setup.identities.authenticate(key)).external_id == "bob"  # what the message warns of
    retried = await setup.admin.revoke_key(info.id, ADMIN)
    assert retried.id == info.id
    with pytest.raises(AuthenticationError):
        await setup.identities.authenticate(key)
    audit = await setup.admin.audit()  # revoked once, in the database: one entry, written at the first try
    assert [(e.action, e.target) for e in audit] == [("key.revoke", info.id), ("key.create", info.id)]


# --- a user's page -------------------------------------------------------------------------------
async def test_the_user_view_shows_live_counters_keys_and_recent_requests(setup: Setup) -> None:
    admin = setup.admin
    with pytest.raises(NotFound):
        await admin.user("carol")
    await admin.save_plan("team", [Limit("requests", 60, 5), Limit("output_tokens", 86400, 1000)], ADMIN)
    await admin.set_user_plan("carol", "team", ADMIN)
    info, _ = await admin.create_key("carol", "ci", "carol@example.com", ADMIN)
    plan = await setup.plans.plan_for(Identity("carol", "x"))
    for _ in range(2):
        await setup.limiter.reserve("carol", plan, input_tokens=10, output_tokens=300)
    await record_and_roll_up(setup.sessions, [
        UsageRecord(f"r{i}", "carol", None, "gpt-4o", "openai", "chat", 5, 7, "measured", 200, NOW - timedelta(minutes=i, seconds=1),
                    NOW - timedelta(minutes=i)) for i in range(3)
    ])
    view = await admin.user("carol")
    assert view.summary is not None and view.summary.plan_name == "team" and view.plan_origin == "assigned"
    assert view.quota is not None and view.quota.plan is not None and view.quota.plan.name == "team"
    used = {(lim.metric, lim.window_seconds): (lim.used, lim.limit) for lim in view.quota.limits}
    assert used == {("requests", 60): (2, 5), ("output_tokens", 86400): (600, 1000)}
    resets = {lim.metric: lim.reset_at for lim in view.quota.limits}
    assert resets["requests"] == datetime(2030, 3, 1, 12, 31, tzinfo=UTC)
    assert resets["output_tokens"] == datetime(2030, 3, 2, tzinfo=UTC)
    assert [k.id for k in view.keys] == [info.id]
    assert [r.request_id for r in view.recent] == ["r0", "r1", "r2"]
    assert (view.usage_30d.requests, view.usage_30d.input_tokens, view.usage_30d.output_tokens) == (3, 15, 21)
    assert view.models_24h == [{"model": "gpt-4o", "requests": 3, "input_tokens": 15, "output_tokens": 21}]


# --- usage ---------------------------------------------------------------------------------------
async def test_the_csv_export_has_the_figures_of_usage_show(setup: Setup) -> None:
    rows = [
        UsageRecord(f"r{i}", user, None, model, "openai", "chat", 10 * i, i, "measured", 200, NOW, NOW, 0.001 * i)
        for i, (user, model) in enumerate([("alice", "gpt-4o"), ("alice", "gpt-4o"), ("alice", None),
                                           ("=cmd|'/c calc'!A0", "gpt-4o-mini"), ("bob", "gpt-4o-mini")])
    ]
    await record_and_roll_up(setup.sessions, rows)
    text = await setup.admin.usage_csv(NOW - timedelta(days=1), None)
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == ["external_id", "model", "requests", "input_tokens", "output_tokens", "cost_usd"]
    for user in ("alice", "bob"):
        shown = await setup.admin.usage_totals(user, NOW - timedelta(days=1))
        exported = [r for r in table if r["external_id"] == user]
        assert [(r["model"] or None, int(r["requests"]), int(r["input_tokens"]), int(r["output_tokens"])) for r in exported] == [
            (s["model"], s["requests"], s["input_tokens"], s["output_tokens"]) for s in shown
        ]
    assert any(r["external_id"] == "'=cmd|'/c calc'!A0" for r in table)  # a formula is neutralised
    assert await setup.admin.usage_csv(NOW + timedelta(seconds=1), None) == (
        "external_id,model,requests,input_tokens,output_tokens,cost_usd\r\n"  # RFC 4180 line ends
    )


async def test_no_cell_of_the_csv_export_starts_a_formula_whatever_the_separator(setup: Setup) -> None:
    """The model cell is second on its row, so its opening quote keeps separators in it only for a
    reader splitting on `,`: Excel where the decimal mark is a comma splits on `;` (others on tab or
    `|`), and there the model `x;=1+1;` was a cell `=1+1`, a formula, and `x\n=1+1` a row of its own
    starting one. A model name a provider reports (an eval run's per-model usage)
    is recorded with no check of its characters."""
    models = ["x;=1+1;", "x\n=1+1", "x\r@SUM(1)", "x|+1|", "x\t-1\t", 'x;"=1";', "x;;=1", "x\t\t=1"]
    await record_and_roll_up(setup.sessions, [
        UsageRecord(f"r{i}", "alice", None, model, "openai", "chat", 1, 1, "measured", 200, NOW, NOW, 0.001)
        for i, model in enumerate(models)
    ])
    text = await setup.admin.usage_csv(NOW - timedelta(days=1), None)
    for separator in (",", ";", "\t", "|"):
        cells = [cell for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator) for cell in row]
        formulas = [cell for cell in cells if cell.lstrip('"')[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert formulas == [], (separator, formulas)
    exported = [row["model"] for row in csv.DictReader(io.StringIO(text, newline=""))]
    assert len(exported) == len(models)  # one row a model, each still naming its model
    assert sorted(m.replace("'", "") for m in exported) == sorted(models)


async def test_overview_buckets_and_tops(setup: Setup) -> None:
    await record_and_roll_up(setup.sessions, [
        UsageRecord(f"r{i}", f"u{i % 2}", None, "gpt-4o", "openai", "chat", 1, 1, "measured", 200 if i else 502,
                    NOW - timedelta(minutes=i, milliseconds=80), NOW - timedelta(minutes=i)) for i in range(90)
    ])
    hour = await setup.admin.overview("1h")
    assert len(hour.series.points) == 60 and hour.series.step_minutes == 1
    assert hour.series.points[-1].start == datetime(2030, 3, 1, 12, 30, tzinfo=UTC)  # the current minute is last
    assert hour.series.totals.requests == 60  # minutes 0..59 back
    assert hour.series.totals.errors == 1 and hour.series.points[-1].errors == 1  # recorded with a 502
    assert hour.series.totals.answers == 0 and hour.series.totals.error_rate == 0.0  # no answer was counted
    assert 50 <= (hour.series.totals.p50_ms or 0) <= 100
    assert [(r.name, r.requests) for r in hour.top_users] == [("u0", 30), ("u1", 30)]
    assert hour.top_since == hour.series.start
    day = await setup.admin.overview("24h")
    assert len(day.series.points) == 96 and day.series.totals.requests == 90
    assert day.top_since == datetime(2030, 2, 28, 12, 0, tzinfo=UTC)  # whole hours
    assert sum(r.requests for r in day.top_users) == 90
    month = await setup.admin.overview("30d")
    assert len(month.series.points) == 120 and sum(r.requests for r in month.top_users) == 90
    assert month.series.totals.requests == 90 and month.series.totals.errors == 1  # from the per-hour rollup
    with pytest.raises(InvalidRequest):
        await setup.admin.overview("2h")


async def test_error_rates_come_from_every_answer(setup: Setup) -> None:
    outcomes = RequestOutcomes(FakeClock(NOW.timestamp()))
    for status in (200, 200, 200, 200, 401, 429, 429, 502):
        outcomes.record(status)
    await RequestStatsWriter(setup.sessions, outcomes).flush()
    totals = (await setup.admin.overview("1h")).series.totals
    assert (totals.answers, totals.client_errors, totals.rate_limited, totals.server_errors) == (8, 3, 2, 1)
    assert totals.error_rate == 1 / 8 and totals.refused_rate == 3 / 8
    assert totals.requests == 0  # nothing reached the ledger


# --- tiers ---------------------------------------------------------------------------------------
async def test_tier_edits_apply_in_this_process_at_once(setup: Setup) -> None:
    admin = setup.admin
    assert (await setup.tiers.table())["simple"][0].model == "gpt-4o-mini"  # cached for 1800 s
    with pytest.raises(InvalidRequest) as refused:
        await admin.set_tier("simple", ["openai/gpt-4o:1", "nonsense", "", "openai/gpt-4o:11"], ADMIN)
    assert set(_fields(refused)) == {"entries.1", "entries.3"}
    await admin.set_tier("simple", ["openai/gpt-4o:2:2.5:10"], ADMIN)
    assert [(e.model, e.relative_cost) for e in (await setup.tiers.table())["simple"]] == [("gpt-4o", 2)]
    view = await admin.tiers()
    assert view.overrides["simple"][0].model == "gpt-4o" and view.editable
    await admin.reset_tier("simple", ADMIN)
    assert (await setup.tiers.table())["simple"][0].model == "gpt-4o-mini"
    with pytest.raises(InvalidRequest):
        await admin.set_tier("huge", ["openai/gpt-4o:1"], ADMIN)
    assert [e.action for e in await admin.audit()] == ["tier.reset", "tier.set"]


def test_key_expiry_reads_a_lifetime_or_a_moment_within_bounds() -> None:
    from sentinel.governance.keys import MAX_KEY_LIFETIME
    from sentinel.services.admin_forms import key_expiry

    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert key_expiry(now) is None and key_expiry(now, " ", "") is None  # blank form fields: never
    assert key_expiry(now, "30d") == now + timedelta(days=30)
    assert key_expiry(now, 90) == key_expiry(now, "90") == key_expiry(now, "90s") == now + timedelta(seconds=90)
    assert key_expiry(now, f"{MAX_KEY_LIFETIME.days}d") == now + MAX_KEY_LIFETIME
    assert key_expiry(now, None, "2030-01-02T13:00:00+01:00") == datetime(2030, 1, 2, 12, 0, tzinfo=UTC)
    assert key_expiry(now, None, "2030-01-02") == datetime(2030, 1, 2, tzinfo=UTC)  # naive: UTC
    refusals = [
        ((f"{MAX_KEY_LIFETIME.days + 1}d", None), "expires_in"), ((0, None), "expires_in"),
        ((True, None), "expires_in"), (("-1", None), "expires_in"), (("1y", None), "expires_in"),
        ((None, "2030-01-01T12:00:00Z"), "expires_at"),  # now is not the future
        ((None, "0001-01-01T00:00:00+01:00"), "expires_at"), ((None, "9999-12-31T23:00:00-05:00"), "expires_at"),
        (("1d", "2030-02-01"), "expires_at"),
    ]
    for (lifetime, moment), field in refusals:
        with pytest.raises(InvalidRequest) as caught:
            key_expiry(now, lifetime, moment)
        assert list(field_errors(caught.value)) == [field], (lifetime, moment)
    with pytest.raises(InvalidRequest) as caught:
        key_expiry(now, 0, in_field="expires_in_seconds")
    assert list(field_errors(caught.value)) == ["expires_in_seconds"]

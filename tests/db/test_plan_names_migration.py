"""Migration 0006 puts the users of plans deleted before it on the default plan."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, text

from sentinel.db.engine import alembic_config, create_engine, session_factory
from sentinel.domain.plans import Limit
from sentinel.governance.plans import PlanRepository

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


async def test_upgrade_clears_the_names_of_deleted_plans(empty_db_url: str) -> None:
    """A delete before the fix left `users.plan_name` naming no plan; re-creating that plan then put
    its former users on it. The migration clears such names and keeps every other one."""
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0005"))
            await conn.commit()
            await conn.execute(text("INSERT INTO plans (name, created_at, updated_at) VALUES ('silver', :t, :t)"),
                               {"t": T0})
            for n, (user, plan) in enumerate((("alice", "gold"), ("bob", "silver"), ("carol", None))):
                await conn.execute(
                    text("INSERT INTO users (id, external_id, plan_name, created_at) VALUES (:id, :user, :plan, :t)"),
                    {"id": f"id-{n}", "user": user, "plan": plan, "t": T0},
                )
            await conn.execute(text("INSERT INTO api_keys (id, user_id, prefix, key_hash, created_at) "
                                    "VALUES ('k1', 'id-0', 'sk-sentinel-ab', :hash, :t)"), {"hash": "0" * 64, "t": T0})
            await conn.commit()

            def upgrade(sync: Connection) -> None:
                command.upgrade(alembic_config(sync), "head")

            await conn.run_sync(upgrade)
            await conn.commit()
            rows = (await conn.execute(text("SELECT external_id, plan_name FROM users ORDER BY external_id"))).all()
            assert [tuple(r) for r in rows] == [("alice", None), ("bob", "silver"), ("carol", None)]
            assert (await conn.execute(text("SELECT count(*) FROM api_keys"))).scalar() == 1  # keys untouched
        plans = PlanRepository(session_factory(engine))
        await plans.set_plan("gold", [Limit("requests", 60, 999_999)])  # the deleted plan's name again
        assert await plans.plan_for_user("alice") is None
    finally:
        await engine.dispose()

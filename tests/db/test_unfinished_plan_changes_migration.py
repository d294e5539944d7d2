"""Migration 0008 keeps the plan changes whose follow-up failed (`unfinished_plan_changes`) for a
gateway to finish; a database migrated from 0007 holds them, as a new one does."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Connection, inspect

from sentinel.db.engine import alembic_config, create_engine, session_factory
from sentinel.db.models import UnfinishedPlanChangeRow
from sentinel.domain.plans import parse_plan_spec
from sentinel.governance.unfinished_plans import UnfinishedPlanChanges


def _tables(sync: Connection) -> list[str]:
    return list(inspect(sync).get_table_names())


async def test_unfinished_plan_changes_are_kept_after_the_migration_and_dropped_by_its_downgrade(
    empty_db_url: str,
) -> None:
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0007"))
            await conn.commit()
            assert "unfinished_plan_changes" not in await conn.run_sync(_tables)
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
        sessions = session_factory(engine)
        kept = UnfinishedPlanChanges(sessions)
        before, after = parse_plan_spec("requests=5/1h"), parse_plan_spec("requests=5/1d,output_tokens=0/1m")
        async with sessions() as session:  # as a plan change's transaction writes them
            session.add(kept.row(["alice", "b\u00f6b \u202e"], before, after))  # any id, kept as it is
            await session.commit()
            session.add(kept.row(["carol"], None, after))  # no plan before: every window of the one after
            # No plan after: written only by the first version of 0008's code; not read (no writer since)
            session.add(UnfinishedPlanChangeRow(users='["dave"]', plan_before=None, plan_after=None))
            await session.commit()
        first, second = await kept.pending()
        assert first.users == ("alice", "b\u00f6b \u202e") and second.users == ("carol",)
        assert first.before is not None and first.before.limits == before.limits
        assert first.after.limits == after.limits
        assert second.before is None and second.after.limits == after.limits
        await kept.done(first.id)
        await kept.done(first.id)  # finished twice (two replicas): nothing more
        assert [change.id for change in await kept.pending()] == [second.id]
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0007"))
            await conn.commit()
            assert "unfinished_plan_changes" not in await conn.run_sync(_tables)
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
        assert await kept.pending() == []
    finally:
        await engine.dispose()

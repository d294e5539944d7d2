"""Migration 0007 gives API keys an optional expiry; the keys issued before it keep working."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import Connection, inspect, text

from sentinel.db.engine import alembic_config, create_engine, session_factory
from sentinel.governance.keys import KeyService, generate_key, hash_key

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


def _columns(sync: Connection) -> list[str]:
    return [c["name"] for c in inspect(sync).get_columns("api_keys")]


async def test_keys_from_before_the_expiry_column_never_expire_and_survive_a_downgrade(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    key = generate_key()
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0006"))
            await conn.commit()
            assert "expires_at" not in await conn.run_sync(_columns)
            await conn.execute(text("INSERT INTO users (id, external_id, created_at) VALUES ('u1', 'alice', :t)"),
                               {"t": T0})
            await conn.execute(text("INSERT INTO api_keys (id, user_id, prefix, key_hash, created_at) "
                                    "VALUES ('key_old', 'u1', :prefix, :hash, :t)"),
                               {"prefix": key[:20], "hash": hash_key(key), "t": T0})
            await conn.commit()
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
            assert "expires_at" in await conn.run_sync(_columns)
        keys = KeyService(session_factory(engine), clock=lambda: T0 + timedelta(days=36500))
        identity = await keys.authenticate(key)  # a century later: it has no expiry
        assert identity is not None and identity.external_id == "alice" and identity.expires_at is None
        (old,) = await keys.list_keys("alice")
        assert old.id == "key_old" and old.expires_at is None
        info, _ = await keys.create_key("alice", expires_at=T0 + timedelta(days=36501))
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0006"))
            await conn.commit()
            assert "expires_at" not in await conn.run_sync(_columns)
            rows = (await conn.execute(text("SELECT id FROM api_keys ORDER BY id"))).scalars().all()
            assert sorted(rows) == sorted(["key_old", info.id])  # the table was copied, not emptied
            assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar() == 1
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
        assert (await keys.get_key(info.id)) is not None
    finally:
        await engine.dispose()

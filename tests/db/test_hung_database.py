"""A PostgreSQL that accepts connections and never answers, or one that is down: each wait is
bounded by the engine's timeout (DATABASE_TIMEOUT_SECONDS), and after three failed connects in a row
the engine's breaker refuses new connections at once (503 for the caller), trying one per cooldown."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from sentinel.breaker import CircuitBreaker
from sentinel.db.engine import DatabaseCircuitOpen, close_engine, create_engine, database_errors
from sentinel.errors import GovernanceUnavailable
from tests.support.clock import FakeClock
from tests.support.hung_db import hung_proxy
from tests.support.waiting import eventually


async def _select_one(engine) -> int:  # type: ignore[no-untyped-def]
    with database_errors():
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT 1"))).scalar_one())


async def test_a_hung_database_opens_the_breaker_and_callers_then_fail_at_once(pg_url: str) -> None:
    """Before, every caller waited the connect timeout (10 s) for as long as the database hung: a
    key lookup, a usage record, a probe, each its own wait. Now three connects do; then the proxy sees no
    new connection (the breaker refuses them) until the cooldown has passed."""
    clock = FakeClock()
    with hung_proxy(pg_url) as (proxy, url):
        breaker = CircuitBreaker(3, 2.0, clock=clock)
        engine = create_engine(url, timeout=0.3, breaker=breaker)
        try:
            assert await _select_one(engine) == 1
            proxy.hang()
            # The pooled connection's pre-ping times out (it is dropped), then three connects do.
            for _ in range(4):
                with pytest.raises(GovernanceUnavailable):
                    await _select_one(engine)
            assert breaker.state == "open"
            tried = proxy.accepted
            for _ in range(5):
                with pytest.raises(GovernanceUnavailable) as refused:
                    await _select_one(engine)
                assert isinstance(refused.value.__cause__, DatabaseCircuitOpen)
            assert proxy.accepted == tried  # not one more connection attempt
            proxy.resume()
            clock.advance(2.5)  # the cooldown: one connect probes, it answers, the breaker closes
            assert await _select_one(engine) == 1
            assert breaker.state == "closed"
        finally:
            await engine.dispose()


async def test_closing_the_engine_of_a_hung_database_takes_one_timeout_not_one_per_connection(pg_url: str) -> None:
    """Shutdown closed the pool with `dispose()`: each pooled connection waited for the server's
    goodbye up to the statement timeout, one after the other (20 connections × 5 s on a hung
    database, past any grace period). `close_engine` bounds the whole: here five connections of a
    2 s timeout are let go within one timeout, where `dispose()` took about 10 s (the 8 s wait
    below is the bound, not a timing)."""
    with hung_proxy(pg_url) as (proxy, url):
        engine = create_engine(url, timeout=2.0)
        connections = [await engine.connect() for _ in range(5)]
        for conn in connections:
            await conn.execute(text("SELECT 1"))
        for conn in connections:
            await conn.close()  # back to the pool
        proxy.hang()
        await asyncio.wait_for(close_engine(engine, 2.0), 8)
        assert engine.pool.checkedin() == 0


@pytest.mark.parametrize("cut", ["down", "close"])
async def test_a_cut_proxy_ends_the_database_session_it_carried(pg_url: str, cut: str) -> None:
    """The proxy is test support, and a session it leaves behind breaks later tests: a transaction
    open when the proxy went down stayed open in PostgreSQL until the run ended (its socket was
    closed under a thread blocked reading it, which keeps the connection), and held locks the next
    tests' `TRUNCATE` waited on until each timed out. Cut, the database ends that session."""
    import asyncpg

    plain = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(plain)
    try:
        with hung_proxy(pg_url) as (proxy, url):
            client = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            await client.execute("BEGIN; SELECT 1")
            backend = await client.fetchval("SELECT pg_backend_pid()")
            getattr(proxy, cut)()

            async def ended() -> bool:
                return await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend) == 0

            assert await eventually(ended, within=10), "the session outlived its proxy"
            client.terminate()
    finally:
        await admin.close()

"""`sentinel/app.py`: start-up tunes the garbage collector only for an app that owns its process; shutdown
waits for the usage settlements under way before it closes what they write to."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import select

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageLedgerRow
from sentinel.domain.identity import Identity
from sentinel.domain.usage import Usage, UsageRecord
from sentinel.quota.meter import QuotaMeter
from tests.support.waiting import until


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", access_log=False, redis_url=None,
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k",
    )


@pytest.mark.usefixtures("restored_gc")
async def test_an_app_in_a_shared_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    gc.unfreeze()
    app = create_app(settings(tmp_path))
    await app.startup()
    try:
        # a process that builds many apps (a test run) must be able to free each one again
        assert gc.get_freeze_count() == 0
    finally:
        await app.shutdown()


@pytest.mark.usefixtures("restored_gc")
async def test_serve_freezes_what_start_up_built(tmp_path: Path) -> None:
    gc.unfreeze()
    app = create_app(settings(tmp_path), owns_process=True)
    await app.startup()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 50_000
    finally:
        await app.shutdown()


async def test_shutdown_waits_for_the_settlements_under_way_before_closing_the_ledger(tmp_path: Path) -> None:
    """The server cancels the requests still running past its shutdown deadline, then shuts the app
    down; a settlement one of them had begun goes on without it (`QuotaMeter.settle`). Shutdown used to
    close the outbox, the ledger and the store meanwhile: now it first waits (bounded) for it."""
    app = create_app(settings(tmp_path))
    await app.startup()
    assert app.runtime is not None
    meter = cast(QuotaMeter, app.runtime.native.meter)
    gate, outbox = asyncio.Event(), meter.outbox

    class Held:  # the record's write, held until the test lets it go
        async def put(self, record: UsageRecord) -> None:
            await gate.wait()
            await outbox.put(record)

    meter.outbox = Held()  # type: ignore[assignment]
    admission = await meter.admit_call(Identity("alice", "u1", email="alice@example.com"), endpoint="models",
                                       request_id="held-1")
    settling = asyncio.create_task(meter.settle(admission, usage=Usage(0, 0), output_text="", status=200,
                                                provider=None))
    await asyncio.sleep(0)
    settling.cancel()  # the server's deadline passed
    stopping = asyncio.create_task(app.shutdown())
    with pytest.raises(AssertionError):  # the old shutdown ran through its closers meanwhile
        await until(stopping.done)
    gate.set()
    await stopping
    engine = create_engine(settings(tmp_path).database_url)
    try:
        async with session_factory(engine)() as session:
            stored = (await session.execute(select(UsageLedgerRow.request_id))).scalars().all()
    finally:
        await engine.dispose()
    assert stored == [admission.request_id]

"""`sentinel/app.py`: start-up tunes the garbage collector only for an app that owns its process."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.app import create_app
from sentinel.config import Settings


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

"""`sentinel/app.py`: start-up tunes the garbage collector only for an app that owns its process; shutdown
waits for the usage settlements under way, and for those of requests the server just cancelled,
before it closes what they write to."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest
from sqlalchemy import select

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageLedgerRow
from sentinel.domain.identity import Identity
from sentinel.domain.usage import Usage, UsageRecord
from sentinel.quota.meter import QuotaMeter
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows, recorded_ids
from tests.support.servers import ServerThread, serving
from tests.support.upstream import lifespan
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


class OpenStream:
    """An OpenAI-like upstream that sends one chunk of a chat stream and then nothing, until the
    other side closes the connection: a generation still under way when the gateway stops."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini",' \
                b'"choices":[{"index":0,"delta":{"content":"half"}}]}\n\n'
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass


def test_a_stream_the_server_cancels_is_recorded_before_shutdown_closes_the_ledger(tmp_path: Path) -> None:
    """uvicorn's shutdown cancels the requests still running past its graceful timeout and goes
    straight on to the app's shutdown. A cancelled stream begins its settlement only some loop turns
    later (the relay unwinds, its body is closed, `on_close` settles), so `QuotaMeter.drain` saw none
    under way and the closers (deliverer, ledger writer, engine, store) ran before the record was
    written. Drain now also waits for admissions not yet settled; the record is there before the
    first closer after it runs, and says the stream was cut (499), not served whole."""
    with serving(OpenStream()) as upstream:
        s = settings(tmp_path).model_copy(update={"openai_api_url": upstream.url + "/v1"})
        _, key = asyncio.run(create_key(s.database_url, "alice"))
        # graceful=0: the server cancels the running requests at once (its deadline passed)
        server = ServerThread(create_app(s), graceful=0, settings=s)
        server.start()
        runtime = server.server.config.app.runtime
        assert runtime is not None
        before_closing: list[set[str]] = []

        async def look() -> None:  # runs right after the drain, before the deliverer and the ledger close
            before_closing.append(recorded_ids(s.database_url))

        runtime.closers.insert(1, look)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client, \
                client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            reading = r.iter_raw()  # kept: a dropped iterator closes the connection (the client leaving)
            assert b"half" in next(reading)
            request_id = r.headers["x-request-id"]
            server.stop()  # SIGTERM: the stream is still open
            assert not server.thread.is_alive()
    assert before_closing == [{request_id}]
    assert [(row["request_id"], row["status"]) for row in ledger_rows(s.database_url)] == [(request_id, 499)]


def test_the_access_line_of_a_stream_the_server_cancels_is_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The access log's last batch is written when shutdown begins; a request the server cancelled
    past its deadline unwinds (its settlement, then the middleware's access line) only after that,
    so its line was queued on a log nobody flushed again: the one request cut by the stop had no
    access line. A line recorded after the stop is now written at once."""
    logging.getLogger("sentinel.access").setLevel(logging.INFO)  # as `sentinel serve` configures it
    try:
        with serving(OpenStream()) as upstream:
            s = settings(tmp_path).model_copy(update={"openai_api_url": upstream.url + "/v1", "access_log": True})
            _, key = asyncio.run(create_key(s.database_url, "alice"))
            server = ServerThread(create_app(s), graceful=0, settings=s)
            server.start()
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client, \
                    client.stream("POST", "/v1/chat/completions", json=body) as r:
                reading = r.iter_raw()  # kept: a dropped iterator closes the connection (the client leaving)
                assert b"half" in next(reading)
                request_id = r.headers["x-request-id"]
                server.stop()  # the stream is still open: cancelled at once (graceful=0)
                assert not server.thread.is_alive()
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"logger":"sentinel.access"' in line]
    assert [(line["request_id"], line["route"]) for line in lines] == [(request_id, "/v1/chat/completions")]

"""JSON log lines: one object per line, the request id on every line emitted while serving a
request, `extra=` fields as top-level keys, tracebacks only at error level."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from sentinel.governance.keys import hash_key
from sentinel.observability.logging import JsonFormatter, Repeated, configure_logging, request_id_var
from tests.support.clock import FakeClock


class Capture:
    """A logger whose records are formatted by JsonFormatter into a buffer; `lines()` parses them."""

    def __init__(self, name: str) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JsonFormatter())
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.buffer.getvalue().splitlines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = True


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> Iterator[Capture]:
    cap = Capture(f"test.logging.{request.node.name}")
    yield cap
    cap.close()


def test_every_line_while_serving_carries_the_request_id(capture: Capture) -> None:
    capture.logger.info("before")
    token = request_id_var.set("req-42")
    try:
        capture.logger.info("one")
        logging.getLogger(capture.logger.name + ".child").warning("two")  # a library's logger, say
    finally:
        request_id_var.reset(token)
    capture.logger.info("after")
    lines = capture.lines()
    assert [line["msg"] for line in lines] == ["before", "one", "two", "after"]
    assert [line.get("request_id") for line in lines] == [None, "req-42", "req-42", None]
    assert {line["level"] for line in lines} == {"info", "warning"}
    assert all(str(line["ts"]).endswith("Z") for line in lines)


async def test_concurrent_requests_keep_their_own_ids(capture: Capture) -> None:
    async def serve(rid: str) -> None:
        request_id_var.set(rid)  # each task runs in its own copy of the context
        for step in range(3):
            capture.logger.info("step", extra={"step": step})
            await asyncio.sleep(0)  # interleave the two tasks

    await asyncio.gather(serve("a"), serve("b"))
    lines = capture.lines()
    assert len(lines) == 6
    assert sorted((str(line["request_id"]), int(str(line["step"]))) for line in lines) == [
        (rid, step) for rid in "ab" for step in range(3)
    ]
    assert request_id_var.get() is None


def test_extra_fields_become_top_level_keys(capture: Capture) -> None:
    capture.logger.info("request", extra={"status": 200, "route": "/v1/models", "when": object, "_private": 1})
    (line,) = capture.lines()
    assert line["status"] == 200 and line["route"] == "/v1/models"
    assert line["when"] == str(object)  # not JSON-serialisable: rendered with str()
    assert "_private" not in line
    assert line["logger"] == capture.logger.name
    # The LogRecord's own attributes never leak into the line.
    assert not {"args", "levelno", "pathname", "lineno", "exc_info", "thread"} & set(line)


def test_tracebacks_only_at_error_level(capture: Capture) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        capture.logger.warning("handled", exc_info=True)
        capture.logger.error("unhandled", exc_info=True)
    warning, error = capture.lines()
    assert "exc" not in warning
    assert "RuntimeError: boom" in str(error["exc"]) and "Traceback" in str(error["exc"])


def test_configure_logging_sends_json_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root, access, alembic = logging.getLogger(), logging.getLogger("uvicorn.access"), logging.getLogger("alembic")
    saved_handlers, saved_levels = root.handlers[:], (root.level, access.level, alembic.level)
    try:
        configure_logging("INFO")
        logging.getLogger("test.configured").info("hello", extra={"n": 1})
        access.info("dropped: our own access log replaces uvicorn's")
        alembic.info("dropped: routine migration steps")
        err = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = saved_handlers
        for logger, level in zip((root, access, alembic), saved_levels, strict=True):
            logger.setLevel(level)
    assert len(err) == 1, err
    line = orjson.loads(err[0])
    assert (line["level"], line["logger"], line["msg"], line["n"]) == ("info", "test.configured", "hello", 1)


def test_debug_logs_of_a_served_request_carry_no_sql_parameters(
    gateway_factory: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """At SENTINEL_LOG_LEVEL=debug the SQLite driver (aiosqlite) wrote every statement with its
    parameters, two lines per call: the hash and prefix of the caller's API key at its lookup, users'
    ids. Its debug lines are not written; everything else's are."""
    names = ("", "uvicorn.access", "alembic", "aiosqlite")
    root = logging.getLogger()
    saved_handlers, saved_levels = root.handlers[:], [logging.getLogger(n).level for n in names]
    try:
        configure_logging("DEBUG")
        gateway = gateway_factory()  # SQLite, the default database
        with gateway.client() as client:
            assert client.get("/v1/models").status_code == 200  # the key is looked up in the database
        logging.getLogger("test.debug").debug("written")
        err = capfd.readouterr().err
    finally:
        root.handlers[:] = saved_handlers
        for name, level in zip(names, saved_levels, strict=True):
            logging.getLogger(name).setLevel(level)
    assert '"logger":"test.debug"' in err
    assert hash_key(gateway.key) not in err and gateway.key[:16] not in err
    assert '"logger":"aiosqlite"' not in err


def test_characters_a_terminal_acts_on_or_hides_are_written_as_escapes(capture: Capture) -> None:
    """JSON escapes C0 controls but not DEL, the C1 controls (CSI U+009B, OSC U+009D: escape
    sequences to VTE and GNU screen), bidi overrides or line separators: a client's path or a
    provider's error message logged with them reached the operator's terminal as they were."""
    text = "\x9b2J\x9d0;owned\x9c \u202eevil \u2028 \x7f \U000e0041 caf\u00e9 \u6f22 \U0001f600"
    capture.logger.info("request failed", extra={"path": text, "error": text})
    raw = capture.buffer.getvalue()
    assert "\x9b" not in raw and "\x9d" not in raw and "\u202e" not in raw and "\u2028" not in raw
    assert "\x7f" not in raw and "\U000e0041" not in raw
    assert "caf\u00e9 \u6f22 \U0001f600" in raw  # printable text stays as it is
    [line] = capture.lines()
    assert line["path"] == text and line["error"] == text


def test_a_repeated_message_is_written_once_an_interval_with_the_count_it_stands_for(capture: Capture) -> None:
    """An outage's warning, met by every request, was one line per request: thousands a second."""
    clock = FakeClock()
    repeated = Repeated(capture.logger, interval=60, clock=clock)
    written = [repeated.warning("store down; %s", f"call {i}", extra={"n": i}) for i in range(100)]
    assert written == [True] + [False] * 99
    clock.advance(59.9)
    assert not repeated.warning("store down; %s", "call 100")
    clock.advance(0.1)
    assert repeated.warning("store down; %s", "call 101", extra={"n": 101})
    repeated.warning("store down; %s", "call 102")
    clock.advance(60)
    repeated.warning("store down; %s", "call 103")
    lines = capture.lines()
    assert [(line["msg"], line["level"]) for line in lines] == [
        ("store down; call 0", "warning"), ("store down; call 101", "warning"), ("store down; call 103", "warning")]
    assert [line.get("suppressed") for line in lines] == [None, 100, 1]
    assert [line.get("n") for line in lines] == [0, 101, None]  # each written line's own fields


def test_one_template_for_several_backends_is_told_apart_by_its_key(capture: Capture) -> None:
    """`usage outbox %s unavailable` was one message for every backend: SQL failing after Redis was
    never written (its lines counted in Redis's)."""
    clock = FakeClock()
    repeated = Repeated(capture.logger, clock=clock)
    for backend in ("redis", "sql", "redis", "sql"):
        repeated.warning("usage outbox %s unavailable", backend, key=backend)
    clock.advance(60)
    repeated.warning("usage outbox %s unavailable", "sql", key="sql")
    lines = capture.lines()
    assert [line["msg"] for line in lines] == [
        "usage outbox redis unavailable", "usage outbox sql unavailable", "usage outbox sql unavailable"]
    assert [line.get("suppressed") for line in lines] == [None, None, 1]
    assert repeated.forget("usage outbox %s unavailable", "redis") == 1


def test_messages_are_told_apart_by_their_template_not_their_arguments(capture: Capture) -> None:
    repeated = Repeated(capture.logger, clock=FakeClock())
    for name in ("identity", "plan", "identity"):
        repeated.warning("could not cache a %s entry", name)
        repeated.warning("another outage")
    repeated.log(logging.ERROR, "an error, repeated")
    repeated.log(logging.ERROR, "an error, repeated")
    assert [(line["msg"], line["level"]) for line in capture.lines()] == [
        ("could not cache a identity entry", "warning"), ("another outage", "warning"),
        ("an error, repeated", "error")]


def test_a_forgotten_message_is_written_again_at_once_and_says_what_went_unwritten(capture: Capture) -> None:
    clock = FakeClock()
    repeated = Repeated(capture.logger, clock=clock)
    assert repeated.forget("down") is None  # never written: nothing to end
    repeated.warning("down")
    repeated.warning("down")
    repeated.warning("down")
    assert repeated.forget("down") == 2  # the outage is over
    assert repeated.forget("down") is None
    assert repeated.warning("down")  # a new outage: said at once
    assert [line["msg"] for line in capture.lines()] == ["down", "down"]
    assert "suppressed" not in capture.lines()[1]


def test_a_message_below_the_level_is_neither_written_nor_counted(capture: Capture) -> None:
    capture.logger.setLevel(logging.ERROR)
    repeated = Repeated(capture.logger, clock=FakeClock())
    assert not repeated.warning("quiet")
    assert repeated.forget("quiet") is None
    assert capture.lines() == []

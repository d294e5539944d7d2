"""JSON log lines: one object per line, the request id on every line emitted while serving a
request, `extra=` fields as top-level keys, tracebacks only at error level."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from sentinel.observability.logging import JsonFormatter, configure_logging, request_id_var


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

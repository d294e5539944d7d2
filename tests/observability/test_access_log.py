"""The access log: one JSON line per request, written in batches, in the format of every log line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable

import orjson
import pytest

from sentinel.observability.logging import AccessLog
from tests.api.conftest import Gateway


async def test_lines_are_json_with_the_usual_keys_and_written_in_batches() -> None:
    out = io.BytesIO()
    log = AccessLog(out, max_pending=3)
    log.record("rid-1", {"method": "GET", "path": "/x", "status": 200})
    log.record("rid-2", {"method": "POST", "path": "/y", "status": 429, "user": "alice"})
    assert out.getvalue() == b""  # queued, not written one by one
    log.record("rid-3", {"method": "GET", "path": "/z", "status": 404})  # the third fills the batch
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["rid-1", "rid-2", "rid-3"]
    assert lines[1] | {"ts": None} == {
        "ts": None, "level": "info", "logger": "sentinel.access", "msg": "request", "request_id": "rid-2",
        "method": "POST", "path": "/y", "status": 429, "user": "alice",
    }
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) for line in lines)
    log.record("rid-4", {"status": 200})
    await log.stop()  # shutdown writes what is left
    assert orjson.loads(out.getvalue().splitlines()[-1])["request_id"] == "rid-4"


def test_every_request_gets_one_access_line(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("sentinel.access").setLevel(logging.INFO)  # as `sentinel serve` configures it
    try:
        gw = gateway_factory(access_log=True)
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    with gw.client() as http:
        served = http.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        refused = http.get("/v1/models", headers={"Authorization": "Bearer sk-sentinel-nope"})
    gw.server.stop()  # the lifespan shutdown writes the last batch
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines()
             if '"logger":"sentinel.access"' in line]
    by_id = {line["request_id"]: line for line in lines}
    ok, denied = by_id[served.headers["x-request-id"]], by_id[refused.headers["x-request-id"]]
    assert (ok["route"], ok["status"], ok["user"], ok["upstream_status"]) == ("/v1/chat/completions", 200, "alice", 200)
    assert (denied["route"], denied["status"]) == ("/v1/models", 401) and "user" not in denied
    assert "sk-sentinel" not in capfd.readouterr().err


def test_a_long_path_is_clipped_in_every_log_line_and_the_answer(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A 15,000-character path with no key used to write it three times (~45 KB of log per request:
    the error line's message and path, the access line) and once more into the 404."""
    logging.getLogger("sentinel.access").setLevel(logging.INFO)
    try:
        gw = gateway_factory(access_log=True)
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO, logger="sentinel.request")
    with gw.client() as http:
        r = http.get("/v1/" + "a" * 15_000)
    gw.server.stop()
    assert r.status_code == 404 and len(r.text) < 1_000, len(r.text)
    access = [line for line in capfd.readouterr().err.splitlines() if '"logger":"sentinel.access"' in line]
    failed = [rec for rec in caplog.records if rec.getMessage() == "request failed"]
    assert access and failed
    assert all(len(line) < 1_000 for line in access), [len(line) for line in access]
    for rec in failed:
        assert len(rec.path) <= 257 and len(rec.error) <= 257, (len(rec.path), len(rec.error))  # type: ignore[attr-defined]


def test_a_path_holding_terminal_controls_is_logged_as_json_escapes(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    """The path's percent-escapes decode to C1 controls (`%C2%9B` is CSI, `%C2%9D` OSC), which JSON
    need not escape: an unauthenticated request wrote them raw to the operator's terminal, where
    VTE (GNOME Terminal, Xfce Terminal) and GNU screen act on them — erase the lines above, set the
    window title. A bidi override or a line separator likewise reorders or splits the line shown."""
    logging.getLogger("sentinel.access").setLevel(logging.INFO)
    try:
        gw = gateway_factory(access_log=True)
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    path = "/v1/%C2%9B1A%C2%9B2K%C2%9D0;owned%C2%9C%E2%80%AEtxt%E2%80%A8x"
    with gw.client() as http:
        r = http.get(path)
    gw.server.stop()
    assert r.status_code == 404, r.text
    err = capfd.readouterr().err
    access = [line for line in err.splitlines() if '"logger":"sentinel.access"' in line]
    assert access
    for line in access:
        assert line.isascii() and line.isprintable(), ascii(line)
    assert any(orjson.loads(line).get("path") == "/v1/\x9b1A\x9b2K\x9d0;owned\x9c\u202etxt\u2028x"
               for line in access), access

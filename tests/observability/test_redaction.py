"""Keys in what a client sends (a path, an error message quoting it) never reach the logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from sentinel.governance.keys import KEY_PREFIX, KEY_RANDOM_CHARS, generate_key
from sentinel.observability.logging import MAX_LOGGED_CHARS, configure_logging
from sentinel.observability.redaction import (
    MIN_REDACTED,
    SENTINEL_KEY_BODY_CHARS,
    SENTINEL_KEY_PREFIX,
    Redactor,
    is_key_body,
    redact,
)
from tests.api.conftest import UPSTREAM_KEY, Gateway

ADMIN_KEY = "admin-key-for-tests-0123"
# A JWT short enough (101 characters) to pass as an X-Request-Id: HS256 over {"sub": "alice"}.
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.9Fq3OZ0mV2wYQxkJ3s6fP1xHk8c7R2aT0bUeLdN5gWs"
DOCS_KEY = "docs-key-for-the-tests-4567"


def test_every_sentinel_key_and_configured_secret_is_taken_out() -> None:
    assert SENTINEL_KEY_PREFIX == KEY_PREFIX  # the shape said twice (layers) is the same shape
    key = generate_key()
    redactor = Redactor([ADMIN_KEY, None, "", "short"])
    assert redactor(f"/admin/api/keys/{key}/revoke") == "/admin/api/keys/sk-sentinel-***/revoke"
    assert redactor(f"/x/{ADMIN_KEY}/y?{key}{key}") == "/x/***/y?sk-sentinel-***"
    assert redactor("/v1/chat/completions") == "/v1/chat/completions"
    assert redactor("a short word") == "a short word"  # secrets under MIN_REDACTED characters are not looked for
    assert len("short") < MIN_REDACTED
    # A key across the 256-character cut is redacted before the cut: none of its body is left.
    clipped = redactor.clipped("/" + "a" * (MAX_LOGGED_CHARS - 20) + key)
    assert key[len(KEY_PREFIX):][:4] not in clipped.rsplit("sk-sentinel-", 1)[-1] and clipped.endswith("***")
    assert redact(b"said sk-upstream-0123456789", "sk-upstream-0123456789") == b"said ***"
    # A JWT (signed, or unsigned: `alg: none` has an empty signature) is a bearer credential wherever it is.
    assert redactor(f"/v1/models?token={JWT}&x=1") == "/v1/models?token=***&x=1"
    assert redactor("id eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0. end") == "id *** end"
    assert redactor("eyJ-looking but no token, a.b.c") == "eyJ-looking but no token, a.b.c"


@contextlib.contextmanager
def json_logs() -> Iterator[None]:
    """Logging as `sentinel serve` configures it (JSON lines on stderr, INFO), restored afterwards."""
    names = ("", "uvicorn.access", "alembic", "aiosqlite", "sentinel.access", "httpx")
    root = logging.getLogger()
    saved_handlers, saved_levels = root.handlers[:], [logging.getLogger(n).level for n in names]
    configure_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test's own client logs the URLs it asks for
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        for name, level in zip(names, saved_levels, strict=True):
            logging.getLogger(name).setLevel(level)


def test_a_key_in_a_request_path_is_in_no_log_line(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    """An operator pasting a key where its id goes, a client putting a key in a URL: the access line,
    the error line (its path and its message, which quotes the path or the id) held the key."""
    with json_logs():
        gw = gateway_factory(access_log=True, admin_key=ADMIN_KEY, docs_api_key=DOCS_KEY)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answers = [
                http.post(f"/admin/api/keys/{gw.key}/revoke", headers=admin),  # 400 (was a 404 "No key 'sk-sentinel-...'")
                http.get(f"/v1/{gw.key}", headers={"Authorization": f"Bearer {gw.key}"}),  # 404 quoting the path
                http.get(f"/admin/api/users/{ADMIN_KEY}", headers=admin),
                http.get(f"/nowhere/{DOCS_KEY}/{UPSTREAM_KEY}"),
            ]
        gw.server.stop()  # the lifespan shutdown writes the last batch of access lines
        err = capfd.readouterr().err
    assert [a.status_code for a in answers] == [400, 404, 404, 404], [a.text for a in answers]
    for secret in (gw.key, gw.key[len(KEY_PREFIX):], ADMIN_KEY, DOCS_KEY, UPSTREAM_KEY):
        assert secret not in err, secret
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    ids = {a.headers["x-request-id"] for a in answers}
    access = [line for line in lines if line["logger"] == "sentinel.access" and line["request_id"] in ids]
    failed = [line for line in lines if line["msg"] == "request failed" and line["request_id"] in ids]
    assert sorted(line["path"] for line in access) == [
        "/admin/api/keys/sk-sentinel-***/revoke", "/admin/api/users/***", "/nowhere/***/***", "/v1/sk-sentinel-***",
    ]
    assert len(failed) == 4 and all("***" in line["path"] for line in failed)
    assert any("sk-sentinel-***" in line["error"] for line in failed)


def test_a_request_id_holding_a_key_is_replaced_not_logged_or_echoed(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    """A client's X-Request-Id is in every log line of its request, in the ledger and in the provider's
    `X-Client-Request-Id`: one holding a Sentinel key (its own, pasted in the wrong header) or a
    configured secret was taken as it was, and logged unredacted. It is replaced by a new id."""
    with json_logs():
        gw = gateway_factory(access_log=True, admin_key=ADMIN_KEY)
        user = {"Authorization": f"Bearer {gw.key}"}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answers = [
                http.post("/v1/chat/completions", json=chat, headers={**user, "X-Request-Id": gw.key}),
            ]
            sent = httpx.get(str(gw.settings.openai_api_url).removesuffix("/v1") + "/__mock/last_request").json()
            answers += [
                http.get("/v1/models", headers={**user, "X-Request-Id": f"trace:{gw.key}"}),
                http.get("/admin/api/overview", headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-Id": ADMIN_KEY}),
                http.get("/v1/models", headers={**user, "X-Request-Id": "my-trace.42"}),  # an ordinary id is kept
                http.get("/v1/models", headers={**user, "X-Request-Id": JWT}),  # a bearer token, however short
            ]
        gw.server.stop()  # the lifespan shutdown writes the last batch of access lines
        err = capfd.readouterr().err
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    ids = [a.headers["x-request-id"] for a in answers]
    assert ids[3] == "my-trace.42"
    for rid in ids[:3] + ids[4:]:
        assert KEY_PREFIX not in rid and ADMIN_KEY not in rid and len(rid) == 32, rid
    for secret in (gw.key[len(KEY_PREFIX):], ADMIN_KEY, JWT.rsplit(".", 1)[1]):
        assert secret not in err, secret
    upstream = dict(sent["headers"])  # the provider is told the id the client was answered with
    assert upstream["x-client-request-id"] == ids[0] and gw.key[len(KEY_PREFIX):] not in str(sent["headers"])
    access = {line["request_id"] for line in map(orjson.loads, filter(lambda x: x.startswith("{"), err.splitlines()))
              if line["logger"] == "sentinel.access"}
    assert set(ids) <= access  # each request was logged, under the id it was answered with


def test_a_key_body_without_its_prefix_is_in_no_log_line_nor_taken_as_a_request_id(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    """The prefix of a Sentinel key is public: its 40-character body alone is the key. A client that
    put its own key's body (the prefix dropped) in a path, its X-Request-Id or a model name had it
    written in the access and error lines, and the id kept in the ledger and sent to the provider."""
    with json_logs():
        gw = gateway_factory(access_log=True)
        body = gw.key[len(KEY_PREFIX):]
        user = {"Authorization": f"Bearer {gw.key}"}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answers = [
                http.get(f"/v1/files/{body}", headers=user),  # 404 quoting the path
                http.post("/v1/chat/completions", json={**chat, "model": body}, headers=user),  # 404 quoting the model
                http.get("/v1/models", headers={**user, "X-Request-Id": body}),
                http.get(f"/v1/{body}", headers={"x-api-key": gw.key}),
            ]
        gw.server.stop()  # the lifespan shutdown writes the last batch of access lines
        err = capfd.readouterr().err
    assert [a.status_code for a in answers] == [404, 404, 200, 404], [a.text for a in answers]
    assert body not in err
    assert answers[2].headers["x-request-id"] != body and len(answers[2].headers["x-request-id"]) == 32
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["logger"] == "sentinel.access"}
    assert access[answers[0].headers["x-request-id"]]["path"] == "/v1/files/***"
    assert access[answers[3].headers["x-request-id"]]["path"] == "/v1/***"
    # The caller's own key's body is found wherever it is (glued to other text too); a short one is not looked for.
    assert Redactor()("/v1/files/file-" + body, also=("sk-sentinel-short",)) == "/v1/files/file-" + body
    assert Redactor()("/v1/files/file-" + body, also=(gw.key,)) == "/v1/files/file-***"


def test_a_key_body_standing_alone_is_in_no_log_line(
    gateway_factory: Callable[..., Gateway], capfd: pytest.CaptureFixture[str]
) -> None:
    """A key's prefix is public, so its body alone is the key: an operator who pasted the body where a
    key id goes (`/admin/api/keys/<body>/revoke`) had it in the access and error lines, as did any
    request whose path or X-Request-Id held another key's body. Text of that shape standing alone (40
    characters of the key alphabet mixing upper and lower case) is taken out; a model name, a SHA-1
    digest or a key id of that length is not."""
    assert SENTINEL_KEY_BODY_CHARS == KEY_RANDOM_CHARS  # the shape said twice (layers) is the same shape
    other = generate_key()[len(KEY_PREFIX):]
    with json_logs():
        gw = gateway_factory(access_log=True, admin_key=ADMIN_KEY)
        body = gw.key[len(KEY_PREFIX):]
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answers = [
                http.post(f"/admin/api/keys/{body}/revoke", headers={"Authorization": f"Bearer {ADMIN_KEY}"}),
                http.get(f"/nowhere/{other}"),
                http.get("/v1/models", headers={"Authorization": f"Bearer {gw.key}", "X-Request-Id": other}),
            ]
        gw.server.stop()  # the lifespan shutdown writes the last batch of access lines
        err = capfd.readouterr().err
    assert [a.status_code for a in answers] == [400, 404, 200], [a.text for a in answers]
    assert body not in err and other not in err
    assert answers[2].headers["x-request-id"] != other
    redactor = Redactor()
    assert redactor(f"/v1/files/{other}?x={other}") == "/v1/files/***?x=***"
    kept = ["a" * 40, "0123456789abcdef0123456789abcdef01234567", "gpt-4o-mini-realtime-preview-2024-12-170",
            f"x{other}", f"{other}-", f"sk-sentinel-{other}"[:-1]]
    assert [redactor(text) for text in kept[:5]] == kept[:5]
    assert redactor(kept[5]) == "sk-sentinel-***"
    assert is_key_body(other) and not is_key_body("key_0123456789ab") and not is_key_body(f" {other}")

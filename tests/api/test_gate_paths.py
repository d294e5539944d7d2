"""One canonical path: encoded and literal path tricks never reach the provider unmetered.

Every request here is sent over a raw socket, so the request target is exactly what an attacker
would type (no client-side normalisation). A spy in front of the mock upstream records every
request that reaches the provider, including ones the mock itself would not route.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from sentinel.native.responses import ErrorBody
from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.support.attack import (
    SpyUpstream,
    bearer,
    openai_error,
    raw_request,
    recorded_ids,
)

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "path games"}]})
NATIVE = orjson.dumps({"messages": [{"role": "user", "content": "path games"}]})

# Request targets that must be refused with 400 invalid_path by the application.
REFUSED = [
    # dot segments, literal and percent-encoded in any case and mix
    "/v1/%2e/chat/completions", "/v1/%2E/chat/completions", "/v1/./chat/completions", "/v1/chat/./completions",
    "/v1/chat/completions/.", "/v1/chat/completions/%2e", "/v1/%2e%2e/v1/chat/completions",
    "/v1/%2E%2E/v1/chat/completions", "/v1/%2e%2E/v1/chat/completions", "/v1/.%2e/v1/chat/completions",
    "/v1/%2e./v1/chat/completions", "/v1/.%2E/v1/chat/completions", "/v1/../v1/chat/completions",
    "/v1/x/../chat/completions", "/v1/x/%2e%2e/chat/completions", "/v1/chat/completions/..",
    "/v1/%2e%2e/%2e%2e/secret", "/v1/models/%2e%2e/%2e%2e/admin",
    # empty segments
    "/v1//chat/completions", "//v1/chat/completions", "/v1/chat//completions", "/v1/chat/completions//",
    # encoded separators and delimiters
    "/v1/chat%2fcompletions", "/v1/chat%2Fcompletions", "/v1/x%2f..%2fchat/completions",
    "/v1/chat%5ccompletions", "/v1/chat%5Ccompletions", "/v1/chat\\completions", "/v1/x\\..\\chat/completions",
    "/v1/chat/completions%3F", "/v1/chat/completions%3fx=1", "/v1/models%3F/x", "/v1/chat/completions%23",
    "/v1/chat/completions%23frag", "/v1/chat/completions%25", "/v1/chat/completions%252e",
    "/v1/%252e%252e/secret", "/v1/%25%32%65/chat/completions",
    # control characters, encoded
    "/v1/chat/completions%00", "/v1/chat/completions%0a", "/v1/chat/completions%0d%0aX-Injected:%201",
    "/v1/chat/completions%09", "/v1/chat/completions%7f", "/v1/chat/completions%1f",
    # malformed escapes
    "/v1/chat/completions%", "/v1/chat/completions%2", "/v1/chat/completions%zz", "/v1/%g0/x",
]
# Raw bytes the HTTP parser itself refuses (400 before the application sees the request).
REFUSED_BY_PARSER = [
    b"/v1/chat/completions\x00", b"/v1/chat/completions\x01", b"/v1/chat/completions\x1b", b"/v1/chat\x7f/completions",
    b"/v1/chat/compl\xc3\xa9tions", b"/v1/chat/completions\xff", b"/v1/\x80/chat/completions",
    b"/v1/chat/completions\tx", b"v1/chat/completions",
]


@pytest.fixture
def spy_gw(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> Gateway:
    return gateway_factory(
        openai_api_url=spy.url + "/v1",
        passthrough="/v1/moderations,/v1/files/*",
    )


def post(gw: Gateway, target: bytes | str, body: bytes = CHAT, method: str = "POST") -> tuple[int, bytes]:
    r = raw_request(gw.url, method, target, headers=bearer(gw.key), body=body)
    return r.status, r.body


def assert_invalid_path(status: int, body: bytes, target: object) -> None:
    assert status == 400, (target, status, body[:300])
    assert openai_error(orjson.loads(body))["code"] == "invalid_path", (target, body[:300])


def test_encoded_dot_segment_does_not_bypass_an_exhausted_quota(spy_gw: Gateway, spy: SpyUpstream) -> None:
    """The reported attack: refused with 429 on the metered path, the same key tries it encoded."""
    gw = spy_gw
    set_plan(gw.settings.database_url, "alice", "one", "requests=1/1d")
    assert post(gw, "/v1/chat/completions")[0] == 200
    status, body = post(gw, "/v1/chat/completions")
    assert status == 429, body
    served = recorded_ids(gw.settings.database_url)
    spy.clear()
    for target in REFUSED:
        status, body = post(gw, target)
        assert_invalid_path(status, body, target)
    # The same route spelled with escapes of ordinary characters is the metered route: still 429.
    for target in ("/v1/%63hat/completions", "/v1/chat/%63%6f%6d%70letions", "/v1/%63%68%61%74/completions"):
        status, body = post(gw, target)
        assert status == 429, (target, body)
        assert openai_error(orjson.loads(body))["type"] == "rate_limit_error"
    assert spy.seen == []  # nothing reached the provider account
    assert recorded_ids(gw.settings.database_url) == served  # and nothing was recorded as served


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PUT"])
def test_refused_paths_never_reach_the_upstream(spy_gw: Gateway, spy: SpyUpstream, method: str) -> None:
    """Also below allowed pass-through prefixes, and for every method."""
    targets = [
        *REFUSED,
        "/v1/files/%2e%2e/%2e%2e/admin", "/v1/files/file-x%2f..%2f..%2fadmin", "/v1/files/file-x%3Fpurpose=all",
        "/v1/files/file-x/..", "/v1/files/./file-x", "/v1/moderations/%2e%2e/chat/completions",
        "/v1/moderations/..%2fchat%2fcompletions", "/v1/files//", "/v1/files/file-x%23",
    ]
    for target in targets:
        status, body = post(gw := spy_gw, target, method=method)
        assert_invalid_path(status, body, (method, target))
    assert spy.seen == [], spy.seen
    assert recorded_ids(gw.settings.database_url) == set()


def test_raw_control_and_non_ascii_bytes_are_refused(spy_gw: Gateway, spy: SpyUpstream) -> None:
    for target in REFUSED_BY_PARSER:
        status, body = post(spy_gw, target)
        assert status == 400, (target, status, body)
        if body.startswith(b"{"):  # when the application saw it, in its error shape
            assert openai_error(orjson.loads(body))["code"] == "invalid_path"
    assert spy.seen == []


def test_encoded_non_ascii_is_not_forwarded_as_another_route(spy_gw: Gateway, spy: SpyUpstream) -> None:
    for target in ("/v1/chat/compl%C3%A9tions", "/v1/chat/completions%C0%AE%C0%AE", "/v1/%C0%AE%C0%AE/secret",
                   "/v1/chat/completions%E2%80%8B", "/v1/chat/completions%20"):
        status, body = post(spy_gw, target)
        assert status in (400, 404), (target, status, body)
        error = openai_error(orjson.loads(body))
        assert error["code"] in ("invalid_path", "endpoint_not_supported"), (target, error)
    assert spy.seen == []


def test_escaped_ordinary_characters_are_the_metered_route(spy_gw: Gateway, spy: SpyUpstream) -> None:
    """`%63hat` decodes to `chat`: served, metered (X-RateLimit-*, a usage record) and sent upstream
    on the canonical path, never on the client's spelling."""
    gw = spy_gw
    for target, endpoint, upstream in [
        ("/v1/%63hat/completions", "chat", b"/v1/chat/completions"),
        ("/v1/%63%68%61%74/%63ompletions", "chat", b"/v1/chat/completions"),
        ("/v1/%65mbeddings", "embeddings", b"/v1/embeddings"),
    ]:
        spy.clear()
        body = CHAT if endpoint == "chat" else orjson.dumps({"model": "text-embedding-3-small", "input": "x"})
        r = raw_request(gw.url, "POST", target, headers=bearer(gw.key), body=body)
        assert r.status == 200, (target, r.body)
        assert r.headers["x-ratelimit-limit"] and r.headers["x-ratelimit-remaining"], r.headers
        assert [s.raw_path for s in spy.seen] == [upstream]
        request_id = r.headers["x-request-id"]
        assert request_id in recorded_ids(gw.settings.database_url)


def test_native_paths_refuse_in_the_native_shape(gateway: Gateway) -> None:
    for target in ("/native/v1/%2e/chat/completions", "/native/v1/chat/completions/..",
                   "/native/v1/chat%2fcompletions", "/native//v1/chat/completions", "/native/v1/chat/completions%00",
                   "/native/%2e%2e/v1/chat/completions", "/native/v1/chat/completions%3F"):
        status, body = post(gateway, target, body=NATIVE)
        assert status == 400, (target, status, body)
        parsed = ErrorBody.model_validate_json(body)  # the documented native error schema, strictly
        assert parsed.error.code == "invalid_path", (target, body)


def test_nothing_outside_the_v1_base_ever_reaches_the_provider(spy_gw: Gateway, spy: SpyUpstream) -> None:
    """A barrage of escapes, then allowed calls: every upstream path is canonical and under /v1/."""
    gw = spy_gw
    for method in ("GET", "POST", "DELETE"):
        for target in (*REFUSED, "/v1/files/%2e%2e/x", "/v1/moderations/../../x", "/v1/moderations"):
            post(gw, target, body=orjson.dumps({"input": "x"}), method=method)
    assert post(gw, "/v1/moderations", body=orjson.dumps({"input": "x"}))[0] == 200
    assert spy.seen, "the allowed call reached the upstream"
    for seen in spy.seen:
        segments = seen.raw_path.split(b"/")
        assert seen.raw_path.startswith(b"/v1/"), seen
        assert not {b".", b"..", b""} & set(segments[1:]), seen
        assert b"%2e" not in seen.raw_path.lower() and b"%2f" not in seen.raw_path.lower(), seen


@pytest.mark.parametrize("raw", [b"/v1/models\n", b"/v1/chat/completions\n", b"/v1/files/a%20b\n"])
def test_a_path_ending_in_a_newline_is_not_canonical(raw: bytes) -> None:
    """The path checks ended in `$`, which also matches before a final newline: such a path passed
    as canonical (HTTP/1.1's parsers refuse the byte today; the check must not lean on that)."""
    from sentinel.api.paths import check_raw_path
    from sentinel.errors import InvalidRequest

    check_raw_path(raw[:-1])
    with pytest.raises(InvalidRequest, match="control characters"):
        check_raw_path(raw)


@pytest.mark.parametrize("raw", [b"/v1/files/%FF", b"/v1/files/file-%C0%AF", b"/v1/files/%ED%A0%80", b"/native/v1/%E9"])
def test_escapes_that_do_not_spell_utf8_are_not_canonical(raw: bytes) -> None:
    """Such an escape decodes to U+FFFD, so `%FF` and `%FE` named the same file, user or plan."""
    from sentinel.api.paths import check_raw_path
    from sentinel.errors import InvalidRequest

    check_raw_path(b"/v1/files/%C3%A9")  # é, spelled in UTF-8
    with pytest.raises(InvalidRequest, match="UTF-8"):
        check_raw_path(raw)


@pytest.mark.parametrize("raw", [
    b"/v1/files/file-mine/..;/file-theirs", b"/v1/files/file-mine/..;x/file-theirs", b"/v1/files/file-mine/.;/x",
    b"/v1/files/file-mine/..%3B/file-theirs", b"/v1/files/file-mine/%2e%2e;/file-theirs", b"/v1/;/files/file-theirs",
    b"/v1/files/;jsessionid=1/file-theirs", b"/v1/files/file-mine/..%20/file-theirs", b"/v1/files/file-mine/.../x",
    b"/v1/files/file-mine/%20/file-theirs", b"/v1/files/file-mine/%20..%20;x/file-theirs", b"/v1/files/file-mine/..;",
])
def test_a_segment_a_lenient_server_reads_as_a_dot_segment_is_not_canonical(raw: bytes) -> None:
    """`..;` is `..` to a Java servlet container (it drops a segment's `;` parameters), `.. ` and `...`
    are `..` to Windows, and `;x` or ` ` is an empty segment: `/v1/files/{own}/..;/{theirs}` passed
    the ownership check on the caller's own file, and a server between Sentinel and the provider that
    reads it so served another user's file."""
    from sentinel.api.paths import check_raw_path
    from sentinel.errors import InvalidRequest

    for fine in (b"/v1/files/a;b", b"/v1/models/gpt-4.1", b"/v1/x/.hidden", b"/v1/x/a.", b"/v1/x/%20a"):
        check_raw_path(fine)  # ids and names with a `;`, a dot or a space in them stay canonical
    with pytest.raises(InvalidRequest, match="dot segments"):
        check_raw_path(raw)

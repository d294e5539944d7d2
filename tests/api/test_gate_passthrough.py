"""Pass-through is deny-by-default; what an operator allows is authenticated, admitted and recorded.

A spy in front of the mock upstream records every request that reaches the provider account.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import httpx
import orjson

from sentinel.native.openai_checks import MAX_JSON_DEPTH
from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, openai_error, recorded_ids, wait_for
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Provider endpoints that hold per-account state or cost money, none of which is offered by default.
UNKNOWN = [
    "/v1/files", "/v1/files/file-abc123", "/v1/files/file-abc123/content", "/v1/uploads", "/v1/uploads/upload_1/parts",
    "/v1/batches", "/v1/batches/batch_1", "/v1/batches/batch_1/cancel", "/v1/images/generations", "/v1/images/edits",
    "/v1/images/variations", "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations",
    "/v1/vector_stores", "/v1/vector_stores/vs_1", "/v1/vector_stores/vs_1/files", "/v1/vector_stores/vs_1/search",
    "/v1/chat/completions/chatcmpl-123", "/v1/chat/completions/chatcmpl-123/messages", "/v1/moderations",
    "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/ftjob-1/events", "/v1/assistants", "/v1/threads/thread_1/runs",
    "/v1/conversations", "/v1/conversations/conv_1/items", "/v1/containers", "/v1/evals", "/v1/realtime/sessions",
    "/v1/organization/users", "/v1/organization/admin_api_keys", "/v1/responses/input_tokens", "/v1/x",
    "/v1/chat/completions/",
]
MODERATION = {"input": ["is this fine?"]}


def start(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, **settings: object) -> Gateway:
    return gateway_factory(openai_api_url=spy.url + "/v1", **settings)


def test_unknown_paths_are_not_supported_for_any_method(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    gw = start(gateway_factory, spy)
    with gw.client() as http:
        for path in UNKNOWN:
            for method in METHODS:
                r = http.request(method, path, json=None if method in ("GET", "HEAD") else {"model": "x"})
                assert r.status_code == 404, (method, path, r.status_code, r.text)
                if method != "HEAD":
                    code = openai_error(r.json())["code"]
                    assert code in ("endpoint_not_supported", "object_not_found"), (method, path, r.text)
                assert "x-ratelimit-limit" not in r.headers
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url) == set()


def test_metered_paths_with_other_methods_are_not_forwarded(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`GET /v1/chat/completions` is the provider's list of stored completions: never offered."""
    gw = start(gateway_factory, spy)
    with gw.client() as http:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
            for method in ("GET", "PUT", "PATCH", "DELETE"):
                r = http.request(method, path, params={"limit": "100"})
                assert r.status_code in (404, 405), (method, path, r.text)
                assert openai_error(r.json())["code"] in ("endpoint_not_supported", "method_not_allowed")
                if r.status_code == 405:
                    assert r.headers["allow"] == "POST"
    assert spy.seen == []


def test_allowed_paths_need_a_valid_key(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    gw = start(gateway_factory, spy, passthrough="/v1/moderations,/v1/files/*")
    for headers in ({}, {"Authorization": "Bearer sk-made-up-0000"}, {"Authorization": f"Basic {gw.key}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {gw.key}x"}):
        with httpx.Client(base_url=gw.url, headers=headers) as http:
            assert http.post("/v1/moderations", json=MODERATION).status_code == 401
            assert http.get("/v1/files/file-abc/content").status_code == 401
            assert http.delete("/v1/files/file-abc").status_code == 401
            assert http.get("/v1/models").status_code == 401
            assert http.get("/v1/models/gpt-4o-mini").status_code == 401
    assert spy.seen == []


def test_allowed_calls_are_admitted_against_the_plan(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    gw = start(gateway_factory, spy, passthrough="/v1/moderations,/v1/files/*")
    set_plan(gw.settings.database_url, "alice", "three", "requests=3/1d")
    with gw.client() as http:
        upload = http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data"})
        answers = [upload, *(http.post("/v1/moderations", json=MODERATION) for _ in range(2))]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "3" for r in answers)
        file_id = upload.json()["id"]
        for denied in (http.post("/v1/moderations", json=MODERATION), http.get(f"/v1/files/{file_id}"),
                       http.delete(f"/v1/files/{file_id}"),
                       http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data"}),
                       http.get("/v1/models"), http.get("/v1/models/gpt-4o-mini")):
            assert denied.status_code == 429, (denied.request.url, denied.text)
            error = openai_error(denied.json())
            assert error["details"]["metric"] == "requests", error
            assert denied.headers["x-ratelimit-remaining"] == "0" and int(denied.headers["retry-after"]) >= 1
    assert spy.paths() == ["/v1/files", "/v1/moderations", "/v1/moderations"]


def test_each_allowed_call_is_one_ledger_row(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    gw = start(gateway_factory, spy, passthrough="/v1/moderations,/v1/files/*", usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        mod = http.post("/v1/moderations", json=MODERATION)
        created = http.post("/v1/files", files={"file": ("notes.txt", b"mine")}, data={"purpose": "user_data"})
        assert mod.status_code == 200 and created.status_code == 200, (mod.text, created.text)
        file_id = created.json()["id"]
        got = http.get(f"/v1/files/{file_id}")
        content = http.get(f"/v1/files/{file_id}/content")
        models = http.get("/v1/models")
        model = http.get("/v1/models/gpt-4o-mini")
    answers = [mod, created, got, content, models, model]
    for r in answers:
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"], (r.request.url, r.text)
    expected = {r.headers["x-request-id"] for r in answers}
    assert wait_for(lambda: {r["request_id"] for r in ledger_rows(gw.settings.database_url)} >= expected)
    rows = {r["request_id"]: r for r in ledger_rows(gw.settings.database_url)}
    assert len(rows) == len(answers)
    endpoints = [rows[r.headers["x-request-id"]]["endpoint"] for r in answers]
    assert endpoints[:4] == ["/v1/moderations", "/v1/files/*", "/v1/files/*", "/v1/files/*"]
    assert all(e for e in endpoints[4:])
    assert all(rows[i]["status"] == 200 and rows[i]["external_id"] == "alice" for i in expected)


def test_listing_is_not_offered_even_when_allowed(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """`GET /v1/files` would show every user's files on the shared account."""
    gw = start(gateway_factory, spy, passthrough="/v1/files/*,/v1/files")
    with gw.client() as http:
        before = http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data"})
        assert before.status_code == 200, before.text
        remaining = int(before.headers["x-ratelimit-remaining"])
        spy.clear()
        for path, params in (("/v1/files", None), ("/v1/files", {"purpose": "batch", "limit": "10000"}),
                             ("/v1/files/", None), ("/v1/%66iles", None)):
            r = http.get(path, params=params)
            assert r.status_code == 404, (path, r.text)
            assert openai_error(r.json())["code"] in ("endpoint_not_supported", "object_not_found")
        after = http.post("/v1/files", files={"file": ("b.txt", b"y")}, data={"purpose": "user_data"})
    assert spy.paths() == ["/v1/files"]  # only the second upload
    assert spy.seen[0].method == "POST"
    assert int(after.headers["x-ratelimit-remaining"]) == remaining - 1  # the refusals cost nothing


def test_a_collection_is_not_listed_with_head_either(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """GET /v1/files was 404, HEAD /v1/files reached the provider: a list of every user's files
    (its length, its headers)."""
    gw = start(gateway_factory, spy, passthrough="/v1/files,/v1/files/*,/v1/batches")
    with gw.client() as alice:
        answers = [alice.head("/v1/files"), alice.head("/v1/files", params={"limit": "10000"}), alice.head("/v1/batches")]
        gets = [alice.get("/v1/files"), alice.get("/v1/batches")]
    assert [r.status_code for r in answers + gets] == [404] * 5
    assert spy.seen == []


def test_a_metered_path_with_a_trailing_slash_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`POST /v1/chat/completions/` matched an allowed `/v1/chat/completions/*` and was forwarded as
    pass-through: one request, no catalogue, no token reservation. A path that is a typed one but for
    its trailing slash is refused, whatever the operator allows."""
    typed = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
             "/v1/messages/count_tokens", "/v1/models"]
    gw = start(gateway_factory, spy, passthrough=",".join(p + "/*" for p in typed),
               usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        for path in typed:
            for method in ("POST", "GET"):
                r = http.request(method, path + "/", json=None if method == "GET" else {
                    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "input": "hi"})
                if path == "/v1/models" and method == "GET":  # the catalogue's model "" (not pass-through)
                    continue
                assert r.status_code == 404, (method, path, r.status_code, r.text)
                error = r.json()["error"]
                if path.startswith("/v1/messages"):  # Anthropic's error shape: a type, no code
                    assert error["type"] == "not_found_error", (method, path, r.text)
                else:
                    assert error["code"] == "endpoint_not_supported", (method, path, r.text)
                assert f"use {path}" in error["message"], (method, path, r.text)
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url) == set()


def test_a_served_or_owned_path_in_another_case_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """Paths were matched case-sensitively: with `/v1/*` allowed, Bob read and deleted Alice's file
    as `/v1/FILES/{id}` and `/v1/Files/{id}` (no collection, so no ownership check), and
    `POST /v1/Chat/Completions` ran `o1-pro` as pass-through (one request, no catalogue, no
    reservation); a provider or a gateway that folds case serves them. A `/v1` path that names an
    endpoint Sentinel serves, a collection it keeps owners of, a call whose models it checks, or a
    word below an object that Sentinel reads (`content`, ...) only once case-folded is 404
    `endpoint_not_supported`, whatever is allowed, before anything is sent; a path Sentinel has no
    rule for is pass-through in any case, and an object id keeps its case."""
    gw = start(gateway_factory, spy, passthrough="/v1/*", usage_flush_interval_seconds=0.1)
    bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
    with gw.client() as alice:
        upload = alice.post("/v1/files", files={"file": ("a.txt", b"alice's")}, data={"purpose": "user_data"})
        assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    chat = {"model": "o1-pro", "messages": [{"role": "user", "content": "hi"}]}
    spy.clear()
    with gw.client(bob_key) as bob:
        refused = [
            bob.get(f"/v1/FILES/{file_id}"), bob.get(f"/v1/Files/{file_id}/content"), bob.delete(f"/v1/Files/{file_id}"),
            bob.post("/v1/Chat/Completions", json=chat), bob.post("/v1/chat/Completions", json=chat),
            bob.post("/v1/RESPONSES", json={"model": "o1-pro", "input": "hi"}), bob.get("/v1/Responses/resp_1"),
            bob.post("/v1/Embeddings", json={"model": "x", "input": "x"}), bob.get("/v1/Models"),
            bob.post("/v1/Messages", json={"model": "x"}), bob.post("/v1/messages/Count_Tokens", json={"model": "x"}),
            bob.post("/v1/Fine_Tuning/Alpha/graders/run", json={"grader": {"type": "score_model", "model": "o1-pro"}}),
            bob.post("/v1/fine_tuning/Jobs", json={"model": "x"}), bob.post("/v1/Batches", json={}),
            bob.get("/v1/Vector_Stores/vs_1"), bob.post("/v1/Evals/eval_1/runs", json={}),
            bob.get(f"/v1/%EF%AC%81les/{file_id}"),  # the ligature 'ﬁ' folds to 'fi'
            # Letters other matchers fold to ASCII ('ı', 'İ', fullwidth 'ｆ'): every path is ASCII.
            bob.get(f"/v1/f%C4%B1les/{file_id}"), bob.get(f"/v1/f%C4%B0les/{file_id}"),
            bob.delete(f"/v1/%EF%BD%86iles/{file_id}"), bob.post("/v1/%EF%BD%8Doderations", json=MODERATION),
        ]
        for r in refused:  # `/v1/messages/...` answers in Anthropic's shape (no code)
            assert r.status_code == 404, (r.request.method, r.request.url, r.text)
            assert r.json()["error"].get("code", "endpoint_not_supported") == "endpoint_not_supported", r.text
        assert spy.seen == []
        assert "case-sensitive: /v1/files" in openai_error(refused[0].json())["message"]
        other = bob.post("/v1/Moderations", json=MODERATION)  # no rule of Sentinel's: forwarded as spelled
        not_his = bob.get(f"/v1/files/{file_id.upper()}")  # an id keeps its case: checked, no one's
    assert other.status_code == 404, other.text  # the mock serves only /v1/moderations
    assert not_his.status_code == 404 and openai_error(not_his.json())["code"] == "object_not_found"
    assert spy.paths() == ["/v1/Moderations"]
    with gw.client() as alice:
        assert alice.get(f"/v1/files/{file_id}").status_code == 200  # still there, still hers
        # A word below an object tells Sentinel what a call is (a file's `content` is bytes, owning nothing).
        words = [alice.get(f"/v1/files/{file_id}/Content"), alice.post(f"/v1/files/{file_id}/CANCEL", json={})]
    assert [(r.status_code, openai_error(r.json())["code"]) for r in words] == [(404, "endpoint_not_supported")] * 2
    assert f"case-sensitive: /v1/files/{file_id}/content" in openai_error(words[0].json())["message"]
    assert spy.paths()[-1] == f"/v1/files/{file_id}"
    assert recorded_ids(gw.settings.database_url, external_id="bob") == {other.headers["x-request-id"]}


def test_a_path_a_lenient_server_reads_as_an_owned_one_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """With `/v1/*` allowed, `/v1/files;x/{id}`, `/v1/files./{id}` and `/v1/files%20/{id}` named no
    collection, so Bob's calls on Alice's file went upstream unchecked — to a Java server that drops
    `;` parameters, or a Windows one that trims a segment's trailing dots and spaces, Alice's file. Such
    a path is read as the case-folded one is: 404 `endpoint_not_supported`, nothing sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
    with gw.client() as alice:
        upload = alice.post("/v1/files", files={"file": ("a.txt", b"alice's")}, data={"purpose": "user_data"})
        assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    spy.clear()
    with gw.client(bob_key) as bob:
        refused = [
            bob.get(f"/v1/files;x/{file_id}"), bob.delete(f"/v1/files;/{file_id}"), bob.get(f"/v1/files./{file_id}"),
            bob.get(f"/v1/files%20/{file_id}/content"), bob.get(f"/v1/files.%20./{file_id}"),
            bob.post("/v1/chat/completions;x", json={"model": "o1-pro", "messages": []}),
            bob.get("/v1/fine_tuning/jobs./ftjob-1"), bob.post("/v1/vector_stores;v=1/vs_1/search", json={}),
        ]
        for r in refused:
            assert r.status_code == 404, (r.request.method, r.request.url, r.text)
            assert openai_error(r.json())["code"] == "endpoint_not_supported", r.text
        assert spy.seen == []
    with gw.client() as alice:
        # Below her own file, a word Sentinel reads the call by, padded: not read as another call.
        padded = [alice.get(f"/v1/files/{file_id}/content."), alice.post(f"/v1/files/{file_id}/cancel;x", json={})]
    assert [(r.status_code, openai_error(r.json())["code"]) for r in padded] == [(404, "endpoint_not_supported")] * 2
    assert spy.seen == []


def test_a_metered_endpoint_with_a_suffix_or_below_another_prefix_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """With `/v1/*` allowed, `POST /v1/chat/completions.json` (Spring MVC's suffix patterns, Rails'
    formats read it as `/v1/chat/completions`), `/v1/v1/chat/completions`, `/v1/engines/{model}/completions`
    or `/v1/openai/deployments/{name}/chat/completions` (a LiteLLM proxy in front of the provider serves
    chat there) went upstream as pass-through: one request, any model, no token reservation — and
    `GET /v1/chat/completions.json` the provider's list of every user's stored completions. A path
    ending as an endpoint Sentinel serves itself is 404 `endpoint_not_supported`, nothing sent; the
    organisation's usage reports (`/v1/organization/usage/completions`, allowed by name) and other paths
    still go."""
    gw = start(gateway_factory, spy, passthrough="/v1/*,/v1/organization/*", usage_flush_interval_seconds=0.1)
    chat = {"model": "o1-pro", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}
    with gw.client() as alice:
        refused = [
            alice.post(path, json=chat) for path in (
                "/v1/chat/completions.json", "/v1/chat/completions.json;x", "/v1/responses.json", "/v1/embeddings.x.y",
                "/v1/completions.json", "/v1/v1/chat/completions", "/v1/v1/responses", "/v1/x/embeddings/",
                "/v1/engines/gpt-4o-mini/completions", "/v1/engines/gpt-4o-mini/chat/completions",
                "/v1/openai/deployments/o1-pro/chat/completions", "/v1/x/Chat/Completions.json", "/v1/files.json",
                "/v1/threads/thread_1/runs/run_1/steps.json", "/v1/anthropic/v1/messages", "/v1/v1/messages",
            )
        ] + [alice.get("/v1/chat/completions.json"), alice.get("/v1/x/chat/completions")]
        legacy = alice.post("/v1/complete/", json=chat)  # Anthropic's legacy API, as `/v1/complete`
        assert spy.seen == []
        others = [alice.get("/v1/organization/usage/completions"), alice.post("/v1/moderations.json", json=MODERATION)]
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "use /v1/chat/completions" in openai_error(refused[5].json())["message"]
    assert legacy.status_code == 404 and legacy.json()["error"]["type"] == "not_found_error", legacy.text
    assert "use POST /v1/messages" in legacy.json()["error"]["message"]
    assert [r.status_code for r in others] == [404, 404]  # the mock serves neither: the provider's own 404s
    assert spy.paths() == ["/v1/organization/usage/completions", "/v1/moderations.json"]
    assert recorded_ids(gw.settings.database_url) == {r.headers["x-request-id"] for r in others}


NESTED_V1 = [
    ("GET", "/v1/v1/files/file-abc123/content"), ("DELETE", "/v1/v1/files/file-abc123"), ("GET", "/v1/v1/batches"),
    ("GET", "/v1/openai/v1/organization/admin_api_keys"), ("POST", "/v1/v1/realtime/client_secrets"),
    ("POST", "/v1/v1/videos"), ("POST", "/v1/v1/videos/video_1/remix"), ("POST", "/v1/v1/vector_stores/vs_1/search"),
    ("POST", "/v1/v1/responses/compact"), ("DELETE", "/v1/v1/models/ft:gpt-4o-mini:acme:payroll:abc123"),
    ("POST", "/v1/v1/messages/batches"), ("GET", "/v1/V1/files/file-abc123"), ("GET", "/v1/x/v1;x/files/file-abc123"),
    ("GET", "/v1/x/v1./batches"), ("POST", "/v1/v1"),
]


def test_a_path_holding_v1_again_is_never_pass_through(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """A server in front of the provider reads what follows a second `v1` as a `/v1` path (LiteLLM's
    `/v1/v1/...`, an `/openai/v1/...` pass-through route), as it reads `/v1/v1/chat/completions`.
    With `/v1/*` allowed, such paths were sent on as spelled, none of the checks of the path they name
    applied: another user's file read or deleted, every user's batches listed, the account's admin
    keys read, a Realtime secret made, a video, a search or a compaction run for one request and no
    token, a fine-tuned model deleted, Message Batches sent to the OpenAI upstream. Each is 404
    `endpoint_not_supported` naming the path it may be read as, nothing sent or recorded; other
    paths still go."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    with gw.client() as alice:
        refused = [alice.request(method, path, json=None if method in ("GET", "DELETE") else {"model": "sora-2-pro"})
                   for method, path in NESTED_V1]
        assert spy.seen == []
        allowed = alice.post("/v1/moderations", json=MODERATION)
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "/v1/files/file-abc123/content" in openai_error(refused[0].json())["message"]
    assert allowed.status_code == 200, allowed.text
    assert spy.paths() == ["/v1/moderations"]
    assert recorded_ids(gw.settings.database_url) == {allowed.headers["x-request-id"]}


BELOW_ANOTHER_PREFIX = [
    ("GET", "/v1/openai/files/file-abc123/content"), ("DELETE", "/v1/openai/files/file-abc123"),
    ("GET", "/v1/openai/batches"), ("GET", "/v1/openai/organization/admin_api_keys"),
    ("POST", "/v1/openai/realtime/client_secrets"), ("DELETE", "/v1/openai/models/ft:gpt-4o-mini:acme:payroll:abc123"),
    ("GET", "/v1/engines/gpt-4o-mini/files/file-abc123"), ("GET", "/v1/openai/deployments/d1/batches/batch_1"),
    ("GET", "/v1/api/threads/thread_1/runs"), ("POST", "/v1/openai/images/generations"),
    ("POST", "/v1/openai/vector_stores/vs_1/search"), ("GET", "/v1/openai/Files/file-abc123"),
    ("GET", "/v1/x;y/openai/conversations/conv_1/items"), ("GET", "/v1/chat/x/files/file-abc123"),
]


def test_a_path_naming_another_below_another_prefix_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A server in front of the provider reads paths below other prefixes as OpenAI's (LiteLLM's
    `/openai/{endpoint}` pass-through to OpenAI's `/v1/{endpoint}`, Azure's `/openai/deployments/{name}/...`,
    `/engines/{model}/...`). With `/v1/*` allowed, `/v1/openai/files/{id}/content` and the like were sent
    on as spelled, none of the checks of the path they name applied: another user's file read or deleted,
    every user's batches listed, the account's admin keys read, a Realtime secret made, a fine-tuned model
    deleted, an image or a search run for one request and no token. Each is 404 `endpoint_not_supported`
    naming the path it may be read as, nothing sent or recorded; OpenAI's own paths that name a collection
    below their first segment still go."""
    gw = start(gateway_factory, spy, passthrough="/v1/*,/v1/chatkit/*,/v1/organization/*")
    with gw.client() as alice:
        refused = [alice.request(method, path, json=None if method in ("GET", "DELETE") else {"model": "dall-e-3"})
                   for method, path in BELOW_ANOTHER_PREFIX]
        assert spy.seen == []
        allowed = [alice.post("/v1/moderations", json=MODERATION), alice.get("/v1/chatkit/threads/cthr_1"),
                   alice.get("/v1/organization/usage/vector_stores"), alice.get("/v1/x")]
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "/v1/files/file-abc123/content" in openai_error(refused[0].json())["message"]
    assert spy.paths() == ["/v1/moderations", "/v1/chatkit/threads/cthr_1", "/v1/organization/usage/vector_stores", "/v1/x"]
    assert recorded_ids(gw.settings.database_url) == {r.headers["x-request-id"] for r in allowed}


SESSIONS = [
    "/v1/realtime/client_secrets", "/v1/realtime/sessions", "/v1/realtime/transcription_sessions",
    "/v1/realtime/calls/rtc_1/accept", "/v1/realtime/translations/client_secrets", "/v1/chatkit/sessions",
    "/v1/live/sessions/sess_1/accept", "/v1/live/sessions/sess_1/fork", "/v1/agents/sessions",
    "/v1/agents/sessions/sess_1/turns", "/v1/Realtime/client_secrets", "/v1/realtime;x/client_secrets",
]


def test_sessions_the_gateway_never_sees_are_opened_only_by_name(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`SENTINEL_PASSTHROUGH=/v1/*` (to offer files, batches, images) also handed every user Realtime
    ephemeral keys and SIP calls, ChatKit and Live sessions and agent sessions — models run for as long
    as the client likes, out of Sentinel's sight, metered as the one request that made them. Below
    those only a pattern naming them opens a path: 404 `endpoint_not_supported` under a broader one."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    body = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    with gw.client() as alice:
        refused = [alice.post(path, json=body) for path in SESSIONS] + [alice.get("/v1/realtime")]
        other = alice.post("/v1/moderations", json=MODERATION)
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "allowed only by name (/v1/realtime/*)" in openai_error(refused[0].json())["message"]
    assert other.status_code == 200, other.text
    assert spy.paths() == ["/v1/moderations"]

    spy.clear()
    named = start(gateway_factory, spy, passthrough="/v1/*,/v1/realtime/*,/v1/chatkit/sessions")
    with named.client() as alice:
        answers = [alice.post(path, json=body) for path in
                   ("/v1/realtime/client_secrets", "/v1/chatkit/sessions", "/v1/live/sessions/sess_1/accept")]
    assert [r.status_code for r in answers] == [404, 404, 404]  # the mock serves none of them...
    assert spy.paths() == ["/v1/realtime/client_secrets", "/v1/chatkit/sessions"]  # ...but these were sent
    assert "allowed only by name (/v1/live/*)" in openai_error(answers[2].json())["message"]


ACCOUNT_WIDE = [
    "/v1/vaults", "/v1/vaults/vlt_1", "/v1/webhook_endpoints", "/v1/webhook_endpoints/we_1", "/v1/webhook_event_types",
    "/v1/organization/usage/completions", "/v1/organization/admin_api_keys", "/v1/projects/proj_1/users",
    "/v1/Vaults", "/v1/webhook_endpoints;x",
    # the project's safety alerts and cases: each about one user's request (its response, what it did)
    "/v1/safety/alerts/sa_1", "/v1/safety/cases/sc_1", "/v1/Safety/alerts/sa_1",
    # the legacy account reports: every user's usage by day, the company's subscription and spend
    "/v1/usage?date=2026-12-01", "/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage",
]


def test_what_the_whole_provider_account_shares_is_opened_only_by_name(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`SENTINEL_PASSTHROUGH=/v1/*` handed every user what the provider account shares, every user's
    alike: its vaults of credentials, its webhook endpoints (a user adding one is sent every event of
    the account, the other users' answers too), its organisation and projects (keys, members, every
    user's usage), its project's safety alerts (any user's, to whoever held the id). No object there is
    one user's: only a pattern naming them opens them; under a
    broader one they are 404 `endpoint_not_supported`, nothing sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    with gw.client() as alice:
        refused = [alice.get(path) for path in ACCOUNT_WIDE]
        refused.append(alice.post("/v1/webhook_endpoints", json={"url": "https://attacker.example/hook"}))
        other = alice.post("/v1/moderations", json=MODERATION)
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "what the whole provider account shares" in openai_error(refused[0].json())["message"]
    assert "allowed only by name (/v1/vaults/*)" in openai_error(refused[0].json())["message"]
    assert other.status_code == 200, other.text
    assert spy.paths() == ["/v1/moderations"]

    spy.clear()
    named = start(gateway_factory, spy, passthrough="/v1/*,/v1/vaults/*")
    with named.client() as alice:
        answers = [alice.get(path) for path in ("/v1/vaults/vlt_1", "/v1/webhook_endpoints")]
    assert [r.status_code for r in answers] == [404, 404]  # the mock serves neither...
    assert spy.paths() == ["/v1/vaults/vlt_1"]  # ...but the vault named was sent


GATEWAY_ROUTES = [
    # LiteLLM's provider pass-throughs: a provider's own API, any model, run with the proxy's credentials
    ("POST", "/v1/bedrock/model/anthropic.claude-3-5-sonnet/invoke"), ("POST", "/v1/bedrock/model/m1/converse"),
    ("POST", "/v1/vertex_ai/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent"),
    ("POST", "/v1/gemini/v1beta/models/gemini-2.5-pro:generateContent"), ("POST", "/v1/cohere/v2/chat"),
    ("POST", "/v1/assemblyai/v2/transcript"), ("POST", "/v1/mistral/ocr"), ("POST", "/v1/azure/responses"),
    ("GET", "/v1/openai/realtime"), ("POST", "/v1/Bedrock/model/m1/invoke"), ("POST", "/v1/vllm;x/pooling"),
    # LiteLLM's management API: the proxy's keys, users, teams, spend and models, every user's alike
    ("POST", "/v1/key/generate"), ("GET", "/v1/key/list"), ("POST", "/v1/user/new"), ("POST", "/v1/team/new"),
    ("GET", "/v1/spend/logs"), ("GET", "/v1/global/spend/report"), ("POST", "/v1/model/new"), ("GET", "/v1/model/info"),
    ("GET", "/v1/health"), ("GET", "/v1/credentials"), ("GET", "/v1/v2/model/info"),
    # OpenRouter's keys and credits, Portkey's admin API, vLLM's adapters
    ("GET", "/v1/keys"), ("GET", "/v1/credits"), ("GET", "/v1/api-keys"), ("GET", "/v1/virtual-keys"),
    ("GET", "/v1/logs"), ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/sleep"),
]


def test_a_gateways_own_routes_are_opened_only_by_name(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """With OPENAI_API_URL at a gateway (a LiteLLM proxy, whose documented base URL has no `/v1`;
    OpenRouter, Portkey, a vLLM server), `SENTINEL_PASSTHROUGH=/v1/*` forwarded the gateway's own
    routes to every user: LiteLLM's provider pass-throughs (`/bedrock/model/{id}/invoke`,
    `/gemini/...:generateContent`: any model, outside the catalogue, no usage Sentinel reads) and its
    management API (`/key/generate`, `/spend/logs`, `/model/new`: the proxy's keys, spend and models),
    OpenRouter's keys and credits, Portkey's admin API, vLLM's adapters. Only a pattern naming them
    opens them: under a broader one they are 404 `endpoint_not_supported`, nothing sent or recorded;
    OpenAI's own paths still go."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    with gw.client() as alice:
        refused = [alice.request(method, path, json=None if method == "GET" else {"model": "m1"})
                   for method, path in GATEWAY_ROUTES]
        assert spy.seen == []
        other = alice.post("/v1/moderations", json=MODERATION)
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert "a route of a gateway in front of the provider" in openai_error(refused[0].json())["message"]
    assert "allowed only by name (/v1/bedrock/*)" in openai_error(refused[0].json())["message"]
    assert other.status_code == 200, other.text
    assert spy.paths() == ["/v1/moderations"]
    assert recorded_ids(gw.settings.database_url) == {other.headers["x-request-id"]}

    spy.clear()
    named = start(gateway_factory, spy, passthrough="/v1/*,/v1/bedrock/*")
    with named.client() as alice:
        answers = [alice.post(path, json={"model": "m1"}) for path in
                   ("/v1/bedrock/model/m1/invoke", "/v1/key/generate")]
    assert [r.status_code for r in answers] == [404, 404]  # the mock serves neither...
    assert spy.paths() == ["/v1/bedrock/model/m1/invoke"]  # ...but the route named was sent
    assert "allowed only by name (/v1/key/*)" in openai_error(answers[1].json())["message"]


def test_a_word_that_charges_a_run_in_another_case_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A thread's `messages` and a run's `steps` charge the runs they show, an eval run's
    `output_items` the run: `/v1/threads/{id}/Messages` (or `Runs/{run}/steps`, `Output_Items`) went
    upstream as spelled, uncharged, to a provider that folds case. 404, nothing sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    for owned in ("thread_1", "eval_1"):
        gw.write_stored(f"sentinel:owner:{owned}", b"alice", 3600)
    spy.clear()
    with gw.client() as alice:
        refused = [alice.get("/v1/threads/thread_1/Messages"), alice.get("/v1/threads/thread_1/messages;x/msg_1"),
                   alice.get("/v1/threads/thread_1/Runs/run_1/steps"), alice.get("/v1/threads/thread_1/runs./run_1"),
                   alice.get("/v1/evals/eval_1/runs/run_1/Output_Items"), alice.get("/v1/evals/eval_1/RUNS/run_1")]
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), r.text
    assert spy.seen == []


def test_a_media_call_spelled_another_way_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """Speech, images, transcripts, videos and a vector store search rewriting its query are held to
    token limits by their paths (`media_calls.media_call`): `/v1/Audio/Speech`, `/v1/images;x/generations`,
    `/v1/audio/transcriptions.json`, `/v1/videos/Edits`, `/v1/vector_stores/{id}/Search` and
    `/v1/v1/audio/speech` went upstream as spelled under `/v1/*`, charged one request and no token,
    to a provider (or a server in front of it) that may read them as the media call. 404, nothing sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    gw.write_stored("sentinel:owner:vs_1", b"alice", 3600)
    spy.clear()
    speech = {"model": "tts-1", "voice": "alloy", "input": "hello " * 50}
    with gw.client() as alice:
        refused = [
            alice.post("/v1/Audio/Speech", json=speech), alice.post("/v1/audio/speech.json", json=speech),
            alice.post("/v1/audio;x/speech", json=speech), alice.post("/v1/v1/audio/speech", json=speech),
            alice.post("/v1/images;x/generations", json={"model": "dall-e-3", "prompt": "a cat"}),
            alice.post("/v1/Images/Edits", json={"model": "dall-e-2", "prompt": "a cat"}),
            alice.post("/v1/audio/Transcriptions", json={"model": "whisper-1"}),
            alice.post("/v1/audio/translations.json", json={"model": "whisper-1"}),
            alice.post("/v1/videos/Edits", json={"prompt": "a cat", "video": {"id": "video_1"}}),
            alice.post("/v1/videos/extensions.", json={"prompt": "a cat", "video": {"id": "video_1"}}),
            alice.post("/v1/vector_stores/vs_1/Search", json={"query": "cats " * 50, "rewrite_query": True}),
        ]
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert spy.seen == []


def test_a_collections_own_calls_are_pass_through_and_their_ids_checked(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """`POST /v1/responses/compact` (a pass-through call the README offers), `/v1/responses/input_tokens`
    and `/v1/threads/runs` were read as calls on an object of that id (`compact`): no one's, 404
    `object_not_found`. They are pass-through calls: their body's ids must be the caller's, compact
    is charged its answer's usage, and what they create (the compaction, the run's new thread) is
    the caller's; any other method on such a path still names an object (no one's)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/responses/*,/v1/threads/*")
        for owned in ("resp_alice", "asst_alice"):
            asyncio.run(gw.runtime.relay.ownership.claim(owned, "alice", None))
        bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
        compacted = {"id": "cmp_1", "object": "response.compaction", "created_at": 1, "output": [],
                     "usage": {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150}}
        for answer in (compacted, {"object": "response.input_tokens", "input_tokens": 42},
                       {"id": "run_1", "object": "thread.run", "thread_id": "thread_new", "status": "queued"},
                       compacted, {"id": "thread_new", "object": "thread"}):
            upstream.json(answer)
        with gw.client() as alice, gw.client(bob_key) as bob:
            continued = {"model": "gpt-5", "input": "hi", "previous_response_id": "resp_alice"}
            theirs = [bob.post("/v1/responses/compact", json=continued),
                      bob.post("/v1/responses/input_tokens", json=continued),
                      bob.post("/v1/threads/runs", json={"assistant_id": "asst_alice"})]
            assert upstream.received == []
            served = [alice.post("/v1/responses/compact", json=continued),
                      alice.post("/v1/responses/input_tokens", json=continued),
                      alice.post("/v1/threads/runs", json={"assistant_id": "asst_alice", "thread": {"messages": []}}),
                      alice.get("/v1/responses/cmp_1"), alice.get("/v1/threads/thread_new")]
            others = [bob.get("/v1/responses/cmp_1"), bob.get("/v1/threads/thread_new"),
                      alice.get("/v1/responses/compact"), alice.delete("/v1/threads/runs")]
    for r in theirs + others:
        assert r.status_code == 404 and openai_error(r.json())["code"] == "object_not_found", r.text
    assert [r.status_code for r in served] == [200] * 5, [r.text for r in served]
    assert served[1].json()["input_tokens"] == 42
    # the run is reached through its thread's path only: no owner of its own, kept for ever
    assert gw.read_stored("sentinel:owner:run_1") is None
    assert gw.read_stored("sentinel:owner:thread_new") == b"alice"
    assert len(upstream.received) == 5
    assert orjson.loads(upstream.received[0])["previous_response_id"] == "resp_alice"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 5)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["endpoint"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("/v1/responses/*", 120, 30), ("/v1/responses/*", 0, 0), ("/v1/threads/*", 0, 0),
        ("/v1/responses/{response_id}", 0, 0), ("/v1/threads/*", 0, 0)]  # the compaction was charged once


def test_a_body_nested_too_deep_is_a_400_on_pass_through_too(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A pass-through JSON body is re-encoded from what was checked; orjson reads 1,024 levels but writes
    254, so one nested 254 levels deep or more was a 500 (`internal_error`). Every request body is
    refused past MAX_JSON_DEPTH (400 `invalid_json`), pass-through ones too: nothing reserved, sent or
    recorded."""
    gw = start(gateway_factory, spy, passthrough="/v1/moderations,/v1/vector_stores/*")
    with gw.client() as http:
        refused = []
        for depth in (MAX_JSON_DEPTH + 1, 254, 300, 1000):
            body = b'{"input":"x","a":' + b"[" * depth + b"]" * depth + b"}"
            for path in ("/v1/moderations", "/v1/vector_stores"):
                refused.append(http.post(path, content=body, headers={"Content-Type": "application/json"}))
        deepest_taken = b'{"input":"x","a":' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
        taken = http.post("/v1/moderations", content=deepest_taken, headers={"Content-Type": "application/json"})
    for r in refused:
        assert r.status_code == 400, (r.request.url, r.text)
        error = openai_error(r.json())
        assert error["code"] == "invalid_json" and "nested deeper" in error["message"], error
        assert "x-ratelimit-limit" not in r.headers
    assert taken.status_code == 200, taken.text
    assert spy.paths() == ["/v1/moderations"]
    assert recorded_ids(gw.settings.database_url) == {taken.headers["x-request-id"]}


def test_an_unreadable_body_gets_the_same_answer_on_pass_through_and_metered_paths(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """One reader for a client's JSON body (`sentinel.domain.json_body.read_json`): a body nested past
    orjson's own 1,024 levels was told on pass-through that it "must be JSON (uncompressed, valid
    UTF-8)" (`invalid_request`), a compressed one too, while the metered path named what was wrong
    (`invalid_json`). Same status, code and message on both, nothing sent upstream or recorded."""
    gw = start(gateway_factory, spy, passthrough="/v1/moderations")
    bodies = [b'{"input":"x","a":' + b"[" * depth + b"]" * depth + b"}" for depth in (1025, 5000)]
    bodies += [gzip.compress(b'{"input":"x"}'), b'{"input":"x"', '{"input":"é"}'.encode("utf-16")]
    told = []
    with gw.client() as http:
        for body in bodies:
            answers = [http.post(path, content=body, headers={"Content-Type": "application/json"})
                       for path in ("/v1/moderations", "/v1/chat/completions")]
            errors = []
            for r in answers:
                assert r.status_code == 400, (r.request.url, r.text)
                errors.append(openai_error(r.json()))
            assert errors[0] == errors[1], errors
            assert errors[0]["code"] == "invalid_json", errors
            told.append(errors[0]["message"])
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in told[0] and told[0] == told[1]
    assert "compressed" in told[2] and "UTF-16" in told[4]
    assert spy.paths() == []
    assert recorded_ids(gw.settings.database_url) == set()


def test_a_model_is_only_read_whatever_is_allowed(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """`GET /v1/models/{id}` is the catalogue's; any other method on it matched an allowed `/v1/*` or
    `/v1/models/*` and reached the provider account: `DELETE /v1/models/ft:...` deleted a fine-tuned
    model, any user's, one the catalogue serves to everyone too. It is 405 (`Allow: GET`)."""
    for allowed in ("/v1/*", "/v1/models/*"):
        gw = start(gateway_factory, spy, passthrough=allowed)
        with gw.client() as http:
            refused = [http.request(method, f"/v1/models/{model}") for method in ("DELETE", "POST", "PATCH", "PUT")
                       for model in ("ft:gpt-4o-mini:acme:payroll:abc123", "gpt-4o-mini")]
            read = http.get("/v1/models/gpt-4o-mini")
        for r in refused:
            assert r.status_code == 405 and r.headers["allow"] == "GET", r.text
            assert openai_error(r.json())["code"] == "method_not_allowed"
        assert read.status_code == 200 and read.json()["id"] == "gpt-4o-mini", read.text
        assert spy.seen == []
        assert len(recorded_ids(gw.settings.database_url)) == 1  # the read: the refusals are none


def test_anthropics_paths_are_never_pass_through(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """Below `/v1/messages` Sentinel serves Anthropic's endpoints itself; an allowed `/v1/*` (or
    `/v1/messages/*`) sent the rest — Message Batches — to the OpenAI upstream with the OpenAI key,
    every user's batches listed to any (`GET /v1/messages/batches`) and none owned. They are 404 in
    Anthropic's error shape, whatever is allowed, and nothing is sent or recorded."""
    for allowed in ("/v1/*", "/v1/messages/*"):
        gw = start(gateway_factory, spy, passthrough=allowed)
        with gw.client() as http:
            answers = [
                http.get("/v1/messages/batches"), http.post("/v1/messages/batches", json={"requests": []}),
                http.get("/v1/messages/batches/msgbatch_1/results"), http.delete("/v1/messages/batches/msgbatch_1"),
                http.post("/v1/messages/batches/msgbatch_1/cancel"),
            ]
        for r in answers:
            assert r.status_code == 404, r.text
            assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error", r.text
        assert spy.seen == []
        assert recorded_ids(gw.settings.database_url) == set()


# Bodies naming a stored object by an id that is none: the metered /v1/responses refuses each (400).
BLANK_IDS = [
    ({"previous_response_id": ""}, "previous_response_id"),
    ({"previous_response_id": "  "}, "previous_response_id"),
    ({"conversation": " "}, "conversation"),
    ({"conversation": {"id": ""}}, "conversation.id"),
    ({"input": [{"type": "item_reference", "id": "\t"}]}, "input.0.id"),
]


def test_blank_ids_on_responses_pass_through_calls_and_batch_lines_are_400_before_the_provider(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`/v1/responses/input_tokens` and `/v1/responses/compact` take a Responses body, and a batch's
    `/v1/responses` lines are Responses requests; but only the metered `/v1/responses` refused a blank
    `previous_response_id`, `conversation` or item id: the others sent it to the provider (admitted
    and charged a request), which refused it. Each is the same 400 naming the parameter now, before
    anything is reserved or sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/responses/*,/v1/files/*,/v1/batches")
    answers = []
    with gw.client() as http:
        for extra, param in BLANK_IDS:
            body = {"model": "gpt-4o-mini", "input": "hi", **extra}
            for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
                answers.append((http.post(path, json=body), param))
            line = orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": body})
            answers.append((http.post("/v1/files", files={"file": ("in.jsonl", line + b"\n")},
                                      data={"purpose": "batch"}), "body." + param))
        taken = http.post("/v1/responses/input_tokens", json={"model": "gpt-4o-mini", "input": "hi"})
    for answer, param in answers:
        assert answer.status_code == 400, (param, answer.text)
        error = openai_error(answer.json())
        assert error["type"] == "invalid_request_error" and param in error["message"], (param, error)
        assert "x-ratelimit-limit" not in answer.headers  # refused before anything was reserved
    assert taken.status_code != 400, taken.text  # a body naming no blank id still goes through
    assert spy.paths() == ["/v1/responses/input_tokens"]
    assert wait_for(lambda: len(recorded_ids(gw.settings.database_url)) == 1)  # only the call that was sent


def test_a_media_call_with_a_trailing_slash_is_never_pass_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """`/v1/audio/speech/` (and each media call's path with a trailing slash) is the media call to a
    server that reads past the slash, as `/v1/v1/audio/speech` is: under `/v1/*` it went upstream as
    pass-through, charged one request and no token, without the media charge its path decides. 404,
    nothing sent."""
    gw = start(gateway_factory, spy, passthrough="/v1/*")
    spy.clear()
    speech = {"model": "tts-1", "voice": "alloy", "input": "hello " * 50}
    with gw.client() as alice:
        refused = [
            alice.post("/v1/audio/speech/", json=speech),
            alice.post("/v1/images/generations/", json={"model": "dall-e-3", "prompt": "a cat"}),
            alice.post("/v1/videos/edits/", json={"prompt": "a cat", "video": {"id": "video_1"}}),
        ]
    for r in refused:
        assert (r.status_code, openai_error(r.json())["code"]) == (404, "endpoint_not_supported"), (r.request.url, r.text)
    assert spy.seen == []

"""The OpenAI-compatible surface over real HTTP: the official `openai` SDK as client, the mock upstream."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows, recorded_ids
from tests.support.servers import serving
from tests.support.upstream import UPSTREAM_KEY, ScriptedUpstream
from tests.support.waiting import wait_for


def last_upstream_request(gw: Gateway) -> dict:
    import httpx

    base = gw.settings.openai_api_url.removesuffix("/v1")
    return httpx.get(base + "/__mock/last_request", timeout=5).json()


def test_chat_completion_plain(gateway: Gateway) -> None:
    client = gateway.openai()
    result = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping pong"}]
    )
    assert "ping pong" in result.choices[0].message.content
    assert result.usage is not None and result.usage.prompt_tokens > 0


def test_chat_completion_stream_without_usage_request(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream me please" in text
    # Sentinel asked the upstream for usage on its own behalf; the client did not ask, so it sees none.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    seen = last_upstream_request(gateway)
    assert seen["body"]["stream_options"] == {"include_usage": True}


def test_chat_completion_stream_with_usage_request(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens > 0



def test_a_streamed_completion_is_measured_and_the_client_sees_no_usage_it_did_not_ask_for(gateway: Gateway) -> None:
    """Legacy completions stream their usage only when asked (`stream_options.include_usage`), as
    chat does: Sentinel asks on the client's behalf, strips the chunk and records the provider's
    figures (once it did not ask, and every streamed completion was an estimate: a long `suffix`
    cost nothing)."""
    from tests.support.attack import ledger_rows, wait_for

    stream = gateway.openai().completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert last_upstream_request(gateway)["body"]["stream_options"] == {"include_usage": True}
    def rows() -> list[dict[str, object]]:
        return [r for r in ledger_rows(gateway.settings.database_url) if r["endpoint"] == "completions"]

    assert wait_for(lambda: len(rows()) == 1)
    assert rows()[0]["usage_source"] == "measured", rows()


def test_completions_embeddings_models_responses(gateway: Gateway) -> None:
    client = gateway.openai()
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert "say hi" in completion.choices[0].text
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids
    assert client.models.retrieve(ids[0]).id == ids[0]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model-anywhere")
    response = client.responses.create(model="gpt-4o-mini", input="hello responses")
    assert "hello responses" in response.output_text


def test_responses_stream(gateway: Gateway) -> None:
    client = gateway.openai()
    events = list(client.responses.create(model="gpt-4o-mini", input="stream responses", stream=True))
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "stream responses" in text


def test_client_credentials_never_reach_upstream(gateway: Gateway) -> None:
    with gateway.client() as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Cookie": "session=secret", "OpenAI-Organization": "org-client", "X-Custom": "kept",
                     "X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7", "X-Real-IP": "203.0.113.7",
                     "X-Docs-Key": "docs-secret", "X-CSRF-Token": "csrf-secret"},
        )
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in last_upstream_request(gateway)["headers"].items()}
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gateway.key not in str(seen)
    assert "cookie" not in seen and "openai-organization" not in seen
    # The user's address (a proxy's headers) and Sentinel's own credentials stay here too.
    assert "203.0.113.7" not in str(seen) and "docs-secret" not in str(seen) and "csrf-secret" not in str(seen), seen
    assert "x-custom" not in seen  # only an allowlist goes: see the next test


# What AI gateways in front of a provider read (Cloudflare AI Gateway, Helicone, Portkey, LiteLLM):
# their credentials, cache and routing switches. With OPENAI_API_URL on such a gateway, a user's
# request must not pick the company gateway's account, cache or route — nor name an account, an
# idempotency key shared by every user, or anything else no SDK sends.
GATEWAY_HEADERS = {
    "cf-aig-authorization": "Bearer cf-secret", "cf-aig-cache-ttl": "3600", "cf-aig-skip-cache": "true",
    "helicone-auth": "Bearer helicone-secret", "helicone-cache-enabled": "true", "helicone-target-url": "https://x",
    "x-portkey-api-key": "pk-secret", "x-portkey-virtual-key": "vk-other", "x-portkey-config": "pc-other",
    "x-litellm-tags": "other-team", "openai-project": "proj_other", "idempotency-key": "k1",
    "azure-extension": "y", "x-app": "cli",
}


def test_only_what_the_sdks_send_reaches_the_provider(gateway_factory: Callable[..., Gateway]) -> None:
    """Client request headers went upstream unless on a blocklist: an AI gateway's credentials and
    cache/routing headers (`cf-aig-authorization`, `helicone-auth`, `x-portkey-*`, ...) reached it.
    Only an allowlist goes now — on the relayed, pass-through and Anthropic calls alike — and what
    the official SDKs send still does (`user-agent`, `accept`, `x-stainless-*`, `openai-beta`,
    `anthropic-version`, `anthropic-beta`)."""
    gw = gateway_factory(passthrough="/v1/moderations")
    client = gw.openai(default_headers=GATEWAY_HEADERS)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    chat = {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}
    client.moderations.create(input="fine?", extra_headers={"OpenAI-Beta": "assistants=v2"})
    passed = {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}
    claude = gw.anthropic(default_headers={**GATEWAY_HEADERS, "anthropic-beta": "beta-one"})
    claude.messages.create(model="claude-3-5-haiku-20241022", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}
    for seen in (chat, passed, message):
        assert not set(GATEWAY_HEADERS) & set(seen), sorted(seen)
        assert not {"Bearer cf-secret", "Bearer helicone-secret", "pk-secret", "vk-other", "proj_other"} & set(
            seen.values()), seen
        assert {"user-agent", "accept", "x-stainless-lang", "x-stainless-package-version", "x-stainless-retry-count",
                "content-type"} <= set(seen), sorted(seen)
    assert chat["user-agent"].startswith("OpenAI/Python") and passed["openai-beta"] == "assistants=v2"
    assert message["anthropic-version"] == claude.default_headers["anthropic-version"]  # the SDK's own
    assert message["anthropic-beta"] == "beta-one"
    assert message["user-agent"].startswith("Anthropic/Python")


def _forwarded_by_raw_request(gw: Gateway, path: str, body: dict[str, Any], extra: bytes) -> dict[str, str]:
    """The headers the provider received for a POST of `body` sent with the raw header lines `extra`
    (over a socket: the bytes as written, repeats and all)."""
    data = orjson.dumps(body)
    port = int(gw.url.rsplit(":", 1)[1])
    request = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
               + b"\r\nContent-Type: application/json\r\nConnection: close\r\n" + extra
               + b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    return {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}


def test_a_header_sent_on_several_lines_reaches_the_provider_whole(gateway: Gateway) -> None:
    """Only the last line of a repeated header went upstream: `anthropic-beta` sent as two lines (one
    beta each, as `curl -H ... -H ...` does) lost all but the last beta. The lines go joined, as HTTP
    reads them (`a, b`)."""
    claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    seen = _forwarded_by_raw_request(gateway, "/v1/messages", claude,
                                     b"anthropic-beta: beta-one\r\nanthropic-beta: beta-two\r\n")
    assert seen["anthropic-beta"] == "beta-one, beta-two", seen


def test_a_header_value_that_is_not_ascii_never_reaches_the_provider_altered(gateway: Gateway) -> None:
    """A client header value with non-ASCII bytes was read as Latin-1 and sent on as UTF-8: the
    provider received other bytes than the client sent (`café` in UTF-8 became `cafÃ©`). Such a
    value is not forwarded (as a provider's non-ASCII response headers are not relayed); the SDKs'
    headers are ASCII."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    seen = _forwarded_by_raw_request(gateway, "/v1/chat/completions", chat,
                                     b"User-Agent: caf\xc3\xa9\r\nX-Stainless-Lang: python\r\n")
    assert "user-agent" not in seen, seen
    assert seen["x-stainless-lang"] == "python", seen


def test_the_request_id_goes_upstream_as_x_client_request_id(gateway_factory: Callable[..., Gateway]) -> None:
    """A provider's logs name Sentinel's request id (`X-Client-Request-Id`, which OpenAI keeps), on
    relayed, pass-through, Anthropic and native calls: the client's sane `X-Request-Id`, else the id
    Sentinel made and answered with. Before, no id went and a client's `X-Request-Id` was dropped."""
    gw = gateway_factory(passthrough="/v1/moderations")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    calls = [("/v1/chat/completions", chat), ("/v1/moderations", {"input": "fine?"}), ("/v1/messages", claude),
             ("/native/v1/chat/completions", {"tier": "simple", "messages": [{"role": "user", "content": "hi"}]})]
    with gw.client() as http:
        for path, body in calls:
            r = http.post(path, json=body, headers={"X-Request-Id": "client-id.42"})
            assert r.status_code == 200, (path, r.text)
            seen = {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}
            assert seen["x-client-request-id"] == "client-id.42", (path, seen)
            r = http.post(path, json=body)
            seen = {k.lower(): v for k, v in last_upstream_request(gw)["headers"].items()}
            assert seen["x-client-request-id"] == r.headers["x-request-id"] != "client-id.42", (path, seen)


def test_range_and_conditional_headers_go_with_a_file_download_only(gateway_factory: Callable[..., Gateway]) -> None:
    """`Range` and `If-*` were relayed on every call: on an object's JSON (a batch, a stored response,
    charged the usage its answer shows) a range would cut that usage out of the answer. They go with a
    file's content download only."""
    gw = gateway_factory(passthrough="/v1/moderations,/v1/files,/v1/files/*")
    download = {"Range": "bytes=0-1", "If-None-Match": '"v1"'}
    with gw.client() as http:
        upload = http.post("/v1/files", files={"file": ("a.txt", b"hello")}, data={"purpose": "user_data"})
        assert upload.status_code == 200, upload.text
        http.post("/v1/moderations", json={"input": "fine?"}, headers=download)
        other = {k.lower() for k in last_upstream_request(gw)["headers"]}
        http.get(f"/v1/files/{upload.json()['id']}", headers=download)
        read = {k.lower() for k in last_upstream_request(gw)["headers"]}
        http.get(f"/v1/files/{upload.json()['id']}/content", headers=download)
        content = {k.lower() for k in last_upstream_request(gw)["headers"]}
    assert not {"range", "if-none-match"} & (other | read), sorted(other | read)
    assert {"range", "if-none-match"} <= content, sorted(content)


def test_a_download_not_modified_is_relayed_as_a_304_and_recorded(gateway_factory: Callable[..., Gateway]) -> None:
    """A conditional download (`If-None-Match`, relayed on purpose) that the provider answered 304 was
    taken for an error: a 502 `provider_error`, logged as a provider failure, its reservation given
    back and no ledger row. It is relayed as a 304 with its caching headers and no body, and recorded
    as one request."""
    upstream = ScriptedUpstream()
    cached = {"ETag": '"v1"', "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT", "Cache-Control": "private, max-age=60"}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/files,/v1/files/*")
        upstream.json({"id": "file-1", "object": "file", "purpose": "user_data"})
        upstream.empty(304, {**cached, "X-Ratelimit-Remaining-Requests": "29999"})
        with gw.client() as http:
            made = http.post("/v1/files", files={"file": ("a.txt", b"hello")}, data={"purpose": "user_data"})
            assert made.status_code == 200, made.text
            fresh = http.get("/v1/files/file-1/content", headers={"If-None-Match": '"v1"'})
    assert fresh.status_code == 304, fresh.text
    assert fresh.content == b"" and "content-length" not in fresh.headers
    assert {k: fresh.headers[k] for k in ("etag", "last-modified", "cache-control")} == {
        k.lower(): v for k, v in cached.items()}
    assert "x-ratelimit-remaining-requests" not in fresh.headers and fresh.headers["x-ratelimit-limit"]
    assert upstream.received_headers[1]["if-none-match"] == '"v1"'
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["endpoint"], r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("/v1/files", 200, 0, 0), ("/v1/files/*", 304, 0, 0)]


def test_cookies_an_upstream_sets_are_never_sent_again(gateway_factory: Callable[..., Gateway]) -> None:
    """One upstream session serves every user: a cookie a provider set answering one user's request
    (a load balancer's, a session's) must not travel with the next user's requests (aiohttp's
    default cookie jar kept it and sent it with every later request to that host)."""
    upstream = ScriptedUpstream()
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    with serving(upstream) as srv:
        # A host name: aiohttp's jar ignores cookies from bare IP addresses (a provider has a name).
        gw = gateway_factory(openai_api_url=srv.url.replace("127.0.0.1", "localhost") + "/v1")
        other = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as http:
            upstream.json(answer, headers={"Set-Cookie": "affinity=alice-node-7; Path=/"})
            first = http.post("/v1/chat/completions", json=body)
            upstream.json(answer)
            second = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {other}"})
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert "set-cookie" not in first.headers
    assert len(upstream.received_headers) == 2
    assert "cookie" not in upstream.received_headers[1], upstream.received_headers[1]


# What providers and the gateways in front of them (LiteLLM, Azure, Cloudflare) add to their answers:
# the company's account, its limits and spend, its deployment. None of it may reach a user.
ACCOUNT_HEADERS = {
    "x-ratelimit-limit-requests": "30000", "x-ratelimit-remaining-tokens": "149999000",
    "llm_provider-x-ratelimit-remaining-tokens": "149999000", "x-litellm-key-spend": "1234.5",
    "x-litellm-model-api-base": "https://internal-azure.example/openai", "anthropic-ratelimit-tokens-limit": "400000",
    "anthropic-priority-input-tokens-limit": "100000", "ratelimit-limit": "5000", "ratelimit-remaining": "4990",
    "x-ms-region": "East US", "apim-request-id": "5f1c-account", "azureml-model-session": "d001-20240101",
    "cf-ray": "8a1b2c3d4e5f-AMS", "www-authenticate": 'Bearer realm="company-account"',
    "anthropic-organization-id": "org-company", "openai-organization": "org-company",
}
# What a client or the official SDKs read off an answer: relayed.
ANSWER_HEADERS = {"openai-processing-ms": "12", "openai-version": "2020-10-01", "openai-poll-after-ms": "500",
                  "x-should-retry": "false", "retry-after-ms": "100"}


def _with_headers(app: Any, extra: dict[str, str]) -> Any:
    """`app` with `extra` added to every answer, and a file's name to a file's content."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def send_more(message: Any) -> None:
            if message["type"] == "http.response.start":
                added = [(k.encode(), v.encode()) for k, v in extra.items()]
                if scope["path"].endswith("/content"):
                    added.append((b"content-disposition", b'attachment; filename="notes.txt"'))
                message = {**message, "headers": [*message["headers"], *added]}
            await send(message)
        await app(scope, receive, send_more)
    return wrapped


def test_only_what_a_client_needs_of_the_providers_headers_is_relayed(gateway_factory: Callable[..., Gateway]) -> None:
    """Provider headers were relayed unless named in a blocklist: a LiteLLM backend's spend and API
    base, Anthropic's priority limits, Azure's region and deployment, Cloudflare's ray reached every
    user. Only an allowlist is relayed now (README, Model catalogue and translation): on JSON and streamed answers,
    both wire formats, and a file's content (its type and name kept, its length Sentinel's own)."""
    from sentinel.mock.app import create_mock_app

    with serving(_with_headers(create_mock_app(), {**ACCOUNT_HEADERS, **ANSWER_HEADERS})) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url, passthrough="/v1/files/*")
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        sdk = gw.openai()
        with gw.client() as http:
            answers = [
                sdk.chat.completions.with_raw_response.create(**chat).http_response,  # type: ignore[call-overload]
                http.post("/v1/chat/completions", json={**chat, "stream": True}),
                http.post("/v1/messages", json=claude),
                http.post("/v1/messages", json={**claude, "stream": True}),
                http.post("/v1/messages/count_tokens", json={k: claude[k] for k in ("model", "messages")}),
            ]
            made = http.post("/v1/files", files={"file": ("notes.txt", b"my notes")}, data={"purpose": "user_data"})
            assert made.status_code == 200, made.text
            content = sdk.files.content(made.json()["id"])
            answers += [made, content.response]
    for r in answers:
        assert r.status_code == 200, (r.request.url, r.text)
        leaked = {name for name in r.headers if name.lower() in ACCOUNT_HEADERS or name.lower().startswith(
            ("x-ratelimit-limit-", "x-ratelimit-remaining-", "x-ratelimit-reset-"))}
        assert not leaked, (r.request.url, leaked)
        assert {name: r.headers[name] for name in ANSWER_HEADERS} == ANSWER_HEADERS, (r.request.url, dict(r.headers))
        assert int(r.headers["x-ratelimit-remaining"]) >= 0  # Sentinel's own, for the user's plan
    assert content.response.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    assert content.response.headers["content-type"] == "application/octet-stream"  # the file's bytes, as OpenAI gives them
    assert content.content == b"my notes"
    assert int(content.response.headers["content-length"]) == len(content.content)


def test_request_id_created_or_kept(gateway: Gateway) -> None:
    before_ms = time.time_ns() // 1_000_000
    with gateway.client() as http:
        created = http.get("/v1/models")
        kept = http.get("/v1/models", headers={"X-Request-Id": "my-req-123"})
        unauth = http.get("/v1/models", headers={"Authorization": ""})
    after_ms = time.time_ns() // 1_000_000
    made = created.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert before_ms <= int(made[:12], 16) <= after_ms  # a made id begins with its time (ledger order)
    assert kept.headers["x-request-id"] == "my-req-123"
    assert unauth.status_code == 401 and unauth.headers["x-request-id"]


def test_a_request_id_ending_in_a_newline_is_not_kept() -> None:
    """The id check ended in `$`, which also matches before a final newline: an id with one was kept
    (HTTP/1.1's parser refuses the byte today; the check must not lean on that)."""
    from sentinel.api.middleware import _request_id

    assert _request_id({"headers": [(b"x-request-id", b"my-req-123")]}) == ("my-req-123", True)
    made, kept = _request_id({"headers": [(b"x-request-id", b"my-req-123\n")]})
    assert not kept and made != "my-req-123\n" and re.fullmatch(r"[0-9a-f]{32}", made)


def test_unknown_v1_paths_are_not_forwarded(gateway: Gateway) -> None:
    with gateway.client() as http:
        before = last_upstream_request(gateway)
        r = http.get("/v1/files/unknown-file?purpose=fine-tune&limit=2")
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_supported"
    assert last_upstream_request(gateway) == before  # nothing reached the provider account


def test_allowed_passthrough_keeps_method_path_query_and_status(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(passthrough="/v1/moderations")
    with gw.client() as http:
        r = http.post("/v1/moderations?purpose=check&limit=2", json={"input": ["a", "b"]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert r.headers["x-ratelimit-limit"]
        seen = last_upstream_request(gw)
        assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/v1/moderations", {"purpose": "check", "limit": "2"})
        bad = http.post("/v1/moderations", content=b"not json", headers={"content-type": "text/plain"})
    assert bad.status_code == 400  # the upstream's own 4xx is relayed


def test_a_credential_in_a_forwarded_query_is_refused_never_sent_on(gateway_factory: Callable[..., Gateway]) -> None:
    """Pass-through and the stored-response routes send their query on to the provider: a client that
    put its Sentinel key in the URL (`?api_key=`, `?key=`, as Gemini's clients do) sent it to the
    provider's logs. Refused (400 `credential_in_query`, the key not repeated), after
    authentication: nothing sent, nothing recorded."""
    import httpx

    gw = gateway_factory(passthrough="/v1/moderations")
    before = last_upstream_request(gw)
    for target in (f"/v1/moderations?api_key={gw.key}", f"/v1/moderations?limit=2&key={gw.key}",
                   f"/v1/moderations?{gw.key}=1", f"/v1/moderations?x=Bearer%20{gw.key}",
                   "/v1/moderations?key=sk-sentinel-someone-elses", f"/v1/responses/resp_1?after={gw.key}"):
        with gw.client() as http:
            refused = http.request("GET" if "responses" in target else "POST", target, json={"input": "a"})
        assert refused.status_code == 400, (target, refused.text)
        assert refused.json()["error"]["code"] == "credential_in_query", refused.text
        assert gw.key not in refused.text and "someone" not in refused.text
    unauthenticated = httpx.post(gw.url + f"/v1/moderations?api_key={gw.key}", json={"input": "a"}, timeout=30)
    assert unauthenticated.status_code == 401  # the key in the URL is not a credential
    assert last_upstream_request(gw) == before
    assert recorded_ids(gw.settings.database_url) == set()
    with gw.client() as http:  # a query without one is sent on as before
        assert http.post("/v1/moderations?purpose=check", json={"input": "a"}).status_code == 200
    assert last_upstream_request(gw)["query"] == {"purpose": "check"}


def test_a_credential_in_a_forwarded_path_is_refused_never_sent_on(gateway_factory: Callable[..., Gateway]) -> None:
    """A pass-through path with everything below it (`/v1/images/*`) sends the rest of the path on to
    the provider as it sends the query: a key in it (escaped too) went to the provider's logs as
    `?api_key=` did. Refused (400 `credential_in_path`, the key not repeated), nothing sent."""
    gw = gateway_factory(passthrough="/v1/moderations/*")
    before = last_upstream_request(gw)
    body = gw.key.removeprefix("sk-sentinel-")  # the key without its (public) prefix is the key too
    for target in (f"/v1/moderations/{gw.key}", f"/v1/moderations/x/{gw.key.replace('-', '%2D')}/y",
                   f"/v1/moderations/{body}", f"/v1/moderations?x={body}"):
        with gw.client() as http:
            refused = http.post(target, json={"input": "a"})
        assert refused.status_code == 400, (target, refused.text)
        assert refused.json()["error"]["code"] == ("credential_in_query" if "?" in target else "credential_in_path")
        assert body not in refused.text
    assert last_upstream_request(gw) == before
    assert recorded_ids(gw.settings.database_url) == set()
    with gw.client() as http:  # a path without one is sent on as before
        assert http.post("/v1/moderations/check", json={"input": "a"}).status_code != 400


def test_the_callers_own_jwt_in_a_forwarded_query_or_path_is_refused_never_sent_on(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """The credential checks of the query and the path looked for Sentinel's key shape only: a JWT
    user (`JWT_SECRET`, or Zion's tokens) whose client put its token in the URL — `?access_token=`, as
    many OAuth clients do — sent that bearer token on to the provider's logs. The caller's own
    credential, whatever its kind, is refused there as a key is (400, the token not repeated)."""
    import httpx
    import jwt

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    gw = gateway_factory(passthrough="/v1/moderations/*,/v1/moderations", jwt_secret=secret)
    bearer = jwt.encode({"sub": "jwt-user", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    before = last_upstream_request(gw)
    for target, code in ((f"/v1/moderations?access_token={bearer}", "credential_in_query"),
                         (f"/v1/moderations?limit=2&x=Bearer%20{bearer}", "credential_in_query"),
                         (f"/v1/moderations/x/{bearer}", "credential_in_path")):
        for headers in ({"Authorization": f"Bearer {bearer}"}, {"x-api-key": bearer}):
            refused = httpx.post(gw.url + target, json={"input": "a"}, headers=headers, timeout=30)
            assert refused.status_code == 400, (target, refused.text)
            assert refused.json()["error"]["code"] == code, refused.text
            assert bearer not in refused.text
    assert last_upstream_request(gw) == before
    assert recorded_ids(gw.settings.database_url) == set()
    with gw.client(bearer) as http:  # another token in the query is no credential of the caller's: sent on
        other = jwt.encode({"sub": "someone", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        assert http.post(f"/v1/moderations?purpose={other[:20]}", json={"input": "a"}).status_code == 200


def test_a_metered_call_with_a_query_is_refused_before_anything_is_sent(gateway: Gateway) -> None:
    """The metered endpoints take no query parameter and Sentinel reads none: sent on, one was read
    upstream unchecked — a LiteLLM proxy runs `?model=` over the body's model, the one checked against
    the catalogue and reserved for. Refused (400 `unsupported_query`): nothing sent, nothing recorded.
    (The stored-response routes and pass-through keep theirs: `include`, `after`, …)"""
    client = gateway.openai()
    before = last_upstream_request(gateway)
    chat = [{"role": "user", "content": "hi"}]
    over: Any = {"extra_query": {"model": "gpt-4o"}}
    calls: list[Callable[[], object]] = [
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=chat, **over),
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=chat, stream=True, **over),
        lambda: client.chat.completions.create(model="claude-3-5-haiku-20241022", messages=chat, **over),  # translated
        lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", **over),
        lambda: client.embeddings.create(model="text-embedding-3-small", input="x", **over),
        lambda: client.responses.create(model="gpt-4o-mini", input="x", **over),
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=chat, extra_query={"api-version": "1"}),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.code == "unsupported_query", refused.value.body
    assert last_upstream_request(gateway) == before
    assert recorded_ids(gateway.settings.database_url) == set()
    assert client.chat.completions.create(model="gpt-4o-mini", messages=chat).choices  # and without one, served
    assert last_upstream_request(gateway)["query"] == {}


def test_the_anthropic_and_native_surfaces_send_no_query_on(gateway: Gateway) -> None:
    """`/v1/messages` (the anthropic SDK's beta client adds `?beta=true`) and the native API read no
    query and send none on: a `?model=` beside the body's model never reaches the provider."""
    ask = [{"role": "user", "content": "hi"}]
    over: Any = {"extra_query": {"model": "claude-sonnet-4-20250514"}}
    assert gateway.anthropic().beta.messages.create(
        model="claude-3-5-haiku-20241022", max_tokens=5, messages=ask, **over).content
    assert last_upstream_request(gateway)["query"] == {}
    with gateway.client() as http:
        r = http.post("/native/v1/chat/completions?model=gpt-4o", json={"messages": ask})
    assert r.status_code == 200, r.text
    assert last_upstream_request(gateway)["query"] == {}


def test_server_timing_header(gateway: Gateway) -> None:
    with gateway.client() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "t"}]}
        )
    timing = r.headers["server-timing"]
    assert "upstream;dur=" in timing and "total;dur=" in timing

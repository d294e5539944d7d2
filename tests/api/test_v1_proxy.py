"""The OpenAI-compatible surface over real HTTP: the official `openai` SDK as client, the mock upstream."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import openai
import pytest

from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.servers import serving
from tests.support.upstream import UPSTREAM_KEY, ScriptedUpstream


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
    assert seen["x-custom"] == "kept"


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


def test_the_providers_account_limits_are_not_relayed(gateway_factory: Callable[..., Gateway]) -> None:
    """OpenAI's `x-ratelimit-*-requests/-tokens` describe the company's provider account (its limits
    and what is left of them): a user sees only Sentinel's `X-RateLimit-*` for their own plan."""
    upstream = ScriptedUpstream()
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    account = {"x-ratelimit-limit-requests": "30000", "x-ratelimit-remaining-tokens": "149999000",
               "x-ratelimit-reset-requests": "2ms", "openai-processing-ms": "12"}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        with gw.client() as http:
            upstream.json(answer, headers=account)
            r = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert not [name for name in r.headers if name.lower().startswith("x-ratelimit-") and name.lower().endswith(
        ("-requests", "-tokens"))], dict(r.headers)
    assert r.headers["openai-processing-ms"] == "12"  # what is about this answer still is relayed
    assert int(r.headers["x-ratelimit-remaining"]) >= 0  # Sentinel's own, for the user's plan


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


def test_server_timing_header(gateway: Gateway) -> None:
    with gateway.client() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "t"}]}
        )
    timing = r.headers["server-timing"]
    assert "upstream;dur=" in timing and "total;dur=" in timing

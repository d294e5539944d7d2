"""OpenTelemetry traces through a real Sentinel and the mock upstream, exported in memory.

Each request is one SERVER span with the GenAI attributes, and children for authentication, quota
admission and the upstream call (CLIENT), whose context reaches the provider as `traceparent`.
Without an endpoint nothing is installed: no middleware, no upstream hook, no span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sentinel.api.tracing import TracingMiddleware
from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.observability.tracing import (
    NOOP_SPAN,
    NOOP_TRACING,
    OtelTracing,
    build_tracing,
    request_sampler,
)
from tests.support.accounts import create_key
from tests.support.fake_zion import FakeZion
from tests.support.servers import ServerThread, serving
from tests.support.upstream import UPSTREAM_KEY
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


class Traced:
    """A running Sentinel whose spans land in `exporter`."""

    def __init__(self, url: str, key: str, exporter: InMemorySpanExporter, server: ServerThread,
                 tracing: OtelTracing) -> None:
        self.url, self.key, self.exporter, self.server, self.tracing = url, key, exporter, server, tracing

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def request_span(self, route: str) -> ReadableSpan:
        """The (last) finished SERVER span of `route`, waiting for it to end."""

        def found() -> list[ReadableSpan]:
            return [s for s in self.exporter.get_finished_spans()
                    if s.kind is SpanKind.SERVER and (s.attributes or {}).get("http.route") == route]

        assert wait_for(lambda: bool(found())), f"no span for {route}"
        return found()[-1]

    def children(self, parent: ReadableSpan) -> dict[str, ReadableSpan]:
        assert parent.context is not None
        return {s.name: s for s in self.exporter.get_finished_spans()
                if s.parent is not None and s.parent.span_id == parent.context.span_id}


def _settings(tmp_path: Path, upstream: str, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, openai_api_url=upstream + "/v1", openai_api_key=UPSTREAM_KEY, anthropic_api_url=upstream,
        anthropic_api_key="sk-ant-upstream", database_url=f"sqlite+aiosqlite:///{tmp_path}/trace.db",
        access_log=False, **extra,
    )


@pytest.fixture
def traced(tmp_path: Path, mock_upstream: str) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=request_sampler())  # Sentinel's own sampler (`build_tracing`)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = _settings(tmp_path, mock_upstream)
    _, key = asyncio.run(create_key(settings.database_url, "alice"))
    tracing = OtelTracing(provider)
    server = ServerThread(create_app(settings, tracing=tracing), settings=settings).start()
    try:
        yield Traced(server.url, key, exporter, server, tracing)
    finally:
        server.stop()


def _upstream_headers(mock: str) -> dict[str, str]:
    recorded = httpx.get(f"{mock}/__mock/last_request").json()
    headers: dict[str, str] = recorded["headers"]
    return headers


def _traceparent(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{int(span.context.trace_flags):02x}"


def test_plain_chat_is_one_request_span_with_genai_attributes_and_three_children(
    traced: Traced, mock_upstream: str
) -> None:
    with traced.client() as client:
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200
    body = answer.json()
    span = traced.request_span("/v1/chat/completions")
    attrs = dict(span.attributes or {})
    assert span.name == "POST /v1/chat/completions" and span.kind is SpanKind.SERVER
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == body["model"]
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert attrs["http.response.status_code"] == 200 and attrs["http.request.method"] == "POST"
    assert "gen_ai.response.time_to_first_chunk" not in attrs  # only for streams
    assert span.status.status_code is StatusCode.UNSET

    children = traced.children(span)
    assert set(children) == {"sentinel.auth", "sentinel.quota.admit", "chat gpt-4o-mini"}
    upstream = children["chat gpt-4o-mini"]
    assert upstream.kind is SpanKind.CLIENT
    assert (upstream.attributes or {})["http.response.status_code"] == 200
    assert (upstream.attributes or {})["gen_ai.request.model"] == "gpt-4o-mini"
    assert all(c.context is not None and c.context.trace_id == span.context.trace_id for c in children.values())  # type: ignore[union-attr]
    # The provider received the upstream span's context.
    assert _upstream_headers(mock_upstream)["traceparent"] == _traceparent(upstream)


def test_streamed_chat_reports_time_to_first_chunk_and_usage(traced: Traced) -> None:
    with traced.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
            text = "".join(answer.iter_text())
    assert answer.status_code == 200 and "[DONE]" in text
    span = traced.request_span("/v1/chat/completions")
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.request.stream"] is True
    first = attrs["gen_ai.response.time_to_first_chunk"]
    assert isinstance(first, float) and first > 0
    assert span.end_time is not None and span.start_time is not None
    assert first <= (span.end_time - span.start_time) / 1e9
    assert isinstance(attrs["gen_ai.usage.output_tokens"], int) and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.model"]
    assert set(traced.children(span)) == {"sentinel.auth", "sentinel.quota.admit", "chat gpt-4o-mini"}


def test_failed_upstream_marks_the_request_and_upstream_spans(traced: Traced, mock_upstream: str) -> None:
    with traced.client() as client:
        answer = client.post("/v1/chat/completions", json=CHAT, headers={"X-Mock-Status": "500"})
    assert answer.status_code == 502
    span = traced.request_span("/v1/chat/completions")
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["http.response.status_code"] == 502
    assert attrs["error.type"] == answer.json()["error"]["code"]
    assert "gen_ai.usage.input_tokens" not in attrs  # nothing was recorded
    children = traced.children(span)
    upstream = children["chat gpt-4o-mini"]
    assert (upstream.attributes or {})["http.response.status_code"] == 500
    assert _upstream_headers(mock_upstream)["traceparent"] == _traceparent(upstream)


def test_a_long_path_is_clipped_in_the_request_span(traced: Traced) -> None:
    """`url.path` held the client's whole path: a long URL (up to the header limit) went into every
    span exported. It is cut to 256 characters, as in the logs."""
    path = "/v1/files/" + "a" * 8000
    assert httpx.get(traced.url + path).status_code in (401, 404)

    def found() -> list[ReadableSpan]:
        return [s for s in traced.exporter.get_finished_spans() if s.kind is SpanKind.SERVER
                and str((s.attributes or {}).get("url.path", "")).startswith("/v1/files/aaa")]

    assert wait_for(lambda: bool(found()))
    assert (found()[0].attributes or {})["url.path"] == path[:256] + "…"


def test_a_key_in_the_path_is_not_in_the_request_span(traced: Traced) -> None:
    """`url.path` is what the access log writes: a key a client put in the path, or the provider key
    Sentinel holds, is taken out (`***`) before the span is exported."""
    assert httpx.get(f"{traced.url}/v1/files/{traced.key}/{UPSTREAM_KEY}").status_code in (401, 404)

    def found() -> list[ReadableSpan]:
        return [s for s in traced.exporter.get_finished_spans() if s.kind is SpanKind.SERVER
                and str((s.attributes or {}).get("url.path", "")).startswith("/v1/files/sk-")]

    assert wait_for(lambda: bool(found()))
    assert (found()[0].attributes or {})["url.path"] == "/v1/files/sk-sentinel-***/***"


def test_a_failed_spans_message_and_traceback_carry_no_secret(traced: Traced) -> None:
    """A span that fails records its exception's message and traceback (a 5xx's request span, an
    upstream call's): they went to the collector as the exception said them, a provider key or a
    client's key quoted in it included. The started gateway's tracer hides what the logs hide."""
    client_key = "sk-sentinel-" + "k" * 43

    def fail() -> None:
        raise RuntimeError(f"upstream refused {UPSTREAM_KEY} for {client_key}")

    with pytest.raises(RuntimeError), traced.tracing.span("sentinel.test.failure"):
        fail()
    [span] = [s for s in traced.exporter.get_finished_spans() if s.name == "sentinel.test.failure"]
    assert span.status.status_code is StatusCode.ERROR
    [event] = span.events
    exported = [span.status.description or "", *(str(v) for v in (event.attributes or {}).values())]
    assert event.name == "exception" and "RuntimeError" in exported[1]
    assert "upstream refused *** for sk-sentinel-***" in exported[2]  # the message, its secrets out
    assert "raise RuntimeError" in exported[3]  # the traceback, kept
    assert not any(UPSTREAM_KEY in text or client_key in text for text in exported)


def test_refused_credentials_end_in_the_auth_span(traced: Traced) -> None:
    answer = httpx.post(traced.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-sentinel-nope"})
    assert answer.status_code == 401
    span = traced.request_span("/v1/chat/completions")
    assert (span.attributes or {})["error.type"] == "invalid_api_key"
    assert span.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not a server error
    children = traced.children(span)
    assert set(children) == {"sentinel.auth"}
    assert children["sentinel.auth"].status.status_code is StatusCode.ERROR


def test_native_stream_spans_name_the_routed_model(traced: Traced, mock_upstream: str) -> None:
    payload = {"tier": "simple", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with traced.client() as client:
        with client.stream("POST", "/native/v1/chat/completions", json=payload) as answer:
            "".join(answer.iter_text())
    assert answer.status_code == 200
    model = answer.headers["x-sentinel-model"]
    span = traced.request_span("/native/v1/chat/completions")
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == model
    assert attrs["gen_ai.provider.name"] == answer.headers["x-sentinel-provider"]
    assert attrs["gen_ai.response.time_to_first_chunk"] > 0
    upstream = traced.children(span)[f"chat {model}"]
    assert upstream.kind is SpanKind.CLIENT
    assert _upstream_headers(mock_upstream)["traceparent"] == _traceparent(upstream)


def test_a_callers_traceparent_becomes_the_parent(traced: Traced) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with traced.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": parent}).status_code == 200
    span = traced.request_span("/v1/chat/completions")
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"


def test_without_an_endpoint_nothing_is_installed(
    gateway_factory: Callable[..., Any], mock_upstream: str
) -> None:
    assert build_tracing(None, "sentinel") is NOOP_TRACING
    assert NOOP_TRACING.trace_configs() == []
    # One shared context manager, entered without creating anything.
    assert NOOP_TRACING.span("a") is NOOP_TRACING.span("b", {"x": 1}, client=True)
    with NOOP_TRACING.span("a") as span:
        assert span is NOOP_SPAN
    gw = gateway_factory()
    assert gw.runtime.tracing is NOOP_TRACING
    app = gw.server.server.config.app
    assert not isinstance(app._http.app, TracingMiddleware)
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert "traceparent" not in _upstream_headers(mock_upstream)


def test_an_endpoint_selects_the_otlp_exporter() -> None:
    tracing = build_tracing("http://127.0.0.1:4318/", "sentinel-test")
    try:
        assert isinstance(tracing, OtelTracing)
        processor = tracing.provider._active_span_processor._span_processors[0]  # type: ignore[attr-defined]
        assert processor.span_exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
        assert tracing.provider.resource.attributes["service.name"] == "sentinel-test"
    finally:
        tracing.shutdown()


def test_the_callers_sampling_flag_does_not_decide(traced: Traced, mock_upstream: str) -> None:
    """A `-00` traceparent kept the request (failures included) out of the traces."""
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
    with traced.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    span = traced.request_span("/v1/chat/completions")  # recorded although the caller said "not sampled"
    assert span.context is not None and f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    upstream = {k.lower(): v for k, v in _upstream_headers(mock_upstream).items()}
    assert upstream["traceparent"].endswith("-01") and "b7ad6b7169203331" not in upstream["traceparent"]


def test_a_ratio_decides_for_every_request_whatever_its_traceparent_says() -> None:
    """A `-01` traceparent overrode an operator's ratio; `-00` overrode always-on."""
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    def decision(sampler_name: str, flags: int) -> Decision:
        remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                             trace_flags=TraceFlags(flags))
        sampler = request_sampler(sampler_name, "0")
        parent = set_span_in_context(NonRecordingSpan(remote))
        return sampler.should_sample(parent, remote.trace_id, "POST /v1/chat/completions").decision

    assert decision("parentbased_traceidratio", 1) is Decision.DROP  # ratio 0: the caller's -01 does not override it
    assert decision("always_on", 0) is Decision.RECORD_AND_SAMPLE  # nor does its -00 keep it out


def test_the_callers_baggage_and_tracestate_never_reach_sentinels_calls() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=request_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider)
    span, token = tracing.start_request("POST /v1/chat/completions", {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "baggage": "user=victim", "tracestate": "vendor=client"}, {})
    outgoing: dict[str, str] = {}
    try:
        tracing._propagate.inject(outgoing)  # what every call made while serving carries (`trace_configs`)
        from opentelemetry import baggage
        assert baggage.get_all() == {}
    finally:
        tracing.end_request(span, token)
    assert set(outgoing) == {"traceparent"}
    assert outgoing["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")


def test_the_callers_trace_headers_are_not_relayed_to_the_provider(traced: Traced, mock_upstream: str) -> None:
    """The relayed request carried the client's `baggage` and `tracestate` (and, untraced, its
    `traceparent`) to the provider: only Sentinel's own `traceparent` goes."""
    sent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "baggage": "user=victim", "tracestate": "vendor=client"}
    with traced.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=sent).status_code == 200
    relayed = {k.lower(): v for k, v in _upstream_headers(mock_upstream).items()}
    assert "baggage" not in relayed and "tracestate" not in relayed, relayed
    assert relayed["traceparent"] != sent["traceparent"]  # Sentinel's upstream span, child of the caller's
    assert relayed["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")



def test_a_pass_through_upstream_span_is_named_after_its_allowed_pattern(tmp_path: Path, mock_upstream: str) -> None:
    """A pass-through call's CLIENT span was named after the client's path (`/v1/vector_stores/*
    vector_stores/<id>/…`): an object id in every span name (a series of its own in trace
    backends) and a long URL whole, past the 256 characters `url.path` keeps. It is named after
    the allowed pattern the call matched."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=request_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = _settings(tmp_path, mock_upstream, passthrough="/v1/widgets/*")
    _, key = asyncio.run(create_key(settings.database_url, "alice"))
    server = ServerThread(create_app(settings, tracing=OtelTracing(provider)), settings=settings).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for widget in ("w-1", "w-2", "w" * 6000):
                assert http.get(f"/v1/widgets/{widget}/parts").status_code < 500
    finally:
        server.stop()
    clients = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in clients] == ["/v1/widgets/*"] * 3


def test_the_callers_own_credential_is_not_in_the_request_span(tmp_path: Path, mock_upstream: str) -> None:
    """A Zion token has no shape the redaction knows: one a client put in a path went whole into the
    request span's `url.path` (and a failed span's message and exception event), though its access and
    failure log lines had it taken out. The span takes the caller's credential out as the log does:
    the one it was authenticated with, or, refused before that, each one its headers present."""
    token = "opaque-zion-token-" + "q7" * 12
    fake = FakeZion()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=request_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider)
    with serving(fake) as zion:
        fake.url = zion.url
        fake.add_user(token, "olga-ext", "olga@example.com")
        settings = _settings(tmp_path, mock_upstream, governance="zion", zion_api_url=zion.url,
                             zion_api_key=fake.api_key, passthrough="/v1/moderations/*")
        with serving(create_app(settings, tracing=tracing), settings=settings) as sentinel:
            headers = {"Authorization": f"Bearer {token}"}
            refused = httpx.post(f"{sentinel.url}/v1/moderations/x/{token}", json={"input": "a"}, headers=headers,
                                 timeout=30)
            missing = httpx.get(f"{sentinel.url}/v1/nowhere/{token}", headers=headers, timeout=30)
            assert (refused.status_code, refused.json()["error"]["code"]) == (400, "credential_in_path")
            assert missing.status_code == 404

            def paths() -> list[str]:
                return [str((s.attributes or {}).get("url.path")) for s in exporter.get_finished_spans()
                        if s.kind is SpanKind.SERVER]

            assert wait_for(lambda: len(paths()) >= 2)
            assert paths() == ["/v1/moderations/x/***", "/v1/nowhere/***"]
            # A failed span says what its exception said, the caller's credential out of it too.
            span = provider.get_tracer("test").start_span("sentinel.test.failure")
            tracing.fail(span, RuntimeError(f"no route for /v1/x/{token}"), (token,))
            span.end()
    [failed] = [s for s in exporter.get_finished_spans() if s.name == "sentinel.test.failure"]
    exported = [failed.status.description or "", *(str(v) for v in (failed.events[0].attributes or {}).values())]
    assert "no route for /v1/x/***" in exported[2]
    assert not any(token in text for text in exported)

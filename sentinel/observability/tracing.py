"""OpenTelemetry traces, following the GenAI semantic conventions; nothing at all when disabled.

`build_tracing(endpoint, service_name)` chooses, once at start-up, between

* `NOOP_TRACING` (no OTEL_EXPORTER_OTLP_ENDPOINT): `span()` returns one shared do-nothing context
  manager, no OpenTelemetry module is even imported, the request middleware is not installed and
  no trace header is added upstream — no span and no context is created per request;
* `OtelTracing`: an SDK `TracerProvider` exporting in batches over OTLP/HTTP to
  `<endpoint>/v1/traces` (tests pass their own provider with an in-memory exporter).

Span layout of one request (the request middleware opens the first, services the others):

    POST /v1/chat/completions          SERVER  http.*, gen_ai.* (operation, provider, request and
    │                                          response model, usage tokens, time to first chunk)
    ├── sentinel.auth                  INTERNAL
    ├── sentinel.quota.admit           INTERNAL
    └── chat gpt-4o-mini               CLIENT  the upstream call (until the answer's status and
                                               headers); its context goes upstream as `traceparent`

A client's own `traceparent` is honoured (the request span joins its trace).
"""

from __future__ import annotations

import contextlib
import math
import os
import traceback
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sentinel.observability.redaction import SENTINEL_KEYS_ONLY, Redactor

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Span as OtelSpan

# Attribute names (OpenTelemetry GenAI and HTTP semantic conventions).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name, still read by many backends
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
REQUEST_STREAM = "gen_ai.request.stream"
ERROR_TYPE = "error.type"

# Sentinel's endpoint names -> gen_ai.operation.name
OPERATIONS = {
    "chat": "chat", "native": "chat", "completions": "text_completion", "embeddings": "embeddings",
    "responses": "chat",
}


class SpanLike(Protocol):
    """What Sentinel does with a span."""

    def set_attribute(self, key: str, value: Any) -> None: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None


class _NoopContext:
    """One shared, reusable context manager: entering creates nothing."""

    __slots__ = ()

    def __enter__(self) -> SpanLike:
        return NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN = _NoopSpan()
_NOOP_CONTEXT = _NoopContext()


class Tracing:
    """Tracing switched off: every call is a constant-time no-op (see the module docstring)."""

    enabled = False

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False
             ) -> contextlib.AbstractContextManager[SpanLike]:
        """A child span of the current one for the `with` block (`client`: an outgoing call)."""
        return _NOOP_CONTEXT

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """aiohttp hooks adding `traceparent` to upstream requests (none when off)."""
        return []

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        return None


NOOP_TRACING = Tracing()


def error_type(exc: BaseException) -> str:
    """`error.type`: a Sentinel error's code, else the exception's class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


class OtelTracing(Tracing):
    """Tracing through an OpenTelemetry SDK `TracerProvider`."""

    enabled = True

    def __init__(self, provider: TracerProvider, redact: Redactor = SENTINEL_KEYS_ONLY) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        # What a failure's message and traceback say leaves without secrets, as log lines do
        # (`build_runtime` hands over the one built from the configured secrets).
        self.redact = redact
        self.tracer = provider.get_tracer("sentinel")
        self._trace = trace
        self._context = context
        # `traceparent` only, both ways: a client's `baggage` and `tracestate` are its own, never
        # carried into Sentinel's calls to Zion, the JWKS or a provider.
        self._propagate = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False
             ) -> Iterator[SpanLike]:
        kind = self._trace.SpanKind.CLIENT if client else self._trace.SpanKind.INTERNAL
        with self.tracer.start_as_current_span(
            name, kind=kind, attributes=dict(attributes or {}), record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                self.fail(span, exc)
                raise

    def fail(self, span: OtelSpan, exc: BaseException, also: tuple[str, ...] = ()) -> None:
        """Mark `span` failed by `exc` (status ERROR, `error.type`, the exception as an event); `also`:
        more secrets to take out of what it says (a request span's: the caller's own credential)."""
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute(ERROR_TYPE, error_type(exc))
        described = str(getattr(exc, "message", "")) or type(exc).__name__
        span.set_status(Status(StatusCode.ERROR, self.redact.clipped(described, also=also)))
        # `record_exception`'s event, its message and traceback redacted (an exception quoting a
        # key, a path or a statement must not carry it to the collector).
        span.add_event("exception", {
            "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "exception.message": self.redact.clipped(str(exc), also=also),
            "exception.stacktrace": self.redact("".join(traceback.format_exception(exc)), also),
        })

    def start_request(self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> tuple[OtelSpan, object]:
        """Open a request (SERVER) span, child of the client's `traceparent` if any, and make it
        current; returns (span, token for `end_request`)."""
        parent = self._propagate.extract(headers)
        remote = self._trace.get_current_span(parent).get_span_context()
        if remote.is_valid:  # the caller's trace id and span id link the traces; its tracestate stays its own
            linked = self._trace.SpanContext(remote.trace_id, remote.span_id, is_remote=True,
                                             trace_flags=remote.trace_flags)
            parent = self._trace.set_span_in_context(self._trace.NonRecordingSpan(linked))
        span = self.tracer.start_span(name, context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes=dict(attributes))
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def end_request(self, span: OtelSpan, token: object) -> None:
        self._context.detach(token)  # type: ignore[arg-type]
        span.end()

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        import aiohttp

        propagate = self._propagate

        async def inject(session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
            propagate.inject(params.headers)

        config = aiohttp.TraceConfig()
        config.on_request_start.append(inject)
        return [config]

    def shutdown(self) -> None:
        self.provider.shutdown()


def build_tracing(endpoint: str | None, service_name: str) -> Tracing:
    """`NOOP_TRACING` without an endpoint; else batches of spans to `<endpoint>/v1/traces` (OTLP/HTTP)."""
    if not endpoint:
        return NOOP_TRACING
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=request_sampler())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    return OtelTracing(provider)


def request_sampler(name: str | None = None, arg: str | None = None) -> Sampler:
    """The sampler of Sentinel's traces: `OTEL_TRACES_SAMPLER` (`always_on` when unset, `always_off`,
    `traceidratio` with `OTEL_TRACES_SAMPLER_ARG`; a `parentbased_` prefix means the same) decides
    for every request, whatever the sampled flag of a caller's `traceparent` says (a `-00` kept a
    caller's failures out of the traces, a `-01` overrode the ratio); spans inside a request follow it."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

    name = (os.environ.get("OTEL_TRACES_SAMPLER", "") if name is None else name).strip().lower()
    name = name.removeprefix("parentbased_")
    root: Sampler
    if name == "always_off":
        root = ALWAYS_OFF
    elif name == "traceidratio":
        try:
            ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1") if arg is None else arg)
        except ValueError:
            ratio = 1.0
        root = TraceIdRatioBased(min(max(ratio, 0.0), 1.0) if math.isfinite(ratio) else 1.0)
    else:
        root = ALWAYS_ON
    return ParentBased(root, remote_parent_sampled=root, remote_parent_not_sampled=root)

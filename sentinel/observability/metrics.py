"""Prometheus metrics, one registry per app (so two apps can live in one process, e.g. tests).

With `sentinel serve --workers N` the parent sets `PROMETHEUS_MULTIPROC_DIR` (`MULTIPROC_ENV`)
before it starts the workers, so prometheus_client keeps every worker's values in files there and
any worker's `/metrics` reports the whole server: counters and histograms summed over every worker
that ever ran (a replaced worker's counts stay), requests in flight summed over the live workers,
and the outbox depth and provider health as last read by any live worker. prometheus_client
chooses this when it is imported, from the environment: one process never uses it unless the
variable is set.

The counts every request makes (`Metrics.add`, `Metrics.observe`: requests, their durations, tokens,
cache lookups…) are handed to prometheus_client at the next scrape in one process (`flush`), not
one by one: a labelled `Counter.inc` costs ~4,500 instructions and a `Histogram.observe` ~10,100
(its bucket loop and two locked adds), ~85,000 a request in all. What waits is a sum per label set
(a histogram's bucket counts and sum), so it stays as small as the label sets. With
`PROMETHEUS_MULTIPROC_DIR` they go to prometheus_client at once: another worker's scrape reads its
files, not this process's memory.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The files prometheus_client keeps per process for gauges that count live processes only.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")
# prometheus_client's own files (`<type>_<pid>.db`): nothing else in the directory is touched.
_METRIC_FILE = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_\d+\.db$")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    """Every metric Sentinel exports. Names are prefixed `sentinel_`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # What `add` and `observe` hold until `flush`: per counter child, its sum; per histogram
        # child, its sum then its count in each bucket. None: handed over at once (`--workers`).
        self._counts: dict[Any, float] | None = None if os.environ.get(MULTIPROC_ENV) else {}
        self._observed: dict[Any, list[float]] = {}
        # Model names that may become label values; anything else is reported as "other", so a
        # client cannot grow the exposition by sending made-up model names.
        self.known_models: set[str] = set()
        self.requests = Counter(
            "sentinel_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "sentinel_http_request_duration_seconds", "Total request time (streams: until the last byte)",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_duration = Histogram(
            "sentinel_upstream_duration_seconds", "Upstream time (streams: until the last byte)",
            ["provider", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_errors = Counter(
            "sentinel_upstream_errors_total", "Upstream failures by kind (status, timeout, connection, stream)",
            ["provider", "kind"], registry=r,
        )
        self.overhead = Histogram(
            "sentinel_overhead_seconds", "Sentinel's own time: request time minus upstream time",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.cache_lookups = Counter(
            "sentinel_cache_lookups_total",
            "Governance cache lookups by cache (identity, plan) and result (hit, local_hit, stale, miss, undecodable, "
            "store_error)",
            ["cache", "result"], registry=r,
        )
        self.in_flight = Gauge(
            "sentinel_requests_in_flight", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.rejected_overload = Counter(
            "sentinel_overload_rejections_total",
            "Requests refused as overloaded (503: too many in flight, or too many body bytes held)", registry=r,
        )
        self.tokenizer_fallback = Counter(
            "sentinel_tokenizer_fallback_total", "Token counts that used an approximation",
            ["wanted", "used"], registry=r,
        )
        self.quota_decisions = Counter(
            "sentinel_quota_decisions_total", "Quota decisions by result and limit",
            ["result", "limit"], registry=r,
        )
        self.quota_store_failures = Counter(
            "sentinel_quota_store_failures_total", "Quota checks that could not reach the store, by policy",
            ["mode"], registry=r,
        )
        self.store_data_lost = Counter(
            "sentinel_store_data_lost_total",
            "Times this process found that the shared store (Redis) had lost its data (its marker gone or "
            "replaced); each is followed by a seed of every quota window from the usage ledger",
            registry=r,
        )
        self.tokens = Counter(
            "sentinel_tokens_total",
            "Tokens metered by direction (input, output; cache_write and cache_read are the parts of input "
            "written to and read from the provider's prompt cache) and model",
            ["direction", "model"], registry=r,
        )
        self.usage_requests = Counter(
            "sentinel_usage_requests_total", "Usage records produced, by model and source",
            ["model", "source"], registry=r,
        )
        self.estimate_error = Histogram(
            "sentinel_token_estimate_error_ratio", "(actual - estimated) / estimated input tokens",
            ["model"], buckets=(-1, -0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 1, 2), registry=r,
        )
        self.cost = Counter(
            "sentinel_cost_usd_total", "Cost of served requests from tier prices", ["provider", "model"], registry=r,
        )
        self.outbox_depth = Gauge(
            "sentinel_usage_outbox_depth", "Usage records not yet delivered", registry=r,
            multiprocess_mode="livemostrecent",
        )
        # Each process holds its own: summed over the live workers.
        self.unstored_records = Gauge(
            "sentinel_usage_unstored_records",
            "Usage records only this process's memory holds (no durable outbox took them)", registry=r,
            multiprocess_mode="livesum",
        )
        self.deliveries = Counter(
            "sentinel_usage_deliveries_total", "Usage delivery attempts by result", ["result"], registry=r,
        )
        self.delivered_records = Counter(
            "sentinel_usage_delivered_records_total", "Usage records delivered to the ledger", registry=r,
        )
        self.sse_parse_errors = Counter(
            "sentinel_sse_parse_errors_total", "Upstream SSE lines that failed to parse", ["endpoint"], registry=r,
        )
        self.model_selections = Counter(
            "sentinel_model_selections_total", "Tier routing choices", ["tier", "provider", "model"], registry=r,
        )
        self.sessions = Counter(
            "sentinel_sessions_total", "Session events (created, hit, upgraded, migrated, store_error)",
            ["event"], registry=r,
        )
        self.provider_health = Gauge(
            "sentinel_provider_health", "1 healthy, 0 in backoff", ["provider", "model"], registry=r,
            multiprocess_mode="livemostrecent",
        )

    def model_label(self, model: str | None) -> str:
        """The label value for `model`: a known model's name, `none` or `other`."""
        if model is None:
            return "none"
        return model if model in self.known_models else "other"

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised (labels() is slow for a per-request call)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < 50_000:
                self._children[key] = found
        return found

    def add(self, child: Any, amount: float = 1.0) -> None:
        """`child.inc(amount)` for a counter's child (`child()`), handed over at the next `flush`.
        Called on the event loop's thread only, as `flush` is."""
        counts = self._counts
        if counts is None:
            child.inc(amount)
        else:
            counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        """`child.observe(value)` for a histogram's child (`child()`), handed over at the next `flush`:
        counted in the bucket prometheus_client would count it in (the first bound >= `value`)."""
        if self._counts is None:
            child.observe(value)
            return
        held = self._observed.get(child)
        if held is None:
            held = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
        held[0] += value
        if value == value:  # (a NaN is in the sum and in no bucket, as prometheus_client has it)
            held[bisect_left(child._upper_bounds, value) + 1] += 1

    def flush(self) -> None:
        """Hand what `add` and `observe` hold to prometheus_client (before a `render`; on the event
        loop's thread, the one that adds)."""
        if not self._counts and not self._observed:
            return
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in (counts or {}).items():
            child.inc(amount)
        for child, held in observed.items():
            # prometheus_client has no public call for many observations at once: its child's
            # sum and buckets, as `Histogram.observe` moves them (tests/observability pins this).
            child._sum.inc(held[0])
            for bucket, count in zip(child._buckets, held[1:], strict=False):
                if count:
                    bucket.inc(count)

    def render(self) -> bytes:
        """The exposition: this app's registry, or every worker's values with `--workers`. What
        `add` and `observe` hold is not in it until a `flush` (on the thread that adds: `exposition`)."""
        shared = os.environ.get(MULTIPROC_ENV)
        if not shared:
            return generate_latest(self.registry)
        forget_dead_processes(shared)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, shared)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)

    def exposition(self) -> bytes:
        """`flush`, then `render`, on the caller's thread."""
        self.flush()
        return self.render()


def prepare_shared_dir(path: str) -> None:
    """Start `path` empty of metric files (values of an earlier run must not be added to this one).
    Only prometheus_client's files go: an operator's directory may hold other `.db` files (a
    `PROMETHEUS_MULTIPROC_DIR=./data` emptied Sentinel's own database)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if _METRIC_FILE.match(name):
            os.remove(os.path.join(path, name))


def forget_dead_processes(path: str) -> None:
    """Drop the live-only gauge files of processes that are gone (a worker killed and replaced):
    its requests in flight are not in flight any more. Its counters stay, as counters should."""
    pids = {int(m.group(1)) for name in os.listdir(path) if (m := _LIVE_GAUGE_FILE.match(name))}
    for pid in pids:
        if not _alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True

"""The metrics registry: one per app (two apps in one process do not share counts), `child()`
memoises label lookups (bounded), every exported name is prefixed `sentinel_`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.observability.metrics import MULTIPROC_ENV, Metrics, forget_dead_processes
from sentinel.server import _metrics_dir
from tests.support.metrics import counted


class SpyMetric:
    """Stands in for a prometheus metric: counts `labels()` calls, returns one object per labels."""

    def __init__(self) -> None:
        self.lookups = 0

    def labels(self, *labels: str) -> Any:
        self.lookups += 1
        return ("child", labels)


def test_child_memoises_label_lookups() -> None:
    metrics, spy = Metrics(), SpyMetric()
    first = metrics.child(spy, "a", "b")
    assert metrics.child(spy, "a", "b") is first
    assert spy.lookups == 1
    assert metrics.child(spy, "a", "c") == ("child", ("a", "c"))
    assert spy.lookups == 2


def test_child_is_keyed_by_metric_too() -> None:
    metrics, one, two = Metrics(), SpyMetric(), SpyMetric()
    metrics.child(one, "x")
    metrics.child(two, "x")
    assert (one.lookups, two.lookups) == (1, 1)


def test_child_memo_is_bounded() -> None:
    metrics, spy = Metrics(), SpyMetric()
    for i in range(50_000):
        metrics.child(spy, str(i))
    spy.lookups = 0
    assert metrics.child(spy, "one more") == ("child", ("one more",))
    metrics.child(spy, "one more")
    assert spy.lookups == 2  # past the bound: still answered, no longer remembered
    metrics.child(spy, "7")
    assert spy.lookups == 2  # what was remembered stays


def test_child_counts_on_the_real_metric() -> None:
    metrics = Metrics()
    metrics.child(metrics.tokens, "input", "gpt-4o").inc(5)
    metrics.child(metrics.tokens, "input", "gpt-4o").inc(2)
    assert counted(metrics, "sentinel_tokens_total", direction="input", model="gpt-4o") == 7


def _samples(metrics: Metrics) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample of `metrics`' exposition but the `_created` times (they differ between registries)."""
    return sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if not sample.name.endswith("_created") and sample.value == sample.value
    )


def test_added_and_observed_counts_are_what_prometheus_client_counts_once_flushed() -> None:
    """`add`/`observe` hold what they are given until `flush`, then the exposition is the one direct
    `inc`/`observe` calls give: every bucket (a bound itself, below the first, past the last), the sum
    and the count. This pins the prometheus_client internals `flush` moves."""
    direct, held = Metrics(), Metrics()
    values = [0.0, 0.0005, 0.00051, 0.3, 1, 29.9, 60, 61, 1e9, float("inf"), -2.5, float("nan")]
    for metrics, inc, observe in (
        (direct, lambda child, amount: child.inc(amount), lambda child, value: child.observe(value)),
        (held, held.add, held.observe),
    ):
        for value in values:
            observe(metrics.child(metrics.request_duration, "/v1/chat/completions"), value)
            observe(metrics.child(metrics.estimate_error, "gpt-4o"), value / 10)
        for amount in (1, 5, 0.25):
            inc(metrics.child(metrics.tokens, "input", "gpt-4o"), amount)
        inc(metrics.child(metrics.requests, "/v1/chat/completions", "post", "200"), 1)
    # (the count is the +Inf bucket's: a NaN is in no bucket)
    assert counted(direct, "sentinel_http_request_duration_seconds_count") == len(values) - 1
    assert _samples(held) != _samples(direct)  # not handed over yet
    held.flush()
    assert _samples(held) == _samples(direct)
    held.flush()  # nothing held: nothing counted twice
    assert _samples(held) == _samples(direct)
    assert counted(held, "sentinel_tokens_total", direction="input", model="gpt-4o") == 6.25


def test_with_shared_files_counts_go_to_prometheus_client_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `--workers` another worker's scrape reads this process's files, never its memory."""
    monkeypatch.setenv(MULTIPROC_ENV, "/nonexistent")  # only read by Metrics() here
    metrics = Metrics()
    metrics.add(metrics.child(metrics.tokens, "output", "none"), 3)
    metrics.observe(metrics.child(metrics.overhead, "/v1/chat/completions"), 0.001)
    assert metrics.child(metrics.tokens, "output", "none")._value.get() == 3
    assert metrics.child(metrics.overhead, "/v1/chat/completions")._sum.get() == 0.001


def test_two_registries_are_independent() -> None:
    one, two = Metrics(), Metrics()
    one.child(one.deliveries, "success").inc()
    one.in_flight.inc()
    assert counted(one, "sentinel_usage_deliveries_total", result="success") == 1
    assert counted(two, "sentinel_usage_deliveries_total", result="success") == 0
    assert counted(two, "sentinel_requests_in_flight") == 0


def test_two_apps_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    def app(name: str) -> Any:
        settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/{name}.db")  # type: ignore[call-arg]
        return create_app(settings)

    a, b = app("a"), app("b")
    assert a.metrics.registry is not b.metrics.registry
    a.metrics.rejected_overload.inc()
    assert counted(a.metrics, "sentinel_overload_rejections_total") == 1
    assert counted(b.metrics, "sentinel_overload_rejections_total") == 0


def test_every_exported_name_is_prefixed() -> None:
    families = list(text_string_to_metric_families(Metrics().render().decode()))
    assert len(families) >= 20
    assert all(family.name.startswith("sentinel_") for family in families)


# --- the directory the workers of `serve --workers N` share ---------------------------------------
def test_dead_processes_lose_their_live_gauges_and_keep_their_counters(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    alive = os.getpid()
    names = [
        f"gauge_livesum_{dead.pid}.db",
        f"gauge_livemostrecent_{dead.pid}.db",
        f"counter_{dead.pid}.db",
        f"histogram_{dead.pid}.db",
        f"gauge_livesum_{alive}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    forget_dead_processes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"histogram_{dead.pid}.db", f"gauge_livesum_{alive}.db"]
    )


def test_serve_gives_several_workers_a_temporary_directory_and_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with _metrics_dir(1):
        assert MULTIPROC_ENV not in os.environ  # one process keeps its metrics in memory
    with _metrics_dir(2):
        shared = Path(os.environ[MULTIPROC_ENV])
        assert shared.is_dir() and not any(shared.iterdir())
        (shared / "counter_1.db").write_bytes(b"")
    assert MULTIPROC_ENV not in os.environ and not shared.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_operators_directory_is_emptied_of_metric_files_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    for name in ("counter_1.db", "gauge_livesum_12.db", "histogram_3.db"):
        (tmp_path / name).write_bytes(b"an earlier run")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "sentinel.db").write_bytes(b"the operator's database: PROMETHEUS_MULTIPROC_DIR=./data emptied it")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with _metrics_dir(workers):
        assert os.environ[MULTIPROC_ENV] == str(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sentinel.db"]
    assert os.environ[MULTIPROC_ENV] == str(tmp_path) and tmp_path.is_dir()

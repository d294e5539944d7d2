"""Reading Prometheus metrics in tests: from a served `/metrics` page or an app's own registry."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sentinel.observability.metrics import Metrics


def sample_sum(text: str, name: str, **labels: str) -> float | None:
    """The sum of the `name` samples whose labels include `labels`; None when none matches."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def metric(url: str, name: str, **labels: str) -> float | None:
    """`sample_sum` over GET `<url>/metrics` (a running Sentinel)."""
    return sample_sum(httpx.get(url + "/metrics", timeout=10).text, name, **labels)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    """`sample_sum` over an in-process `Metrics` registry; 0 when nothing was recorded."""
    return sample_sum(metrics.exposition().decode(), name, **labels) or 0.0

"""Fixtures for store tests: the session's local Redis Cluster (shared with tests/contract)."""

from __future__ import annotations

from tests.support.redis_cluster import redis_cluster, redis_cluster_url

__all__ = ["redis_cluster", "redis_cluster_url"]

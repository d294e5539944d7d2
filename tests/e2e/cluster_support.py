"""Two Sentinel processes on the local Redis Cluster and one PostgreSQL: what the cluster e2e tests share.

`start_pair()` writes a tier table with three candidates per tier
(two OpenAI models and one Anthropic model, all served by the mock upstream, so which one a new
conversation lands on is a real random choice) and starts two Sentinels with `REDIS_URL` set to the
cluster's `redis+cluster://` seed list. `user_on()` makes up a user id whose quota keys
(`sentinel:quota:{<id>}:...`) hash to a slot served by a chosen primary. `stream_info()` reads the
usage stream's consumer group straight from the node that serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from redis.crc import key_slot

from tests.e2e.conftest import Processes
from tests.e2e.helpers import new_user, sentinel_env
from tests.support.process import SentinelProcess
from tests.support.redis_cluster import ClusterNode, LocalRedisCluster

USAGE_STREAM = "sentinel:usage:outbox"
USAGE_GROUP = "deliverers"
CANDIDATES = [
    {"provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1},
    {"provider": "openai", "model": "gpt-4o", "relative_cost": 1},
    {"provider": "anthropic", "model": "claude-3-5-haiku-20241022", "relative_cost": 1},
]


@dataclass
class Pair:
    """Two Sentinels sharing one Redis Cluster and one PostgreSQL database."""

    database_url: str
    cluster: LocalRedisCluster
    sentinels: list[SentinelProcess]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.sentinels]


def tier_config(directory: Path) -> Path:
    path = directory / "tiers.yaml"
    path.write_text(yaml.safe_dump({"tiers": {t: CANDIDATES for t in ("simple", "moderate", "complex")}}))
    return path


def start_pair(
    group: Processes, cluster: LocalRedisCluster, database_url: str, upstream: str, **extra: str
) -> Pair:
    """Two Sentinels on `cluster` and `database_url` (migrate it first, so they start on a ready schema)."""
    env = sentinel_env(
        upstream,
        database_url,
        cluster.url,
        SENTINEL_CONFIG=str(tier_config(group.log_dir)),
        ANTHROPIC_API_URL=upstream,
        ANTHROPIC_API_KEY="sk-ant-mock",
        **extra,
    )
    return Pair(database_url, cluster, [group.sentinel(env) for _ in range(2)])


def quota_tag(external_id: str) -> str:
    """A key in the slot of `external_id`'s quota counters (they share the hash tag `{<id>}`)."""
    return f"sentinel:quota:{{{external_id}}}"


def user_on(
    cluster: LocalRedisCluster, label: str, wanted: Callable[[ClusterNode], bool], *, tries: int = 200
) -> str:
    """A fresh user id whose quota keys live on a primary for which `wanted(primary)` holds."""
    for _ in range(tries):
        user = new_user(label)
        if wanted(cluster.primary_of(quota_tag(user))):
            return user
    raise AssertionError(f"no user id for {label} landed on a wanted primary in {tries} tries")


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def stream_info(cluster: LocalRedisCluster) -> dict[str, Any]:
    """XLEN of the usage stream and its consumer group's counters (`entries-read`, `pending`...),
    read from the primary serving the stream; {} for the group when it does not exist."""
    with cluster.primary_of(USAGE_STREAM).client() as node:
        length = int(node.xlen(USAGE_STREAM))
        groups = node.xinfo_groups(USAGE_STREAM) if node.exists(USAGE_STREAM) else []
    group = next((g for g in groups if g["name"] in (USAGE_GROUP, USAGE_GROUP.encode())), {})
    return {"length": length, "group": group}


def primaries(cluster: LocalRedisCluster) -> list[ClusterNode]:
    """The running primaries, by port (which nodes they are changes after a failover)."""
    return sorted(
        (n for n in cluster.nodes if n.running and n.info("replication").get("role") == "master"),
        key=lambda n: n.port,
    )

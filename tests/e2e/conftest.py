"""Fixtures for end-to-end tests: Sentinel, the mock upstream and Redis as real processes.

Every process a fixture starts is stopped at teardown (SIGTERM, then SIGKILL), and its output is
kept in a log file under the test's temporary directory; a failing test prints the tail.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import unavailable
from tests.support.process import ManagedProcess, MockUpstreamProcess, RedisServerProcess, SentinelProcess
from tests.support.redis_cluster import redis_cluster, redis_cluster_url

__all__ = ["redis_cluster", "redis_cluster_url"]  # the session's Redis Cluster, for test_cluster*.py

P = TypeVar("P", bound=ManagedProcess)


class Processes:
    """Starts processes for one test (or module) and stops all of them at the end."""

    def __init__(self, log_dir: Path, redis_bin: str | None) -> None:
        self.log_dir = log_dir
        self.redis_bin = redis_bin
        self.started: list[ManagedProcess] = []

    def sentinel(self, env: Mapping[str, str]) -> SentinelProcess:
        return self._track(SentinelProcess(self.log_dir, env)).start()

    def redis(self, *, durable: bool = False) -> RedisServerProcess:
        if self.redis_bin is None:
            unavailable("redis-server binary not found")
        assert self.redis_bin is not None
        return self._track(RedisServerProcess(self.log_dir, self.redis_bin, durable=durable)).start()

    def _track(self, process: P) -> P:
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path}\n{p.log_tail()}" for p in self.started if isinstance(p, SentinelProcess)
        )

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture(scope="session")
def redis_bin() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The mock upstream in its own process (root URL; the OpenAI base is URL + /v1)."""
    with MockUpstreamProcess(tmp_path_factory.mktemp("mock-upstream")) as mock:
        yield mock.url


@pytest.fixture
def processes(tmp_path: Path, redis_bin: str | None) -> Iterator[Processes]:
    group = Processes(tmp_path, redis_bin)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/sentinel.db"

"""A real local Redis Cluster for tests: 3 primaries + 3 replicas, one `redis-server` each.

Each node runs with `cluster-enabled yes` in its own temporary directory, on a free port (client
port and cluster-bus port both chosen free, so nothing depends on `port + 10000`), without
persistence. `redis-cli --cluster create ... --cluster-replicas 1` joins them; start-up waits until
every node reports `cluster_state:ok` and every replica's link to its primary is up.

`kill_primary_of(key)` SIGKILLs the primary serving a key's hash slot (a crash: no shutdown code
runs); `restart(node)` starts it again on the same port and directory, where it rejoins the cluster
(as a replica of whichever node took over its slots). `wait_healthy()` waits for that.

The `redis_cluster` fixture is session-wide and kept in the pytest config's stash, so every
conftest that imports it shares one cluster; it is stopped and its directories removed when the
session ends. `redis_cluster_url` gives each test a healthy, flushed cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.support.process import ManagedProcess
from tests.support.servers import free_port

NODE_TIMEOUT_MS = 1000
PRIMARIES = 3
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


class ClusterNode(ManagedProcess):
    """One cluster-enabled redis-server; its directory keeps `nodes.conf` across restarts."""

    name = "redis-cluster-node"
    start_timeout = 10.0

    def __init__(self, directory: Path, executable: str, *, port: int, bus_port: int) -> None:
        super().__init__(directory, port=port)
        self.bus_port = bus_port
        self.executable = executable
        self.address = f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.log_dir),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica may take over however long it was cut off (tests crash primaries on purpose).
            "--cluster-replica-validity-factor", "0",
            # As the README asks for production: the other primaries go on serving their slots
            # while one slot range has no primary.
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def info(self, section: str) -> dict[str, object]:
        """`CLUSTER INFO` (section "cluster") or `INFO <section>`, parsed; {} when unreachable."""
        try:
            with self.client() as c:
                parsed = c.execute_command("CLUSTER INFO") if section == "cluster" else c.info(section)
        except redis.RedisError:
            return {}
        return dict(parsed)

    def is_ready(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports. `free_port` alone can hand out the same port twice (nothing
    holds it until a server binds it): two nodes on one port made a cluster of five servers whose
    health check counted one of them twice, and a primary without a replica."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


class LocalRedisCluster:
    """Six local redis-server processes joined into one cluster (3 primaries, 1 replica each)."""

    def __init__(self, server: str, cli: str, *, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="sentinel-redis-cluster-"))
        self.cli = cli
        ports = distinct_free_ports(PRIMARIES * 2 * 2)  # a client and a bus port per node
        self.nodes = [
            ClusterNode(self.base / f"node-{i}", server, port=ports[2 * i], bus_port=ports[2 * i + 1])
            for i in range(PRIMARIES * 2)
        ]
        self.url = "redis+cluster://" + ",".join(n.address for n in self.nodes)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [self.cli, "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.kill9()
        shutil.rmtree(self.base, ignore_errors=True)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every node up, `cluster_state:ok` everywhere, every replica in sync with a live primary."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self._wait(self._healthy, timeout, "the cluster to become healthy")

    def _healthy(self) -> bool:
        roles = []
        for node in self.nodes:
            if node.info("cluster").get("cluster_state") != "ok":
                return False
            replication = node.info("replication")
            roles.append(replication.get("role"))
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return roles.count("master") == PRIMARIES and roles.count("slave") == PRIMARIES

    @staticmethod
    def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")

    # --- topology --------------------------------------------------------------------------------
    def primary_of(self, key: str) -> ClusterNode:
        """The node that a live node says serves `key`'s hash slot as primary."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node.client() as c:
                    ranges = c.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            for start, end, primary, *_ in ranges:
                if start <= slot <= end:
                    return self.node_at(int(primary[1]))
        raise RuntimeError(f"no live node knows the primary of slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """The (first) replica attached to `primary`."""
        attached = primary.info("replication").get("slave0")
        if not isinstance(attached, dict):
            raise RuntimeError(f"{primary.address} has no replica")
        return self.node_at(int(attached["port"]))

    def wait_replicated(self, primary: ClusterNode, timeout: float = 30.0) -> None:
        """Wait until `primary`'s replica has confirmed everything written to it so far."""

        def caught_up() -> bool:
            info = primary.info("replication")
            attached = info.get("slave0")
            return isinstance(attached, dict) and int(attached["offset"]) >= int(
                str(info["master_repl_offset"])
            )

        self._wait(caught_up, timeout, f"the replica of {primary.address} to catch up")

    def node_at(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def kill_primary_of(self, key: str) -> ClusterNode:
        """SIGKILL the primary serving `key`'s slot; returns it (for `restart`)."""
        node = self.primary_of(key)
        node.kill9()
        return node

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again (same port and directory: it rejoins the cluster)."""
        node.start()

    def flush(self) -> None:
        """Remove every key (FLUSHALL on each primary; replicas follow)."""
        for node in self.nodes:
            with node.client() as c:
                if c.execute_command("ROLE")[0] == b"master":
                    c.flushall()


def _unavailable(reason: str) -> None:
    from tests.conftest import unavailable

    unavailable(reason)


_CLUSTER = pytest.StashKey[LocalRedisCluster]()


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> LocalRedisCluster:
    """The session's local Redis Cluster (started once, however many conftests import this)."""
    cluster = request.config.stash.get(_CLUSTER, None)
    if cluster is None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            _unavailable("redis-server / redis-cli not found (needed for the Redis Cluster tests)")
        assert REDIS_SERVER is not None and REDIS_CLI is not None
        cluster = LocalRedisCluster(REDIS_SERVER, REDIS_CLI).start()
        request.config.stash[_CLUSTER] = cluster
        request.config.add_cleanup(cluster.stop)
    return cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> Iterator[str]:
    """A healthy, empty cluster (a node a previous test killed is back); yields its URL."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    yield redis_cluster.url

"""Fixtures for HTTP tests: a real mock upstream and a real Sentinel, each on its own socket."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.mock.app import create_mock_app
from sentinel.store.base import seconds_left
from sentinel.wiring import Runtime
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, spying
from tests.support.servers import ServerThread, serving
from tests.support.upstream import UPSTREAM_KEY, ScriptedUpstream
from tests.support.waiting import wait_for

__all__ = [
    "UPSTREAM_KEY", "Gateway", "backend_url", "gateway", "gateway_factory", "mock_upstream", "scripted_gateway", "spy",
]


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[str]:
    """The project's mock provider (OpenAI + Anthropic wire formats); root URL without /v1."""
    with serving(create_mock_app()) as srv:
        yield srv.url


@dataclass
class Gateway:
    url: str
    key: str
    key_id: str
    settings: Settings
    server: ServerThread

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def admin(self, **kw: Any) -> httpx.Client:
        """A client of the operator surfaces (the admin API), on the gateway's admin key."""
        assert self.settings.admin_key is not None, "the gateway has no admin key"
        return self.client(self.settings.admin_key.get_secret_value(), **kw)

    def quota_used(self, user: str = "alice") -> dict[str, int]:
        """What each metric of `user`'s plan counts now (the admin API's view of the counters): in the
        windows current on the gateway's window clock — a request is counted when it is admitted, so
        no settlement is waited for (`gateway_factory`'s `window_clock`)."""
        with self.admin() as admin:
            quota = admin.get(f"/admin/api/users/{user}/quota")
        assert quota.status_code == 200, quota.text
        return {limit["metric"]: limit["used"] for limit in quota.json()["limits"]}

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, **kw)

    @property
    def runtime(self) -> Runtime:
        """The running app's services (built by its lifespan)."""
        runtime = self.server.server.config.app.runtime
        assert runtime is not None, "the gateway has not started"
        return runtime

    def read_stored(self, key: str) -> bytes | None:
        """The raw value under `key` in the gateway's store (its Redis, or its in-process store)."""
        if self.settings.redis_url:
            client = redis.Redis.from_url(self.settings.redis_url)
            try:
                value: bytes | None = client.get(key)
                return value
            finally:
                client.close()
        # The in-memory store never awaits and has no loop affinity: drive it from this thread.
        return asyncio.run(self.runtime.store.get(key))

    def stored_ttl(self, key: str) -> float | None:
        """The seconds `key` has left in the gateway's store: None when it is missing, -1.0 when it
        never expires (as `Store.ttl`)."""
        if self.settings.redis_url:
            client = redis.Redis.from_url(self.settings.redis_url)
            try:
                return seconds_left(int(client.pttl(key)))
            finally:
                client.close()
        return asyncio.run(self.runtime.store.ttl(key))

    def write_stored(self, key: str, value: bytes, ttl: float) -> None:
        """Put `value` under `key` in the gateway's store for `ttl` seconds (state another process left)."""
        if self.settings.redis_url:
            client = redis.Redis.from_url(self.settings.redis_url)
            try:
                client.set(key, value, px=math.ceil(ttl * 1000))
            finally:
                client.close()
        else:
            asyncio.run(self.runtime.store.set(key, value, ttl))
        self._seen_later(key)

    def drop_stored(self, key: str) -> None:
        """Remove `key` from the gateway's store, as if its TTL ran out there."""
        if self.settings.redis_url:
            client = redis.Redis.from_url(self.settings.redis_url)
            try:
                client.delete(key)
            finally:
                client.close()
        else:
            asyncio.run(self.runtime.store.delete(key))
        self._seen_later(key)

    def _seen_later(self, key: str) -> None:
        """Another process's provider health write is seen once this one's reads of it are out of
        date (`READ_REUSE_SECONDS`): the tests that leave one stand at that moment."""
        if key.startswith("sentinel:health"):
            self.runtime.router.health.forget_reads()

    def settled_rows(self, count: int, user: str = "alice") -> list[dict[str, Any]]:
        """`user`'s ledger rows, oldest first, once the ledger holds exactly `count` of them (their
        records are delivered in the background); AssertionError when it never does."""
        assert wait_for(lambda: len(ledger_rows(self.settings.database_url, user)) == count)
        return ledger_rows(self.settings.database_url, user)

    def anthropic(self, **kw: Any) -> Any:
        """The official Anthropic client on Sentinel (`api_key=` unless `auth_token=` is given)."""
        import anthropic

        if "auth_token" not in kw:
            kw.setdefault("api_key", self.key)
        return anthropic.Anthropic(base_url=self.url, max_retries=0, **kw)

    def async_anthropic(self, **kw: Any) -> Any:
        import anthropic

        if "auth_token" not in kw:
            kw.setdefault("api_key", self.key)
        return anthropic.AsyncAnthropic(base_url=self.url, max_retries=0, **kw)


@pytest.fixture
def gateway_factory(tmp_path: Path, mock_upstream: str) -> Iterator[Callable[..., Gateway]]:
    """Start Sentinel with settings overrides; every gateway is stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(
        *, loop: str = "asyncio", stream_clock: Callable[[], float] | None = None,
        upstream_clock: Callable[[], float] | None = None, window_clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Gateway:
        """A gateway with these `Settings` overrides, on this uvicorn event `loop` ("uvloop" as served);
        `stream_clock`: the clock its streams' time limit is read on, `upstream_clock` the one its
        upstream requests' sending is timed on, `window_clock` the one its fixed windows are (`create_app`: the
        quotas', the failed-authentication throttle's minutes). A test that counts requests or failed
        sign-ins across calls on a short window passes a still one: on the wall clock the window may
        end between two calls and the count restart."""
        values: dict[str, Any] = {
            "openai_api_url": mock_upstream + "/v1",
            "openai_api_key": UPSTREAM_KEY,
            "anthropic_api_url": mock_upstream,
            "anthropic_api_key": "sk-ant-upstream-secret",
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/sentinel-{len(started)}.db",
            "access_log": False,
            "redis_url": None,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        key_id, key = asyncio.run(create_key(settings.database_url, "alice"))
        clocks = {name: clock for name, clock in (("stream_clock", stream_clock), ("upstream_clock", upstream_clock),
                                                  ("window_clock", window_clock)) if clock is not None}
        app = create_app(settings, **clocks)
        server = ServerThread(app, settings=settings, loop=loop).start()
        started.append(server)
        return Gateway(url=server.url, key=key, key_id=key_id, settings=settings, server=server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """REDIS_URL for a gateway: None (the in-process store), then a clean real Redis."""
    yield None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
def spy() -> Iterator[SpyUpstream]:
    """A mock upstream of its own (not the session's shared one) recording every request it gets."""
    with spying(create_mock_app()) as (_, recorder):
        yield recorder


@contextmanager
def scripted_gateway(
    gateway_factory: Callable[..., Gateway], answers: Iterable[Any], *owned: str, **overrides: Any
) -> Iterator[tuple[Gateway, ScriptedUpstream]]:
    """A gateway (these `Settings` overrides) whose OpenAI upstream answers with the JSON `answers`
    in turn, alice owning the objects `owned` (as if she had made them through it); the upstream is
    served until the block ends, the gateway until the test does."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", **overrides)
        for object_id in owned:
            gw.write_stored(f"sentinel:owner:{object_id}", b"alice", 3600)
        for answer in answers:
            upstream.json(answer)
        yield gw, upstream

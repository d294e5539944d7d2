"""Auth: keys validated once then cached by token hash; revocation bites within the cache TTL."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from tests.api.conftest import Gateway


def revoke(database_url: str, key_id: str) -> None:
    from sentinel.db.engine import create_engine, session_factory
    from sentinel.governance.keys import KeyService

    async def go() -> None:
        engine = create_engine(database_url)
        try:
            assert await KeyService(session_factory(engine)).revoke(key_id)
        finally:
            await engine.dispose()

    asyncio.run(go())


def metric(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cache_hits_and_revocation_within_ttl(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(jwt_cache_ttl_seconds=1, governance_grace_seconds=0)
    with gw.client() as http:
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models").status_code == 200
        metrics = http.get("/metrics").text
        assert metric(metrics, "sentinel_cache_lookups_total", 'cache="identity",result="hit"') >= 1
        revoke(gw.settings.database_url, gw.key_id)
        # Still cached: the revocation is not seen yet...
        assert http.get("/v1/models").status_code == 200
        time.sleep(1.2)
        # ...and after the TTL it is.
        r = http.get("/v1/models")
        assert r.status_code == 401


def test_cache_keyed_by_hash_never_the_token(gateway_factory: Callable[..., Gateway], redis_url: str) -> None:
    import redis

    gw = gateway_factory(redis_url=redis_url)
    with gw.client() as http:
        assert http.get("/v1/models").status_code == 200
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys("*")]
    assert f"sentinel:profile:{hashlib.sha256(gw.key.encode()).hexdigest()}" in keys
    for key in keys:
        assert gw.key not in key
        kind = client.type(key)
        value = client.get(key) if kind == b"string" else str(client.xrange(key)).encode() if kind == b"stream" else b""
        assert gw.key.encode() not in (value or b"")
    client.close()

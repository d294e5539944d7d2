"""Auth over HTTP: keys validated once then cached by token hash; a revoked key works until its
cache entry is gone, then never again. (TTL arithmetic is unit-tested with a clock in
tests/governance/test_auth.py and tests/governance/test_cache.py.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import orjson
import redis

from tests.api.conftest import Gateway
from tests.support.accounts import revoke_key
from tests.support.metrics import metric


def identity_entry(key: str) -> str:
    return f"sentinel:profile:{hashlib.sha256(key.encode()).hexdigest()}"


def test_cache_is_used_and_revocation_bites_once_the_entry_expires(gateway: Gateway) -> None:
    with gateway.client() as http:
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert (metric(gateway.url, "sentinel_cache_lookups_total", cache="identity", result="hit") or 0) >= 1
        asyncio.run(revoke_key(gateway.settings.database_url, gateway.key_id))
        # Still cached: the revocation is not seen yet...
        assert http.get("/v1/models").status_code == 200
        # ...and once the entry's TTL ran out in the store (here: removed from it), it is.
        gateway.drop_stored(identity_entry(gateway.key))
        r = http.get("/v1/models")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    # The refusal is remembered too: the entry now says "no such key".
    remembered = gateway.read_stored(identity_entry(gateway.key))
    assert remembered is not None and orjson.loads(remembered)["v"] is None


def test_cache_keyed_by_hash_never_the_token(gateway_factory: Callable[..., Gateway], redis_url: str) -> None:
    gw = gateway_factory(redis_url=redis_url)
    with gw.client() as http:
        assert http.get("/v1/models").status_code == 200
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys("*")]
    assert identity_entry(gw.key) in keys
    for key in keys:
        assert gw.key not in key
        kind = client.type(key)
        value = client.get(key) if kind == b"string" else str(client.xrange(key)).encode() if kind == b"stream" else b""
        assert gw.key.encode() not in (value or b"")
    client.close()


def test_an_unreadable_cached_identity_is_a_miss_and_replaced(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """An identity entry that cannot be read, although it begins as a refusal does, is a miss: the
    key is looked up, served, and its identity cached over the entry. It was a 500 for every request
    with that key on the in-process store; on Redis the key was served but never cached again."""
    gw = gateway_factory(redis_url=backend_url)
    gw.write_stored(identity_entry(gw.key), b'{"v":null,"fresh_until":', 600)
    with gw.client() as http:
        first = http.get("/v1/models")
        assert first.status_code == 200, first.text
        assert http.get("/v1/models").status_code == 200
    stored = orjson.loads(gw.read_stored(identity_entry(gw.key)) or b"null")
    assert stored["v"]["external_id"] == "alice"
    assert (metric(gw.url, "sentinel_cache_lookups_total", cache="identity", result="undecodable") or 0) == 1


def test_a_key_revoked_through_one_process_is_refused_by_another_sharing_redis(
    gateway_factory: Callable[..., Gateway], redis_url: str,
) -> None:
    """Two processes on one Redis and one database: a key whose identity the second has cached (in
    Redis for JWT_CACHE_TTL_SECONDS, 300 s, and in its local copy for a second) and that is revoked
    through the first's admin API is refused by the second at once — within its local copy's second,
    never the TTL — and by the first."""
    import httpx

    from tests.support.waiting import wait_for

    admin_key = "admin-key-for-the-two-process-revocation"
    first = gateway_factory(redis_url=redis_url, admin_key=admin_key)
    second = gateway_factory(redis_url=redis_url, database_url=first.settings.database_url)
    with second.client() as http:
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models").status_code == 200  # cached
    revoked = httpx.post(f"{first.url}/admin/api/keys/{second.key_id}/revoke", timeout=30,
                         headers={"Authorization": f"Bearer {admin_key}"})
    assert revoked.status_code == 200, revoked.text

    def refused(gw: Gateway) -> bool:
        with gw.client(second.key) as http:
            return http.get("/v1/models").status_code == 401

    assert wait_for(lambda: refused(second), timeout=10)
    assert refused(first)
    with second.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    with first.client() as http:  # the first process's own key is untouched
        assert http.get("/v1/models").status_code == 200


def test_a_users_email_replaced_through_one_process_is_used_by_the_others_cached_keys_at_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """An email set with a new key (the admin API, the console, `keys create --email`) is the user's
    email for their other keys too. Their cached identities kept the old one for JWT_CACHE_TTL_SECONDS
    (300 s), on every process: under Zion usage is reported by email, so it went to the old address,
    or was refused as unreportable, that long. Now the change drops those identities (never a revoked
    key's tombstone): the next use, through any process sharing the store, reads the new email."""
    from tests.support.attack import ledger_rows
    from tests.support.waiting import wait_for

    admin_key = "admin-key-for-the-email-change"
    first = gateway_factory(redis_url=backend_url, admin_key=admin_key)
    second = first if backend_url is None else gateway_factory(
        redis_url=backend_url, database_url=first.settings.database_url)
    with first.admin() as admin:
        doomed_key = admin.post("/admin/api/users/alice/keys", json={"name": "doomed"}).json()
    with second.client() as http, first.client(doomed_key["key"]) as doomed:
        assert http.get("/v1/models").status_code == 200  # cached, with no email
        assert doomed.get("/v1/models").status_code == 200
    assert orjson.loads(second.read_stored(identity_entry(second.key)) or b"null")["v"]["email"] is None
    with first.admin() as admin:
        assert admin.post(f"/admin/api/keys/{doomed_key['id']}/revoke").status_code == 200
        issued = admin.post("/admin/api/users/alice/keys", json={"email": "alice@example.com"})
    assert issued.status_code in (200, 201), issued.text

    def reads_the_new_email() -> bool:
        with second.client() as http:
            assert http.get("/v1/models").status_code == 200
        stored = orjson.loads(second.read_stored(identity_entry(second.key)) or b"null")
        return stored is not None and stored["v"]["email"] == "alice@example.com"

    assert wait_for(reads_the_new_email, timeout=10)
    with second.client() as http:
        answer = http.post("/v1/chat/completions",
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 200, answer.text

    def chat_emails() -> list[str | None]:
        rows = ledger_rows(first.settings.database_url, "alice")
        return [r["email"] for r in rows if r["endpoint"] == "chat"]

    assert wait_for(lambda: chat_emails() != [])
    assert chat_emails() == ["alice@example.com"]
    with first.client(doomed_key["key"]) as doomed:  # its tombstone stayed
        assert doomed.get("/v1/models").status_code == 401

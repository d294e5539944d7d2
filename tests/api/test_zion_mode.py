"""GOVERNANCE=zion over HTTP: Zion JWTs, limits read from Zion, usage reported to Zion, Zion outages."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.support.fake_zion import BATCH, ME, FakeZion
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "zion says hi"}]}


@pytest.fixture
def zion() -> Iterator[FakeZion]:
    fake = FakeZion()
    with serving(fake) as srv:
        fake.url = srv.url
        yield fake


def zion_gateway(factory: Callable[..., Gateway], zion: FakeZion, **kw: object) -> Gateway:
    return factory(
        governance="zion", zion_api_url=zion.url, zion_api_key=zion.api_key,
        usage_flush_interval_seconds=0.1, **kw,
    )


def post(gw: Gateway, token: str, body: dict = CHAT) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"},
                      timeout=30)


def test_zion_jwt_validated_and_cached(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-carol", "carol-ext", "carol@example.com")
    gw = zion_gateway(gateway_factory, zion)
    assert post(gw, "jwt-carol").status_code == 200
    assert post(gw, "jwt-carol").status_code == 200
    assert zion.calls[ME] == 1  # validated once, then cached by token hash
    bad = post(gw, "jwt-unknown")
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    # Sentinel-issued API keys keep working alongside Zion JWTs.
    assert post(gw, gw.key).status_code == 200


def test_zion_limits_enforced_with_local_admissions(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-dave", "dave-ext", "dave@example.com", requests=5, used_requests=2)
    gw = zion_gateway(gateway_factory, zion)
    codes = [post(gw, "jwt-dave").status_code for _ in range(5)]
    # Zion said 3 remain; Sentinel counts what it admitted since that reading.
    assert codes == [200, 200, 200, 429, 429]
    denied = post(gw, "jwt-dave")
    assert "requests" in denied.json()["error"]["message"]
    assert denied.headers["x-ratelimit-limit"] == "5"


def test_usage_reported_to_zion_exactly(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-erin", "erin-ext", "erin@example.com")
    gw = zion_gateway(gateway_factory, zion)
    seen_in = seen_out = 0
    for _ in range(3):
        usage = post(gw, "jwt-erin").json()["usage"]
        seen_in += usage["prompt_tokens"]
        seen_out += usage["completion_tokens"]
    user = zion.user("erin@example.com")
    assert user is not None
    assert wait_for(lambda: user.used["aiRequests"] == 3)
    assert user.used["aiInputTokens"] == seen_in and user.used["aiOutputTokens"] == seen_out
    batch_calls = [s for s in zion.seen if s.route == BATCH]
    assert batch_calls and all("idempotency-key" in s.headers for s in batch_calls)


def test_zion_outage_loses_nothing(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-frank", "frank-ext", "frank@example.com")
    zion.add_user("jwt-gina", "gina-ext", "gina@example.com")
    gw = zion_gateway(gateway_factory, zion)
    assert post(gw, "jwt-frank").status_code == 200  # identity and limits now cached
    zion.set_down(True)
    during = [post(gw, "jwt-frank").status_code for _ in range(5)]
    unknown = post(gw, "jwt-gina")  # nothing cached for her: 503, not 401
    # Deliveries fail meanwhile and back off.
    assert wait_for(lambda: (metric(gw.url, "sentinel_usage_deliveries_total", result="failure") or 0) >= 1)
    zion.set_down(False)
    assert during == [200] * 5
    assert unknown.status_code == 503
    frank = zion.user("frank@example.com")
    assert frank is not None
    assert wait_for(lambda: frank.used["aiRequests"] == 6, timeout=40)
    # Once the outbox is empty nothing is left that could be delivered again...
    assert wait_for(lambda: metric(gw.url, "sentinel_usage_outbox_depth") == 0)
    assert frank.used["aiRequests"] == 6  # ...and it was delivered once, not twice


def test_native_tiers_come_from_zion(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-hank", "hank-ext", "hank@example.com")
    gw = zion_gateway(gateway_factory, zion)
    models = set()
    for tier in ("simple", "complex", "complex"):
        r = httpx.post(
            gw.url + "/native/v1/chat/completions",
            json={"tier": tier, "messages": [{"role": "user", "content": "tiers"}]},
            headers={"Authorization": "Bearer jwt-hank"}, timeout=30,
        )
        assert r.status_code == 200, r.text
        models.add((tier, r.headers["x-sentinel-provider"], r.headers["x-sentinel-model"]))
    assert models == {("simple", "openai", "gpt-4o-mini"), ("complex", "openai", "gpt-4o")}
    assert zion.calls["/api/v1/tiers/config"] == 1  # cached for TIER_CONFIG_TTL_SECONDS

"""ZionClient against the fake Zion over real HTTP: parsing, idempotency, retries, outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

from sentinel.backoff import Backoff
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.identity import Refused
from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource
from sentinel.governance.zion import MAX_ZION_TOKEN_BYTES, ZionClient, ZionIdentitySource, ZionStatusError
from tests.support.fake_zion import BATCH, LIMITS, ME, FakeZion
from tests.support.servers import free_port, serving
from tests.support.waiting import reached

FAST = Backoff(attempts=3, base=0.01, cap=0.05)
T = datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeZion]:
    zion = FakeZion()
    zion.add_user(
        "tok-alice",
        "ext-alice",
        "alice@example.com",
        user_id="usr_alice",
        input_tokens=1000,
        output_tokens=500,
        requests=10,
        used_input=100,
        used_requests=3,
    )
    zion.add_user("tok-bob", None, "bob@example.com", user_id="usr_bob")
    with serving(zion) as server:
        zion.url = server.url
        yield zion
        zion.set_down(False)  # release hanging requests before the server stops
        zion.hold_batches(False)


@pytest.fixture
async def client(fake: FakeZion) -> AsyncIterator[ZionClient]:
    # Timeouts no fake answer outlasts on a loaded machine (1 s timed out a 503's first attempt in CI,
    # 2026-12-07: two attempts counted, not three); the tests of timeouts build clients of their own.
    zion = ZionClient(fake.url, fake.api_key, timeout=10.0, connect_timeout=5.0, backoff=FAST)
    yield zion
    await zion.aclose()


def record(
    n: int,
    email: str | None = "alice@example.com",
    model: str | None = "gpt-4o",
    *,
    input_tokens: int = 10,
    output_tokens: int = 5,
) -> UsageRecord:
    return UsageRecord(
        f"req-{n}",
        "ext-alice",
        email,
        model,
        "openai",
        "chat",
        input_tokens,
        output_tokens,
        "measured",
        200,
        T,
        T,
    )


async def test_me_returns_the_identity_without_sending_the_service_key(
    client: ZionClient, fake: FakeZion
) -> None:
    identity = await client.me("tok-alice")
    assert identity is not None
    assert (identity.external_id, identity.user_id, identity.email, identity.source) == (
        "ext-alice",
        "usr_alice",
        "alice@example.com",
        "zion",
    )
    assert "x-api-key" not in fake.seen[-1].headers
    assert fake.seen[-1].headers["authorization"] == "Bearer tok-alice"


async def test_me_falls_back_to_the_id_when_external_id_is_null(client: ZionClient) -> None:
    identity = await ZionIdentitySource(client).authenticate("tok-bob")
    assert identity is not None and identity.external_id == "usr_bob"


async def test_me_returns_none_on_401_without_retrying(client: ZionClient, fake: FakeZion) -> None:
    assert await client.me("not-a-user") is None
    assert fake.calls[ME] == 1


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_me_returns_none_when_zion_refuses_the_user(client: ZionClient, fake: FakeZion, status: int) -> None:
    """A deactivated (403) or deleted (404) user, or a token Zion cannot read (400), is an answer
    like 401 — no identity — not an outage: not retried, and the breaker counts Zion as up."""
    fake.refuse_user("tok-alice", status)
    assert await client.me("tok-alice") is None
    assert fake.attempts[ME] == 1 and client.breaker.failures == 0


@pytest.mark.parametrize("status", [405, 413, 414, 422, 431])
async def test_me_returns_none_on_any_other_4xx(
    client: ZionClient, fake: FakeZion, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Any 4xx but 408 and 429 is Zion not accepting the token (a 431 for one too large for it): no
    identity, not retried, logged without the token; it was a ZionStatusError (an outage, 503)."""
    fake.refuse_user("tok-alice", status)
    with caplog.at_level(logging.WARNING, "sentinel.zion"):
        assert await client.me("tok-alice") is None
    assert fake.attempts[ME] == 1 and client.breaker.failures == 0
    assert f"Zion answered {status} to /users/me" in caplog.text and "tok-alice" not in caplog.text


@pytest.mark.parametrize("status", [408, 429])
async def test_me_408_and_429_stay_outages(client: ZionClient, fake: FakeZion, status: int) -> None:
    fake.refuse_user("tok-alice", status)
    with pytest.raises(ZionStatusError) as outage:
        await client.me("tok-alice")
    assert outage.value.zion_status == status


async def test_me_refuses_a_token_past_the_bound_without_asking(client: ZionClient, fake: FakeZion) -> None:
    """A token Zion (or a proxy in front of it) would likely refuse as too large is not sent at all."""
    assert await client.me("x" * (MAX_ZION_TOKEN_BYTES + 1)) is None
    assert await client.me("é" * (MAX_ZION_TOKEN_BYTES // 2 + 1)) is None  # bytes, not characters
    assert fake.attempts[ME] == 0
    assert await client.me("x" * MAX_ZION_TOKEN_BYTES) is None  # asked: Zion does not know it (401)
    assert fake.attempts[ME] == 1


async def test_a_verified_jwt_zion_answers_431_to_is_refused_not_served_from_its_claims(
    client: ZionClient, fake: FakeZion
) -> None:
    """With local JWT verification, a Zion 4xx on a verified token is Zion's verdict (`Refused`:
    401, no stand-in later), as a 403 is; it was an outage, served from the token's claims."""
    secret = "shared-jwt-signing-secret-0123456789"
    token = jwt.encode({"sub": "s", "externalId": "ext-x", "email": "x@example.com", "exp": int(time.time()) + 600},
                       secret, algorithm="HS256")
    fake.refuse_user(token, 431)
    source = LocalJwtIdentitySource(JwtVerifier(secret, None, None, None), profile_source=ZionIdentitySource(client))
    with pytest.raises(Refused):
        await source.authenticate(token)


async def test_limits_are_parsed(client: ZionClient, fake: FakeZion) -> None:
    limits = await client.limits("ext-alice")
    assert limits is not None and limits.user_id == "usr_alice" and limits.external_id == "ext-alice"
    (ai,) = limits.limits
    assert ai.name == "ai_usage" and ai.reset_period == "MONTHLY"
    assert ai.period_end == datetime(2024, 2, 1, tzinfo=UTC)
    assert (ai.metrics["aiInputTokens"].limit, ai.metrics["aiInputTokens"].used) == (1000, 100)
    assert ai.metrics["aiInputTokens"].remaining == 900
    assert (ai.metrics["aiOutputTokens"].limit, ai.metrics["aiOutputTokens"].used) == (500, 0)
    assert (ai.metrics["aiRequests"].limit, ai.metrics["aiRequests"].remaining) == (10, 7)
    assert fake.seen[-1].headers["x-api-key"] == fake.api_key


async def test_limits_of_an_unknown_user_is_none(client: ZionClient) -> None:
    assert await client.limits("nobody") is None


@pytest.mark.parametrize("odd", ["a/b", "x y", "q?z#f", "100%", "ü-user", "..", ".", "a+b&c=d"])
async def test_limits_url_encode_the_external_id(client: ZionClient, fake: FakeZion, odd: str) -> None:
    fake.add_user("tok-odd", odd, "odd@example.com")
    limits = await client.limits(odd)
    assert limits is not None and limits.external_id == odd
    raw = fake.seen[-1].path
    assert raw.startswith("/api/v1/limits/external/") and "/" not in raw.removeprefix(
        "/api/v1/limits/external/"
    )


async def test_batch_increment_applies_each_record(client: ZionClient, fake: FakeZion) -> None:
    records = [record(1), record(2, model="gpt-4o-mini", input_tokens=0), record(3, "bob@example.com", None)]
    result = await client.batch_increment(records, "key-1")
    assert result.applied == ["req-1", "req-2", "req-3"] and result.failed == []
    assert fake.applied[0] == {
        "email": "alice@example.com",
        "aiRequests": 1,
        "aiInputTokens": 10,
        "aiOutputTokens": 5,
        "model": "gpt-4o",
        "timestamp": "2024-01-15T10:30:00.123Z",
    }
    assert "aiInputTokens" not in fake.applied[1]  # metrics are sent only when > 0
    assert "model" not in fake.applied[2]
    assert fake.totals["alice@example.com"] == {"aiRequests": 2, "aiInputTokens": 10, "aiOutputTokens": 10}
    assert fake.seen[-1].headers["idempotency-key"] == "key-1"


async def test_a_repeated_idempotency_key_is_applied_once(client: ZionClient, fake: FakeZion) -> None:
    first = await client.batch_increment([record(1), record(2)], "key-same")
    again = await client.batch_increment([record(1), record(2)], "key-same")
    assert first == again
    assert fake.calls[BATCH] == 2 and len(fake.applied) == 2
    assert fake.totals["alice@example.com"]["aiRequests"] == 2


async def test_without_idempotency_support_a_repeat_counts_twice(client: ZionClient, fake: FakeZion) -> None:
    # The at-least-once caveat: a Zion that ignores Idempotency-Key double-counts a retried batch.
    fake.set_honour_idempotency(False)
    await client.batch_increment([record(1)], "key-same")
    await client.batch_increment([record(1)], "key-same")
    assert fake.totals["alice@example.com"]["aiRequests"] == 2


async def test_failures_are_matched_per_item_not_by_email(client: ZionClient, fake: FakeZion) -> None:
    fake.reject_model("bad-model")
    records = [record(1), record(2, model="bad-model"), record(3, "ghost@example.com")]
    result = await client.batch_increment(records, "key-1")
    assert result.applied == ["req-1"]
    assert [(r.request_id, r.error) for r in result.failed] == [
        ("req-2", "model rejected"),
        ("req-3", "User not found"),
    ]


async def test_results_in_another_order_are_paired_by_the_email_they_name(client: ZionClient, fake: FakeZion) -> None:
    """Results were paired with increments by position only, though each names its email: a Zion
    answering in another order (failures first, or grouped by user) had the refused record marked
    applied (never counted, gone from the outbox) and the applied one marked failed (sent again under
    a new key: counted twice). Results that contradict their position are paired by email where that
    is unambiguous; where it is not, the answer is a wrong shape and the batch goes again."""
    fake.reject_model("bad-model")
    fake.reshape_batch_results(lambda results: list(reversed(results)))
    bob, refused = record(1, "bob@example.com"), record(2, model="bad-model")
    result = await client.batch_increment([bob, refused], "key-order")
    assert result.applied == ["req-1"]
    assert [(r.request_id, r.error) for r in result.failed] == [("req-2", "model rejected")]
    # Two records of one email, one applied and one refused, in another order: no way to tell which.
    with pytest.raises(GovernanceUnavailable):
        await client.batch_increment([record(3, model="bad-model"), record(4), bob], "key-ambiguous")
    # Emails of Zion's own spelling (not the ones sent, in any order) say nothing of order: by position.
    fake.reshape_batch_results(lambda results: [{**r, "email": "canonical@example.com"} for r in results])
    result = await client.batch_increment([record(5), record(6, model="bad-model")], "key-spelling")
    assert result.applied == ["req-5"] and [r.request_id for r in result.failed] == ["req-6"]


async def test_records_without_email_are_skipped(client: ZionClient, fake: FakeZion) -> None:
    result = await client.batch_increment([record(1, email=None)], "key-1")
    assert [(r.request_id, r.status) for r in result.items] == [("req-1", "skipped")]
    assert await client.batch_increment([], "key-2") == result.__class__(())
    assert fake.received == 0


async def test_more_than_1000_records_are_chunked(client: ZionClient, fake: FakeZion) -> None:
    result = await client.batch_increment([record(n) for n in range(1001)], "key-big")
    assert len(result.applied) == 1001
    assert fake.calls[BATCH] == 2
    assert [s.headers["idempotency-key"] for s in fake.seen] == ["key-big", "key-big:1"]
    assert fake.totals["alice@example.com"]["aiRequests"] == 1001


async def test_5xx_is_retried_until_success(client: ZionClient, fake: FakeZion) -> None:
    fake.fail_next(2, status=503)
    assert await client.me("tok-alice") is not None
    assert fake.received == 3


async def test_a_retried_batch_keeps_its_idempotency_key(client: ZionClient, fake: FakeZion) -> None:
    fake.fail_next(1, status=502)
    result = await client.batch_increment([record(1)], "key-r")
    assert result.applied == ["req-1"] and fake.totals["alice@example.com"]["aiRequests"] == 1
    assert fake.received == 2


async def test_persistent_5xx_is_governance_unavailable(client: ZionClient, fake: FakeZion) -> None:
    fake.set_down(True)
    with pytest.raises(ZionStatusError) as caught:
        await client.me("tok-alice")
    assert caught.value.zion_status == 503 and caught.value.status == 503
    assert fake.received == 3


async def test_4xx_is_not_retried_and_the_key_never_logged(
    fake: FakeZion, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = ZionClient(fake.url, "wrong-key-s3cr3t", backoff=FAST)
    try:
        with pytest.raises(GovernanceUnavailable) as caught:
            await wrong.limits("ext-alice")
    finally:
        await wrong.aclose()
    assert fake.received == 1
    assert "s3cr3t" not in str(caught.value) and "s3cr3t" not in caplog.text and "s3cr3t" not in repr(wrong)
    assert "ext-alice" not in str(caught.value)


@pytest.mark.parametrize("mode", ["drop", "hang"])
async def test_down_zion_is_governance_unavailable_quickly(fake: FakeZion, mode: str) -> None:
    fake.set_down(True, mode)
    quick = ZionClient(fake.url, fake.api_key, timeout=0.2, backoff=FAST)
    started = time.monotonic()
    try:
        with pytest.raises(GovernanceUnavailable):
            await quick.limits("ext-alice")
    finally:
        await quick.aclose()
    assert time.monotonic() - started < 3
    assert fake.received == 3


async def test_unreachable_zion_is_governance_unavailable() -> None:
    nowhere = ZionClient(f"http://127.0.0.1:{free_port()}", "k", timeout=0.5, backoff=FAST)
    try:
        with pytest.raises(GovernanceUnavailable, match="unreachable"):
            await nowhere.tier_config()
    finally:
        await nowhere.aclose()


async def test_tier_config_is_returned_raw(client: ZionClient, fake: FakeZion) -> None:
    config = await client.tier_config()
    assert config["tiers"]["simple"][0]["model"] == "gpt-4o-mini"
    assert set(config) == {"version", "updatedAt", "tiers"}


async def test_single_increment(client: ZionClient, fake: FakeZion) -> None:
    data = await client.increment(record(1), idempotency_key="one")
    await client.increment(record(1), idempotency_key="one")
    assert data["aiRequests"] == {"limit": 10, "used": 4, "remaining": 6}
    assert fake.totals["alice@example.com"]["aiRequests"] == 1
    assert fake.calls[LIMITS] == 0


async def test_429_is_not_retried(client: ZionClient, fake: FakeZion) -> None:
    fake.fail_next(1, status=429)
    with pytest.raises(ZionStatusError) as caught:
        await client.tier_config()
    assert caught.value.zion_status == 429 and fake.received == 1


async def test_a_usage_batch_gets_longer_than_an_identity_lookup(fake: FakeZion) -> None:
    """A usage batch has a timeout of its own (ZION_USAGE_TIMEOUT_SECONDS, 30 s by default); the
    lookups on the request path keep their short one. The batch is held until a `/users/me` sent
    after it has timed out, so it took longer than that timeout: with one timeout for every call it
    was cut (and sent twice more) while Zion was still to apply it."""
    client = ZionClient(fake.url, fake.api_key, timeout=0.2, backoff=FAST)
    try:
        fake.set_down(True, "hang")
        sending = asyncio.ensure_future(client.batch_increment([record(1)], "key-slow"))
        assert await reached(lambda: fake.attempts[BATCH] == 1)
        with pytest.raises(GovernanceUnavailable, match="unreachable"):
            await client.me("tok-alice")
        fake.set_down(False)
        result = await sending
    finally:
        await client.aclose()
    assert result.applied == ["req-1"]
    assert fake.attempts[BATCH] == 1 and fake.totals["alice@example.com"]["aiRequests"] == 1


async def test_a_usage_batch_that_timed_out_is_not_sent_again_in_the_call(fake: FakeZion) -> None:
    """Zion may still be applying a batch whose call timed out: sent again at once under its key, a
    Zion that looks a key up only once it has applied it counted each copy (here three). The error
    says to wait the timeout once more before sending it again (`resend_after`)."""
    # (1 s: a loaded machine's connect reaches Zion within it; see the deliverer's test of the same)
    client = ZionClient(fake.url, fake.api_key, timeout=2.0, usage_timeout=1.0, backoff=FAST)
    fake.hold_batches(True)
    try:
        with pytest.raises(GovernanceUnavailable) as caught:
            await client.batch_increment([record(1)], "key-slow")
        assert fake.attempts[BATCH] == 1
        fake.hold_batches(False)
        assert await reached(lambda: len(fake.applied) == 1)
    finally:
        await client.aclose()
    assert caught.value.resend_after == pytest.approx(1.0)
    assert fake.totals["alice@example.com"]["aiRequests"] == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_a_usage_batch_zion_asks_to_wait_is_not_sent_again_in_the_call(
    client: ZionClient, fake: FakeZion, status: int
) -> None:
    """Zion's Retry-After on a usage batch is passed on (`resend_after`) for the deliverer to wait,
    not answered with a retry a few milliseconds later (a 503 was retried at once, twice)."""
    fake.fail_next(3, status=status, retry_after="120")
    with pytest.raises(ZionStatusError) as caught:
        await client.batch_increment([record(1)], "key-wait")
    assert caught.value.resend_after == 120 and fake.attempts[BATCH] == 1
    assert not fake.applied


async def test_a_usage_batch_a_proxy_answers_504_to_is_a_timed_out_call(fake: FakeZion) -> None:
    """A 504 is a proxy in front of Zion that stopped waiting, while Zion may still apply the batch:
    not sent again in the call (it was, at once, twice), but after the usage timeout."""
    client = ZionClient(fake.url, fake.api_key, usage_timeout=7.0, backoff=FAST)
    fake.fail_next(3, status=504)
    try:
        with pytest.raises(ZionStatusError) as caught:
            await client.batch_increment([record(1)], "key-proxy")
    finally:
        await client.aclose()
    assert caught.value.resend_after == 7.0 and fake.attempts[BATCH] == 1


async def test_a_lookup_zion_answers_503_with_retry_after_is_still_retried(client: ZionClient, fake: FakeZion) -> None:
    """On the request path a 503 is retried within the call as before, Retry-After or not."""
    fake.fail_next(1, status=503, retry_after="120")
    assert await client.me("tok-alice") is not None
    assert fake.received == 2


# --- a hostile or broken Zion: answers of the wrong shape are an outage, never a 500 ---------------------
class ShapedZion:
    """Answers /limits with `limits` as given, /usage batch-increment with `results` as given, and
    /users/me with `me_bytes` of padding (a huge answer)."""

    def __init__(self, limits: object = None, results: object = None, me_bytes: int = 0,
                 batch: dict[str, object] | None = None) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def me(_: Request) -> Response:
            pad = "x" * me_bytes
            return JSONResponse({"success": True, "data": {"id": "u1", "email": "u@example.com", "externalId": "e1",
                                                           "pad": pad}})

        async def limits_(_: Request) -> Response:
            return JSONResponse({"success": True, "data": {"userId": "u1", "limits": limits}})

        async def batch_(_: Request) -> Response:
            return JSONResponse({"success": True, "data": batch if batch is not None else {"results": results}})

        self.app = Starlette(routes=[
            Route("/api/v1/users/me", me), Route("/api/v1/limits/external/{rest:path}", limits_),
            Route("/api/v1/usage/external/batch-increment", batch_, methods=["POST"])])


@pytest.mark.parametrize("limits", [5, False, 0, "", {}, "none"])
async def test_limits_of_the_wrong_shape_are_an_outage(limits: object) -> None:
    """Only a list is a user's limits (null: none). A falsy value of another type (`false`, `0`,
    `""`, `{}`) was read as "no limits": every Zion limit of the user lifted."""
    with serving(ShapedZion(limits=limits).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=2.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            with pytest.raises(GovernanceUnavailable):
                await client.limits("e1")
        finally:
            await client.aclose()


async def test_a_limit_beyond_any_count_is_kept_in_range() -> None:
    limits = [{"name": "pro", "resetPeriod": ["MONTHLY"], "aiRequests": {"limit": 1e21, "used": 10**30}}]
    with serving(ShapedZion(limits=limits).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=2.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            found = await client.limits("e1")
        finally:
            await client.aclose()
    assert found is not None
    reading = found.limits[0].metrics["aiRequests"]
    assert (reading.limit, reading.used) == (10**12, 10**12)
    assert found.limits[0].reset_period is None  # a period that is not a string reads as NEVER


async def test_an_unknown_reset_period_is_logged_clipped(caplog: pytest.LogCaptureFixture) -> None:
    """Zion's `resetPeriod` was logged as it came (`%r`): a huge one made a huge warning line."""
    limits = [{"name": "pro", "resetPeriod": "WEEKLY" * 20_000, "aiRequests": {"limit": 10, "used": 1}}]
    with serving(ShapedZion(limits=limits).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=2.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            with caplog.at_level(logging.WARNING, logger="sentinel.zion"):
                found = await client.limits("e1")
        finally:
            await client.aclose()
    assert found is not None and found.limits[0].reset_period is None  # read as NEVER
    [line] = [r.getMessage() for r in caplog.records if "resetPeriod" in r.getMessage()]
    assert line.startswith("unknown Zion resetPeriod 'WEEKLYWEEKLY") and len(line) < 400, line[:500]


@pytest.mark.parametrize(
    "data",
    [
        {"results": 5},
        {"processed": 0, "failed": 1},
        {"results": []},
        {"processed": True, "results": []},  # not a count
        # more results than increments, one of them a failure: which record it names is a guess
        {"processed": 1, "failed": 0, "results": [{"success": True}, {"success": False}]},
        {"processed": 1, "failed": 1, "results": [{"success": True}, {"success": True}]},
    ],
)
async def test_a_batch_answer_naming_no_result_per_record_is_an_outage(data: dict[str, object]) -> None:
    """Counts without one result per increment name no record: marking them all failed sent the
    applied ones again under a new key (counted twice by Zion, every retry). The same batch goes
    again under its key."""
    record = UsageRecord(
        request_id="r1", external_id="e1", email="u@example.com", model="m", provider="p", endpoint="chat",
        input_tokens=1, output_tokens=1, usage_source="measured", status=200,
        started_at=datetime.now(UTC), finished_at=datetime.now(UTC),
    )
    with serving(ShapedZion(batch=data).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=2.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            with pytest.raises(GovernanceUnavailable):
                await client.batch_increment([record], "sentinel-usage-" + "0" * 32)
        finally:
            await client.aclose()


async def test_records_without_an_email_stay_in_the_outbox() -> None:
    """They were settled as if Zion had counted them (a record left from a GOVERNANCE=builtin run)."""
    from sentinel.governance.zion_sources import ZionSink

    record = UsageRecord(
        request_id="no-email", external_id="e1", email=None, model="m", provider="p", endpoint="chat",
        input_tokens=1, output_tokens=1, usage_source="measured", status=200,
        started_at=datetime.now(UTC), finished_at=datetime.now(UTC),
    )
    with serving(ShapedZion(batch={"results": []}).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=2.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            refused = await ZionSink(client).deliver([record], "sentinel-usage-" + "1" * 32)
        finally:
            await client.aclose()
    assert refused == ["no-email"]


async def test_an_answer_too_large_to_be_zions_is_refused_unread() -> None:
    with serving(ShapedZion(me_bytes=2 * 1024 * 1024).app) as server:
        client = ZionClient(server.url, "k" * 20, timeout=5.0, backoff=Backoff(base=0.01, cap=0.02, attempts=1))
        try:
            with pytest.raises(GovernanceUnavailable, match="larger than"):
                await client.me("token")
        finally:
            await client.aclose()


class _Elsewhere:
    """A second server that records the headers of every request it gets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b'{"success": true, "data": {"results": []}}'
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def test_zion_calls_through_the_apps_session_read_a_compressing_zion_and_follow_no_redirect() -> None:
    """Production passes the app's upstream session (it does not inflate answers): a Zion behind a
    compressing proxy was an outage for every call; and a redirect was followed with the service key
    in `x-api-key` (aiohttp drops only Authorization and cookies when the host changes)."""
    import gzip

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    from sentinel.providers.http import create_session

    elsewhere = _Elsewhere()
    with serving(elsewhere) as other:

        async def me(request: Request) -> Response:
            body = b'{"success": true, "data": {"id": "u1", "email": "u@example.com", "externalId": "e1"}}'
            if "gzip" in request.headers.get("accept-encoding", ""):
                return Response(gzip.compress(body), headers={"content-encoding": "gzip"},
                                media_type="application/json")
            return Response(body, media_type="application/json")

        async def batch(_: Request) -> Response:
            return RedirectResponse(other.url + "/steal", status_code=307)

        app = Starlette(routes=[Route("/api/v1/users/me", me),
                                Route("/api/v1/usage/external/batch-increment", batch, methods=["POST"])])
        record = UsageRecord(
            request_id="r1", external_id="e1", email="u@example.com", model="m", provider="p", endpoint="chat",
            input_tokens=1, output_tokens=1, usage_source="measured", status=200,
            started_at=datetime.now(UTC), finished_at=datetime.now(UTC),
        )
        session = create_session(read_timeout=5, connect_timeout=5)
        with serving(app) as server:
            client = ZionClient(server.url, "zion-service-key-0123456789", timeout=5.0, session=session,
                                backoff=Backoff(base=0.01, cap=0.02, attempts=1))
            try:
                identity = await client.me("token")
                with pytest.raises((GovernanceUnavailable, ZionStatusError)):
                    await client.batch_increment([record], "sentinel-usage-" + "0" * 32)
            finally:
                await client.aclose()
                await session.close()
    assert identity is not None and identity.email == "u@example.com"
    assert elsewhere.seen == [], elsewhere.seen

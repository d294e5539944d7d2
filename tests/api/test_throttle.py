"""The failed-authentication throttle on its own: concurrent lookups, IPv6 clients, a full table."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from starlette.requests import ClientDisconnect, Request

from sentinel.api.throttle import FailedAuthThrottle, client_key, client_of
from sentinel.errors import AuthenticationError, InvalidRequest, Overloaded, RateLimited, RequestTimeout
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock


async def _failing_lookup(throttle: FailedAuthThrottle, address: str, release: asyncio.Event, seen: list[str]) -> str:
    """One identity lookup that fails, as `Deps.authenticate` runs it: the failure is counted before
    the lookup's turn is given back."""
    try:
        async with throttle.lookup(address):
            seen.append(address)
            await release.wait()
            raise AuthenticationError()
    except AuthenticationError:
        await throttle.failed(address)
        return "401"
    except RateLimited:
        return "429"


async def test_concurrent_made_up_tokens_cannot_all_pass_the_check_before_the_first_fails() -> None:
    """The check ran before the lookup and the failure was counted after it: 20 concurrent made-up
    tokens from one address all passed while the count was 0, 20 lookups instead of 3."""
    throttle = FailedAuthThrottle(3, clock=lambda: 1000.0)
    release = asyncio.Event()
    seen: list[str] = []
    tasks = [asyncio.create_task(_failing_lookup(throttle, "198.51.100.7", release, seen)) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(seen) == 3  # three lookups in flight; the others wait their turn
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert len(seen) == 3, len(seen)
    assert sorted(outcomes) == ["401"] * 3 + ["429"] * 17
    with pytest.raises(RateLimited):
        await throttle.check("198.51.100.7")


async def test_lookups_that_succeed_let_the_waiting_ones_through() -> None:
    """Valid tokens from one address beyond `limit` at once wait, they are not refused."""
    throttle = FailedAuthThrottle(2, clock=lambda: 1000.0)
    in_flight = 0
    most = 0

    async def valid() -> None:
        nonlocal in_flight, most
        async with throttle.lookup("198.51.100.8"):
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0)
            in_flight -= 1

    await asyncio.gather(*(valid() for _ in range(10)))
    assert most == 2
    await throttle.check("198.51.100.8")  # nothing failed: not throttled


async def test_an_ipv6_host_is_one_client_however_many_addresses_of_its_64_it_uses() -> None:
    throttle = FailedAuthThrottle(2, clock=lambda: 1000.0)
    await throttle.failed("2001:db8:1:2::1")
    await throttle.failed("2001:db8:1:2:ffff:ffff:ffff:fffe")
    with pytest.raises(RateLimited):
        await throttle.check("2001:db8:1:2::99")
    await throttle.check("2001:db8:1:3::1")  # another /64: another client
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"  # an IPv4-mapped address is its IPv4 address
    assert client_key("2002:c000:201:42::1") == "192.0.2.1"  # a 6to4 address too
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_without_a_named_proxy_a_client_rotating_x_forwarded_for_is_still_its_socket_address(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Unless SENTINEL_FORWARDED_ALLOW_IPS names proxies, X-Forwarded-For is the client's own word: a
    client writing a new address in each request is still one client, its socket's, to the throttle.
    (The test gateways trusted it from the loopback, uvicorn's default, where `serve` does not: every
    guess was a new client there.)"""
    gw = gateway_factory(auth_failures_per_minute=3, window_clock=FakeClock())
    seen = []
    for i in range(5):
        answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                            headers={"Authorization": f"Bearer sk-sentinel-made-up-{i}",
                                     "X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=198.51.100.{i}"},
                            timeout=30)
        seen.append((answer.status_code, answer.json()["error"]["code"]))
    assert seen == [(401, "invalid_api_key")] * 3 + [(429, "auth_rate_limited")] * 2


def test_a_6to4_host_is_its_ipv4_address_however_many_64s_it_uses(gateway_factory: Callable[..., Gateway]) -> None:
    """A 6to4 address (2002:AABB:CCDD::/48) is the IPv4 host AA.BB.CC.DD's: counted by its /64, one
    IPv4 address had 65,536 clients' worth of failed authentications. It is counted as that IPv4
    address — the same client as the address itself and its IPv4-mapped form."""
    gw = gateway_factory(auth_failures_per_minute=3, forwarded_allow_ips="127.0.0.1", window_clock=FakeClock())
    seen = []
    for i, client in enumerate(["2002:c000:207:1::1", "2002:c000:207:2::1", "::ffff:192.0.2.7", "192.0.2.7",
                                "2002:c000:207:ffff::5"]):
        answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                            headers={"Authorization": f"Bearer sk-sentinel-made-up-{i}", "X-Forwarded-For": client},
                            timeout=30)
        seen.append((answer.status_code, answer.json()["error"]["code"]))
    assert seen == [(401, "invalid_api_key")] * 3 + [(429, "auth_rate_limited")] * 2
    # another IPv4 host's 6to4 prefix is another client
    other = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                       headers={"Authorization": "Bearer sk-sentinel-made-up", "X-Forwarded-For": "2002:c000:208::1"},
                       timeout=30)
    assert other.status_code == 401, other.text


async def test_a_full_table_never_forgets_a_client_at_its_limit() -> None:
    """When the table was full, every count was cleared: an attacker filling it lifted its own lockout."""
    throttle = FailedAuthThrottle(2, clock=lambda: 1000.0, max_clients=10)
    await throttle.failed("203.0.113.1")
    await throttle.failed("203.0.113.1")  # at the limit
    for i in range(2, 40):  # fill the table with other addresses, each below the limit
        await throttle.failed(f"203.0.113.{i}")
    with pytest.raises(RateLimited):
        await throttle.check("203.0.113.1")


async def test_an_ipv6_address_is_parsed_once_however_often_it_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request's check parsed its IPv6 address again (5-9 µs): a client's key is remembered."""
    import ipaddress

    parsed: list[object] = []
    real = ipaddress.IPv6Address

    def counting(address: object) -> ipaddress.IPv6Address:
        if isinstance(address, str):  # (the network's own construction passes an int)
            parsed.append(address)
        return real(address)

    monkeypatch.setattr(ipaddress, "IPv6Address", counting)
    client_key.cache_clear()
    throttle = FailedAuthThrottle(3, clock=lambda: 1000.0)
    for _ in range(5):
        await throttle.check("2001:db8:7::1")
    assert parsed == ["2001:db8:7::1"]


async def test_a_sign_in_form_never_read_whole_is_a_failed_sign_in() -> None:
    """A form whose body deadline passed or whose client left was no guess at all: forms held open
    until then cost nothing; nor did one trickled to its deadline and then made too large or not a
    form. Each is a failed sign-in now; only the server being full is not."""
    throttle = FailedAuthThrottle(2, clock=lambda: 1000.0)

    def never(exc: Exception) -> Callable[[], Awaitable[str | None]]:
        async def read() -> str | None:
            raise exc
        return read

    with pytest.raises(Overloaded):
        await throttle.attempt("198.51.100.7", never(Overloaded("full")), lambda _: True)
    await throttle.check("198.51.100.7")  # not counted
    throttle = FailedAuthThrottle(3, clock=lambda: 1000.0)
    for exc in (InvalidRequest("bad form"), RequestTimeout("too slow"), ClientDisconnect()):
        with pytest.raises(type(exc)):
            await throttle.attempt("198.51.100.7", never(exc), lambda _: True)
    with pytest.raises(RateLimited):
        await throttle.check("198.51.100.7")


def _request(headers: dict[str, str], client: str = "2001:db8:5::1") -> Request:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/v1/models", "headers": raw, "client": (client, 1)})


async def test_a_cross_origin_request_counts_in_its_addresses_second_bucket() -> None:
    """A page of another origin (an `Origin` not Sentinel's own `Host`, or an opaque one) fails in a
    second bucket of the address — one per address (an IPv6 /64), whatever the origin's value."""
    throttle = FailedAuthThrottle(2, clock=lambda: 1000.0)
    own = {"host": "sentinel.example:8443", "origin": "https://Sentinel.example:8443"}
    assert client_of(_request(own)) == "2001:db8:5::1"  # same origin: the address's own bucket
    assert client_of(_request({"host": "sentinel.example"})) == "2001:db8:5::1"  # no Origin: not a browser page
    for origin in ("https://hostile.example", "https://sentinel.example", "null"):
        await throttle.failed(client_of(_request({"host": "sentinel.example:8443", "origin": origin})))
    with pytest.raises(RateLimited):
        await throttle.check(client_of(_request({"host": "x", "origin": "https://a.example"}, "2001:db8:5::2")))
    await throttle.check("2001:db8:5::1")  # the address's own bucket: nothing failed there
    await throttle.check(client_of(_request(own)))
    assert client_key(client_of(_request({"origin": "https://a.example"}, "::ffff:192.0.2.1"))) == "cross-origin 192.0.2.1"
    assert client_key(client_of(_request({"origin": "https://a.example"}, "2001:db8:5::1"))) == "cross-origin 2001:db8:5::/64"


def test_the_browsers_own_word_on_the_origin_decides_over_the_host() -> None:
    """`Sec-Fetch-Site` (set by the browser, never by a page) says whether a page of another origin
    sent the request, whatever `Host` a proxy in front wrote; without it, `Origin` is compared with `Host`."""
    proxied = {"host": "127.0.0.1:8000", "origin": "https://sentinel.example"}
    assert client_of(_request({**proxied, "sec-fetch-site": "same-origin"})) == "2001:db8:5::1"
    for site in ("cross-site", "same-site"):
        assert client_of(_request({**proxied, "sec-fetch-site": site})) == "cross-origin 2001:db8:5::1"
    hostile = {"host": "sentinel.example", "origin": "https://hostile.example", "sec-fetch-site": "cross-site"}
    assert client_of(_request(hostile)) == "cross-origin 2001:db8:5::1"
    assert client_of(_request(proxied)) == "cross-origin 2001:db8:5::1"  # an older browser: by the Host

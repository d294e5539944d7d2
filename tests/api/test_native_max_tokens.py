"""A native request's `max_tokens` above the drawn model's own maximum (the catalogue's
`max_output_tokens`) is sent as that maximum and reserved as the most any model that may serve it
takes. Before, it went upstream as asked — the provider refuses such a cap, so the same request
succeeded or failed by the model a tier drew — and reserved as asked: a plan that fits every model's
real maximum refused it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.attack import spying

URL = "/native/v1/chat/completions"
MINI, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-20241022"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def upstream() -> Iterator[str]:
    """A mock provider of this test's own (both wire formats): its root URL."""
    with spying(create_mock_app()) as (server, _):
        yield server.url


def _gateway(factory: Callable[..., Gateway], tmp_path: Path, url: str, plan: str) -> Gateway:
    mini = {"provider": "openai", "model": MINI}
    haiku = {"provider": "anthropic", "model": HAIKU}
    doc = {
        "models": [{"name": MINI, "provider": "openai", "max_output_tokens": 1000},
                   {"name": HAIKU, "provider": "anthropic", "max_output_tokens": 2000}],
        "tiers": {"simple": [mini], "moderate": [haiku], "complex": [mini, haiku]},
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return factory(providers_file=path, openai_api_url=url + "/v1", anthropic_api_url=url, default_plan=plan)


def _sent(url: str, path: str) -> dict[str, Any]:
    body = httpx.get(url + "/__mock/last_request", params={"path": path}, timeout=5).json()["body"]
    return body if isinstance(body, dict) else {}


@pytest.mark.parametrize(("tier", "path", "most"), [("simple", "/v1/chat/completions", 1000),
                                                    ("moderate", "/v1/messages", 2000)])
def test_a_cap_above_the_models_maximum_is_sent_and_reserved_as_that_maximum(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: str, tier: str, path: str, most: int
) -> None:
    gw = _gateway(gateway_factory, tmp_path, upstream, "requests=100/1d,output_tokens=5000/1d")
    with gw.client() as http:
        for stream in (False, True):
            r = http.post(URL, json={"tier": tier, "messages": ASK, "max_tokens": 1_000_000, "stream": stream})
            assert r.status_code == 200, r.text
            assert _sent(upstream, path)["max_tokens"] == most
        r = http.post(URL, json={"tier": tier, "messages": ASK, "max_tokens": 7})  # below it: as asked
    assert r.status_code == 200, r.text
    assert _sent(upstream, path)["max_tokens"] == 7


def test_the_reservation_is_the_most_any_candidate_of_the_tier_takes(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: str
) -> None:
    """A retry may go to another candidate of the tier: the reservation is the largest maximum among
    them (2,000 here), so a plan of 1,500 output tokens takes the request on a tier of one model of
    1,000 and refuses it on the tier that may also use the model of 2,000 (429, nothing sent)."""
    gw = _gateway(gateway_factory, tmp_path, upstream, "requests=100/1d,output_tokens=1500/1d")
    with gw.client() as http:
        fits = http.post(URL, json={"tier": "simple", "messages": ASK, "max_tokens": 1_000_000})
        httpx.delete(upstream + "/__mock/requests", timeout=5)
        refused = http.post(URL, json={"tier": "complex", "messages": ASK, "max_tokens": 1_000_000})
    assert fits.status_code == 200, fits.text
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["details"]["metric"] == "output_tokens"
    assert httpx.get(upstream + "/__mock/requests", timeout=5).json()["data"] == []


def test_the_built_in_catalogue_knows_its_models_maxima(
    gateway_factory: Callable[..., Gateway], upstream: str
) -> None:
    """Without a providers file: `max_tokens: 1000000` on the default tiers is sent as the drawn
    built-in model's maximum (gpt-4o-mini 16,384, claude-3-5-haiku 8,192, …) and reserved as at most
    64,000 (claude-sonnet-4's, the largest), within a plan of 100,000 output tokens; it was reserved
    as a million (429) and sent as asked."""
    gw = gateway_factory(openai_api_url=upstream + "/v1", anthropic_api_url=upstream,
                         default_plan="requests=100/1d,output_tokens=100000/1d")
    maxima = {"gpt-4o-mini": 16_384, "gpt-4o": 16_384, HAIKU: 8_192, "claude-sonnet-4-20250514": 64_000}
    with gw.client() as http:
        for tier in ("simple", "moderate", "complex"):
            r = http.post(URL, json={"tier": tier, "messages": ASK, "max_tokens": 1_000_000})
            assert r.status_code == 200, r.text
            model = r.headers["x-sentinel-model"]
            path = "/v1/messages" if model.startswith("claude") else "/v1/chat/completions"
            assert _sent(upstream, path)["max_tokens"] == maxima[model]


@pytest.mark.parametrize("cap", [10**12 + 1, 2**63])
def test_a_cap_past_sentinels_bound_on_any_token_count_is_refused_and_sent_nowhere(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: str, cap: int
) -> None:
    """10**12 is Sentinel's bound on any token count (a `/v1` output cap past it is a 400); a native
    `max_tokens` past it, on a model whose maximum the catalogue does not know, went upstream as asked
    (2**63 too) and was reserved as 2**40. Now a 400 naming `max_tokens`, before anything is reserved
    or sent; 10**12 itself is sent as asked."""
    doc = {"models": [{"name": MINI, "provider": "openai"}], "tiers": {"simple": [{"provider": "openai", "model": MINI}]}}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    gw = gateway_factory(providers_file=path, openai_api_url=upstream + "/v1", default_plan="requests=100/1d")
    with gw.client() as http:
        httpx.delete(upstream + "/__mock/requests", timeout=5)
        refused = http.post(URL, json={"messages": ASK, "max_tokens": cap})
        assert httpx.get(upstream + "/__mock/requests", timeout=5).json()["data"] == []
        served = http.post(URL, json={"messages": ASK, "max_tokens": 10**12})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "max_tokens"
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining"] == "99"  # the refusal charged nothing
    assert _sent(upstream, "/v1/chat/completions")["max_tokens"] == 10**12

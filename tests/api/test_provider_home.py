"""One provider name is one upstream on every surface.

A providers-file entry named `openai` replaced the built-in provider of OPENAI_API_URL/KEY for the
native API and for chat translated from `/v1/messages`, but `/v1` relayed calls (chat, the Responses
API, a stored response read back) still went to the environment's URL with the environment's key and
options: the same name meant two upstreams depending on the surface. Here the environment and the
file point at two mock upstreams, each accepting only its own key; every surface must reach the
file's, with its key and its `end_user_field`, and the environment's must see nothing."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.attack import SpyUpstream, spying

ENV_KEY = "sk-environment-openai-0123456789"
FILE_KEY = "sk-providers-file-openai-0123456789"
SECRET = "end-user-secret-for-tests-0123456789abcdef"
MINI = "gpt-4o-mini"


def pseudonym(external_id: str) -> str:
    """Sentinel's pseudonym of a caller (HMAC-SHA256, as README's end-user section says)."""
    return hmac.new(SECRET.encode(), b"sentinel-end-user:v1:" + external_id.encode(), "sha256").hexdigest()[:32]


def requests_to(spy: SpyUpstream) -> list[dict[str, Any]]:
    """Every request the mock behind `spy` recorded, oldest first."""
    data: list[dict[str, Any]] = httpx.get(f"{spy.url}/__mock/requests", timeout=5).json()["data"]
    return data


@pytest.fixture
def upstreams() -> Iterator[tuple[SpyUpstream, SpyUpstream]]:
    """(the environment's OpenAI upstream, the providers file's), each taking only its own key."""
    with spying(create_mock_app(api_key=ENV_KEY)) as (_, env), spying(create_mock_app(api_key=FILE_KEY)) as (_, file):
        yield env, file


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway], upstreams: tuple[SpyUpstream, SpyUpstream], tmp_path: Path) -> Gateway:
    env, file = upstreams
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({
        "providers": [{"name": "openai", "kind": "openai", "base_url": file.url + "/v1", "api_key": FILE_KEY,
                       "end_user_field": "user"}],
        "tiers": {tier: [{"provider": "openai", "model": MINI, "relative_cost": 1}]
                  for tier in ("simple", "moderate", "complex")},
    }))
    return gateway_factory(openai_api_url=env.url + "/v1", openai_api_key=ENV_KEY, providers_file=path,
                           end_user_secret=SECRET)


def test_the_providers_files_openai_serves_every_surface(gw: Gateway, upstreams: tuple[SpyUpstream, SpyUpstream]) -> None:
    env, file = upstreams
    client = gw.openai()
    relayed = client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "relayed"}])
    assert relayed.choices[0].message.content == "Echo: relayed"
    stored = client.responses.create(model=MINI, input="stored")
    assert client.responses.retrieve(stored.id).id == stored.id  # a call naming no model: the default upstream
    translated = gw.anthropic().messages.create(model=MINI, max_tokens=20,
                                                messages=[{"role": "user", "content": "translated"}])
    assert translated.content[0].text == "Echo: translated"  # type: ignore[union-attr]
    with gw.client() as http:
        native = http.post("/native/v1/chat/completions",
                           json={"tier": "simple", "messages": [{"role": "user", "content": "native"}]})
    assert native.status_code == 200, native.text
    assert native.headers["x-sentinel-provider"] == "openai"

    assert env.paths() == []  # the environment's upstream of the same name is never reached
    seen = requests_to(file)
    assert [(r["method"], r["path"]) for r in seen] == [
        ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("GET", f"/v1/responses/{stored.id}"),
        ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions"),
    ]
    assert {r["headers"]["authorization"] for r in seen} == {f"Bearer {FILE_KEY}"}
    # The file's options go with it: `end_user_field: user` on every chat, whatever the surface.
    chats = [r["body"] for r in seen if r["path"] == "/v1/chat/completions"]
    assert [body["messages"][-1]["content"] for body in chats] == ["relayed", "translated", "native"]
    assert [body.get("user") for body in chats] == [pseudonym("alice")] * 3


"""An Anthropic client naming a route Sentinel does not serve (the Files API, Skills, the legacy Text
Completions API) gets the 404 in Anthropic's shape, so its SDK raises a `NotFoundError` it can read;
an OpenAI client's 404s are as before."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import openai
import orjson
import pytest

from sentinel.api import surfaces
from sentinel.errors import InvalidRequest, NotFound
from tests.api.conftest import Gateway

HAIKU = "claude-3-5-haiku-20241022"
LEGACY = {"model": HAIKU, "max_tokens_to_sample": 8, "prompt": "\n\nHuman: hi\n\nAssistant:"}


def seen_upstream(gw: Gateway, path: str) -> list[dict]:
    return httpx.get(f"{gw.settings.anthropic_api_url}/__mock/requests", params={"path": path}, timeout=5).json()["data"]


def assert_anthropic_404(err: anthropic.NotFoundError, endpoint: str) -> None:
    body = err.body
    assert isinstance(body, dict) and body["type"] == "error", body  # Anthropic's shape, not OpenAI's
    assert err.type == "not_found_error" and endpoint in (err.api_message or ""), body
    assert err.request_id and body["request_id"] == err.request_id == err.response.headers["x-request-id"]


def test_the_files_api_and_skills_are_refused_in_anthropics_shape(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    with pytest.raises(anthropic.NotFoundError) as beta_files:
        claude.beta.files.list()  # `anthropic-beta: files-api-...`
    assert_anthropic_404(beta_files.value, "/v1/files")
    with pytest.raises(anthropic.NotFoundError) as files:
        claude.files.list()
    assert_anthropic_404(files.value, "/v1/files")
    with pytest.raises(anthropic.NotFoundError) as skills:
        claude.skills.list()
    assert_anthropic_404(skills.value, "/v1/skills")
    with pytest.raises(anthropic.NotFoundError) as batches:  # below /v1/messages: its surface, as before
        claude.messages.batches.list()
    assert_anthropic_404(batches.value, "/v1/messages/batches")


def test_the_legacy_text_completions_api_points_to_messages(gateway_factory: Callable[..., Gateway]) -> None:
    """Refused whatever pass-through allows (`/v1/*` would have sent it to the OpenAI upstream), after
    authentication where the path is allowed, as every allowed path is."""
    for passthrough in ("", "/v1/*"):
        gw = gateway_factory(passthrough=passthrough)
        with pytest.raises(anthropic.NotFoundError) as legacy:
            gw.anthropic().post("/v1/complete", cast_to=object, body=LEGACY)  # what `completions.create` sent
        assert_anthropic_404(legacy.value, "/v1/complete")
        assert "use POST /v1/messages" in (legacy.value.api_message or "")
        if passthrough:
            with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
                gw.anthropic(api_key="sk-sentinel-not-a-key").post("/v1/complete", cast_to=object, body=LEGACY)
            assert isinstance(unauthenticated.value.body, dict) and unauthenticated.value.body["type"] == "error"
    # Without anthropic-version too (it is Anthropic's path): the same shape.
    r = httpx.post(gw.url + "/v1/complete", headers={"x-api-key": gw.key}, json=LEGACY)
    assert r.status_code == 404 and r.json()["type"] == "error" and r.headers["request-id"]
    assert seen_upstream(gw, "/v1/complete") == []


def test_openai_clients_are_answered_as_before(gateway: Gateway) -> None:
    client = gateway.openai()
    with pytest.raises(openai.NotFoundError) as files:
        client.files.list()
    assert files.value.code == "endpoint_not_supported" and files.value.type == "not_found_error"
    r = httpx.get(gateway.url + "/v1/files", headers={"Authorization": f"Bearer {gateway.key}"})
    assert r.status_code == 404 and set(r.json()) == {"error"} and "request-id" not in r.headers
    assert r.json()["error"]["code"] == "endpoint_not_supported"
    r = httpx.get(gateway.url + "/nowhere", headers={"anthropic-beta": "files-api-2025-04-14"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_found"  # no anthropic-version


def test_only_a_route_not_served_changes_shape_for_an_anthropic_client() -> None:
    is_anthropic, is_anthropic_client, render_error = (
        surfaces.is_anthropic, surfaces.is_anthropic_client, surfaces.render_error,  # read here: the old module had no is_anthropic_client
    )
    headers = [(b"x-api-key", b"k"), (b"anthropic-version", b"2023-06-01")]
    assert is_anthropic_client(headers) and not is_anthropic_client([(b"anthropic-beta", b"x")])
    assert is_anthropic("/v1/complete") and is_anthropic("/v1/messages") and not is_anthropic("/v1/completions")
    unserved = NotFound("Endpoint GET /v1/files not found", code="endpoint_not_found")
    answer = render_error("/v1/files", unserved, "rid", anthropic_client=True)
    assert answer.status == 404 and orjson.loads(answer.body) == {
        "type": "error", "error": {"type": "not_found_error", "message": "Endpoint GET /v1/files not found"},
        "request_id": "rid",
    }
    assert (b"request-id", b"rid") in answer.headers
    for other in (NotFound("no such object", code="object_not_found"), InvalidRequest("bad", code="invalid_json")):
        kept = render_error("/v1/files", other, "rid", anthropic_client=True)
        assert set(orjson.loads(kept.body)) == {"error"}, other  # the served route's own shape
    assert set(orjson.loads(render_error("/v1/files", unserved, "rid").body)) == {"error"}
    admin = render_error("/admin/nowhere", unserved, "rid", anthropic_client=True)
    assert (b"cache-control", b"no-store") in admin.headers and orjson.loads(admin.body)["type"] == "error"


def test_every_models_error_is_in_anthropics_shape_for_an_anthropic_client() -> None:
    missing = NotFound("The model 'x' does not exist", code="model_not_found")
    for path in ("/v1/models", "/v1/models/x", "/v1/models/meta-llama/x", "//v1/./models"):
        answer = surfaces.render_error(path, missing, "rid", anthropic_client=True)
        assert orjson.loads(answer.body)["error"]["type"] == "not_found_error", path
        assert (b"request-id", b"rid") in answer.headers, path
        assert set(orjson.loads(surfaces.render_error(path, missing, "rid").body)) == {"error"}, path  # OpenAI's
    for path in ("/v1/modelsx", "/v1/model", "/v2/models"):  # not the models list
        assert set(orjson.loads(surfaces.render_error(path, missing, "rid", anthropic_client=True).body)) == {"error"}

"""Images in OpenAI-format requests are part of the admission estimate, on every surface: once they
were not, so a client could send many images in a stream, read its first chunk and leave, and be
charged the text alone (the provider billed every image); and a request whose images alone exceed an
input limit was admitted (so was a burst of them, before the first settled)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.api.test_quotas import set_plan
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, openai_error, recorded_ids, wait_for
from tests.support.media import data_url, gif, whole_png

MINI = "gpt-4o-mini"
NATIVE = "/native/v1/chat/completions"
IMAGES = 20
IMAGE = data_url(whole_png(1024, 1024))  # 2 x 2 tiles by OpenAI's rule: 765 tokens for gpt-4o,
IMAGE_TOKENS = IMAGES * (2833 + 4 * 5667)  # 25,501 for gpt-4o-mini (its images cost ~33 times the tokens)
SLOW = "describe them #mock:chunk_delay_ms=200"  # a stream the client can leave early


def body(path: str, text: str) -> dict[str, Any]:
    """A streamed request to `path` with IMAGES images of 1024 x 1024 and `text`."""
    if path == "/v1/responses":
        parts = [{"type": "input_text", "text": text},
                 *[{"type": "input_image", "image_url": IMAGE, "detail": "auto"}] * IMAGES]
        return {"model": MINI, "stream": True, "input": [{"role": "user", "content": parts}]}
    chat_parts = [{"type": "text", "text": text}, *[{"type": "image_url", "image_url": {"url": IMAGE}}] * IMAGES]
    messages = [{"role": "user", "content": chat_parts}]
    if path == NATIVE:
        return {"stream": True, "max_tokens": 50, "messages": messages}
    return {"model": MINI, "stream": True, "max_tokens": 50, "messages": messages}


PATHS = ["/v1/chat/completions", "/v1/responses", NATIVE]


@pytest.mark.parametrize("path", PATHS)
def test_a_stream_its_client_leaves_is_charged_its_images(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, path: str
) -> None:
    gw = gateway_factory(usage_flush_interval_seconds=0.1, providers_file=tiers_file(tmp_path, "openai"))
    with gw.client() as http, http.stream("POST", path, json=body(path, SLOW)) as r:
        assert r.status_code == 200, r.read()
        first = next(r.iter_lines())  # the first event, then the client leaves
        assert first.startswith(("data:", "event:")), first
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["usage_source"] == "estimated", row  # cut before the provider's usage: the estimate
    assert IMAGE_TOKENS <= row["input_tokens"] < IMAGE_TOKENS + 100, row


@pytest.mark.parametrize("path", PATHS)
def test_images_alone_over_the_input_limit_are_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, tmp_path: Path, path: str
) -> None:
    """A request whose images alone exceed the plan's input limit is refused before it is sent, and
    takes nothing: the same user's text-only request is then admitted with the whole limit."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
    key = asyncio.run(create_key(gw.settings.database_url, "viewer"))[1]
    set_plan(gw.settings.database_url, "viewer", "plan-viewer", "requests=100/1h,input_tokens=10000/1h")
    with gw.client(key) as http:
        r = http.post(path, json={**body(path, "hi"), "stream": False})
        assert r.status_code == 429, r.text
        details = openai_error(r.json())["details"]
        assert (details["metric"], details["limit"], details["used"]) == ("input_tokens", 10_000, 0), details
        assert details["requested"] >= IMAGE_TOKENS, details
        assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()
        text_only = body(path, "hi")
        text_only.pop("messages", None), text_only.pop("input", None)
        if path == "/v1/responses":
            text_only["input"] = "hi"
        else:
            text_only["messages"] = [{"role": "user", "content": "hi"}]
        r = http.post(path, json={**text_only, "stream": False})
    assert r.status_code == 200, r.text


def test_a_gif_is_estimated_by_its_first_frame_not_its_screen(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, tmp_path: Path
) -> None:
    """A GIF whose logical screen is 1 x 1 around a 2048 x 2048 frame (which Pillow grows the image
    to hold) was estimated as 1 x 1: 8,500 tokens under gpt-4o-mini's rule where it bills 25,501, so
    it passed an input limit it alone exceeds. Now it is refused before it is sent, as the 2048 x
    2048 image it is; the same GIF whose frame fits its screen is admitted."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
    key = asyncio.run(create_key(gw.settings.database_url, "viewer"))[1]
    set_plan(gw.settings.database_url, "viewer", "plan-viewer", "requests=100/1h,input_tokens=20000/1h")

    def asking(image: bytes) -> dict[str, Any]:
        return {"model": MINI, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": data_url(image, "image/gif")}}]}]}

    with gw.client(key) as http:
        refused = http.post("/v1/chat/completions", json=asking(gif(1, 1, (0, 0, 2048, 2048))))
        assert refused.status_code == 429, refused.text
        details = openai_error(refused.json())["details"]
        assert details["metric"] == "input_tokens" and details["requested"] >= 2833 + 4 * 5667, details
        assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()
        assert http.post("/v1/chat/completions", json=asking(gif(1, 1))).status_code == 200


def test_images_are_estimated_by_the_model_the_provider_is_sent(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A catalogue name of the company's own for gpt-4o-mini was estimated by gpt-4o's image rule
    (the name matched none), a thirty-third of what the provider bills: the rule is the upstream model's."""
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump({"models": [
        {"name": "house-vision", "provider": "openai", "upstream_name": MINI}]}))
    gw = gateway_factory(usage_flush_interval_seconds=0.1, providers_file=catalogue)
    request = {**body("/v1/chat/completions", SLOW), "model": "house-vision"}
    with gw.client() as http, http.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.status_code == 200, r.read()
        next(r.iter_lines())  # the first event, then the client leaves
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["usage_source"] == "estimated" and row["model"] == "house-vision", row
    assert IMAGE_TOKENS <= row["input_tokens"] < IMAGE_TOKENS + 100, row


# --- the rule of every model that may serve the request --------------------------------------------
HAIKU = "claude-3-5-haiku-20241022"
LOW = {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}
CLAUDE_IMAGE_TOKENS = IMAGES * 1399  # Anthropic's rule, whatever the detail: ceil(1024 * 1024 / 750)
LOW_TOKENS = IMAGES * 2833  # gpt-4o-mini's low detail


def leave_after_the_first_event(gw: Gateway, path: str, request: dict[str, Any]) -> dict[str, Any]:
    """Stream `request`, leave at its first event; alice's one ledger row."""
    with gw.client() as http, http.stream("POST", path, json=request) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-sentinel-model"] == MINI  # where it was served
        first = next(r.iter_lines())
        assert first.startswith(("data:", "event:")), first
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert row["usage_source"] == "estimated", row  # cut before the provider's usage: the estimate
    return row


def test_messages_translated_to_an_openai_model_are_estimated_by_its_image_rule(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """`/v1/messages` served by gpt-4o-mini (translated: each image an `image_url` with no detail,
    25,501 tokens for 1024 x 1024) was estimated by Anthropic's rule (1,399): a stream cut at its
    first event was charged ~1/18 of what the provider billed."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE.split(",", 1)[1]}}
    request = {"model": MINI, "stream": True, "max_tokens": 50,
               "messages": [{"role": "user", "content": [{"type": "text", "text": SLOW}, *[image] * IMAGES]}]}
    row = leave_after_the_first_event(gw, "/v1/messages", request)
    assert IMAGE_TOKENS <= row["input_tokens"] < IMAGE_TOKENS + 100, row


def test_a_url_image_with_a_stray_data_field_is_estimated_as_a_url_image(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An Anthropic image whose source is a URL (`{"type": "url", "url": ..., "data": ...}`) was
    estimated from the `data` beside it, which the provider never reads: a 16 x 16 PNG there priced
    each image fetched from the URL at 8,500 tokens for gpt-4o-mini instead of the 48,169 an image
    of unknown size may cost, so a stream cut at its first event was charged ~1/6 of what the
    provider billed (and a burst passed an input limit by as much). The translation sends the URL;
    the estimate reads the source its `type` names."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    decoy = base64.b64encode(whole_png(16, 16)).decode()
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/huge.png", "data": decoy}}
    request = {"model": MINI, "stream": True, "max_tokens": 50,
               "messages": [{"role": "user", "content": [{"type": "text", "text": SLOW}, *[image] * IMAGES]}]}
    row = leave_after_the_first_event(gw, "/v1/messages", request)
    assert IMAGES * 48_169 <= row["input_tokens"] < IMAGES * 48_169 + 100, row


def test_an_alias_is_estimated_by_the_dearest_rule_of_its_targets(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An alias [Claude, gpt-4o-mini] with Claude in backoff is served by gpt-4o-mini, and was
    estimated by its first target's rule: 20 low-detail images at 85 each (1,715 in all) where
    gpt-4o-mini bills 2,833 each."""
    providers = tmp_path / "aliases.yaml"
    providers.write_text(yaml.safe_dump({"aliases": {"smart": [HAIKU, MINI]}}))
    gw = gateway_factory(usage_flush_interval_seconds=0.1, providers_file=providers)
    other = asyncio.run(create_key(gw.settings.database_url, "viewer"))[1]
    with gw.client(other) as http:  # Claude fails: in backoff, the alias serves gpt-4o-mini first
        r = http.post("/v1/chat/completions", json={
            "model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "x #mock:status=503"}]})
        assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error", r.text
    request = {"model": "smart", "stream": True, "max_tokens": 50,
               "messages": [{"role": "user", "content": [{"type": "text", "text": SLOW}, *[LOW] * IMAGES]}]}
    row = leave_after_the_first_event(gw, "/v1/chat/completions", request)
    assert LOW_TOKENS <= row["input_tokens"] < LOW_TOKENS + 100, row


@pytest.mark.parametrize("path", ["/v1/chat/completions", NATIVE])
def test_low_detail_images_to_claude_are_estimated_by_anthropics_rule(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, tmp_path: Path, path: str
) -> None:
    """Claude bills an image by its pixels whatever the `detail` (a translation drops it): 20
    low-detail images of 1024 x 1024 were estimated at 85 each and admitted under a 10,000-token
    input limit, where Claude bills ~28,000."""
    gw = gateway_factory(anthropic_api_url=spy.url, providers_file=tiers_file(tmp_path, "anthropic"))
    key = asyncio.run(create_key(gw.settings.database_url, "viewer"))[1]
    set_plan(gw.settings.database_url, "viewer", "plan-viewer", "requests=100/1h,input_tokens=10000/1h")
    request = {"max_tokens": 50, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *[LOW] * IMAGES]}]}
    with gw.client(key) as http:
        r = http.post(path, json=request if path == NATIVE else {**request, "model": HAIKU})
    assert r.status_code == 429, r.text
    details = openai_error(r.json())["details"]
    assert details["metric"] == "input_tokens", details
    assert CLAUDE_IMAGE_TOKENS <= details["requested"] < CLAUDE_IMAGE_TOKENS + 100, details
    assert spy.seen == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://10.0.0.1/x", "/local.png"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_a_relayed_image_url_is_http_s_or_a_data_url(gateway: Gateway, path: str, url: str) -> None:
    """An image URL of another scheme went to an OpenAI-format server as the client wrote it, which a
    self-hosted one may read from its disk (vLLM's `file://` under its allowed media path) or fetch
    from its own network. Relayed as on every other surface: http(s) and data URLs only (400 naming
    the URL; nothing sent upstream); an http(s) one still goes."""
    def ask(image: str) -> dict[str, Any]:
        if path == "/v1/responses":
            return {"model": MINI, "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "what is it?"}, {"type": "input_image", "image_url": image}]}]}
        return {"model": MINI, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": image}}]}]}

    with gateway.client() as http:
        refused = http.post(path, json=ask(url))
        served = http.post(path, json=ask("https://example.com/cat.png"))
    assert refused.status_code == 400, refused.text
    where = "input.0.content.1.image_url" if path == "/v1/responses" else "messages.0.content.1.image_url.url"
    error = openai_error(refused.json())
    assert error["type"] == "invalid_request_error" and where in error["message"], error
    assert served.status_code == 200, served.text


def test_a_pdf_document_on_messages_counts_against_the_input_limit(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A PDF sent as a base64 `document` block on `/v1/messages` was estimated at nothing (Anthropic
    puts an image and the text of each page before the model): a 20-page PDF was admitted under a
    10,000-token input limit at a few tokens, and so was a burst of them before the first settled.
    Each page is estimated as the image of a letter page (647 tokens under Anthropic's rule)."""
    gw = gateway_factory(anthropic_api_url=spy.url)
    key = asyncio.run(create_key(gw.settings.database_url, "reader"))[1]
    set_plan(gw.settings.database_url, "reader", "plan-reader", "requests=100/1h,input_tokens=10000/1h")
    pdf = b"%PDF-1.4\n" + b"".join(b"%d 0 obj<</Type /Page>>endobj\n" % i for i in range(20))
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                               "data": base64.b64encode(pdf).decode()}}
    request = {"model": HAIKU, "max_tokens": 50,
               "messages": [{"role": "user", "content": [document, {"type": "text", "text": "summarise it"}]}]}
    with gw.client(key) as http:
        r = http.post("/v1/messages", json=request)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and "can never be admitted" in error["message"], error
    requested = int(error["message"].split(" needs ", 1)[1].split()[0])
    assert 20 * 647 <= requested < 20 * 647 + 100, error
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()

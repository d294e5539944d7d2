"""A Responses request's hosted tools that run a model of their own, as an attacker with a user key
would use them: the `image_generation` tool draws with its image model, whose tokens the answer
shows apart from its own `usage` (`tool_usage.image_gen`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.services.answers import MAX_BUFFERED
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows
from tests.support.servers import serving
from tests.support.upstream import RawUpstream, ScriptedUpstream
from tests.support.waiting import wait_for

ADMIN = "admin-key-for-tests-0123"
TOOL = {"type": "image_generation", "model": "house-image"}
IMAGE_USAGE = {"input_tokens": 50, "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
               "output_tokens": 6240, "total_tokens": 6290}


def _answer(result: str) -> dict[str, Any]:
    return {"id": "resp_img", "object": "response", "status": "completed", "model": "gpt-4o-mini",
            "output": [{"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": result}],
            "tools": [{"type": "image_generation", "model": "gpt-image-1"}],
            "usage": {"input_tokens": 300, "output_tokens": 40, "total_tokens": 340},
            "tool_usage": {"image_gen": IMAGE_USAGE, "web_search": {"num_requests": 0}}}


@pytest.mark.parametrize("shape", ["plain", "large", "stream"])
def test_the_image_tools_own_tokens_are_charged_as_its_models(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, shape: str,
) -> None:
    """The answer's `usage` is the request's model's alone: what its `image_generation` tool drew
    (6,240 image tokens of gpt-image-1, ~$0.25 an image at high quality) is shown only in its
    `tool_usage`, which nothing read — every image free of any limit, and of `cost_usd`. It is
    recorded as the tool's model's (the catalogue name the request gave), beside the answer's own
    record: plain, over 1 MiB (its base64 relayed as it arrives) and streamed."""
    doc = {"models": [{"name": "gpt-4o-mini", "provider": "openai"},
                      {"name": "house-image", "provider": "openai", "upstream_name": "gpt-image-1"}]}
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(doc))
    upstream = ScriptedUpstream()
    answer = _answer("A" * (MAX_BUFFERED + 10 if shape == "large" else 16))
    if shape == "stream":
        created = {**answer, "status": "in_progress", "output": [], "usage": None, "tool_usage": None}
        upstream.sse({"type": "response.created", "sequence_number": 0, "response": created},
                     {"type": "response.completed", "sequence_number": 1, "response": answer})
    else:
        upstream.json(answer)
    with serving(upstream) as srv:
        gw = gateway_factory(providers_file=tmp_path / "tools.yaml", openai_api_url=srv.url + "/v1",
                             usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "draw a cat", "stream": shape == "stream",
                                                 "tools": [{"type": "image_generation", "model": "house-image"}]})
            assert r.status_code == 200, r.text
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2), \
                ledger_rows(gw.settings.database_url, "alice")
    rows = {row["model"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    assert (rows["gpt-4o-mini"]["input_tokens"], rows["gpt-4o-mini"]["output_tokens"]) == (300, 40)
    assert (rows["house-image"]["input_tokens"], rows["house-image"]["output_tokens"]) == (50, 6240)


def _gateway(gateway_factory: Callable[..., Gateway], tmp_path: Path, url: str, plan: str | None = None) -> Gateway:
    doc = {"models": [{"name": "gpt-4o-mini", "provider": "openai"},
                      {"name": "house-image", "provider": "openai", "upstream_name": "gpt-image-1"}]}
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(doc))
    return gateway_factory(providers_file=tmp_path / "tools.yaml", openai_api_url=url + "/v1", admin_key=ADMIN,
                           usage_flush_interval_seconds=0.1,
                           default_plan=plan or "input_tokens=1000000000/1d,output_tokens=1000000000/1d")


def _ask(*, tool: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "draw a cat", "max_output_tokens": 100,
            "tools": [{**TOOL, **(tool or {})}], **fields}


def _opening() -> dict[str, Any]:
    created = {**_answer(""), "status": "in_progress", "output": [], "usage": None, "tool_usage": None}
    return {"type": "response.created", "sequence_number": 0, "response": created}


def test_a_stream_reserves_the_images_its_tool_may_draw_and_a_cut_one_is_charged_them(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """While a stream runs the plan counts its `max_output_tokens` and, for its `image_generation`
    tool, an image at the tool's size and quality (GPT Image's table: high, the dearest shape, when
    it names neither), 100 tokens a partial image, times `max_tool_calls` (one when not given); none
    for `tool_choice: none`. Reserved nothing, a burst passed any output limit before the first
    settled. A stream cut before its last event shows no `tool_usage`: its images are charged as
    reserved, a record of the tool's model (charged none, every image was free to a client cutting
    each stream)."""
    upstream = ScriptedUpstream()
    bodies = [_ask(), _ask(tool={"size": "1024x1024", "quality": "low", "partial_images": 2}),
              _ask(tool={"quality": "medium", "size": "1536x1024"}, max_tool_calls=3), _ask(tool_choice="none")]
    held: list[int] = []
    with serving(upstream) as srv:
        gw = _gateway(gateway_factory, tmp_path, srv.url)
        with gw.client() as http:
            for body in bodies:
                before = gw.quota_used()["output_tokens"]
                upstream.sse(_opening(), hold=True)
                with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer:
                    assert answer.status_code == 200
                    chunks = answer.iter_raw()  # (kept: a generator dropped closes the answer)
                    next(chunks)
                    held.append(gw.quota_used()["output_tokens"] - before)
                # (settled once it is left: its own record, and the tool's but for the last)
                rows_due = len(held) + min(len(held), 3)
                assert wait_for(lambda due=rows_due: len(ledger_rows(gw.settings.database_url, "alice")) >= due)
            rows = ledger_rows(gw.settings.database_url, "alice")
            used = gw.quota_used()["output_tokens"]
    assert held == [100 + 6240, 100 + 272 + 2 * 100, 100 + 3 * 1568, 100]
    drawn = [row["output_tokens"] for row in rows if row["model"] == "house-image"]
    assert drawn == [6240, 272 + 2 * 100, 3 * 1568]
    assert used == sum(row["output_tokens"] for row in rows)


def test_a_burst_of_image_tool_requests_past_the_output_limit_is_refused_before_it_is_sent(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """Two streams drawing a high-quality square image each (100 + 4,160 output tokens reserved)
    fit a 10,000-token output limit; a third does not while they run: 429 in OpenAI's shape, nothing
    sent for it, nothing counted. Reserved their 100 alone, all three were sent (and any number
    more) before the first settled its 4,160."""
    upstream = ScriptedUpstream()
    body = _ask(tool={"size": "1024x1024", "quality": "high"}, stream=True)
    with serving(upstream) as srv:
        gw = _gateway(gateway_factory, tmp_path, srv.url, "output_tokens=10000/1d")
        with gw.client() as http:
            upstream.sse(_opening(), hold=True)
            upstream.sse(_opening(), hold=True)
            with http.stream("POST", "/v1/responses", json=body) as first, \
                    http.stream("POST", "/v1/responses", json=body) as second:
                assert (first.status_code, second.status_code) == (200, 200)
                held = gw.quota_used()["output_tokens"]
                refused = http.post("/v1/responses", json=body)
                after = gw.quota_used()["output_tokens"]
    assert held == after == 2 * (100 + 4160)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error", refused.text
    assert len(upstream.received) == 2


@pytest.mark.parametrize("shape", ["plain", "stream"])
def test_an_answer_showing_its_tool_usage_is_charged_that_not_the_reservation(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, shape: str,
) -> None:
    """The images reserved (`max_tool_calls: 4`, ~25,000 tokens) are reconciled to the answer's
    `tool_usage`: the plan counts exactly its usage and the tool's 6,240 once settled."""
    upstream = ScriptedUpstream()
    answer = _answer("A" * 16)
    if shape == "stream":
        upstream.sse(_opening(), {"type": "response.completed", "sequence_number": 1, "response": answer})
    else:
        upstream.json(answer)
    with serving(upstream) as srv:
        gw = _gateway(gateway_factory, tmp_path, srv.url)
        with gw.client() as http:
            r = http.post("/v1/responses", json=_ask(max_tool_calls=4, stream=shape == "stream"))
            assert r.status_code == 200, r.text
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
            used = gw.quota_used()
    assert (used["input_tokens"], used["output_tokens"]) == (300 + 50, 40 + 6240)


@pytest.mark.parametrize("shape", ["unreadable", "large"])
def test_an_answer_whose_usage_cannot_be_read_is_charged_its_tools_reserved_images(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, shape: str,
) -> None:
    """An answer served but not readable as JSON (charged the output it reserved), or over 1 MiB
    with no `usage` in its tail, shows no `tool_usage` either: its tool is charged the images it
    reserved (a high-quality square image, 4,160), a record of the tool's model, not none."""
    upstream = ScriptedUpstream()
    if shape == "unreadable":
        upstream.typed(b"text/html", b"<html>served</html>")
    else:
        answer = {k: v for k, v in _answer("A" * (MAX_BUFFERED + 10)).items() if k not in ("usage", "tool_usage")}
        upstream.json(answer)
    with serving(upstream) as srv:
        gw = _gateway(gateway_factory, tmp_path, srv.url)
        with gw.client() as http:
            r = http.post("/v1/responses", json=_ask(tool={"size": "1024x1024", "quality": "high"}))
            assert r.status_code == 200, r.text[:200]
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2), \
                ledger_rows(gw.settings.database_url, "alice")
    rows = {row["model"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    assert (rows["house-image"]["input_tokens"], rows["house-image"]["output_tokens"]) == (0, 4160)
    assert rows["gpt-4o-mini"]["output_tokens"] == 100  # (its own: as reserved)


def test_a_request_the_provider_never_answered_is_charged_its_tools_reserved_images(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A request sent whose connection the provider dropped without an answer may have been served
    and billed: charged the output it reserved, as before, and now the images its tool reserved (a
    low-quality portrait, 408), a record of the tool's model — given back, they were free."""
    upstream = RawUpstream(b"")
    gw = _gateway(gateway_factory, tmp_path, upstream.url)
    with gw.client() as http:
        r = http.post("/v1/responses", json=_ask(tool={"size": "1024x1536", "quality": "low"}))
        assert r.status_code >= 500, r.text
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2), \
            ledger_rows(gw.settings.database_url, "alice")
        used = gw.quota_used()["output_tokens"]
    rows = {row["model"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    assert (rows["house-image"]["output_tokens"], rows["gpt-4o-mini"]["output_tokens"]) == (408, 100)
    assert used == 408 + 100


def test_the_image_tools_record_is_priced_at_its_catalogue_models_prices(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """The tool's `model` is a catalogue name (checked so: `with_tools`), an alias here: its record is
    priced at that entry's prices — 50 input tokens at $5 and 6,240 image tokens at $40 a million.
    Priced by the name a provider reports a model it ran by (an eval run's rule: a model served
    under that very name on the default provider), an alias's or another provider's image model
    was recorded with no cost."""
    doc = {"models": [{"name": "gpt-4o-mini", "provider": "openai"},
                      {"name": "house-image", "provider": "openai", "upstream_name": "gpt-image-1",
                       "input_price_per_million": 5.0, "output_price_per_million": 40.0}]}
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(doc))
    upstream = ScriptedUpstream()
    upstream.json(_answer("A" * 16))
    with serving(upstream) as srv:
        gw = gateway_factory(providers_file=tmp_path / "tools.yaml", openai_api_url=srv.url + "/v1",
                             usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            r = http.post("/v1/responses", json=_ask())
            assert r.status_code == 200, r.text
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = {row["model"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    assert rows["house-image"]["cost_usd"] == pytest.approx((50 * 5.0 + 6240 * 40.0) / 1_000_000)

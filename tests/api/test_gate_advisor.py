"""An advisor tool's calls are reserved: each reads the transcript again and writes up to the tool's
`max_tokens` (else its model's catalogue output cap), `max_uses` times (Sentinel writes 3 when the
tool gives none). Admission held the request's own estimate and `max_tokens` alone: one request, and
a burst before the first settled, passed an input or output limit by the advisor's share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
import yaml

from tests.api.conftest import Gateway
from tests.api.test_quotas import wait_for
from tests.api.test_usage_both_surfaces import claude_events, claude_message, ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

ADMIN = "admin-key-for-tests-0123"
ADVISOR_CAP = 2_000  # the advisor model's `max_output_tokens` in the catalogue
ADVISOR = {"type": "advisor_20260301", "name": "advisor", "model": "advisor"}
ASK = {"model": "executor", "max_tokens": 30, "messages": [{"role": "user", "content": "plan this"}],
       "tools": [ADVISOR]}


def providers_file(tmp_path: Path) -> Path:
    """The executor and the advisor on the Anthropic provider; the advisor writes at most ADVISOR_CAP."""
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({"models": [
        {"name": "executor", "provider": "anthropic", "upstream_name": "claude-haiku-4-5"},
        {"name": "advisor", "provider": "anthropic", "upstream_name": "claude-opus-4-8",
         "max_output_tokens": ADVISOR_CAP},
    ]}))
    return path


def gateway(gateway_factory: Callable[..., Gateway], tmp_path: Path, url: str, plan: str) -> Gateway:
    return gateway_factory(anthropic_api_url=url, providers_file=providers_file(tmp_path), admin_key=ADMIN,
                           default_plan=plan, usage_flush_interval_seconds=0.1)


def with_tool(**fields: Any) -> dict[str, Any]:
    return {**ASK, "tools": [{**ADVISOR, **fields}]}


def test_the_reservation_holds_each_advisor_call_s_read_and_write(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """While a stream runs, the plan counts its input estimate once for the request and once per
    advisor use, and its `max_tokens` plus each use's cap: the tool's `max_tokens`, else the advisor
    model's catalogue cap. A tool giving no `max_uses` is sent with 3, reserved so."""
    upstream = ScriptedUpstream()
    opening = claude_events({"input_tokens": 5, "output_tokens": 1}, 1)[:2]
    held: list[dict[str, int]] = []  # (what the plan counts with the stream running, less what it counted before)
    with serving(upstream) as srv:
        gw = gateway(gateway_factory, tmp_path, srv.url, "input_tokens=1000000000/1d,output_tokens=1000000000/1d")
        with gw.client() as http:
            for body in ({**ASK, "stream": True}, {**with_tool(max_uses=1), "stream": True},
                         {**with_tool(max_uses=2, max_tokens=500), "stream": True}):
                before = gw.quota_used()
                upstream.sse(*opening, hold=True)
                with http.stream("POST", "/v1/messages", json=body) as answer:
                    assert answer.status_code == 200
                    chunks = answer.iter_raw()  # (kept: a generator dropped closes the answer)
                    next(chunks)
                    held.append({k: n - before[k] for k, n in gw.quota_used().items()})
                # (settled once it is left: at message_start's input, no output)
                assert wait_for(lambda was=before["output_tokens"]: gw.quota_used()["output_tokens"] == was)
    unset, once, capped = held
    sent = [orjson.loads(each)["tools"][0] for each in upstream.received]
    assert [tool.get("max_uses") for tool in sent] == [3, 1, 2]
    assert [each["output_tokens"] for each in held] == [30 + 3 * ADVISOR_CAP, 30 + ADVISOR_CAP, 30 + 2 * 500]
    # (the first two bodies are the same tokens once sent, `max_uses` one digit: 4 reads of one estimate against 2)
    assert unset["input_tokens"] == 2 * once["input_tokens"] > 0
    assert capped["input_tokens"] % 3 == 0


def test_a_request_whose_advisor_calls_pass_the_plan_is_refused_and_changes_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """30 output tokens fit a 3,000-token limit; 30 plus two advisor calls of 1,500 do not: 429 in
    Anthropic's shape, nothing sent, nothing counted or recorded."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway(gateway_factory, tmp_path, srv.url, "output_tokens=3000/1d")
        with gw.client() as http:
            refused = http.post("/v1/messages", json=with_tool(max_uses=2, max_tokens=1_500))
            used = gw.quota_used()
    assert refused.status_code == 429, refused.text
    error = refused.json()
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error", error
    assert upstream.received == []
    assert used == {"output_tokens": 0}
    assert ledger_rows(gw.settings.database_url) == []


def test_an_admitted_advisor_request_is_settled_at_what_it_used(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Through the anthropic SDK: reserved 30 + 3 × 2,000 of a 7,000-token limit, the request is
    charged what its usage (advisor steps included) says; the same request again no longer fits."""
    top = {"input_tokens": 2_000, "output_tokens": 300}
    step = {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 4_000, "output_tokens": 1_500,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway(gateway_factory, tmp_path, srv.url, "output_tokens=7000/1d")
        claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
        upstream.json(claude_message({**top, "iterations": [step]}))
        answer = claude.beta.messages.create(
            model="executor", max_tokens=30, messages=[{"role": "user", "content": "plan this"}],
            tools=[{"type": "advisor_20260301", "name": "advisor", "model": "advisor"}],
            betas=["advisor-tool-2026-03-01"],
        )
        assert answer.content[0].type == "text"
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
        assert gw.quota_used() == {"output_tokens": 1_800}
        with pytest.raises(anthropic.RateLimitError):  # 1,800 used + 6,030 reserved > 7,000
            claude.beta.messages.create(
                model="executor", max_tokens=30, messages=[{"role": "user", "content": "plan this"}],
                tools=[{"type": "advisor_20260301", "name": "advisor", "model": "advisor"}],
                betas=["advisor-tool-2026-03-01"],
            )
        assert gw.quota_used() == {"output_tokens": 1_800}
    row = ledger_rows(gw.settings.database_url)[0]
    assert (row["input_tokens"], row["output_tokens"]) == (6_000, 1_800)
    assert len(upstream.received) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("max_uses", 10**12), ("max_uses", -1), ("max_uses", 0), ("max_uses", 2.5), ("max_uses", "3"),
    ("max_uses", True), ("max_tokens", -5), ("max_tokens", 1.5), ("max_tokens", "lots"), ("max_tokens", 10**13),
])
def test_an_absurd_advisor_field_is_a_400_naming_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, field: str, value: Any
) -> None:
    """Before anything is reserved or sent, on messages and count_tokens alike."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway(gateway_factory, tmp_path, srv.url, "requests=100/1d,output_tokens=100000/1d")
        body = {**ASK, "tools": [{"type": "function", "name": "f", "input_schema": {"type": "object"}},
                                 {**ADVISOR, field: value}]}
        with gw.client() as http:
            answers = [http.post("/v1/messages", json=body),
                       http.post("/v1/messages/count_tokens", json={k: v for k, v in body.items() if k != "max_tokens"})]
            used = gw.quota_used()
    for answer in answers:
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert f"tools.1.{field}" in error["error"]["message"], error
    assert upstream.received == []
    assert used == {"requests": 0, "output_tokens": 0}

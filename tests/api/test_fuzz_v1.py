"""Hostile bodies for every metered endpoint: whatever a client sends, the answer is never a 5xx.

Hypothesis starts from a valid body and replaces metered fields with values of the wrong type,
huge integers, odd unicode (lone surrogates, RTL marks, NULs), deep nesting, or replaces the
whole body with a non-object or raw bytes. The mock upstream may refuse what it is sent (a 4xx
Sentinel relays); no fault knob is ever set, so a 5xx can only be Sentinel's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.native.responses import ErrorBody
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file

MODEL = "gpt-4o-mini"
ENDPOINTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    # path: (a valid body, the fields Sentinel reads or meters)
    "/v1/chat/completions": (
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "tools",
         "store", "metadata"],
    ),
    "/v1/completions": (
        {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
        ["model", "prompt", "stream", "max_tokens", "n", "best_of", "echo", "suffix"],
    ),
    "/v1/embeddings": (
        {"model": "text-embedding-3-small", "input": "hi"},
        ["model", "input", "dimensions", "encoding_format"],
    ),
    "/v1/responses": (
        {"model": MODEL, "input": "hi"},
        ["model", "input", "instructions", "stream", "max_output_tokens", "previous_response_id", "store", "tools"],
    ),
    "/native/v1/chat/completions": (
        {"messages": [{"role": "user", "content": "hi"}]},
        ["messages", "stream", "max_tokens", "tier", "conversation_id", "tools", "temperature", "model",
         "tool_choice", "metadata"],
    ),
}

odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "\u0000", "\ud800", "\udfff", "\u202e", "\ufeff", "\U0001f600" * 50, "NaN", "Infinity",
                     "-0", "1e999", "true", "null", "[]", "{}", "../../x", "%2e%2e", "resp_" + "0" * 24]),
).filter(lambda s: "#mock" not in s)  # the mock's fault directives are never triggered
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 128, 129, 20, 21]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(odd_text, st.sampled_from(["role", "content", "type", "file_id", "text", "id"])),
                        inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested 1..400 levels deep, in lists, objects or both."""
    depth = draw(st.integers(min_value=1, max_value=400))
    value: Any = draw(scalars)
    for i in range(depth):
        value = [value] if draw(st.booleans()) or i % 7 else {"k": value}
    return value


hostile = st.one_of(
    values, deep(), st.lists(scalars, min_size=1, max_size=3),
    st.lists(values, min_size=1, max_size=3).map(lambda items: [{"role": "user", "content": item} for item in items]),
)
# Values of the right type but odd content: these get past the checks and reach the upstream.
plain_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(["", "\u0000", "\u202e", "\ufeff", "\U0001f600" * 50, "data: [DONE]\n\n", "\r\n\r\n"]),
).filter(lambda s: "#mock" not in s)
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image_url", "x"]),
                                        "text": plain_text}), min_size=1, max_size=3)
messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "nobody"]),
    "content": st.one_of(plain_text, parts, st.none()),
}), min_size=1, max_size=4)
prompts = st.one_of(plain_text, st.lists(plain_text, min_size=1, max_size=3),
                    st.lists(st.integers(0, 100_000), min_size=1, max_size=5))
caps = st.one_of(st.integers(1, 64), st.integers(1, 2**64 - 1))
TYPED: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(), "store": st.booleans(), "echo": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_tokens": caps, "max_completion_tokens": caps, "max_output_tokens": caps,
    "n": st.integers(1, 4), "best_of": st.integers(1, 4),
    "messages": messages, "prompt": prompts, "input": st.one_of(prompts, messages), "instructions": plain_text,
    "suffix": plain_text, "tier": st.sampled_from(["simple", "moderate", "complex", "odd"]),
    "conversation_id": plain_text, "temperature": st.floats(0, 2), "metadata": st.dictionaries(plain_text, plain_text),
    "dimensions": st.integers(1, 4096), "encoding_format": st.sampled_from(["float", "base64", "x"]),
}


@st.composite
def bodies(draw: st.DrawFn, path: str) -> bytes:
    base, fields = ENDPOINTS[path]
    shape = draw(st.sampled_from(["typed", "typed", "fields", "fields", "not-an-object", "raw"]))
    if shape == "raw":
        return draw(st.binary(max_size=200))
    body: Any
    if shape == "not-an-object":
        body = draw(values)
    else:
        body = dict(base)
        for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True)):
            roll = draw(st.integers(0, 9))
            if roll == 0:
                body.pop(field, None)
            elif field in TYPED and (shape == "typed" or roll <= 4):
                body[field] = draw(TYPED[field])
            else:
                body[field] = draw(hostile)
        if draw(st.booleans()):
            body[draw(plain_text if shape == "typed" else odd_text)] = draw(values if shape == "typed" else hostile)
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8 when not escaped


def check_answer(path: str, r: httpx.Response, sent: bytes) -> None:
    assert r.status_code < 500, (path, sent[:500], r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str), r.text
        if path.startswith("/native/"):
            ErrorBody.model_validate_json(r.content)


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_hostile_bodies_never_get_a_server_error(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, path: str
) -> None:
    gw = gateway_factory(default_plan="requests=1000000/1m", providers_file=tiers_file(tmp_path, "openai"))
    with gw.client() as http:

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies(path))
        def probe(body: bytes) -> None:
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            check_answer(path, r, body)

        probe()
        # and the gateway still serves an ordinary request afterwards
        r = http.post(path, json=ENDPOINTS[path][0])
        assert r.status_code == 200, r.text

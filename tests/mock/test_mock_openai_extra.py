"""The mock's OpenAI embeddings, models and Responses API, driven by the official `openai` SDK."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from tests.mock.mockwire import OPENAI_AUTH, expected_prompt_tokens, sse_data


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embeddings_float(oai: openai.OpenAI) -> None:
    out = oai.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta", "alpha"], encoding_format="float"
    )
    assert [d.index for d in out.data] == [0, 1, 2]
    vectors = [d.embedding for d in out.data]
    assert all(len(v) == 1536 for v in vectors)
    assert all(abs(_norm(v) - 1.0) < 1e-6 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert out.usage.prompt_tokens == 2 + 1 + 2 and out.usage.total_tokens == 5
    again = oai.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert again.data[0].embedding == vectors[0]  # deterministic across requests


def test_embeddings_base64_matches_float(oai: openai.OpenAI, http: httpx.Client) -> None:
    floats = (
        oai.embeddings.create(
            model="text-embedding-3-large", input="same text", dimensions=64, encoding_format="float"
        )
        .data[0]
        .embedding
    )
    # The SDK asks for base64 by default and decodes it itself.
    decoded = oai.embeddings.create(model="text-embedding-3-large", input="same text", dimensions=64)
    assert len(decoded.data[0].embedding) == 64
    assert decoded.data[0].embedding == pytest.approx(floats, abs=1e-6)
    raw = http.post(
        "/v1/embeddings",
        headers=OPENAI_AUTH,
        json={
            "model": "text-embedding-3-large",
            "input": "same text",
            "dimensions": 64,
            "encoding_format": "base64",
        },
    )
    packed = raw.json()["data"][0]["embedding"]
    assert isinstance(packed, str)
    assert list(struct.unpack("<64f", base64.b64decode(packed))) == pytest.approx(floats, abs=1e-6)


def test_embeddings_token_input_and_errors(http: httpx.Client) -> None:
    ok = http.post("/v1/embeddings", headers=OPENAI_AUTH, json={"model": "m", "input": [[1, 2, 3], [4]]})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 4
    missing = http.post("/v1/embeddings", headers=OPENAI_AUTH, json={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"
    bad = http.post(
        "/v1/embeddings", headers=OPENAI_AUTH, json={"model": "m", "input": "x", "encoding_format": "hex"}
    )
    assert bad.status_code == 400
    # A boolean is no dimension count (it was taken for 1, then failed: a 500).
    flag = http.post("/v1/embeddings", headers=OPENAI_AUTH, json={"model": "m", "input": "x", "dimensions": True})
    assert flag.status_code == 400 and flag.json()["error"]["param"] == "dimensions"


def test_embeddings_take_at_most_openais_2048_inputs(oai: openai.OpenAI) -> None:
    """Past 2,048 inputs OpenAI refuses the request; the mock answered a vector of 1,536 floats for each
    input of a few bytes: a 10 MB body grew the embedded default's process (the gateway's) by ~20 GB."""
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    assert refused.value.param == "input" and "2048" in refused.value.message
    assert len(oai.embeddings.create(model="text-embedding-3-small", input=["x"] * 2048, dimensions=1).data) == 2048


@pytest.mark.parametrize(("model", "most"), [("text-embedding-3-small", 1536), ("text-embedding-3-large", 3072),
                                             ("gpt-4o-mini", 1536)])
def test_embeddings_are_at_most_the_models_own_length(oai: openai.OpenAI, model: str, most: int) -> None:
    """OpenAI shortens a model's vectors (`dimensions`), never lengthens them; the mock gave any model
    8,192: 2,048 inputs of it were ~1 GB of the embedded default's process for one request."""
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model=model, input="x", dimensions=most + 1)
    assert refused.value.param == "dimensions" and str(most) in refused.value.message
    assert len(oai.embeddings.create(model=model, input="x", dimensions=most).data[0].embedding) == most


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o" in ids and "text-embedding-3-small" in ids
    model = oai.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model" and model.owned_by == "openai"
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("no-such-model")
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert "no-such-model" in body["message"]


def test_responses_plain(oai: openai.OpenAI) -> None:
    out = oai.responses.create(model="gpt-4o", input="tell me", instructions="be kind")
    assert out.object == "response" and out.status == "completed"
    assert out.output_text == "Echo: tell me"
    assert out.usage is not None
    assert out.usage.input_tokens == expected_prompt_tokens("be kind", "tell me")
    assert out.usage.output_tokens == 3
    cut = oai.responses.create(model="m", input=[{"role": "user", "content": "a b c d"}], max_output_tokens=2)
    assert cut.status == "incomplete" and cut.output_text == "Echo: a"
    assert cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"


def test_responses_stream_event_sequence(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="m", input="stream this please", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Echo:", " stream", " this", " please"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == "Echo: stream this please"
    assert done.usage is not None and done.usage.output_tokens == 4


def test_responses_function_call_roundtrip(oai: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
    first = oai.responses.create(model="m", input="find it", tools=[tool])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "lookup"
    assert json.loads(call.arguments) == {"q": "mock-q"}
    second = oai.responses.create(
        model="m",
        tools=[tool],
        input=[
            {"role": "user", "content": "find it"},
            {"type": "function_call", "call_id": call.call_id, "name": "lookup", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
        ],
    )
    assert second.output_text == "Result: 42"
    events = list(oai.responses.create(model="m", input="find it", tools=[tool], stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"q": "mock-q"}


def test_responses_raw_sse_has_event_names(http: httpx.Client) -> None:
    r = http.post("/v1/responses", headers=OPENAI_AUTH, json={"model": "m", "input": "hi", "stream": True})
    names = [line[7:] for line in r.text.split("\n") if line.startswith("event: ")]
    payloads = [json.loads(d) for d in sse_data(r.text)]
    assert names == [p["type"] for p in payloads]
    assert payloads[-1]["response"]["usage"]["total_tokens"] > 0


def test_a_long_running_mock_keeps_a_bounded_number_of_objects() -> None:
    """Every stored response (and file) was kept for ever: a mock serving for days grew without end."""
    from starlette.testclient import TestClient

    from sentinel.mock import create_mock_app
    from sentinel.mock.openai_objects import MAX_OBJECTS

    app = create_mock_app()
    with TestClient(app) as client:
        ids = [client.post("/v1/responses", json={"model": "gpt-4o-mini", "input": f"x{i}"},
                           headers={"Authorization": "Bearer k"}).json()["id"] for i in range(MAX_OBJECTS + 5)]
        assert len(app.state.mock.objects.responses) == MAX_OBJECTS
        assert client.get(f"/v1/responses/{ids[0]}", headers={"Authorization": "Bearer k"}).status_code == 404
        assert client.get(f"/v1/responses/{ids[-1]}", headers={"Authorization": "Bearer k"}).status_code == 200

"""OpenAI wire format: ``/v1/completions`` (legacy), ``/v1/embeddings`` and ``/v1/models``.

Legacy completions echo each prompt like chat does; ``max_tokens`` defaults to 16 as in the real API.

Embedding vectors are deterministic: unit vectors derived from SHAKE-256 of ``model + input``,
so equal inputs give equal vectors and different inputs differ. ``encoding_format=base64`` packs
little-endian float32 like the real API. ``GET /v1/models`` answers in Anthropic's list shape when
the caller speaks Anthropic (sends ``anthropic-version``, or ``x-api-key`` alone).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any

from sentinel.mock.asgi import DONE, Call, JSONReply, Reply, SSEReply, sse
from sentinel.mock.faults import WireError
from sentinel.mock.openai_wire import (
    FINGERPRINT,
    include_usage,
    json_object,
    max_tokens_of,
    require_model,
    usage_block,
)
from sentinel.mock.text import count_tokens, echo_text, new_id, shape_text, share, stop_list
from sentinel.native.openai_checks import MAX_EMBEDDING_INPUTS

DIMENSIONS = {"text-embedding-3-large": 3072, "text-embedding-3-small": 1536, "text-embedding-ada-002": 1536}
DEFAULT_DIMENSIONS = 1536

# (id, created, owned_by): the original system's static list plus the embedding models.
OPENAI_MODELS: tuple[tuple[str, int, str], ...] = (
    ("gpt-4o", 1706745600, "openai"),
    ("gpt-4o-mini", 1706745600, "openai"),
    ("gpt-4-turbo", 1706745600, "openai"),
    ("gpt-4", 1687882411, "openai"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("text-embedding-ada-002", 1671217299, "openai-internal"),
    ("claude-3-5-sonnet-20241022", 1729555200, "anthropic"),
    ("claude-3-5-haiku-20241022", 1729555200, "anthropic"),
    ("claude-3-opus-20240229", 1709164800, "anthropic"),
)
# (id, display_name, created_at) for the Anthropic flavour.
ANTHROPIC_MODELS: tuple[tuple[str, str, str], ...] = (
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    ("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    ("claude-3-opus-20240229", "Claude Opus 3", "2024-02-29T00:00:00Z"),
)


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for one input."""
    seed = item if isinstance(item, str) else ",".join(map(str, item))
    raw = hashlib.shake_256(f"{model}\0{seed}".encode()).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", raw)
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(isinstance(v, str) and v for v in value):
            return list(value)
        if all(isinstance(v, list) and v and all(isinstance(x, int) for x in v) for v in value):
            return list(value)
    if value is None:
        raise WireError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    raise WireError(400, "'$.input' is invalid. Please check the API reference.", param="input")


def embeddings(call: Call) -> Reply:
    """POST /v1/embeddings: string / list input, float or base64 encoding."""
    body = json_object(call)
    model = require_model(body)
    items = _inputs(body.get("input"))
    # (OpenAI's most, as Sentinel's: unbounded, each input of ~4 bytes grew the mock — in the embedded
    # default, the gateway's own process — by a vector of 1,536 floats: a 10 MB body, ~20 GB)
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise WireError(400, f"Too many inputs. The max number of inputs is {MAX_EMBEDDING_INPUTS}.", param="input")
    last = items[-1]
    faults = call.resolve_faults(last if isinstance(last, str) else "")
    # (a model's own vector is the longest it gives, as OpenAI's: 8,192 for any model made each of 2,048
    # inputs ~0.5 MB of floats, one request ~1 GB of the process)
    most = DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    dimensions = body.get("dimensions", most)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= most:
        raise WireError(400, f"Invalid 'dimensions': must be a positive integer of at most {most}.", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise WireError(
            400, "Invalid 'encoding_format': must be 'float' or 'base64'.", param="encoding_format"
        )
    data = []
    for index, item in enumerate(items):
        vector: Any = embedding_vector(model, item, dimensions)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    result: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not faults.no_usage:
        tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in items)
        result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONReply(result)


def anthropic_style(call: Call) -> bool:
    """True for Anthropic callers: they send ``anthropic-version`` (or ``x-api-key`` alone)."""
    headers = call.headers
    return "anthropic-version" in headers or ("x-api-key" in headers and "authorization" not in headers)


def _openai_model(entry: tuple[str, int, str]) -> dict[str, Any]:
    return {"id": entry[0], "object": "model", "created": entry[1], "owned_by": entry[2]}


def _anthropic_model(entry: tuple[str, str, str]) -> dict[str, Any]:
    return {"type": "model", "id": entry[0], "display_name": entry[1], "created_at": entry[2]}


def list_models(call: Call) -> Reply:
    """GET /v1/models."""
    call.resolve_faults("")
    if anthropic_style(call):
        data = [_anthropic_model(m) for m in ANTHROPIC_MODELS]
        return JSONReply(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )
    return JSONReply({"object": "list", "data": [_openai_model(m) for m in OPENAI_MODELS]})


def retrieve_model(call: Call) -> Reply:
    """GET /v1/models/{model_id}: the model, or 404 in the caller's error shape."""
    call.resolve_faults("")
    model_id = call.path_params.get("model_id", "")
    if anthropic_style(call):
        for entry in ANTHROPIC_MODELS:
            if entry[0] == model_id:
                return JSONReply(_anthropic_model(entry))
        raise WireError(404, f"model: {model_id}")
    for opened in OPENAI_MODELS:
        if opened[0] == model_id:
            return JSONReply(_openai_model(opened))
    raise WireError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")


def completions(call: Call) -> Reply:
    """POST /v1/completions (legacy; ``max_tokens`` defaults to 16 like the real API)."""
    body = json_object(call)
    model = require_model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt)
    ):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise WireError(
            400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    texts = [p if isinstance(p, str) else "" for p in prompts]
    faults = call.resolve_faults(texts[-1])
    limit = max_tokens_of(body, "max_tokens", default=16)
    stops = stop_list(body.get("stop"))
    outputs = [shape_text(echo_text(t), limit, stops, room=share(call.answer_chars, len(texts))) for t in texts]
    prompt_count = sum(count_tokens(p) if isinstance(p, str) else len(p) for p in prompts)
    suffix = body.get("suffix")
    if isinstance(suffix, str):  # each prompt is completed on its own, before the suffix: read once a prompt
        prompt_count += len(prompts) * count_tokens(suffix)
    usage = None if faults.no_usage else usage_block(prompt_count, sum(o.tokens for o in outputs))
    head = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }
    echo = body.get("echo") is True
    if body.get("stream"):
        include = include_usage(body)
        events: list[bytes] = []
        for i, out in enumerate(outputs):
            pieces = ([texts[i]] if echo else []) + out.pieces
            events.extend(
                sse({**head, "choices": [{"text": p, "index": i, "logprobs": None, "finish_reason": None}]})
                for p in pieces
            )
            finish = "length" if out.reason == "length" else "stop"
            events.append(
                sse(
                    {**head, "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": finish}]}
                )
            )
        if include and usage is not None:
            events.append(sse({**head, "choices": [], "usage": usage}))
        events.append(DONE)
        return SSEReply(events, 0)
    choices = [
        {
            "text": (texts[i] if echo else "") + out.text,
            "index": i,
            "logprobs": None,
            "finish_reason": "length" if out.reason == "length" else "stop",
        }
        for i, out in enumerate(outputs)
    ]
    result = {**head, "choices": choices}
    if usage is not None:
        result["usage"] = usage
    return JSONReply(result)

"""The Native API's OpenAPI 3.1 document, generated from the same pydantic types that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sentinel import __version__
from sentinel.native.responses import ChatChunk, ChatResponse, ErrorBody
from sentinel.native.types import ChatRequest

ERRORS: dict[str, tuple[str, str, str]] = {
    "400": ("Invalid request (validation, context too long, provider rejected the request)",
            "invalid_request_error", "invalid_request"),
    "401": ("Missing or invalid bearer token", "authentication_error", "invalid_api_key"),
    "403": ("The caller's usage cannot be recorded or reported", "permission_error", "identity_unrecordable"),
    "413": ("Request body too large", "invalid_request_error", "request_too_large"),
    "429": ("Quota exceeded or provider rate limit (Retry-After when known)", "rate_limit_error", "quota_exceeded"),
    "502": ("Provider error or provider authentication/configuration failure", "upstream_error", "provider_error"),
    "503": ("No model available for the tier, or a dependency is down (Retry-After)", "service_unavailable",
            "tier_unavailable"),
    "504": ("Provider timed out", "timeout_error", "upstream_timeout"),
}


def _schemas(models: list[tuple[type[BaseModel], str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, mode in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _stream_schemas(ref: str) -> dict[str, Any]:
    """Schemas of one server-sent event (OpenAPI 3.1 has `schema` of text/event-stream describe one event)."""

    def json_data(name: str) -> dict[str, Any]:
        return {
            "properties": {
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"$ref": ref + name}}
            }
        }

    return {
        "ChatStreamEvent": {
            "title": "ChatStreamEvent",
            "description": "One server-sent event of a streamed completion: `data:` holds a `ChatChunk`, "
            "the final `[DONE]`, or a `StreamError` that ends a broken stream instead of `[DONE]`.",
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
            "anyOf": [
                {"properties": {"data": {"const": "[DONE]"}}},
                json_data("ChatChunk"),
                json_data("StreamError"),
            ],
        },
        "StreamError": {
            "title": "StreamError",
            "description": "The last event of a stream that broke after it started (sent instead of `[DONE]`).",
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "additionalProperties": False,
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "code": {"type": "string"},
                    },
                }
            },
        },
    }


def build_openapi() -> dict[str, Any]:
    """The whole document (deterministic; served at /native/docs/openapi.json)."""
    ref = "#/components/schemas/"
    responses: dict[str, Any] = {
        "200": {
            "description": "The completion (JSON), or with `stream: true` an SSE stream of `ChatChunk`s "
            "ending with `data: [DONE]` (a broken upstream ends it with an error event instead).",
            "headers": {
                name: {"schema": {"type": "string"}, "description": desc}
                for name, desc in (
                    ("X-Sentinel-Tier", "the tier actually used (a session never downgrades)"),
                    ("X-Sentinel-Provider", "the provider that served the request"),
                    ("X-Sentinel-Model", "the model that served the request"),
                    ("X-RateLimit-Limit", "the tightest quota's limit"),
                    ("X-RateLimit-Remaining", "what is left of it"),
                    ("X-RateLimit-Reset", "when its window resets (unix seconds)"),
                    ("X-Request-Id", "the request id (also in logs)"),
                )
            },
            "content": {
                "application/json": {"schema": {"$ref": ref + "ChatResponse"}},
                "text/event-stream": {"schema": {"$ref": ref + "ChatStreamEvent"}},
            },
        }
    }
    for status, (description, err_type, code) in ERRORS.items():
        responses[status] = {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"$ref": ref + "ErrorBody"},
                    "example": {"error": {"message": description, "type": err_type, "code": code}},
                }
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinel Native API",
            "version": __version__,
            "description": "One provider-agnostic chat format. Name a tier (simple, moderate, complex), never a "
            "model; send a conversation_id to keep a conversation on one provider and model.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer_auth": []}],
        "paths": {
            "/native/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "Create a chat completion",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": ref + "ChatRequest"}}},
                    },
                    "responses": responses,
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer_auth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_schemas(
                    [(ChatRequest, "validation"), (ChatResponse, "serialization"), (ChatChunk, "serialization"),
                     (ErrorBody, "serialization")]
                ),
                **_stream_schemas(ref),
            },
        },
    }

"""`/native/docs` (Swagger UI page) and `/native/docs/openapi.json`, behind `X-Docs-Key`.

With DOCS_API_KEY set, both need `X-Docs-Key: <key>` (compared in constant time) or answer 401;
unset, they are open (a warning is logged at start-up).
"""

from __future__ import annotations

import hmac

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.openapi import build_openapi
from sentinel.api.responses import RawResponse
from sentinel.errors import AuthenticationError

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sentinel Native API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
const key = new URLSearchParams(location.search).get("key") || "";
SwaggerUIBundle({dom_id: "#ui", url: "/native/docs/openapi.json",
  requestInterceptor: (r) => { if (key && r.url.endsWith("openapi.json")) r.headers["X-Docs-Key"] = key; return r; }});
</script>
<noscript>The OpenAPI document is at /native/docs/openapi.json (send X-Docs-Key).</noscript>
</body></html>
"""


class DocsRoutes:
    def __init__(self, docs_key: str | None) -> None:
        self.docs_key = docs_key
        self.document = orjson.dumps(build_openapi())

    def routes(self) -> list[Route]:
        return [
            Route("/native/docs", self.page, methods=["GET"]),
            Route("/native/docs/", self.page, methods=["GET"]),
            Route("/native/docs/openapi.json", self.openapi, methods=["GET"]),
        ]

    def _check(self, request: Request) -> None:
        if self.docs_key is None:
            return
        given = request.headers.get("x-docs-key", "")
        if not hmac.compare_digest(given.encode(), self.docs_key.encode()):
            err = AuthenticationError("Send the docs key in the X-Docs-Key header", code="invalid_docs_key")
            err.headers.pop("WWW-Authenticate", None)
            raise err

    async def page(self, request: Request) -> RawResponse:
        self._check(request)
        return RawResponse(200, PAGE.encode(), [(b"content-type", b"text/html; charset=utf-8")])

    async def openapi(self, request: Request) -> RawResponse:
        self._check(request)
        return RawResponse(200, self.document, [(b"content-type", b"application/json")])

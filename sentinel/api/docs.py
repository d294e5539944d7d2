"""The native API docs: a Swagger UI page, its shipped assets, the OpenAPI document, a sign-in form.

Routes (all under ``/native/docs``):

==========================  ======  ==========================================================
path                        method  answer
==========================  ======  ==========================================================
``/native/docs``            GET     the Swagger UI page; without access 401 with the sign-in form
``/native/docs/openapi.json``  GET  the OpenAPI document; without access 401 (JSON error)
``/native/docs/signin``     GET     the sign-in form
``/native/docs/signin``     POST    form field ``key``: right -> 303 to the page + cookie;
                                    wrong -> 401 with the form again; posted by a page of
                                    another site -> 403 (not counted as a failed sign-in)
``/native/docs/signout``    POST    form field ``csrf`` (the page's): ends the cookie's session,
                                    a copy of it too (303 to the sign-in form; 503 when the
                                    store cannot keep that, the cookie cleared all the same);
                                    without a session or the key -> 401 with the form; from
                                    another site, or without the session's csrf -> 403
``/native/docs/assets/{n}`` GET     an allow-listed static file (public, cacheable)
==========================  ======  ==========================================================

Access rules are in `sentinel.api.docs_auth` (``X-Docs-Key`` header or sign-in cookie; never the
query string: a key there is refused with 401 like a missing one). Without ``DOCS_API_KEY`` the
docs are open and the sign-in routes redirect to the page. HTML answers carry a strict
``Content-Security-Policy`` (scripts and styles from this origin only, no inline code; the page's
init code is the shipped ``docs.js``) with ``Subresource Integrity`` on the page's tags, and
``Cache-Control: no-store``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.bodies import is_read, read_within, sign_in_deadline
from sentinel.api.docs_assets import DocsAssets
from sentinel.api.docs_auth import MAX_FORM_BYTES, DocsGate, form_key, from_another_site
from sentinel.api.openapi import build_openapi
from sentinel.api.responses import NOSNIFF, RawResponse
from sentinel.api.throttle import FailedAuthThrottle, client_of
from sentinel.errors import AuthenticationError, InvalidRequest, NotFound, StoreUnavailable
from sentinel.store import Store

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HTML_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # A page of another origin that opened one (`window.open`) keeps no handle on its window: it could
    # watch it and, once the operator signed in there, send it to a look-alike sign-in page.
    (b"cross-origin-opener-policy", b"same-origin"),
]
QUERY_KEY_NAMES = frozenset({"key", "docs_key", "api_key", "x-docs-key"})
QUERY_KEY_MESSAGE = "The docs key is not accepted in the URL: sign in, or send it in the X-Docs-Key header"
ASSET = "/native/docs/assets/"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sentinel Native API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{asset}swagger-ui.css" integrity="{css}"></head>
<body>{signout}<div id="ui"></div>
<noscript>The OpenAPI document is at /native/docs/openapi.json.</noscript>
<script src="{asset}swagger-ui-bundle.js" integrity="{bundle}"></script>
<script src="{asset}docs.js" integrity="{init}"></script>
</body></html>
"""
SIGNIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Sentinel API docs</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{asset}docs.css" integrity="{css}"></head>
<body><main><h1>Sentinel API docs</h1>{error}
<form method="post" action="/native/docs/signin">
<label for="key">Docs key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
<p class="hint">Scripts can send the key in the <code>X-Docs-Key</code> header instead.</p>
</main></body></html>
"""
# On the page of a signed-in session: ends it, a copy of the cookie too (`DocsGate.sign_out`); its CSRF
# token (`csrf_for`) tells the page's own form from another page's of this site (a sibling subdomain's).
SIGNOUT = ('<form method="post" action="/native/docs/signout"><input type="hidden" name="csrf" value="{csrf}">'
           '<button type="submit">Sign out</button></form>')
SIGNED_OUT_HERE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signed out here only - Sentinel API docs</title>
<link rel="stylesheet" href="{asset}docs.css" integrity="{css}"></head>
<body><main><h1>Signed out here only</h1><p class="error" role="alert">The cookie is cleared, but the session
could not be ended (store unavailable): a copy of it works until it expires. Sign in and out again once the
store answers, or rotate DOCS_API_KEY.</p></main></body></html>
"""


class DocsRoutes:
    """The docs routes for one docs key (None: open docs). `clock` is unix seconds; `store` keeps
    signed-out sessions (None: signing out only clears the browser's cookie)."""

    def __init__(
        self, docs_key: str | None, *, throttle: FailedAuthThrottle | None = None,
        clock: Callable[[], float] = time.time, body_timeout: float = 30.0, store: Store | None = None,
    ) -> None:
        self.body_timeout = body_timeout
        self.throttle = throttle or FailedAuthThrottle(30, clock=clock)
        self.gate = DocsGate(docs_key or None, clock=clock, store=store)
        self.assets = DocsAssets()
        self.document = orjson.dumps(build_openapi())
        integrity = self.assets.integrity
        # The page before and after its sign-out form (a session's own: `page`).
        self.page_around = PAGE.format(
            asset=ASSET,
            css=integrity("swagger-ui.css"),
            bundle=integrity("swagger-ui-bundle.js"),
            init=integrity("docs.js"),
            signout="\0",
        ).split("\0")

    def routes(self) -> list[Route]:
        return [
            Route("/native/docs", self.page, methods=["GET"]),
            Route("/native/docs/", self.page, methods=["GET"]),
            Route("/native/docs/openapi.json", self.openapi, methods=["GET"]),
            Route("/native/docs/signin", self.signin, methods=["GET", "POST"]),
            Route("/native/docs/signout", self.signout, methods=["POST"]),
            Route("/native/docs/assets/{name}", self.asset, methods=["GET"]),
        ]

    def _signin_page(self, status: int, error: str | None = None) -> RawResponse:
        shown = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        body = SIGNIN.format(asset=ASSET, css=self.assets.integrity("docs.css"), error=shown)
        return RawResponse(status, body.encode(), list(HTML_HEADERS))

    @staticmethod
    def _key_in_query(request: Request) -> bool:
        return any(name.lower() in QUERY_KEY_NAMES for name in request.query_params)

    async def _admitted(self, request: Request) -> bool:
        """Whether the request carries the docs key or a signed-in cookie. A wrong `X-Docs-Key` counts
        as a failed sign-in (and a throttled address is refused, 429): the header is no way around
        the sign-in form's throttle for guessing the key."""
        headers = dict(request.headers)
        if "x-docs-key" not in headers or self.gate.open:
            return await self.gate.allows(headers)
        address = client_of(request)
        await self.throttle.check(address)
        if await self.gate.allows(headers):
            return True
        await self.throttle.failed(address)
        return False

    async def page(self, request: Request) -> RawResponse:
        if not await self._admitted(request):
            return self._signin_page(401, QUERY_KEY_MESSAGE if self._key_in_query(request) else None)
        session = None if self.gate.open else await self.gate.session_of(request.headers)
        signout = "" if session is None else SIGNOUT.format(csrf=self.gate.csrf_for(session))
        return RawResponse(200, signout.join(self.page_around).encode(), list(HTML_HEADERS))

    async def openapi(self, request: Request) -> RawResponse:
        if not await self._admitted(request):
            message = QUERY_KEY_MESSAGE if self._key_in_query(request) else (
                "Send the docs key in the X-Docs-Key header, or sign in at /native/docs/signin"
            )
            raise _docs_key_required(message)
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), NOSNIFF]
        return RawResponse(200, self.document, headers)

    async def signin(self, request: Request) -> RawResponse:
        if self.gate.open:
            return RawResponse(303, b"", [(b"location", b"/native/docs")])
        if is_read(request):
            return self._signin_page(200)
        if from_another_site(request.headers):
            return self._signin_page(403, "Sign in with this site's own form.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequest("Sign in with a form post (application/x-www-form-urlencoded, field 'key')")
        async def typed_key() -> str | None:
            body = await read_within(request, limit=MAX_FORM_BYTES, seconds=sign_in_deadline(self.body_timeout),
                                     too_large=f"The sign-in form is limited to {MAX_FORM_BYTES} bytes")
            return form_key(body)

        # A failed sign-in counts like a failed authentication (see `FailedAuthThrottle.attempt`).
        if not await self.throttle.attempt(client_of(request), typed_key, self.gate.key_matches):
            return self._signin_page(401, "Wrong docs key.")
        cookie = self.gate.set_cookie(self.gate.mint(), secure=request.url.scheme == "https")
        headers = [(b"location", b"/native/docs"), (b"set-cookie", cookie.encode()), (b"cache-control", b"no-store")]
        return RawResponse(303, b"", headers)

    async def signout(self, request: Request) -> RawResponse:
        """End the cookie's session (a copy of it too) and clear it. A page of another site cannot
        send the cookie (`SameSite=Strict`); its form is refused all the same, as a sign-in's is. A
        sibling subdomain's page is same-site — the cookie goes with its form, and over http no
        `Sec-Fetch-Site` says where it came from —: a session is ended only by a form carrying its
        CSRF token (the page's own form), else 403 and nothing ended."""
        if self.gate.open:
            return RawResponse(303, b"", [(b"location", b"/native/docs")])
        if from_another_site(request.headers):
            return self._signin_page(403, "Sign out with this site's own form.")
        cleared = (b"set-cookie", self.gate.clear_cookie(secure=request.url.scheme == "https").encode())
        session = await self.gate.session_of(request.headers)
        if session is None and not await self._admitted(request):  # nothing to end: not signed in
            page = self._signin_page(401)
            page.headers.append(cleared)
            return page
        if session is not None:
            if not self.gate.csrf_matches(session, await self._form_csrf(request)):
                return self._signin_page(403, "Sign out with the docs page's own form (reload the page).")
            try:
                await self.gate.sign_out(session)
            except StoreUnavailable:
                body = SIGNED_OUT_HERE.format(asset=ASSET, css=self.assets.integrity("docs.css"))
                return RawResponse(503, body.encode(), [*HTML_HEADERS, cleared])
        return RawResponse(303, b"", [(b"location", b"/native/docs/signin"), cleared, (b"cache-control", b"no-store")])

    async def _form_csrf(self, request: Request) -> str | None:
        """The `csrf` field of a form post (None for any other body)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return None
        body = await read_within(request, limit=MAX_FORM_BYTES, seconds=sign_in_deadline(self.body_timeout),
                                 too_large=f"The sign-out form is limited to {MAX_FORM_BYTES} bytes")
        return form_key(body, "csrf")

    async def asset(self, request: Request) -> RawResponse:
        found = self.assets.response(request.path_params["name"], request.headers.get("if-none-match"))
        if found is None:
            raise NotFound("No such docs asset", code="not_found")
        return found


def _docs_key_required(message: str) -> AuthenticationError:
    """401 without `WWW-Authenticate` (made here: an error kept in the raising frame's local would
    hold that frame in its own traceback, a reference cycle)."""
    err = AuthenticationError(message, code="invalid_docs_key")
    err.headers.pop("WWW-Authenticate", None)
    return err



"""The operator console: server-rendered pages under `/admin` over `AdminService`.

Routes (registered only with SENTINEL_ADMIN_KEY set; see `sentinel.api.admin_auth` for sign-in,
cookies and CSRF): `GET /admin` (overview, `?period=1h|24h|30d`), `/admin/users[?q=]`,
`/admin/users/{id}` (`/admin/user?id=` for an id no path segment can hold), `/admin/plans`,
`/admin/plans/{name}`, `/admin/audit`, `/admin/export.csv`, `/admin/assets/{name}`, the sign-in form, and the POST targets of the pages' forms. A page without
a session redirects to the sign-in form; a form post without its CSRF token, or one a browser says
a page of another site sent (`from_another_site`, as the sign-in form), is refused with 403, and
so is a page another site's page embeds or fetches (`embedded_by_another_site`), before it is read.
Every other refusal a page or form target raises (an unknown plan or key, a post that is no form, a
query parameter out of its rule) is an HTML page with its status and message (`_as_page`), as a
browser shows it, not the admin API's JSON; so is, for a browser's request (one accepting
`text/html`), what the middleware answers before or after any route (`error_page`): the route
table's 404/405, the canonical-path check's 400, a 5xx (with the request id of its log line). A
script's request (`*/*`, JSON) gets those in Sentinel's JSON shape, and so does `/admin/api/*`.
A successful change redirects back (303); a refused one shows the form again with each message
next to its field (400); a revocation whose cached identity the store could not drop answers 503
with the user's page saying so and offering to send it again. Creating a key is the exception: its
answer shows the key, once — alone, saying so, when the rest of the user's page cannot be read —; the
form carries a one-time nonce, so sending it again creates nothing and answers 409 (see
`sentinel.api.console_once`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.routing import Route

from sentinel.api import console_pages as pages
from sentinel.api.admin_api import user_param
from sentinel.api.admin_auth import AdminGate
from sentinel.api.bodies import (
    is_read,
    read_within,
    refuse_control_characters,
    refuse_unreadable_query,
    sign_in_deadline,
)
from sentinel.api.console_html import e, isolated, layout, message_page, shown_id, signin_page, spelled_id
from sentinel.api.console_once import KeyFormNonces
from sentinel.api.docs import HTML_HEADERS
from sentinel.api.docs_assets import DocsAssets
from sentinel.api.docs_auth import embedded_by_another_site, from_another_site
from sentinel.api.responses import NOSNIFF, RawResponse, encode_headers
from sentinel.api.throttle import address_of, client_of
from sentinel.domain.numbers import parse_whole
from sentinel.domain.plans import format_window
from sentinel.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PlanChangeIncomplete,
    RevocationIncomplete,
    SentinelError,
    ServiceUnavailable,
    StoreUnavailable,
)
from sentinel.services.admin import Actor, AdminService
from sentinel.services.admin_forms import LimitInput, field_errors, refuse
from sentinel.services.admin_usage import empty_window, parse_moment
from sentinel.store import Store

MAX_FORM_BYTES = 64 * 1024
ASSETS = {
    "console.css": ("console/console.css", "text/css; charset=utf-8"),
    "console.js": ("console/console.js", "text/javascript; charset=utf-8"),
}
Form = dict[str, list[str]]


def _html(status: int, body: str, extra: list[tuple[bytes, bytes]] | None = None) -> RawResponse:
    return RawResponse(status, body.encode(), [*HTML_HEADERS, *(extra or [])])


def _see_other(location: str, extra: list[tuple[bytes, bytes]] | None = None) -> RawResponse:
    return RawResponse(303, b"", [(b"location", location.encode()), (b"cache-control", b"no-store"), *(extra or [])])


TEXTAREAS = frozenset({"entries"})  # the form fields whose value may span lines
# The heading of a refusal's page (`ConsoleRoutes._refused`), by status.
REFUSAL_TITLES = {401: "Signed out", 403: "Refused", 404: "Not found", 405: "Not allowed", 409: "Conflict",
                  413: "Too large", 429: "Too many attempts", 503: "Unavailable"}
Handler = Callable[[Request], Awaitable[RawResponse]]


class ConsoleRoutes:
    """The console's pages and form targets (see the module docstring)."""

    def __init__(self, service: AdminService, gate: AdminGate, store: Store, *, body_timeout: float = 30.0) -> None:
        self.service = service
        self.gate = gate
        self.nonces = KeyFormNonces(store, gate.session_seconds)
        self.body_timeout = body_timeout
        self.assets = DocsAssets(ASSETS)
        self.css = self.assets.integrity("console.css")
        self.js = self.assets.integrity("console.js")

    def routes(self) -> list[Route]:
        page, post = ["GET"], ["POST"]
        pages_and_forms = [
            Route("/admin", self.overview, methods=page),
            Route("/admin/", self.overview, methods=page),
            Route("/admin/signin", self.signin, methods=["GET", "POST"]),
            Route("/admin/signout", self.signout, methods=post),
            Route("/admin/users", self.users, methods=page),
            Route("/admin/user", self.open_user, methods=page),
            Route("/admin/user/plan", self.set_plan, methods=post),  # ?id=: ids no path segment can hold
            Route("/admin/user/keys", self.create_key, methods=post),
            Route("/admin/users/{external_id}", self.user, methods=page),
            Route("/admin/users/{external_id}/plan", self.set_plan, methods=post),
            Route("/admin/users/{external_id}/keys", self.create_key, methods=post),
            Route("/admin/keys/{key_id}/revoke", self.revoke_key, methods=post),
            Route("/admin/plans", self.plans, methods=["GET", "POST"]),
            Route("/admin/plans/{name}", self.plan, methods=["GET", "POST"]),
            Route("/admin/plans/{name}/delete", self.delete_plan, methods=post),
            Route("/admin/tiers/{tier}", self.set_tier, methods=post),
            Route("/admin/tiers/{tier}/reset", self.reset_tier, methods=post),
            Route("/admin/audit", self.audit, methods=page),
            Route("/admin/export.csv", self.export, methods=page),
        ]
        # an asset is no page: its 404 stays in Sentinel's shape (but to a browser opening it: `error_page`)
        return [Route(r.path, self._as_page(r.endpoint), methods=r.methods) for r in pages_and_forms] + [
            Route("/admin/assets/{name}", self.asset, methods=page)]

    def _as_page(self, handler: Handler) -> Handler:
        """`handler` answering a refusal it raises (a 4xx: an unknown plan or key, a post that is no
        form, a bad query parameter) with an HTML page of that status and message, not JSON."""
        async def answer(request: Request) -> RawResponse:
            try:
                result: RawResponse = await handler(request)
            except SentinelError as exc:
                if not 400 <= exc.status < 500:
                    raise
                return self._refused(exc)
            return result

        return answer

    def _refused(self, exc: SentinelError, request_id: str | None = None) -> RawResponse:
        """The page of a refusal: its status, its headers (`Retry-After`, `Allow`, ...) and its message;
        a 5xx's names `request_id`, which its log line holds."""
        fields = field_errors(exc) if isinstance(exc, InvalidRequest) else {}
        message = "; ".join(f"{name}: {why}" for name, why in fields.items()) or exc.message
        if exc.status >= 500 and request_id:
            message = f"{message} (request id {request_id})"
        title = REFUSAL_TITLES.get(exc.status, "Server error" if exc.status >= 500 else "Refused")
        return _html(exc.status, message_page(self.css, title, message), encode_headers(exc.headers))

    def error_page(self, exc: SentinelError, request_id: str) -> RawResponse:
        """A browser's page for an error the request middleware answers on a console path (see
        `surfaces.is_console_page`): the route table's 404/405, the canonical-path check's 400, a 5xx
        a page or form raised, nothing changed by any of them."""
        return self._refused(exc, request_id)

    # --- sessions and forms -------------------------------------------------------------------------
    def _page(self, title: str, body: str, session: str, active: str, status: int = 200,
              heading: str | None = None) -> RawResponse:
        html = layout(title, body, csrf=self.gate.csrf_for(session), active=active, css=self.css, js=self.js,
                      heading=heading)
        return _html(status, html)

    async def _form(self, request: Request, seconds: float | None = None) -> Form:
        """The posted form, all of it within `seconds` (default: the body deadline)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequest("Console forms are posted as application/x-www-form-urlencoded")
        body = await read_within(request, limit=MAX_FORM_BYTES, seconds=seconds or self.body_timeout,
                                 too_large=f"Console forms are limited to {MAX_FORM_BYTES} bytes")
        try:
            # strict: an escape that is not UTF-8 (`%FF`) would be read as U+FFFD, not refused
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=400, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("Unreadable form") from None
        # Only the tier form's textarea (`entries`) holds lines, which are split: a line break in any
        # other field (a key's name, an email) is refused as the admin API refuses it.
        refuse_control_characters({k: v for k, v in form.items() if k not in TEXTAREAS}, "a form")
        refuse_control_characters([form.get(name, []) for name in TEXTAREAS], "a form", lines=True)
        return form

    async def _post(self, request: Request) -> tuple[str, Form, Actor] | RawResponse:
        """(session, form, actor) of an authorised form post, or the answer refusing it."""
        session = await self.gate.session_of(request.headers)
        if session is None:
            return _html(401, message_page(self.css, "Signed out", "Your session ended: sign in again."))
        if from_another_site(request.headers):  # the console's own forms are same-origin (CSP form-action 'self')
            return _html(403, message_page(self.css, "Refused", "Send this form from the console's own page."))
        refuse_unreadable_query(request)  # `?id=` names the user a form changes
        form = await self._form(request)
        if not self.gate.csrf_matches(session, self._one(form, "csrf") or None):
            return _html(403, message_page(self.css, "Refused", "This form is missing its CSRF token; reload the "
                                                                "page and try again."))
        return session, form, Actor("admin", address_of(request))

    @staticmethod
    def _one(form: Form, name: str) -> str:
        return (form.get(name) or [""])[0]

    # --- sign-in -----------------------------------------------------------------------------------
    async def signin(self, request: Request) -> RawResponse:
        if is_read(request):
            return _html(200, signin_page(self.css))
        if from_another_site(request.headers):  # not counted: see `from_another_site`
            return _html(403, signin_page(self.css, "Sign in with this console's own form."))
        async def typed_key() -> str:
            return self._one(await self._form(request, sign_in_deadline(self.body_timeout)), "key")

        if not await self.gate.throttle.attempt(client_of(request), typed_key, self.gate.key_matches):
            return _html(401, signin_page(self.css, "Wrong admin key."))
        cookie = self.gate.set_cookie(self.gate.mint(), secure=request.url.scheme == "https")
        return _see_other("/admin", [(b"set-cookie", cookie.encode())])

    async def signout(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        cleared = [(b"set-cookie", self.gate.clear_cookie(request.url.scheme == "https").encode())]
        try:
            await self.gate.sign_out(checked[0])  # a copy of the cookie ends with it
        except StoreUnavailable:
            page = message_page(self.css, "Signed out here only", "The cookie is cleared, but the session could not be "
                                "ended (store unavailable): a copy of it works until it expires. Sign in and out "
                                "again once the store answers, or rotate SENTINEL_ADMIN_KEY.")
            return _html(503, page, cleared)
        return _see_other("/admin/signin", cleared)

    # --- pages -------------------------------------------------------------------------------------
    async def _guarded(self, request: Request, render: Callable[[str], Any]) -> RawResponse:
        session = await self.gate.session_of(request.headers)
        if session is None:
            return _see_other("/admin/signin")
        if embedded_by_another_site(request.headers):  # read nothing for it (a link followed from there opens)
            return _html(403, message_page(self.css, "Refused", "Open this page from the console, or follow a link to it."))
        refuse_unreadable_query(request)
        result: RawResponse = await render(session)
        return result

    async def overview(self, request: Request) -> RawResponse:
        async def render(session: str) -> RawResponse:
            # an unknown period is refused (400 naming the periods, as the admin API's), not read as 24h
            view = await self.service.overview(request.query_params.get("period", "24h"))
            return self._page("Overview", pages.overview(view), session, "/admin")

        return await self._guarded(request, render)

    async def users(self, request: Request) -> RawResponse:
        async def render(session: str) -> RawResponse:
            query = request.query_params.get("q") or None
            found = await self.service.find_users(query, limit=100)
            return self._page("Users", pages.users_page(found, query), session, "/admin/users")

        return await self._guarded(request, render)

    async def open_user(self, request: Request) -> RawResponse:
        """`/admin/user?id=` (the users page's "Open" form, and the links to ids no path segment can
        hold: `a/b`, `50%`, `..`): the user's page for such an id, a redirect to `/admin/users/{id}`
        for any other. The id is taken as given, never stripped (` alice` is not `alice`)."""
        async def render(session: str) -> RawResponse:
            external_id = request.query_params.get("id", "")
            href = pages.user_href(external_id)
            if not external_id or href.startswith("/admin/users/"):
                return _see_other(href if external_id else "/admin/users")
            return await self._user_page(session, external_id)

        return await self._guarded(request, render)

    async def _user_page(self, session: str, external_id: str, *, status: int = 200, **extra: Any) -> RawResponse:
        try:
            detail = await self.service.user(external_id)
        except NotFound:
            detail = None
        plans = [plan for plan, _ in await self.service.plans()] if self.service.builtin else None
        body = pages.user_page(external_id, detail, plans, self.gate.csrf_for(session), self.nonces.new(),
                               now=self.service.clock(), **extra)
        # named as every page names a user id: one that may read as another's is spelled out (`spelled_id`),
        # in the tab too (a `<title>` holds no markup): `User \u202eecila` was drawn `User alice` in both
        return self._page(f"User {spelled_id(external_id)}", body, session, "/admin/users", status,
                          heading=f"User {shown_id(external_id)}")

    async def user(self, request: Request) -> RawResponse:
        async def render(session: str) -> RawResponse:
            return await self._user_page(session, request.path_params["external_id"])

        return await self._guarded(request, render)

    async def set_plan(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, form, actor = checked
        external_id = user_param(request)
        try:
            self.service.plans_editable()  # 409 under GOVERNANCE=zion, whatever the form holds
            if "plan" not in form:  # the form's select always sends it ("" for the default plan)
                raise refuse({"plan": "choose a plan, or the default plan"})
            await self.service.set_user_plan(external_id, self._one(form, "plan") or None, actor)
        except PlanChangeIncomplete as exc:
            return self._incomplete(exc)
        except Conflict:  # GOVERNANCE=zion: the page says where the plan comes from, with no form
            return await self._user_page(session, external_id, status=409)
        except (NotFound, InvalidRequest) as exc:
            errors = field_errors(exc) if isinstance(exc, InvalidRequest) else {"plan": exc.message}
            return await self._user_page(session, external_id, status=400, errors=errors or {"plan": exc.message})
        return _see_other(pages.user_href(external_id))

    async def create_key(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, form, actor = checked
        external_id = user_param(request)
        nonce = self._one(form, "nonce")
        if not self.nonces.well_formed(nonce):
            return _html(400, message_page(self.css, "Refused", "This form is missing its one-time token; reload the "
                                                                "page and try again."))
        earlier = await self.nonces.claim(nonce)
        if earlier is not None:  # a reload, a double click, back and send again: nothing more is created
            return await self._user_page(session, external_id, status=409, earlier=earlier)
        try:
            created = await self.service.create_key(
                external_id, self._one(form, "name") or None, self._one(form, "email") or None, actor,
                expires_in=self._one(form, "expires_in") or None,
            )
        except InvalidRequest as exc:  # refused before anything was written: the form may be sent again
            await self.nonces.release(nonce)
            return await self._user_page(session, external_id, status=400, errors=field_errors(exc) or {"name": exc.message})
        await self.nonces.record(nonce, created[0])
        try:
            return await self._user_page(session, external_id, new_key=created)
        except ServiceUnavailable as exc:  # the key is issued: shown, whatever else the page could not read
            said = (f'<p class="error" role="alert">The rest of this user\'s page could not be read ({e(exc.message)}): '
                    f'<a href="{e(pages.user_href(external_id))}">open it again</a> once you have copied the key.</p>')
            return self._page(f"User {spelled_id(external_id)}", pages.new_key_section(*created) + said, session,
                              "/admin/users", heading=f"User {shown_id(external_id)}")

    async def revoke_key(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        key_id = request.path_params["key_id"]
        try:
            info = await self.service.revoke_key(key_id, checked[2])
        except RevocationIncomplete as exc:  # revoked, but said so: the page offers to send it again
            return await self._user_page(checked[0], exc.external_id, status=503, incomplete=(key_id, exc.message))
        return _see_other(pages.user_href(info.external_id))

    def _incomplete(self, exc: PlanChangeIncomplete) -> RawResponse:
        """A plan change saved whose users' cached plans the store did not drop: said, 503 (the
        message says how to finish it), as a revocation's is. Its users are named as every page names a
        user id (`shown_id`: isolated, a look-alike spelled out), not as one run of text, in which
        `alice ` read as `alice` and an id holding a bidi override reordered the ids after it."""
        users = ", ".join(shown_id(user) for user in exc.users[:100]) + (" ..." if len(exc.users) > 100 else "")
        return _html(503, message_page(self.css, "Saved, not yet in force everywhere", exc.message, f"Users: {users}"))

    async def _plans_page(self, session: str, status: int = 200, **extra: Any) -> RawResponse:
        body = pages.plans_page(await self.service.plans(), await self.service.tiers(), self.gate.csrf_for(session),
                                editable=self.service.builtin, **extra)
        return self._page("Plans & tiers", body, session, "/admin/plans", status)

    @staticmethod
    def _limits(form: Form) -> list[LimitInput]:
        metrics, limits, windows = form.get("metric", []), form.get("limit", []), form.get("window", [])
        size = max(len(metrics), len(limits), len(windows))

        def pad(values: list[str]) -> list[str]:
            return values + [""] * (size - len(values))

        return [LimitInput(m, n, w) for m, n, w in zip(pad(metrics), pad(limits), pad(windows), strict=True)]

    async def plans(self, request: Request) -> RawResponse:
        if is_read(request):
            return await self._guarded(request, lambda session: self._plans_page(session))
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, form, actor = checked
        name, limits = self._one(form, "name"), self._limits(form)
        try:
            await self.service.save_plan_input(name, limits, actor, create=True)
        except PlanChangeIncomplete as exc:
            return self._incomplete(exc)
        except Conflict:  # GOVERNANCE=zion: the page says so, with no form
            return await self._plans_page(session, 409)
        except InvalidRequest as exc:
            errors = field_errors(exc) or {"name": exc.message}
            return await self._plans_page(session, 400, new_plan=(name, limits, errors))
        return _see_other("/admin/plans")

    def _plan_page(self, name: str, body: str, session: str, status: int = 200) -> RawResponse:
        """A plan's page, its name isolated in the heading (`isolated`: a right-to-left name reorders nothing)."""
        return self._page(f"Plan {name}", body, session, "/admin/plans", status, heading=f"Plan {isolated(name)}")

    async def plan(self, request: Request) -> RawResponse:
        name = request.path_params["name"]
        if is_read(request):
            async def render(session: str) -> RawResponse:
                plan = await self.service.plan(name)
                if not self.service.builtin:
                    return self._plan_page(name, pages.plan_not_in_effect(plan), session)
                rows = [LimitInput(lim.metric, str(lim.limit), format_window(lim.window_seconds)) for lim in plan.limits]
                body = pages.plan_form(name, rows, self.gate.csrf_for(session), create=False)
                return self._plan_page(name, body, session)

            return await self._guarded(request, render)
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, form, actor = checked
        limits = self._limits(form)
        try:
            plan = await self.service.plan(name)
            await self.service.save_plan_input(name, limits, actor)
        except PlanChangeIncomplete as exc:
            return self._incomplete(exc)
        except Conflict:  # GOVERNANCE=zion: the plan shown, not in effect, with no form
            return self._plan_page(name, pages.plan_not_in_effect(plan), session, 409)
        except InvalidRequest as exc:
            body = pages.plan_form(name, limits, self.gate.csrf_for(session), create=False,
                                   errors=field_errors(exc) or {"limits": exc.message})
            return self._plan_page(name, body, session, 400)
        return _see_other("/admin/plans")

    async def delete_plan(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        try:
            await self.service.delete_plan(request.path_params["name"], checked[2])
        except PlanChangeIncomplete as exc:
            return self._incomplete(exc)
        except Conflict:  # GOVERNANCE=zion: the page says so, with no form
            return await self._plans_page(checked[0], 409)
        return _see_other("/admin/plans")

    async def set_tier(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, form, actor = checked
        tier, text = request.path_params["tier"], self._one(form, "entries")
        try:
            await self.service.set_tier(tier, text.splitlines(), actor)
        except InvalidRequest as exc:  # an unknown tier's message (`tier`) is shown above the tiers
            errors = field_errors(exc) or {"tier": exc.message}
            return await self._plans_page(session, 400, tier_errors=(tier, text, errors))
        return _see_other("/admin/plans")

    async def reset_tier(self, request: Request) -> RawResponse:
        checked = await self._post(request)
        if isinstance(checked, RawResponse):
            return checked
        session, _, actor = checked
        tier = request.path_params["tier"]
        try:
            await self.service.reset_tier(tier, actor)
        except InvalidRequest as exc:
            return await self._plans_page(session, 400, tier_errors=(tier, None, field_errors(exc) or {"tier": exc.message}))
        return _see_other("/admin/plans")

    async def audit(self, request: Request) -> RawResponse:
        async def render(session: str) -> RawResponse:
            before = request.query_params.get("before") or None
            before_id = None if before is None else parse_whole(before)
            if before is not None and before_id is None:
                return _html(400, message_page(self.css, "Audit log", "Before: an entry id (a whole number)"))
            entries = await self.service.audit(100, before_id)
            return self._page("Audit log", pages.audit_page(entries), session, "/admin/audit")

        return await self._guarded(request, render)

    async def export(self, request: Request) -> RawResponse:
        async def render(session: str) -> RawResponse:
            now = self.service.clock()  # the admin API's export's clock: one window for one query
            try:
                since = parse_moment(request.query_params.get("since"), now)
                until = parse_moment(request.query_params.get("until"), now)
            except ValueError:
                return _html(400, message_page(self.css, "Export", "From/Until: a window like 7d or a date like "
                                                                   "2026-01-31"))
            if (bound := empty_window(since, until, now)) is not None:
                said = ("Until: after 1970-01-01 (nothing is recorded before)" if bound == "until" else
                        "From: before Until (now when empty) and before now; a window counts back from now "
                        "(from 2h until 1h)")
                return _html(400, message_page(self.css, "Export", said))
            text = await self.service.usage_csv(since, until)
            stamp = now.strftime("%Y%m%d-%H%M")
            headers = [(b"content-type", b"text/csv; charset=utf-8"), (b"cache-control", b"no-store"), NOSNIFF,
                       (b"content-disposition", f'attachment; filename="sentinel-usage-{stamp}.csv"'.encode())]
            return RawResponse(200, text.encode(), headers)

        return await self._guarded(request, render)

    async def asset(self, request: Request) -> RawResponse:
        found = self.assets.response(request.path_params["name"], request.headers.get("if-none-match"))
        if found is None:
            raise NotFound("No such console asset", code="not_found")
        return found

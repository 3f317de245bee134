"""The request wrapper of every page of the web view: who is asking (the session cookie, authenticated as the API
authenticates a bearer token), admission control, the page's query parameters, errors as HTML pages, and the
security headers of every answer.

A page is a function (Central, UiCall) -> Page run in a worker thread, as the API's operations are; it calls the same
operations as the API with the signed-in Principal, so it refuses what the API refuses (ApiError), which this wrapper
answers as an error page with the same status: 400 naming the field, 403, 404, 429/503 with Retry-After. A missing,
expired or revoked token sends a page request to the sign-in form instead (303), the cookie cleared; ui.js's own
requests get 401 (SCRIPT_HEADER). SecurityHeaders, a middleware app.create_app installs, puts the headers on every
answer under /ui, Starlette's own included. docs/ui.md ("Signing in and security") says what a deployer must know.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridpilot.central import admission, auth, bounds
from gridpilot.central.access import note_principal
from gridpilot.central.auth import Principal
from gridpilot.central.db import now
from gridpilot.central.problems import ApiError, forbidden, unauthenticated
from gridpilot.central.ui import PREFIX, templating

if TYPE_CHECKING:
    from gridpilot.central.app import Central

log = logging.getLogger("gridpilot.central.ui")

#: The cookie that holds the signed-in token (HttpOnly, SameSite=Strict, Secure over TLS, Path=/ui).
SESSION_COOKIE = "gridpilot_session"
#: The cookie that holds the CSRF secret the sign-in and sign-out forms repeat (double submit).
CSRF_COOKIE = "gridpilot_csrf"
#: The roles that may sign in: the web view is for people. Other roles' tokens are refused at sign-in, and a page
#: asked with one anyway answers 403.
UI_ROLES = ("user", "admin")
#: The scope a token needs to sign in and to read any page.
UI_SCOPE = "compute.read"
#: The longest query parameter value a page takes (each page bounds its own values further).
MAX_QUERY_VALUE = 1024
#: The most times one query parameter may be given (a group of checkboxes sends its name once per box ticked).
MAX_REPEATS = 32
#: The longest `next` (where the sign-in form goes afterwards): a page's path and query.
MAX_NEXT = 2048
#: The longest token kept in the session cookie: browsers keep a cookie of at most 4096 bytes, name and value
#: together, and drop a longer one without a word (central's tokens are some 500 bytes).
MAX_COOKIE_TOKEN = 4096 - len("gridpilot_session=")
#: What a token of central's is made of (a JWS in compact form: base64url parts joined by dots). Anything else in
#: the cookie is no token, refused before it is decoded; in the form, whitespace is taken out first (a token pasted
#: from a terminal may be wrapped over lines).
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
#: The header ui.js sends with the requests it makes itself (refreshing a page or the trace in place): a signed-out
#: such request is answered 401, not sent to the sign-in form, so the script reloads the page instead of splicing
#: the form into it.
SCRIPT_HEADER = ("x-requested-with", "gridpilot-ui")

#: No inline script or style, no other origin, no frames, no plugins: the pages load only /ui/static/ files, and the
#: charts are inline SVG styled by classes from ui.css.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: Referrer-Policy same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` with the page's own
#: form posts (the Fetch standard), and the sign-in and sign-out checks could not tell them from a sandboxed frame's.
#: Same-origin still gives other sites nothing of the pages' URLs (job ids, filters).
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class UiCall:
    """What a page gets from a request."""

    principal: Principal
    path: Mapping[str, Any]
    #: Read as a mapping, a parameter given twice is a 400 naming it; getlist() for one that takes several.
    query: "UiQuery"
    now: float
    #: The CSRF secret, for the sign-out form every page carries.
    csrf: str = ""
    #: The page's own path and query, for links back to it.
    url: str = ""

    @property
    def job_id(self) -> int:
        return int(self.path["job_id"])


@dataclass
class Page:
    """A page to render: its template, the values it shows, and its status."""

    template: str
    context: Dict[str, Any] = field(default_factory=dict)
    status: int = 200
    #: Seconds after which a browser without JavaScript reloads the page (a <meta http-equiv="refresh">); None: never.
    refresh: Optional[int] = None


PageFunction = Callable[["Central", UiCall], Union[Page, Response]]


def secure_headers(response: Response, *, cache: bool = False) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if not cache:
        # Pages hold one person's jobs: never kept by a browser or a proxy.
        response.headers["Cache-Control"] = "no-store"
    return response


def is_tls(request: Request) -> bool:
    """Whether the browser reached central over https: directly, or through a proxy uvicorn trusts
    (X-Forwarded-Proto from FORWARDED_ALLOW_IPS, 127.0.0.1 unless set)."""
    return request.url.scheme == "https"


def csrf_of(request: Request) -> tuple[str, bool]:
    """The request's CSRF secret and whether it is new (to be set as a cookie with the answer)."""
    have = request.cookies.get(CSRF_COOKIE, "")
    if 32 <= len(have) <= 64 and have.isascii() and have.replace("-", "").replace("_", "").isalnum():
        return have, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(CSRF_COOKIE, value, path=PREFIX, httponly=True, samesite="strict", secure=is_tls(request))


def is_safe_next(value: str) -> bool:
    """Whether `value` is a path of the web view to send a browser to: no scheme, no host (`//host`), no backslash
    (browsers read `/\\host` as `//host`), no control character (browsers drop tabs and newlines from a URL, so
    `/<tab>/host` is `//host`), no `.` or `..` segment (`/ui/../api`), whether written plainly or %-encoded."""
    if not value.startswith(PREFIX + "/") or len(value) > MAX_NEXT:
        return False
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.fragment:
        return False
    path, plain = unquote(parts.path), unquote(value)
    if "//" in path or "\\" in plain or any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in plain):
        return False
    return not any(seg in (".", "..") for seg in path.split("/"))


def safe_next(value: Optional[str]) -> str:
    """Where to go after signing in: `value` when it is a path of the web view (is_safe_next), else the overview:
    never another site."""
    return value if value and is_safe_next(value) else PREFIX + "/"


def signin_redirect(request: Request, why: Optional[str] = None) -> Response:
    """A signed-out page request: to the sign-in form (303), which comes back here afterwards. A request from
    ui.js (SCRIPT_HEADER) gets 401 instead: the script reloads the page, which then goes to the form. Either way a
    cookie the request carried is cleared, and the token, never in a URL, is not in this one either."""
    response: Response
    if request.headers.get(SCRIPT_HEADER[0]) == SCRIPT_HEADER[1]:
        response = error_page(request, ApiError(401, why or "unauthenticated", "not signed in: reload the page to "
                                                                             "sign in"))
    else:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = {"next": safe_next(here)}
        if why:
            query["why"] = why
        response = RedirectResponse(f"{PREFIX}/signin?{urlencode(query, quote_via=quote)}", status_code=303)
    if SESSION_COOKIE in request.cookies:
        # Only a cookie the browser sent: a request without one may come from a browser that holds one but kept it
        # back (SameSite=Strict, a navigation from another site), and deleting it would sign that person out.
        response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict",
                               secure=is_tls(request))
    return secure_headers(response)


def reload_page(request: Request) -> Response:
    """A link from another site (a mail, a chat, a ticket) to a page: the browser holds back a SameSite=Strict
    cookie on such a navigation, so the request comes without it even from a signed-in browser. This page reloads
    itself at once (<meta http-equiv="refresh">, no script); that navigation is this site's own, so the browser sends
    the cookie, and a browser that has none then goes on to the sign-in form. The reload says same-origin, so it
    never comes here again."""
    html = templating.render("reload.html", {"now": now()})
    return secure_headers(HTMLResponse(html, status_code=200))


def error_page(request: Request, e: ApiError, *, principal: Optional[Principal] = None, csrf: str = "") -> Response:
    html = templating.render("error.html", {"status": e.status, "code": e.code, "message": e.message,
                                            "principal": principal, "csrf": csrf, "now": now()})
    response = HTMLResponse(html, status_code=e.status)
    retry = e.extra.get("retry_after")
    if retry is not None:
        response.headers["Retry-After"] = str(retry)
    return secure_headers(response)


def unexpected(request: Request, e: Exception) -> ApiError:
    """What to answer for an exception that is no ApiError: 503 when the database failed under the request (logged
    as a warning), else 500, a bug (logged with its traceback, which is not shown)."""
    if admission.is_database_unavailable(e):
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, str(e).splitlines()[0])
        return admission.database_unavailable(e)
    log.exception("%s %s failed", request.method, request.url.path)
    return ApiError(500, "internal", "internal error; the server log has the details")


def check_parameters(query: Mapping[str, str], allowed: Sequence[str]) -> None:
    """A page's query parameters: a name it does not take is refused naming it (a misspelt filter would otherwise
    show more than asked), and every value is bounded, as is how often one name is given (UiQuery refuses a second
    value to a page that reads one)."""
    counts: Dict[str, int] = {}
    for name, value in (query.multi_items() if isinstance(query, QueryParams) else query.items()):
        if name not in allowed:
            shown = str(name)[:64]
            raise bounds.bad_field(shown, f"unknown query parameter {shown!r}; this page takes "
                                          f"{', '.join(allowed) or 'none'}")
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > MAX_REPEATS:
            raise bounds.bad_field(name, f"query parameter {name!r} is given more than {MAX_REPEATS} times")
        bounds.text(value, name, MAX_QUERY_VALUE, empty=True, what=f"query parameter {name!r}")


class UiQuery(Mapping[str, str]):
    """A page's query parameters (UiCall.query): read as a mapping, a name given more than once is refused with 400
    naming it, since a page that reads one value would drop the others without a word; `getlist` gives them all,
    for a page that takes several (checkboxes)."""

    def __init__(self, params: QueryParams) -> None:
        self._params = params

    def __getitem__(self, name: str) -> str:
        values = self._params.getlist(name)
        if not values:
            raise KeyError(name)
        if len(values) > 1:
            raise bounds.bad_field(name, f"query parameter {name!r} is given {len(values)} times; this page takes "
                                         f"one")
        return values[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params.keys())

    def __len__(self) -> int:
        return len(self._params.keys())

    def getlist(self, name: str) -> List[str]:
        return list(self._params.getlist(name))

    def multi_items(self) -> List[Tuple[str, str]]:
        return list(self._params.multi_items())


def principal_of(central: "Central", token: str) -> Principal:
    """The signed-in person: 401 when the token is not central's, expired or revoked; 403 when it may not read
    (scope) or is not a person's (role)."""
    if len(token) > MAX_COOKIE_TOKEN or not TOKEN_CHARS.fullmatch(token):
        # Not one of central's tokens whatever it is: refused before it costs a database connection.
        raise unauthenticated("invalid token: not a token central issues", "invalid_token")
    with central.db.lookup() as conn:
        p = auth.authenticate(conn, central.verifier, f"Bearer {token}", UI_SCOPE)
    if p.role not in UI_ROLES:
        raise forbidden(f"the web view is for user and admin tokens; this is a {p.role} token")
    return p


def page_route(central: "Central", path: str, fn: PageFunction, *, params: Sequence[str]) -> Route:
    name = "GET " + path.replace(":digits}", "}")  # the metrics label: one series per page

    async def endpoint(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            if request.headers.get("sec-fetch-site") in ("cross-site", "same-site") \
                    and request.headers.get("sec-fetch-mode") == "navigate":
                return reload_page(request)
            return signin_redirect(request)
        client = request.client.host if request.client is not None else None
        ticket, refusal = central.admission.enter(name, f"Bearer {token}", client)
        if refusal is not None:
            central.metrics.requests.labels(method="GET", route=name, status=str(refusal.status)).inc()
            return error_page(request, refusal)
        try:
            return await handle(request, token)
        finally:
            central.admission.leave(ticket)  # type: ignore[arg-type]

    async def handle(request: Request, token: str) -> Response:
        t0 = time.perf_counter()
        csrf, new_csrf = csrf_of(request)
        principal: Optional[Principal] = None
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")

        def run() -> Union[Page, Response]:
            nonlocal principal
            principal = principal_of(central, token)
            check_parameters(request.query_params, params)
            call = UiCall(principal=principal, now=now(), csrf=csrf, url=url, query=UiQuery(request.query_params),
                          path={k: bounds.path_id(v, k) for k, v in request.path_params.items()})
            return fn(central, call)

        try:
            result = await run_in_threadpool(run)
            if isinstance(result, Response):
                response = secure_headers(result)
            else:
                html = await run_in_threadpool(templating.render, result.template, {
                    **result.context, "principal": principal, "csrf": csrf, "refresh": result.refresh,
                    "here": url, "now": now()})
                response = secure_headers(HTMLResponse(html, status_code=result.status))
        except ApiError as e:
            if e.status == 401:
                response = signin_redirect(request, e.code)
            else:
                response = error_page(request, e, principal=principal, csrf=csrf)
        except Exception as e:
            response = error_page(request, unexpected(request, e), principal=principal, csrf=csrf)
        if new_csrf:
            set_csrf_cookie(response, request, csrf)
        note_principal(request.scope, principal)
        spent = time.perf_counter() - t0
        # The page's server time (authentication, queries, plots, template), shown by a browser's developer tools and
        # read by benches/bench_ui.py: what the client sees adds the transfer of the page.
        response.headers["Server-Timing"] = f"app;dur={spent * 1000:.1f}"
        central.metrics.requests.labels(method="GET", route=name, status=str(response.status_code)).inc()
        central.metrics.latency.labels(method="GET", route=name).observe(spent)
        return response

    # The query parameters the page takes, for tests that walk every page (tests/integration/test_ui_security.py).
    endpoint.parameters = tuple(params)  # type: ignore[attr-defined]
    return Route(path, endpoint, methods=["GET"], name=name)


class SecurityHeaders:
    """ASGI middleware (app.create_app): the security headers on every answer under /ui, whoever made it: the pages
    and the sign-in (which set them too), the static files, and what Starlette answers itself (a 307 to add or take
    off a trailing slash, a 405). An answer that says nothing of caching is not cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers[k] = v
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _StaticCaching:
    """The static files are the same for everyone; `no-cache` has the browser ask again each time (a 304 when
    unchanged, from their ETag), so an upgraded central's ui.js and ui.css are used at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Control"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_route() -> Mount:
    return Mount(f"{PREFIX}/static", app=_StaticCaching(StaticFiles(directory=STATIC_DIR)), name="ui-static")


def http_error_page(request: Request, status: int, headers: Optional[Mapping[str, str]] = None) -> Response:
    """What Starlette finds wrong under /ui/ before any page runs (app._http_error): no such page (404), a method
    a page does not take (405, e.g. a POST to a page): an HTML page, not the API's JSON."""
    if status == 405:
        e = ApiError(405, "method_not_allowed", f"{request.method[:16]} is not taken here: the pages are read with "
                                                f"GET; only the sign-in and sign-out forms are sent with POST")
    elif status == 404:
        e = ApiError(404, "not_found", f"no page {request.url.path[:200]}")
    else:
        e = ApiError(status, "http_error", f"the request was refused ({status})")
    response = error_page(request, e)
    if headers and "Allow" in headers:
        response.headers["Allow"] = headers["Allow"]
    return response


def not_found_page(request: Request) -> Response:
    """A path under /ui/ that is no page: an HTML 404 (the API's are JSON)."""
    return http_error_page(request, 404)


__all__ = ["CSP", "CSRF_COOKIE", "MAX_COOKIE_TOKEN", "MAX_NEXT", "MAX_QUERY_VALUE", "MAX_REPEATS", "Page",
           "PageFunction", "SCRIPT_HEADER", "SECURITY_HEADERS", "SESSION_COOKIE", "SecurityHeaders", "TOKEN_CHARS",
           "UI_ROLES", "UI_SCOPE", "UiCall", "UiQuery", "check_parameters", "csrf_of", "error_page",
           "http_error_page", "is_safe_next", "is_tls", "not_found_page", "page_route", "principal_of", "reload_page",
           "safe_next", "secure_headers", "set_csrf_cookie", "signin_redirect", "static_route", "unexpected"]

"""Signing in and out of the web view: the one form of the UI.

GET /ui/signin shows the form; POST /ui/signin takes a pasted token, authenticates it as the API would (central's
signature, not expired, not revoked, scope compute.read, a user or admin token) and keeps it in the session cookie
(HttpOnly so no script reads it, SameSite=Strict so no other site's page sends it, Secure over TLS, Path=/ui, for
as long as the token is valid). POST /ui/signout forgets it. The token never appears in a URL.

CSRF: both forms carry the secret of the CSRF cookie (set with the form; HttpOnly, SameSite=Strict) in a hidden
field, and a POST whose field does not match its cookie is refused (403). So is a POST a browser says came from
elsewhere: an Origin header that is not this service's (`null` included: a sandboxed frame's), or Sec-Fetch-Site
other than same-origin. The origin check is what stops a cookie planted by a sibling host (cookie tossing), which
the double submit alone would not. The secret is replaced at each sign-in and sign-out, so one planted before is
worth nothing after. Login CSRF (another site signing the browser into its own account) needs a form post that
carries our CSRF cookie: SameSite=Strict keeps it from any other site's post.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import TYPE_CHECKING, Dict, List, Optional
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gridpilot.central import bounds
from gridpilot.central.access import note_principal
from gridpilot.central.auth import Principal
from gridpilot.central.db import now
from gridpilot.central.problems import ApiError, bad_request, forbidden
from gridpilot.central.requestbody import read_capped
from gridpilot.central.ui import PREFIX, templating, web

if TYPE_CHECKING:
    from gridpilot.central.app import Central

#: The largest sign-in or sign-out form body: a token (bounds.MAX_TOKEN) and two short fields, url-encoded.
MAX_FORM = 3 * bounds.MAX_TOKEN + 4096
#: The form's fields; any other is refused naming it.
SIGNIN_FIELDS = ("token", "csrf", "next")
SIGNOUT_FIELDS = ("csrf",)
#: The sign-in form page's query parameters (GET /ui/signin): where to go afterwards, and why the person was sent.
SIGNIN_PARAMETERS = ("next", "why")
MAX_WHY = 64
#: The CSRF field's longest value (web.csrf_of makes 43 characters).
MAX_CSRF = 64
_WHITESPACE = re.compile(r"\s+")
#: What the sign-in page says when a page sent the person back to it (the `why` parameter: an ApiError code).
WHY = {
    "unauthenticated": "Please sign in.",
    "token_expired": "Your token has expired: sign in with a new one.",
    "token_revoked": "Your token was revoked: sign in with a new one.",
    "signed_out": "Signed out.",
    "invalid_token": "That token is not one this service accepts: sign in with another.",
}


def _signin_page(request: Request, csrf: str, *, status: int = 200, message: Optional[str] = None,
                 next_url: str = PREFIX + "/") -> Response:
    why = request.query_params.get("why")
    html = templating.render("signin.html", {
        "csrf": csrf, "next": next_url, "message": message, "notice": WHY.get(why or "", None),
        "principal": None, "now": now(), "refresh": None, "here": PREFIX + "/signin"})
    return web.secure_headers(HTMLResponse(html, status_code=status))


async def _form(request: Request, allowed: tuple[str, ...]) -> Dict[str, str]:
    """The url-encoded form, each field once, bounded: 400 or 413 naming what is wrong."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported_media_type", "the form must be sent as application/x-www-form-urlencoded")
    body = await read_capped(request, MAX_FORM, "the form")
    try:
        raw = body.decode("ascii")
        fields = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=len(allowed) + 1)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the form is not valid application/x-www-form-urlencoded data", "bad_form") from None
    out: Dict[str, str] = {}
    for name, values in fields.items():
        if name not in allowed:
            raise bounds.bad_field(name[:64], f"unknown form field {name[:64]!r}; the form has {', '.join(allowed)}")
        if len(values) != 1:
            raise bounds.bad_field(name, f"form field {name!r} is given {len(values)} times")
        out[name] = values[0]
    return out


def _check_csrf(request: Request, form: Dict[str, str]) -> None:
    # Browsers send Origin with every POST (pages here say Referrer-Policy same-origin, so their own posts carry
    # the real one, not "null"); a client without one (curl, a script) still needs the cookie and the field.
    origin = request.headers.get("origin")
    if origin is not None:
        expected = f"{request.url.scheme}://{request.url.netloc}"
        if origin != expected:
            raise forbidden(f"this form may be sent only from {expected}, not from {origin[:200]}")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise forbidden(f"this form may be sent only from this service's own pages (the browser says "
                        f"{site[:40]})")
    cookie = request.cookies.get(web.CSRF_COOKIE, "")
    sent = bounds.text(form.get("csrf", ""), "csrf", MAX_CSRF, empty=True, what="the form's csrf field")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise forbidden("the form's CSRF check failed (an old or foreign form): reload the page and send it again")


def _next(value: Optional[str]) -> str:
    """The `next` field or parameter: 400 beyond its bound; anything but a path of the web view goes to the
    overview (web.safe_next), never to another site."""
    if value is not None and len(value) > web.MAX_NEXT:
        raise bounds.bad_field("next", f"next must be at most {web.MAX_NEXT} characters, got {len(value)}")
    return web.safe_next(value)


def _token(pasted: str) -> str:
    """The pasted token, whitespace taken out (a terminal wraps a long token over lines; a JWS has none)."""
    token = _WHITESPACE.sub("", pasted)
    if not token:
        raise bounds.bad_field("token", "paste a token into the form (`gridpilot central token` makes one)")
    if len(token) > web.MAX_COOKIE_TOKEN:
        raise bounds.bad_field("token", f"the token must be at most {web.MAX_COOKIE_TOKEN} characters (what a "
                                        f"browser keeps in a cookie), got {len(token)}")
    return token


def routes(central: "Central") -> List[Route]:
    async def signin_form(request: Request) -> Response:
        csrf, new = web.csrf_of(request)
        try:
            web.check_parameters(request.query_params, SIGNIN_PARAMETERS)
            query = web.UiQuery(request.query_params)
            next_url = _next(query.get("next"))
            bounds.text(query.get("why", ""), "why", MAX_WHY, empty=True, what="query parameter 'why'")
            response = _signin_page(request, csrf, next_url=next_url)
        except ApiError as e:
            response = web.error_page(request, e)
        except Exception as e:
            response = web.error_page(request, web.unexpected(request, e))
        if new:
            web.set_csrf_cookie(response, request, csrf)
        return response

    async def signin(request: Request) -> Response:
        client = request.client.host if request.client is not None else None
        # Keyed by the client's address (no token yet): guessing tokens is held to the per-token rate.
        ticket, refusal = central.admission.enter("POST /ui/signin", None, client)
        if refusal is not None:
            return web.error_page(request, refusal)
        next_url = PREFIX + "/"
        try:
            form = await _form(request, SIGNIN_FIELDS)
            next_url = _next(form.get("next"))
            _check_csrf(request, form)
            token = _token(form.get("token", ""))
            principal: Principal = await run_in_threadpool(web.principal_of, central, token)
        except ApiError as e:
            if e.status not in (400, 401, 403):
                return web.error_page(request, e)
            # The person's mistake (a bad or foreign token, a stale form): the form again, saying what was wrong,
            # never echoing the token.
            csrf, new = web.csrf_of(request)
            response = _signin_page(request, csrf, status=e.status, message=e.message, next_url=next_url)
            if new:
                web.set_csrf_cookie(response, request, csrf)
            return response
        except ClientDisconnect:
            return web.error_page(request, ApiError(400, "incomplete_body", "the form did not arrive whole"))
        except Exception as e:
            return web.error_page(request, web.unexpected(request, e))
        finally:
            central.admission.leave(ticket)  # type: ignore[arg-type]
        note_principal(request.scope, principal)
        response = RedirectResponse(next_url, status_code=303)
        max_age = max(1, int(principal.claims.expires - now()))
        response.set_cookie(web.SESSION_COOKIE, token, max_age=max_age, path=PREFIX, httponly=True,
                            samesite="strict", secure=web.is_tls(request))
        web.set_csrf_cookie(response, request, secrets.token_urlsafe(32))
        return web.secure_headers(response)

    async def signout(request: Request) -> Response:
        try:
            form = await _form(request, SIGNOUT_FIELDS)
            _check_csrf(request, form)
        except ApiError as e:
            return web.error_page(request, e)
        except ClientDisconnect:
            return web.error_page(request, ApiError(400, "incomplete_body", "the form did not arrive whole"))
        except Exception as e:
            return web.error_page(request, web.unexpected(request, e))
        # Only this browser forgets the token: it stays valid until it expires or an admin revokes it.
        response = RedirectResponse(f"{PREFIX}/signin?why=signed_out", status_code=303)
        response.delete_cookie(web.SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict",
                               secure=web.is_tls(request))
        web.set_csrf_cookie(response, request, secrets.token_urlsafe(32))
        return web.secure_headers(response)

    return [
        Route(f"{PREFIX}/signin", signin_form, methods=["GET"], name="GET /ui/signin"),
        Route(f"{PREFIX}/signin", signin, methods=["POST"], name="POST /ui/signin"),
        Route(f"{PREFIX}/signout", signout, methods=["POST"], name="POST /ui/signout"),
    ]


__all__ = ["MAX_CSRF", "MAX_FORM", "MAX_WHY", "SIGNIN_FIELDS", "SIGNIN_PARAMETERS", "SIGNOUT_FIELDS", "WHY", "routes"]

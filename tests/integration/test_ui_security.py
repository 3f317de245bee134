"""The web view's security (docs/ui.md, "Signing in and security"), against a real central over HTTP, on SQLite and
on a real PostgreSQL (the same tables of cases): every GET page under /ui/, found from the app's routes (so a page
added later is walked too), as each kind of caller; the security headers on every answer; escaping of hostile
values in every page; the bounds of every query parameter and form field; the sign-in's rate limit; and that no log
line holds a token. The session cookie and CSRF are in test_ui_session.py."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jwt
import pytest
import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.routing import Route
from support.central import CE, SITE, World, jdl, module_world, site_map, start_world
from support.ui_http import CSRF, SESSION, Answer, UiHttp, parse

from gridpilot.central import bounds, tokens
from gridpilot.central.app import create_app
from gridpilot.central.ui import session, web
from gridpilot.errors import CentralError

#: Markup in every value a person can put into central: it must come back as text, never as markup.
HOSTILE = "<script>alert(1)</script>\"onmouseover=\"alert(2)</textarea><img src=x onerror=alert(3)>"
HOSTILE_SITE = "EVIL::<script>alert(4)</script>\"onmouseover=\"x"
HOSTILE_CE = HOSTILE_SITE + "::CE<img src=x onerror=alert(5)>"
#: A user's name is one path component of its catalogue area: no slash.
HOSTILE_USER = "<img src=x onerror=alert(6)>\"onmouseover=\"alert(7)<script>alert(8)"
#: The pages this file knows the answers of. A page added later is walked with the rules every page keeps.
KNOWN_PAGES = {"/ui/", "/ui/jobs", "/ui/jobs/{job_id:digits}", "/ui/jobs/{job_id:digits}/trace", "/ui/sites"}
#: Callers whose cookie central cannot believe: sent to the sign-in form.
SIGNED_OUT = ("none", "garbage", "expired", "revoked", "forged-signature", "unknown-key", "not-a-token", "huge")
#: Callers central believes but the web view refuses: a token that is not a person's, or that may not read.
REFUSED = ("agent", "ce", "job", "tower", "no-read")
PEOPLE = ("owner", "other", "admin")
CALLERS = SIGNED_OUT + REFUSED + PEOPLE


@dataclass
class Grid:
    world: World
    ui: UiHttp
    cookies: Dict[str, Optional[str]]
    mine: int  # alice's job, run at the hostile site, with a hostile name, JDL and trace
    bobs: int
    missing: int
    pages: List[Route]


def _foreign_token(kid: str, issuer: str) -> str:
    """A user token with every claim right, signed by a key that is not central's."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": issuer, "sub": "alice", "iat": now, "nbf": now, "exp": now + 3600,
              "jti": "f" * 32, "scope": "compute.read", "wlcg.ver": "1.0", "role": "user"}
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})


def _ui_pages(world: World) -> List[Route]:
    """Every page of the app: GET routes made by web.page_route (they carry the parameters they take)."""
    app = create_app(world.embedded.central, run_sweeper=False, close_on_shutdown=False)
    return [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/ui/")
            and hasattr(r.endpoint, "parameters") and "GET" in (r.methods or ())]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def grid(request: Any, tmp_path_factory: Any) -> Iterator[Grid]:
    for world in module_world(request, tmp_path_factory, "ui-security"):
        admin = world.admin
        alice, bob = admin.mint_token("user", "alice"), admin.mint_token("user", "bob")
        mine = world.client(alice).submit(jdl(JobTag=HOSTILE.replace('"', '\\"')), name=HOSTILE)
        bobs = world.client(bob).submit(jdl(), name="bob's")
        world.client(admin.mint_token("user", HOSTILE_USER)).submit(jdl(), name="from a hostile user name")
        agent = world.client(admin.mint_token("agent", "agent1", site=HOSTILE_SITE, ce=HOSTILE_CE))
        job = agent.match(site_map(site=HOSTILE_SITE, ce=HOSTILE_CE))
        assert job is not None and job["id"] == mine
        agent.append_trace(mine, [{"category": "trace", "text": HOSTILE}])
        # Pilots of the hostile CE, for the pages that show a CE's pilots.
        ce = world.client(admin.mint_token("ce", "ce-evil", site=HOSTILE_SITE, ce=HOSTILE_CE))
        ce.report_pilots({"queued": 1, "running": 2}, backend="<script>x</script>")
        revoked = admin.mint_token("user", "alice")
        admin.revoke_token(revoked)
        keys = world.embedded.central.keys
        expired, _ = tokens.mint(keys, "user", "alice", ttl_s=60, now=time.time() - 3600)
        kid = jwt.get_unverified_header(alice)["kid"]
        issuer = jwt.decode(alice, options={"verify_signature": False})["iss"]
        cookies: Dict[str, Optional[str]] = {
            "none": None, "garbage": "garbage", "expired": expired, "revoked": revoked,
            "forged-signature": _foreign_token(kid, issuer), "unknown-key": _foreign_token("not-ours", issuer),
            "not-a-token": "<script>alert(1)</script>", "huge": "x" * 20_000,
            "agent": admin.mint_token("agent", "agent2", site=SITE, ce=CE),
            "ce": admin.mint_token("ce", "ce1", site=SITE, ce=CE), "job": job["token"],
            "tower": admin.mint_token("tower", "tower1", site=SITE, ce=CE),
            "no-read": admin.mint_token("user", "alice", scope="compute.create"),
            "owner": alice, "other": bob, "admin": world.embedded.admin_token,
        }
        yield Grid(world, UiHttp(world.url), cookies, mine, bobs, mine + 1000, _ui_pages(world))


def assert_secure(a: Answer, what: str, *, page: bool = True) -> None:
    """The security headers every answer under /ui carries; a page is never stored."""
    for k, v in web.SECURITY_HEADERS.items():
        assert a.headers.get(k) == v, f"{what}: {k} is {a.headers.get(k)!r}"
    csp = [d.strip() for d in a.headers["content-security-policy"].split(";")]
    for d in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
              "form-action 'self'", "base-uri 'none'"):
        assert d in csp, f"{what}: no {d!r} in the CSP"
    assert "unsafe" not in a.headers["content-security-policy"], what
    assert a.headers["x-content-type-options"] == "nosniff" and a.headers["x-frame-options"] == "DENY", what
    if page:
        assert a.headers.get("cache-control") == "no-store", f"{what}: Cache-Control {a.headers.get('cache-control')}"


def _fill(route: Route, job: int) -> str:
    """The route's path with its parameters: a job id for job_id, a name nothing has for any other."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: str(job) if m.group(1) == "job_id" else "no-such-thing", route.path)


def _variants(g: Grid, route: Route) -> List[Tuple[str, str]]:
    if "{job_id" in route.path:
        return [(v, _fill(route, job)) for v, job in (("mine", g.mine), ("bobs", g.bobs), ("missing", g.missing))]
    return [("-", _fill(route, 0))]


def expected(route: Route, caller: str, variant: str) -> Tuple[int, ...]:
    """The statuses a page may answer this caller with (one, for the pages this file knows)."""
    if caller in SIGNED_OUT:
        return (303,)
    if caller in REFUSED:
        return (403,)
    if variant != "-":
        sees = {"owner": ("mine",), "other": ("bobs",), "admin": ("mine", "bobs")}[caller]
        ok = (200,) if route.path in KNOWN_PAGES else (200, 403)
        return ok if variant in sees else (404,)
    return (200,) if route.path in KNOWN_PAGES else (200, 403, 404)


def test_the_walk_finds_the_pages(grid):
    assert KNOWN_PAGES <= {r.path for r in grid.pages}, "the walk must find at least the skeleton's pages"


@pytest.mark.parametrize("caller", CALLERS)
def test_every_page_as_every_caller(grid, caller):
    """Expected status per (page, caller); never a 500; the headers on every answer; a signed-out caller goes to
    the sign-in form with `next` (its cookie cleared), never a token in a URL; another user's job is the API's 404,
    to the byte of its message; ui.js's own requests (SCRIPT_HEADER) get 401 rather than the form."""
    cookie = grid.cookies[caller]
    jar = {SESSION: cookie} if cookie is not None else None
    wrong: List[str] = []
    for route in grid.pages:
        for variant, path in _variants(grid, route):
            a = grid.ui.get(path, cookies=jar)
            what = f"{caller} GET {path} ({variant})"
            assert_secure(a, what)
            if a.status not in expected(route, caller, variant):
                wrong.append(f"{what}: {a.status}, expected {expected(route, caller, variant)}: {a.text[:300]}")
                continue
            if a.status == 303:
                assert a.location is not None and a.location.startswith("/ui/signin?next="), what
                assert web.safe_next(path) == path and f"next={_quoted(path)}" in a.location, (what, a.location)
                if cookie is not None:
                    assert cookie not in a.location and a.cookies[SESSION].deleted, what
                    if caller in ("expired", "revoked"):
                        assert f"why=token_{caller}" in a.location, (what, a.location)
                    scripted = grid.ui.get(path, cookies=jar, headers={"X-Requested-With": "gridpilot-ui"})
                    assert scripted.status == 401 and scripted.location is None, (what, scripted.status)
                    assert scripted.cookies[SESSION].deleted and cookie not in scripted.text, what
                    assert_secure(scripted, what + " from ui.js")
                else:
                    assert SESSION not in a.cookies, f"{what}: no cookie came, none is deleted"
            if a.status == 404 and variant != "-":
                job = {"mine": grid.mine, "bobs": grid.bobs, "missing": grid.missing}[variant]
                with pytest.raises(CentralError) as api:
                    grid.world.client(cookie).get_job(job)  # type: ignore[arg-type]
                assert api.value.status == 404
                shown = parse(a.text)
                assert api.value.message in shown.text, f"{what}: not the API's message {api.value.message!r}"
            if cookie is not None:
                assert cookie not in a.text, f"{what}: the token is in the page"
    assert not wrong, "\n".join(wrong)


def test_a_link_from_another_site_reloads_to_send_the_strict_cookie(grid):
    """A browser holds back a SameSite=Strict cookie on a navigation from another site: the page reloads itself
    (a same-origin navigation, which carries it) instead of sending a signed-in person to the form, and deletes no
    cookie. The same page for every path and id: it says nothing of what exists."""
    from_elsewhere = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    bodies = set()
    for route in grid.pages:
        for _variant, path in _variants(grid, route):
            for site in ("cross-site", "same-site"):
                a = grid.ui.get(path, headers={**from_elsewhere, "Sec-Fetch-Site": site})
                assert a.status == 200 and SESSION not in a.cookies, (path, site, a.status)
                assert_secure(a, path)
                metas = [m for m in parse(a.text).find("meta") if (m.get("http-equiv") or "").lower() == "refresh"]
                assert [m.get("content") for m in metas] == ["0"], (path, metas)
                bodies.add(re.sub(r"Shown at [^<]*", "", a.text))
            again = grid.ui.get(path, headers={**from_elsewhere, "Sec-Fetch-Site": "same-origin"})
            assert again.status == 303, "the reload, still without a cookie, goes on to the form"
            signed = grid.ui.get(path, cookies={SESSION: str(grid.cookies["admin"])}, headers=from_elsewhere)
            assert signed.status in (200, 404), "a cookie that came is used, wherever the link was"
    assert len(bodies) == 1, "one page for every path"


def _quoted(path: str) -> str:
    from urllib.parse import quote
    return quote(path, safe="")


def test_every_answer_under_ui_carries_the_headers(grid):
    """Not only pages: the sign-in, the static files, Starlette's own answers (a 307 to the slash, a 404, a 405)."""
    ui, admin = grid.ui, {SESSION: grid.cookies["admin"]}
    for path in ("/ui/signin", "/ui/nope", "/ui/jobs/abc", "/ui/static/nope.css", "/ui/static/..%2fweb.py"):
        a = ui.get(path)
        assert_secure(a, path)
        assert a.status in (200, 404), (path, a.status)
        assert "text/html" in a.headers["content-type"], path
    for path in ("/ui", "/ui/jobs/"):
        a = ui.get(path, cookies=admin)
        assert a.status in (307, 308) and a.location is not None, (path, a.status)
        assert_secure(a, path)
    for path in ("/ui/static/ui.css", "/ui/static/ui.js"):
        a = ui.get(path)
        assert a.status == 200
        assert_secure(a, path, page=False)
        assert a.headers["cache-control"] == "no-cache", "asked again each time: an upgrade's files are used at once"
    a = ui.request("POST", "/ui/jobs", cookies=admin)
    assert a.status == 405 and "GET" in a.headers.get("allow", ""), a.status
    assert_secure(a, "POST /ui/jobs")
    assert parse(a.text).by_id("error-message") is not None, "an HTML page, not the API's JSON"
    for a in (ui.post_form("/ui/signin", {"token": "x"}), ui.post_form("/ui/signout", {"csrf": "x"})):
        assert a.status == 403
        assert_secure(a, "a refused form")


# -- escaping ------------------------------------------------------------------------------------------------------

def assert_inert(html: str, what: str) -> None:
    """No markup from data: the only script is ui.js, no element has an event handler, no element came from a
    value (img), and a textarea appears only in the sign-in form."""
    m = parse(html)
    scripts = m.find("script")
    assert all(s.get("src") == "/ui/static/ui.js" for s in scripts), f"{what}: scripts {scripts}"
    assert len(scripts) <= 1, f"{what}: {len(scripts)} scripts"
    for tag, attrs in m.tags:
        names = [k for k, _ in attrs]
        assert not [k for k in names if k.startswith("on")], f"{what}: <{tag}> has {names}"
        assert tag not in ("img", "iframe", "object", "embed", "base"), f"{what}: a <{tag}> element"
    assert len(m.find("textarea")) == 0 or "/ui/signin" in what, f"{what}: a textarea"
    assert "alert(" not in "".join(v or "" for _, attrs in m.tags for _, v in attrs if _ != "value"), \
        f"{what}: a value reached an attribute"


def test_hostile_values_show_as_text_on_every_page(grid):
    shown = {}
    for caller in ("admin", "owner"):
        jar = {SESSION: grid.cookies[caller]}
        for route in grid.pages:
            for _variant, path in _variants(grid, route):
                a = grid.ui.get(path, cookies=jar)
                assert a.status != 500, path
                assert_inert(a.text, f"{caller} GET {path}")
                shown[(caller, path)] = parse(a.text).text
    page = shown[("owner", f"/ui/jobs/{grid.mine}")]
    assert page.count(HOSTILE) >= 2, "the JDL value and the trace line are on the job's page, as text"
    everything = {caller: "".join(t for (c, _), t in shown.items() if c == caller) for caller in ("admin", "owner")}
    assert HOSTILE_SITE in everything["owner"], "the site's name, somewhere"
    assert HOSTILE_USER in everything["admin"], "the user's name, as an admin sees it"


@pytest.mark.parametrize("path", [
    "/ui/jobs?<script>alert(1)</script>=1",
    "/ui/jobs?state=%3Cscript%3Ealert(1)%3C/script%3E%22onmouseover=%22x",
    "/ui/%3Cscript%3Ealert(1)%3C/script%3E%22onmouseover=%22x",
    "/ui/jobs/1?%3C/textarea%3E%3Cimg%20src=x%20onerror=alert(1)%3E=1",
    "/ui/signin?next=%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
    "/ui/signin?why=%3Cscript%3Ealert(1)%3C/script%3E",
])
def test_error_messages_echo_values_as_text(grid, path):
    a = grid.ui.get(path, cookies={SESSION: grid.cookies["owner"]})
    assert a.status in (200, 400, 404), (path, a.status)
    assert_secure(a, path)
    assert_inert(a.text, path)


# -- bounds --------------------------------------------------------------------------------------------------------

def _field_named(a: Answer, name: str) -> bool:
    return name in parse(a.text).text


def test_every_query_parameter_is_bounded_and_unknown_ones_named(grid):
    jar = {SESSION: grid.cookies["admin"]}
    for route in grid.pages:
        path = _fill(route, grid.mine)
        a = grid.ui.get(path + "?no_such_parameter=1", cookies=jar)
        assert a.status == 400 and _field_named(a, "no_such_parameter"), (path, a.status)
        for name in route.endpoint.parameters:  # type: ignore[attr-defined]
            for value, why in (("x" * (web.MAX_QUERY_VALUE + 1), "too long"), ("a%00b", "a NUL")):
                a = grid.ui.get(f"{path}?{name}={value}", cookies=jar)
                assert a.status == 400 and _field_named(a, name), (path, name, why, a.status)
            a = grid.ui.get(f"{path}?" + "&".join([f"{name}=1"] * (web.MAX_REPEATS + 1)), cookies=jar)
            assert a.status == 400 and _field_named(a, name) and "more than" in a.text, (path, name)
        assert_secure(a, path)


def test_path_ids_beyond_their_bound_are_400_naming_them(grid):
    jar = {SESSION: grid.cookies["owner"]}
    for route in grid.pages:
        if "{job_id" not in route.path:
            continue
        for job in (bounds.MAX_ID + 1, 10 ** 30):
            a = grid.ui.get(_fill(route, job), cookies=jar)
            assert a.status == 400 and _field_named(a, "job_id"), (route.path, job, a.status)
        a = grid.ui.get(_fill(route, 0), cookies=jar)
        assert a.status in (400, 404), a.status


def _signin_fields(g: Grid, **over: Any) -> Tuple[Dict[str, str], Dict[str, str]]:
    csrf = g.ui.csrf()
    fields = {"token": str(g.cookies["owner"]), "csrf": csrf, "next": "/ui/jobs", **over}
    return {k: v for k, v in fields.items() if v is not None}, {CSRF: csrf}


@pytest.mark.parametrize("over,status,named", [
    ({"token": "x" * (web.MAX_COOKIE_TOKEN + 1)}, 400, "token"),
    ({"token": " \n "}, 400, "token"),
    ({"next": "/ui/" + "x" * web.MAX_NEXT}, 400, "next"),
    ({"csrf": "c" * (session.MAX_CSRF + 1)}, 400, "csrf"),
    ({"remember_me": "1"}, 400, "remember_me"),
])
def test_every_form_field_is_bounded(grid, over, status, named):
    fields, jar = _signin_fields(grid, **over)
    a = grid.ui.post_form("/ui/signin", fields, cookies=jar, headers={"Origin": grid.ui.url})
    assert a.status == status and _field_named(a, named), (over, a.status, a.text[:400])
    assert SESSION not in a.cookies, "nothing signed in"
    assert_secure(a, str(over))


def test_malformed_forms_are_refused(grid):
    fields, jar = _signin_fields(grid)
    ui, origin = grid.ui, {"Origin": grid.ui.url}
    twice = ui.post_form("/ui/signin", [*fields.items(), ("token", "again")], cookies=jar, headers=origin)
    assert twice.status == 400 and "given 2 times" in twice.text
    for kind in ("text/plain", "application/json", "multipart/form-data; boundary=x", ""):
        a = ui.request("POST", "/ui/signin", body=b"token=x", cookies=jar,
                       headers={"Content-Type": kind, **origin} if kind else origin)
        assert a.status == 415, (kind, a.status)
        assert_secure(a, kind)
    big = ui.request("POST", "/ui/signin", body=b"token=" + b"x" * (session.MAX_FORM + 10), cookies=jar,
                     headers={"Content-Type": "application/x-www-form-urlencoded", **origin})
    assert big.status == 413, big.status
    for body in (b"token=\xff\xfe", b"a=1&&&b", b"=x"):
        a = ui.request("POST", "/ui/signin", body=body, cookies=jar,
                       headers={"Content-Type": "application/x-www-form-urlencoded", **origin})
        assert a.status == 400, (body, a.status)
    for a in (twice, big):
        assert SESSION not in a.cookies
    for q, named in (("no_such=1", "no_such"), ("next=/ui/" + "x" * web.MAX_NEXT, "next"), ("why=" + "w" * 65, "why")):
        a = ui.get("/ui/signin?" + q)
        assert a.status == 400 and _field_named(a, named), (q, a.status)


def test_the_sign_out_form_is_bounded_too(grid):
    signed = grid.ui.signin(str(grid.cookies["owner"]))
    csrf, session_cookie = signed.cookies[CSRF].value, signed.cookies[SESSION].value
    jar, origin = {SESSION: session_cookie, CSRF: csrf}, {"Origin": grid.ui.url}
    for fields, named in (({"csrf": csrf, "token": "x"}, "token"), ({"csrf": "c" * (session.MAX_CSRF + 1)}, "csrf")):
        a = grid.ui.post_form("/ui/signout", fields, cookies=jar, headers=origin)
        assert a.status == 400 and _field_named(a, named), (fields.keys(), a.status)
    a = grid.ui.request("POST", "/ui/signout", body=b"csrf=" + csrf.encode(), cookies=jar,
                        headers={"Content-Type": "text/plain", **origin})
    assert a.status == 415
    a = grid.ui.request("POST", "/ui/signout", body=b"csrf=" + b"c" * (session.MAX_FORM + 1), cookies=jar,
                        headers={"Content-Type": "application/x-www-form-urlencoded", **origin})
    assert a.status == 413
    assert grid.ui.get("/ui/jobs", cookies={SESSION: session_cookie}).status == 200, "still signed in"


@pytest.mark.parametrize("size", [5_000, 60_000, 300_000])
def test_a_huge_cookie_is_no_500(grid, size):
    try:
        a = grid.ui.get("/ui/jobs", cookies={SESSION: "x" * size, "other": "y"})
    except urllib3.exceptions.HTTPError:
        return  # the server closed the connection on a request head past its limit: refused, not failed
    assert a.status in (303, 400, 413, 431), a.status


# -- the access log ------------------------------------------------------------------------------------------------

def test_no_log_line_holds_a_token_or_the_sign_in_form(grid, caplog):
    caplog.set_level(logging.DEBUG)
    token = str(grid.cookies["owner"])
    signed = grid.ui.signin(token, next_url="/ui/jobs")
    assert signed.status == 303
    jar = {SESSION: signed.cookies[SESSION].value}
    for path in ("/ui/", "/ui/jobs?state=DONE", f"/ui/jobs/{grid.mine}", "/ui/jobs/" + "9" * 30):
        grid.ui.get(path, cookies=jar)
    for caller in ("garbage", "expired", "agent"):
        grid.ui.get("/ui/jobs", cookies={SESSION: str(grid.cookies[caller])})
    bad = grid.ui.post_form("/ui/signin", {"token": token, "csrf": "wrong"}, cookies={CSRF: "x" * 43})
    assert bad.status == 403
    # The server's records (the test's own HTTP client logs its requests at DEBUG: not central's log).
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith("urllib3")]
    access = [line for line in lines if "/ui/" in line]
    assert any(line.startswith("POST /ui/signin user alice 303") for line in access), access
    assert any(line.startswith("GET /ui/jobs user alice 200") for line in access), access
    secrets = [token, *(str(grid.cookies[c]) for c in ("expired", "agent")), signed.cookies[CSRF].value]
    for line in lines:
        assert not any(s in line for s in secrets), f"a secret in the log: {line[:200]}"
        assert "state=DONE" not in line and "csrf=" not in line, f"a query or the form in the log: {line[:200]}"


# -- the sign-in's rate ----------------------------------------------------------------------------------------------

@pytest.fixture
def slow_world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url, rate_limit=0.2, rate_burst=3)


def test_sign_in_attempts_from_one_address_are_held_to_the_admission_rate(slow_world):
    ui = UiHttp(slow_world.url)
    csrf = ui.csrf()
    answers = [ui.post_form("/ui/signin", {"token": f"guess-{i}", "csrf": csrf}, cookies={CSRF: csrf},
                            headers={"Origin": ui.url}) for i in range(4)]
    assert [a.status for a in answers[:3]] == [401] * 3, [a.status for a in answers]
    held = answers[3]
    assert held.status == 429, held.status
    assert 1 <= int(held.headers["retry-after"]) <= 10
    assert_secure(held, "429")
    # A right token from the same address is held too: the bucket is the address's, not the token's.
    right = ui.signin(slow_world.admin.mint_token("user", "alice"))
    assert right.status == 429 and SESSION not in right.cookies

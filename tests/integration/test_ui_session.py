"""Signing in and out of the web view, against a real central over HTTP and over https (the test's own CA), on
SQLite and on a real PostgreSQL: the session cookie's attributes (HttpOnly, SameSite=Strict, Path=/ui, Max-Age
within the token's life, Secure exactly when served over TLS); CSRF on both forms (missing, wrong or foreign
secret, another origin: 403 and nothing changed; login CSRF; the secret replaced at sign-in and sign-out); `next`
never leaving /ui/; the token refused at sign-in as it would be on a page."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, Optional

import pytest
from support.central import CE, SITE, World, module_world
from support.tls import Pki, make_pki
from support.ui_http import CSRF, SESSION, Answer, UiHttp, parse

from gridpilot.central import tokens
from gridpilot.central.serve import EmbeddedCentral


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: Any, tmp_path_factory: Any) -> Iterator[World]:
    yield from module_world(request, tmp_path_factory, "ui-session")


@pytest.fixture
def ui(world) -> UiHttp:
    return UiHttp(world.url)


def signed_in(ui: UiHttp, a: Answer) -> bool:
    """Whether the session cookie an answer set lets a page be read."""
    cookie = a.cookies.get(SESSION)
    if cookie is None or cookie.deleted:
        return False
    return ui.get("/ui/jobs", cookies={SESSION: cookie.value}).status == 200


def assert_session_cookie(a: Answer, token_life: float, *, tls: bool) -> None:
    c = a.cookies[SESSION]
    assert c.attrs.get("httponly") is True, c.attrs
    assert str(c.attrs.get("samesite")).lower() == "strict", c.attrs
    assert c.attrs.get("path") == "/ui", c.attrs
    assert 0 < int(c.attrs["max-age"]) <= token_life, (c.attrs, token_life)
    assert int(c.attrs["max-age"]) >= token_life - 120, "the cookie lives about as long as the token"
    assert bool(c.attrs.get("secure")) is tls, c.attrs
    csrf = a.cookies[CSRF]
    assert csrf.attrs.get("httponly") is True and str(csrf.attrs.get("samesite")).lower() == "strict"
    assert csrf.attrs.get("path") == "/ui" and bool(csrf.attrs.get("secure")) is tls, csrf.attrs


def test_sign_in_sets_the_session_cookie_and_goes_to_next(world, ui):
    token = world.admin.mint_token("user", "alice", ttl_s=900)
    before = ui.csrf()
    a = ui.post_form("/ui/signin", {"token": token, "csrf": before, "next": "/ui/jobs?state=DONE"},
                     cookies={CSRF: before}, headers={"Origin": ui.url})
    assert a.status == 303 and a.location == "/ui/jobs?state=DONE", (a.status, a.location)
    assert token not in a.location
    assert_session_cookie(a, 900, tls=False)
    assert a.cookies[CSRF].value != before, "the CSRF secret is replaced at sign-in"
    assert signed_in(ui, a)
    page = parse(ui.get("/ui/jobs", cookies={SESSION: a.cookies[SESSION].value}).text)
    assert page.by_id("who") is not None and "user alice" in page.text


def test_a_token_pasted_over_several_lines_signs_in(world, ui):
    token = world.admin.mint_token("user", "alice")
    wrapped = "\n".join(token[i:i + 60] for i in range(0, len(token), 60)) + "\n"
    a = ui.signin(wrapped)
    assert a.status == 303 and signed_in(ui, a)


@pytest.mark.parametrize("who", ["agent", "ce", "tower", "job-like", "no-read", "expired", "revoked", "garbage"])
def test_tokens_the_pages_refuse_are_refused_at_sign_in(world, ui, who):
    admin = world.admin
    token = {
        "agent": lambda: admin.mint_token("agent", "a1", site=SITE, ce=CE),
        "ce": lambda: admin.mint_token("ce", "c1", site=SITE, ce=CE),
        "tower": lambda: admin.mint_token("tower", "t1", site=SITE, ce=CE),
        "job-like": lambda: tokens.mint(world.embedded.central.keys, "job", "j", job_id=1, resubmission=0)[0],
        "no-read": lambda: admin.mint_token("user", "alice", scope="compute.create"),
        "expired": lambda: tokens.mint(world.embedded.central.keys, "user", "alice", ttl_s=5,
                                       now=time.time() - 600)[0],
        "revoked": lambda: _revoked(admin),
        "garbage": lambda: "not.a.token",
    }[who]()
    a = ui.signin(token)
    assert a.status in (401, 403), (who, a.status)
    assert SESSION not in a.cookies, "nothing signed in"
    m = parse(a.text)
    assert m.by_id("signin-error") is not None and m.by_id("token") is not None, "the form again, saying why"
    assert token not in a.text, "the token is never echoed"


def _revoked(admin: Any) -> str:
    t = admin.mint_token("user", "alice")
    admin.revoke_token(t)
    return str(t)


# -- CSRF ----------------------------------------------------------------------------------------------------------

def _csrf_cases(ui: UiHttp, fresh: str) -> Dict[str, Dict[str, Any]]:
    """Ways a form post can come without the proof that this service's own page sent it."""
    other = ui.csrf()
    same = {"Origin": ui.url}
    return {
        "no field": {"fields": {}, "cookies": {CSRF: fresh}, "headers": same},
        "no cookie": {"fields": {"csrf": fresh}, "cookies": {}, "headers": same},
        "wrong secret": {"fields": {"csrf": other}, "cookies": {CSRF: fresh}, "headers": same},
        "empty both": {"fields": {"csrf": ""}, "cookies": {CSRF: ""}, "headers": same},
        "another origin": {"fields": {"csrf": fresh}, "cookies": {CSRF: fresh},
                           "headers": {"Origin": "https://evil.example"}},
        "origin null": {"fields": {"csrf": fresh}, "cookies": {CSRF: fresh}, "headers": {"Origin": "null"}},
        "same host other port": {"fields": {"csrf": fresh}, "cookies": {CSRF: fresh},
                                 "headers": {"Origin": ui.url.rsplit(":", 1)[0] + ":1"}},
        "cross-site fetch": {"fields": {"csrf": fresh}, "cookies": {CSRF: fresh},
                             "headers": {"Origin": ui.url, "Sec-Fetch-Site": "cross-site"}},
        "same-site fetch": {"fields": {"csrf": fresh}, "cookies": {CSRF: fresh},
                            "headers": {"Sec-Fetch-Site": "same-site"}},
    }


@pytest.mark.parametrize("case", ["no field", "no cookie", "wrong secret", "empty both", "another origin",
                                  "origin null", "same host other port", "cross-site fetch", "same-site fetch"])
def test_sign_in_without_csrf_proof_is_refused_and_signs_nobody_in(world, ui, case):
    token = world.admin.mint_token("user", "alice")
    c = _csrf_cases(ui, ui.csrf())[case]
    a = ui.post_form("/ui/signin", {"token": token, **c["fields"]}, cookies=c["cookies"], headers=c["headers"])
    assert a.status == 403, (case, a.status, a.text[:300])
    assert SESSION not in a.cookies, f"{case}: a session cookie was set"
    assert token not in a.text


@pytest.mark.parametrize("case", ["no field", "no cookie", "wrong secret", "empty both", "another origin",
                                  "origin null", "same host other port", "cross-site fetch", "same-site fetch"])
def test_sign_out_without_csrf_proof_is_refused_and_signs_nobody_out(world, ui, case):
    signin = ui.signin(world.admin.mint_token("user", "alice"))
    session = signin.cookies[SESSION].value
    c = _csrf_cases(ui, signin.cookies[CSRF].value)[case]
    a = ui.post_form("/ui/signout", c["fields"], cookies={SESSION: session, **c["cookies"]}, headers=c["headers"])
    assert a.status == 403, (case, a.status)
    assert SESSION not in a.cookies, f"{case}: the session cookie was touched"
    assert ui.get("/ui/jobs", cookies={SESSION: session}).status == 200, "still signed in"


def test_sign_out_forgets_the_cookie_and_replaces_the_csrf_secret(world, ui):
    signin = ui.signin(world.admin.mint_token("user", "alice"))
    csrf = signin.cookies[CSRF].value
    a = ui.post_form("/ui/signout", {"csrf": csrf}, cookies={SESSION: signin.cookies[SESSION].value, CSRF: csrf},
                     headers={"Origin": ui.url, "Sec-Fetch-Site": "same-origin"})
    assert a.status == 303 and a.location == "/ui/signin?why=signed_out"
    assert a.cookies[SESSION].deleted and a.cookies[SESSION].attrs.get("path") == "/ui"
    assert a.cookies[CSRF].value != csrf


def test_every_page_carries_a_sign_out_form_that_works(world, ui):
    """The page's form repeats the CSRF cookie's secret (a page asked without one sets one), and signs out."""
    signin = ui.signin(world.admin.mint_token("user", "alice"))
    session = signin.cookies[SESSION].value
    for cookies in ({SESSION: session, CSRF: signin.cookies[CSRF].value}, {SESSION: session}):
        page = ui.get("/ui/jobs", cookies=cookies)
        csrf = cookies.get(CSRF) or page.cookies[CSRF].value
        if CSRF not in cookies:
            c = page.cookies[CSRF].attrs
            assert c.get("httponly") is True and str(c.get("samesite")).lower() == "strict" and c.get("path") == "/ui"
        [field] = [t.get("value") for t in parse(page.text).find("input") if t.get("name") == "csrf"]
        assert field == csrf
        out = ui.post_form("/ui/signout", {"csrf": field}, cookies={SESSION: session, CSRF: csrf},
                           headers={"Origin": ui.url})
        assert out.status == 303 and out.cookies[SESSION].deleted


def test_login_csrf_cannot_sign_a_browser_into_the_attackers_account(world, ui):
    """The attacker holds a user token and a CSRF pair of its own (from the sign-in form). Its page posts them
    from another site: the browser sends the victim's own CSRF cookie with it at most (and with SameSite=Strict not
    even that), never the attacker's, so the post is refused whatever the attacker puts in it."""
    attacker_token = world.admin.mint_token("user", "mallory")
    attacker_csrf = ui.csrf()
    victim_csrf = ui.csrf()
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for cookies, headers in (({CSRF: victim_csrf}, evil), ({}, evil), ({CSRF: victim_csrf}, {}), ({}, {})):
        a = ui.post_form("/ui/signin", {"token": attacker_token, "csrf": attacker_csrf, "next": "/ui/jobs"},
                         cookies=cookies, headers=headers)
        assert a.status == 403 and SESSION not in a.cookies, (cookies, headers, a.status)


# -- next --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("next_url", [
    "//evil.example", "https://evil.example/ui/", "/ui/..//evil.example", "/ui/../api/v1/jobs", "/ui/%2e%2e/api",
    "javascript:alert(1)", "/ui/\\evil.example", "/\\evil.example", "/ui\\/evil", "/ui/\t/evil", "/ui/%09/evil",
    "/ui//evil.example", "/ui/%2F%2Fevil.example", "\x00/ui/", "/ui/\r\nSet-Cookie: x=1", "", " /ui/jobs",
    "http:/ui/", "/api/v1/jobs",
])
def test_next_never_leaves_the_web_view(world, ui, next_url):
    a = ui.signin(world.admin.mint_token("user", "alice"), next_url=next_url)
    assert a.status == 303 and a.location == "/ui/", (next_url, a.location)
    shown = ui.get("/ui/signin?next=" + _q(next_url))
    if shown.status == 400:
        assert "\x00" in next_url, "only a NUL is refused outright (as in any query parameter)"
        return
    hidden = [t for t in parse(shown.text).find("input") if t.get("name") == "next"]
    assert [t.get("value") for t in hidden] == ["/ui/"], (next_url, hidden)


@pytest.mark.parametrize("next_url", ["/ui/jobs", "/ui/jobs/12?x=a%20b", "/ui/sites", "/ui/jobs?name=a//b"])
def test_next_within_the_web_view_is_kept(world, ui, next_url):
    a = ui.signin(world.admin.mint_token("user", "alice"), next_url=next_url)
    assert a.status == 303 and a.location == next_url


def test_a_page_sends_the_signed_out_back_to_it_after_sign_in(world, ui):
    away = ui.get("/ui/jobs?state=DONE")
    assert away.status == 303
    form = parse(ui.get(away.location or "").text)
    [nxt] = [t.get("value") for t in form.find("input") if t.get("name") == "next"]
    assert nxt == "/ui/jobs?state=DONE"
    a = ui.signin(world.admin.mint_token("user", "alice"), next_url=nxt)
    assert a.location == "/ui/jobs?state=DONE"


def _q(v: str) -> str:
    from urllib.parse import quote
    return quote(v, safe="")


# -- over TLS ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_central(tmp_path, pki, db_url) -> Iterator[EmbeddedCentral]:
    with EmbeddedCentral(tmp_path / "central", db_url=db_url, certfile=str(pki.host_cert),
                         keyfile=str(pki.host_key), ca_file=str(pki.ca), sweep_interval_s=0) as c:
        yield c


def test_over_tls_the_cookies_are_secure(tls_central, pki):
    from gridpilot.client import CentralClient

    assert tls_central.url.startswith("https://")
    ui = UiHttp(tls_central.url, ca_file=str(pki.ca))
    admin = CentralClient(tls_central.url, tls_central.admin_token, ca_file=str(pki.ca))
    form = ui.get("/ui/signin")
    assert form.cookies[CSRF].attrs.get("secure") is True
    a = ui.signin(admin.mint_token("user", "alice", ttl_s=3600))
    assert a.status == 303, a.text[:300]
    assert_session_cookie(a, 3600, tls=True)
    assert signed_in(ui, a)
    expired = ui.get("/ui/jobs", cookies={SESSION: "garbage"})
    assert expired.status == 303 and expired.cookies[SESSION].attrs.get("secure") is True


def test_behind_a_local_proxy_that_terminates_tls_the_cookie_is_secure(world, ui):
    """uvicorn believes X-Forwarded-Proto only from FORWARDED_ALLOW_IPS (127.0.0.1 unless set: this test's own
    address, as a proxy on central's host). The cookie follows the scheme the browser used, and so does the origin
    a form must come from."""
    token = world.admin.mint_token("user", "alice")
    csrf = ui.csrf()
    a: Optional[Answer] = ui.post_form("/ui/signin", {"token": token, "csrf": csrf}, cookies={CSRF: csrf},
                                       headers={"Origin": "https://" + ui.url.split("://", 1)[1],
                                                "X-Forwarded-Proto": "https"})
    assert a is not None and a.status == 303, a.status
    assert a.cookies[SESSION].attrs.get("secure") is True, "a local proxy's https is the browser's scheme"

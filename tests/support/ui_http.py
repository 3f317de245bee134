"""The web view (/ui/) spoken to over plain HTTP, as a browser would but without one: cookies given and read by hand,
redirects not followed, the HTML parsed with the standard library's html.parser. For the tests that check answers
to the byte (status, headers, cookies, markup); tests/support/browser.py drives a real browser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlencode

import urllib3

SESSION = "gridpilot_session"
CSRF = "gridpilot_csrf"


@dataclass
class Cookie:
    """One Set-Cookie of an answer: its value and attributes (lower-case names; flags as True)."""

    name: str
    value: str
    attrs: Dict[str, Any]

    @property
    def deleted(self) -> bool:
        return self.attrs.get("max-age") in ("0", 0) or self.value in ("", '""')


@dataclass
class Answer:
    status: int
    headers: Any
    text: str
    cookies: Dict[str, Cookie] = field(default_factory=dict)

    @property
    def location(self) -> Optional[str]:
        return self.headers.get("location")


def _cookies(headers: Any) -> Dict[str, Cookie]:
    out: Dict[str, Cookie] = {}
    for line in headers.getlist("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(line)
        for name, morsel in jar.items():
            attrs: Dict[str, Any] = {k: v for k, v in morsel.items() if v}
            out[name] = Cookie(name, morsel.value, attrs)
    return out


class UiHttp:
    """Requests to one central's web view."""

    def __init__(self, url: str, ca_file: Optional[str] = None) -> None:
        self.url = url
        kw: Dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file} if ca_file else {}
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=60), **kw)

    def request(self, method: str, path: str, *, cookies: Optional[Mapping[str, str]] = None,
                headers: Optional[Mapping[str, str]] = None, body: Optional[bytes] = None) -> Answer:
        h = dict(headers or {})
        if cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        r = self.pool.request(method, self.url + path, headers=h, body=body, redirect=False)
        return Answer(r.status, r.headers, r.data.decode("utf-8", "replace"), _cookies(r.headers))

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post_form(self, path: str, fields: Any, *, headers: Optional[Mapping[str, str]] = None,
                  **kw: Any) -> Answer:
        """POST url-encoded `fields` (a mapping or a list of pairs)."""
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body=urlencode(fields).encode(), headers=h, **kw)

    def csrf(self) -> str:
        """A fresh CSRF secret, as a browser gets it with the sign-in form."""
        a = self.get("/ui/signin")
        assert a.status == 200, a.text[:500]
        return a.cookies[CSRF].value

    def signin(self, token: str, next_url: Optional[str] = None) -> Answer:
        """Sign in as a browser would: the form (its CSRF cookie), then the POST from this origin."""
        csrf = self.csrf()
        fields = {"token": token, "csrf": csrf, **({"next": next_url} if next_url is not None else {})}
        return self.post_form("/ui/signin", fields, cookies={CSRF: csrf}, headers={"Origin": self.url})


@dataclass
class Markup:
    """What html.parser saw in a page: every start tag with its attributes, and the text between tags."""

    tags: List[Tuple[str, List[Tuple[str, Optional[str]]]]]
    text: str

    def find(self, tag: str) -> List[Dict[str, Optional[str]]]:
        return [dict(attrs) for t, attrs in self.tags if t == tag]

    def by_id(self, ident: str) -> Optional[Tuple[str, Dict[str, Optional[str]]]]:
        for t, attrs in self.tags:
            if dict(attrs).get("id") == ident:
                return t, dict(attrs)
        return None


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, List[Tuple[str, Optional[str]]]]] = []
        self.chunks: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def parse(html: str) -> Markup:
    p = _Parser()
    p.feed(html)
    p.close()
    return Markup(p.tags, "".join(p.chunks))

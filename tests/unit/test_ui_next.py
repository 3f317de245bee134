"""Where the sign-in form may send a browser afterwards (web.safe_next): a path of the web view, never another site,
however the other site is written. The same table runs through a real sign-in in
tests/integration/test_ui_session.py; this one holds the spellings a browser would read as another host."""

from __future__ import annotations

import pytest

from gridpilot.central.ui.web import MAX_NEXT, safe_next

ELSEWHERE = [
    "//evil.example", "///evil.example", "https://evil.example", "https://evil.example/ui/", "HTTPS://evil.example",
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<script>", "/\\evil.example", "\\\\evil.example",
    "/ui/\\evil.example", "/ui%5c%5cevil.example", "/ui/%5c%5cevil.example", "/ui/..//evil.example",
    "/ui/../api/v1/jobs", "/ui/%2e%2e/api/v1/jobs", "/ui/%2E%2E/api", "/ui/./jobs", "/ui//evil.example",
    "/ui/%2f%2fevil.example", "/ui/\t/evil.example", "/ui/%09/evil.example", "/ui/\n/evil.example",
    "/ui/%0d%0aSet-Cookie:%20x=1", "/ui/\x00", "/ui/\x7f", "/ui/#//evil.example", "/uix/", "/ui", "ui/jobs",
    " /ui/jobs", "/api/v1/jobs", "/", "", "/ui/" + "x" * MAX_NEXT,
]
KEPT = ["/ui/", "/ui/jobs", "/ui/jobs/12", "/ui/jobs/12/trace?after=3", "/ui/jobs?state=DONE&name=a%20b",
        "/ui/jobs?name=a//b", "/ui/sites", "/ui/jobs?name=%C3%A9t%C3%A9"]


@pytest.mark.parametrize("value", ELSEWHERE)
def test_anything_but_a_web_view_path_goes_to_the_overview(value):
    assert safe_next(value) == "/ui/"


@pytest.mark.parametrize("value", KEPT)
def test_a_web_view_path_is_kept(value):
    assert safe_next(value) == value


def test_nothing_goes_to_the_overview():
    assert safe_next(None) == "/ui/"

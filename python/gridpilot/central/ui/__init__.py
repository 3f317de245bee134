"""The web view of central (docs/ui.md): read-only pages under /ui/, server-rendered from Jinja2 templates, served by
the same process and under the same authorization as the API.

A person signs in once by pasting a token; the token is kept in an HttpOnly, SameSite=Strict cookie (Secure over
TLS) and each page authenticates it as the API authenticates a bearer token, then calls the same operations (jobs,
catalogue, summary, nodes, pilots), so a page shows exactly what that token may read through the API. Pages work
without JavaScript; static/ui.js only refreshes parts of them in place.

Files: web.py (the request wrapper: cookie, admission, errors, security headers), session.py (sign-in and sign-out,
CSRF), templating.py (the Jinja2 environment and its filters), charts.py (server-side SVG charts), and one module per
page: overview.py, joblist.py, jobpage.py, plots.py (a job's resource plots), sites.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from gridpilot.central.app import Central

#: Where the pages are mounted.
PREFIX = "/ui"


def routes(central: "Central") -> List[BaseRoute]:
    """Every route of the web view, for app.create_app."""
    from gridpilot.central.ui import joblist, jobpage, overview, session, sites, web

    page = web.page_route
    return [
        *session.routes(central),
        page(central, f"{PREFIX}/", overview.page, params=overview.PARAMETERS),
        page(central, f"{PREFIX}/jobs", joblist.page, params=joblist.PARAMETERS),
        page(central, f"{PREFIX}/jobs/{{job_id:digits}}", jobpage.page, params=jobpage.PARAMETERS),
        page(central, f"{PREFIX}/jobs/{{job_id:digits}}/trace", jobpage.trace_fragment,
             params=jobpage.TRACE_PARAMETERS),
        page(central, f"{PREFIX}/sites", sites.page, params=sites.PARAMETERS),
        web.static_route(),
    ]


__all__ = ["PREFIX", "routes"]

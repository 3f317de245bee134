"""The jobs page (/ui/jobs). (Skeleton: the newest jobs the caller may see, with a state filter.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gridpilot.central import jobs
from gridpilot.central.ui.web import Page, UiCall

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ("state",)


def page(c: "Central", call: UiCall) -> Page:
    query = {k: v for k, v in call.query.items() if v}
    return Page("jobs.html", {"jobs": jobs.list_jobs(c.db, call.principal, query), "query": query}, refresh=30)

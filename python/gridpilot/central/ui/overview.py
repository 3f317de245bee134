"""The overview page (/ui/): the caller's jobs by state now. (Skeleton: helpers add jobs per state over the last
hours from central's history, and the match and heartbeat rates.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gridpilot.central import summary
from gridpilot.central.ui.web import Page, UiCall

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ()


def page(c: "Central", call: UiCall) -> Page:
    s = summary.summary(c.db, call.principal, {"running": "0"}, call.now)
    return Page("overview.html", {"summary": s}, refresh=60)

"""The sites page (/ui/sites). (Skeleton: the caller's jobs per site and kind of state.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gridpilot.central import summary
from gridpilot.central.ui.web import Page, UiCall

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ()


def page(c: "Central", call: UiCall) -> Page:
    s = summary.summary(c.db, call.principal, {"running": "0"}, call.now)
    return Page("sites.html", {"summary": s}, refresh=60)

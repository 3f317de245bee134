"""The overview page (/ui/): the caller's jobs by state now and per site, and for an admin the grid over the last
hours from central's own history (central/history.py): jobs per state, and the match and heartbeat rates.

The history is grid-wide (every user's jobs, every host's requests), so only an admin sees it: a user's overview
shows its own jobs' counts, what GET /jobs/summary tells it, and nothing of other users' jobs or of the service's
load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from gridpilot.central import history, summary
from gridpilot.central.jobs import query_int
from gridpilot.central.ui.charts import Chart, Series
from gridpilot.central.ui.web import Page, UiCall
from gridpilot.states import JobStatus

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ("hours",)
#: The history drawn: the last `hours` (1 to MAX_HOURS, 6 by default); the history keeps 7 days by default.
DEFAULT_HOURS = 6
MAX_HOURS = 168
#: Sites shown on the overview (those with the most jobs held first); the sites page lists them all.
OVERVIEW_SITES = 10
#: What each rate is called on the page.
RATE_NAMES = {"matches": "match requests/s", "assigned": "jobs assigned/s", "heartbeats": "heartbeat job-updates/s"}


def page(c: "Central", call: UiCall) -> Page:
    hours = query_int(call.query, "hours", DEFAULT_HOURS, 1, MAX_HOURS)
    s = summary.summary(c.db, call.principal, {"running": "0"}, call.now)
    context: Dict[str, Any] = {"summary": s, "sites": s["sites"][:OVERVIEW_SITES], "hours": hours,
                               "max_hours": MAX_HOURS, "grid": None}
    if call.principal.role == "admin":
        context["grid"] = grid(c, call.now, hours)
    return Page("overview.html", context, refresh=60)


def grid(c: "Central", now: float, hours: int) -> Dict[str, Any]:
    o = history.overview(c.db, now, hours * 3600.0)
    active = {k: v for k, v in o.states.items() if not JobStatus[k].is_final}
    ended = {k: v for k, v in o.states.items() if JobStatus[k].is_final}
    charts: List[Chart] = [
        Chart("Jobs waiting and held", "", [Series(k, v) for k, v in active.items()]),
        Chart("Jobs ended (as kept in the queue)", "", [Series(k, v) for k, v in ended.items()]),
        Chart("Requests served per second (all central hosts)", "",
              [Series(RATE_NAMES[k], o.rates[k]) for k in history.COUNTERS]),
    ]
    rates = [{"name": RATE_NAMES[k], "key": k, "value": o.current[k]} for k in history.COUNTERS]
    return {"charts": charts, "rates": rates, "hosts": o.hosts, "snapshots": o.snapshots,
            "interval_s": c.settings.history_interval_s, "window_s": history.RATE_WINDOW_S}

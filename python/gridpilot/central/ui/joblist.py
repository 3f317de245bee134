"""The jobs page (/ui/jobs): the jobs the signed-in person may see, newest first, filtered by state (one or
several), user (admins), site, name (a prefix) or masterjob (`master`: its subjobs), a page at a time, with the
counts by state for the same filters.

The list and the counts are GET /jobs's (jobs.list_jobs, jobs.count_by_state_for with the same filters), so a user
sees only its own jobs and naming another user is the API's 403. Subjobs are left out as the API leaves them out;
a masterjob shows its subjobs' counts and links to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping

from gridpilot.central import bounds, jobs, splitting
from gridpilot.central.ui.web import MAX_QUERY_VALUE, Page, UiCall
from gridpilot.states import JobStatus

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ("state", "user", "site", "name", "master", "offset", "limit")
#: Rows per page: `limit` from 1 to MAX_PAGE, DEFAULT_PAGE when not given.
DEFAULT_PAGE = 50
MAX_PAGE = 200
#: The farthest a page may start (GET /jobs's bound).
MAX_OFFSET = 1 << 40
#: The filters a link to another page or count keeps.
FILTERS = ("state", "user", "site", "name", "master")
#: Seconds between refreshes (in place with JavaScript, a reload without).
REFRESH = 30
#: Every state, by code, for the filter form.
STATES = [s.name for s in sorted(JobStatus, key=int)]


def _states(call: UiCall) -> str:
    """The state filter, given once as a comma-separated list or repeated (a multiple select sends `state` once
    per chosen state), as GET /jobs's one comma-separated value; each value bounded, the list by the states there
    are (jobs.state_filter says which one is not a state)."""
    getlist = getattr(call.query, "getlist", None)
    values: List[str] = list(getlist("state")) if getlist is not None else [call.query.get("state") or ""]
    if len(values) > len(JobStatus):
        raise bounds.bad_field("state", f"the state filter is given {len(values)} times; there are "
                                        f"{len(JobStatus)} states")
    for v in values:
        bounds.text(v, "state", MAX_QUERY_VALUE, empty=True, what="query parameter 'state'")
    return ",".join(v for v in values if v)


def filters_of(call: UiCall) -> Dict[str, str]:
    """The page's filters as GET /jobs takes them (empty ones left out)."""
    out = {k: call.query.get(k) or "" for k in FILTERS if k != "state"}
    out["state"] = _states(call)
    return {k: v for k, v in out.items() if v}


def page(c: "Central", call: UiCall) -> Page:
    limit = jobs.query_int(call.query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = jobs.query_int(call.query, "offset", 0, 0, MAX_OFFSET)
    filters = filters_of(call)
    # One more than shown says whether another page follows.
    rows = jobs.list_jobs(c.db, call.principal, {**filters, "limit": str(limit + 1), "offset": str(offset)})
    more = len(rows) > limit
    rows = splitting.decorate(c.db, rows[:limit])
    counts = jobs.count_by_state_for(c.db, call.principal, filters)
    chosen = set(jobs.state_filter(filters.get("state", "")))
    paging: Mapping[str, Any] = {**filters, "limit": limit if limit != DEFAULT_PAGE else None}
    return Page("jobs.html", {
        "jobs": rows, "filters": filters, "counts": counts, "total": sum(counts.values()),
        "chosen": {JobStatus(s).name for s in chosen}, "states": STATES,
        "offset": offset, "limit": limit, "more": more, "paging": paging,
        "previous": max(0, offset - limit) if offset > 0 else None,
        "next": offset + limit if more else None,
        "may_filter_user": call.principal.role == "admin",
    }, refresh=REFRESH)

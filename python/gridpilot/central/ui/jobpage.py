"""A job's page (/ui/jobs/{id}) and its newer trace lines as an HTML fragment for the live view
(/ui/jobs/{id}/trace?after=<line id>).

Every read is the API's with the signed-in Principal (jobs.get_job, jobs.read_trace_window and jobs.state_history
with read_trace's checks, catalogue.job_files with GET /jobs/{id}/files's role and scope), so another user's job is
a 404 as in the API, and a page never shows what the token could not read through it.

The trace is shown as ALICE's operators read it (tracefmt.render, in UTC), at most MAX_TRACE_LINES lines: the first
TRACE_HEAD and the last TRACE_TAIL when there are more (how the job began and how it is ending), the page saying
how many were left out between them. `category` filters it on the server (for browsers without JavaScript; ui.js
filters in place without reloading). The plots get the unfiltered lines read, whatever the filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from markupsafe import Markup, escape

from gridpilot import tracefmt
from gridpilot.central import bounds, catalogue, jobs, splitting
from gridpilot.central.ui import plots
from gridpilot.central.ui.web import MAX_QUERY_VALUE, Page, UiCall
from gridpilot.states import JobStatus

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ("category",)
TRACE_PARAMETERS: tuple[str, ...] = ("after", "category")
#: The most trace lines a page shows: the first TRACE_HEAD and the last TRACE_TAIL. The end gets the larger share:
#: it is where a job fails and where a running job's new lines arrive; the start (submission, match, start-up) is
#: short.
MAX_TRACE_LINES = 10_000
TRACE_HEAD = 1_000
TRACE_TAIL = MAX_TRACE_LINES - TRACE_HEAD
#: State lines shown in the history table.
MAX_HISTORY = 1_000
#: Output files listed (GET /jobs/{id}/files's first page of this size; the page says when there are more).
MAX_FILES = 100
#: Entries of the job's resources object shown.
MAX_RESOURCES = 50
#: Seconds between the live view's polls of the trace fragment (ui.js reads it from data-every).
LIVE_EVERY = 5
#: Seconds after which a browser without JavaScript reloads the page of a job that has not ended (ui.js, when it
#: runs, appends the new trace lines instead and does not reload).
LIVE_RELOAD = 60
#: The scope GET /jobs/{id}/files needs (scopes.ROUTE_SCOPES).
FILES_SCOPE = "catalogue.read"


def categories_of(call: UiCall) -> Optional[List[str]]:
    """The `category` filter (repeated, as checkboxes send it, or comma-separated): None for every category; 400
    naming `category` for one that is not a trace category."""
    getlist = getattr(call.query, "getlist", None)
    values: List[str] = list(getlist("category")) if getlist is not None else [call.query.get("category") or ""]
    if len(values) > len(jobs.TRACE_CATEGORIES):
        raise bounds.bad_field("category", f"the category filter is given {len(values)} times; there are "
                                           f"{len(jobs.TRACE_CATEGORIES)} categories")
    chosen: List[str] = []
    for v in values:
        bounds.text(v, "category", MAX_QUERY_VALUE, empty=True, what="query parameter 'category'")
        for part in (p.strip() for p in v.split(",")):
            if not part:
                continue
            if part not in jobs.TRACE_CATEGORIES:
                raise bounds.bad_field("category", f"query parameter category must be among "
                                                   f"{', '.join(jobs.TRACE_CATEGORIES)}, got {part[:40]!r}")
            if part not in chosen:
                chosen.append(part)
    if not chosen or len(chosen) == len(jobs.TRACE_CATEGORIES):
        return None
    return [c for c in jobs.TRACE_CATEGORIES if c in chosen]


def formatted(window: Dict[str, Any]) -> Dict[str, Any]:
    """The window with `shown`: (category, line as ALICE's trace reads it) per line, what _trace.html lists (pairs,
    not dicts: a template reads a pair's items faster than a dict's keys, 10,000 times a page)."""
    lines = window["lines"]
    window["shown"] = list(zip((t["category"] for t in lines), tracefmt.render_all(lines, utc=True)))
    return window


def trace_items(pairs: Sequence[Tuple[str, str]]) -> Markup:
    """The `<li class="cat-CATEGORY">LINE</li>` of each (category, line), every value escaped: joined here, since a
    template loop over 10,000 lines cost about as much as reading them."""
    classes: Dict[str, str] = {}
    out = []
    for category, line in pairs:
        cls = classes.get(category)
        if cls is None:
            cls = classes[category] = str(escape(category))
        out.append(f'<li class="cat-{cls}">{escape(line)}</li>')
    return Markup("\n".join(out))


def is_live(job: Dict[str, Any]) -> bool:
    """Whether the trace may still grow: a job that has not ended (a masterjob's lines are its subjobs')."""
    return "masterjob" not in job and not JobStatus(job["state_code"]).is_final


def _trace_context(c: "Central", call: UiCall, job: Dict[str, Any], window: Dict[str, Any],
                   categories: Optional[List[str]], *, after_only: bool = False) -> Dict[str, Any]:
    return {"job": job, "after_only": after_only, "trace": window["shown"], "trace_total": window["total"], "omitted": window["omitted"],
            "head": TRACE_HEAD, "last_id": window["last_id"] or 0, "live": is_live(job),
            "categories": jobs.TRACE_CATEGORIES, "chosen": categories or list(jobs.TRACE_CATEGORIES),
            "filtered": categories is not None, "every": LIVE_EVERY, "trace_items": trace_items}


def page(c: "Central", call: UiCall) -> Page:
    categories = categories_of(call)
    job = splitting.decorate(c.db, [jobs.get_job(c.db, call.principal, call.job_id)])[0]
    everything = jobs.read_trace_window(c.db, call.principal, call.job_id, head=TRACE_HEAD, tail=TRACE_TAIL)
    shown = everything
    if categories is not None and everything["omitted"]:
        shown = jobs.read_trace_window(c.db, call.principal, call.job_id, categories=categories,
                                       head=TRACE_HEAD, tail=TRACE_TAIL)
    elif categories is not None:
        # The whole trace is read already: its lines of these categories are all of them.
        lines = [t for t in everything["lines"] if t["category"] in categories]
        shown = {"lines": lines, "total": len(lines), "omitted": 0, "last_id": everything["last_id"]}
    history = jobs.state_history(c.db, call.principal, call.job_id, MAX_HISTORY)
    files: Optional[Dict[str, Any]] = None
    if FILES_SCOPE in call.principal.claims.scopes:
        files = catalogue.job_files(c.db, call.principal, call.job_id, {"limit": str(MAX_FILES)})
    resources = list(job["resources"].items())[:MAX_RESOURCES] if isinstance(job["resources"], dict) else []
    return Page("job.html", {
        **_trace_context(c, call, job, formatted(shown), categories),
        "history": history, "files": files, "files_scope": FILES_SCOPE, "resources": resources,
        # The plots read the unfiltered lines, whatever the trace's filter.
        "plots": plots.job_plots(job, everything["lines"]),
    }, refresh=LIVE_RELOAD if is_live(job) else None)


def trace_fragment(c: "Central", call: UiCall) -> Page:
    """The trace lines after line `after` (all of them, capped as on the page, without it), as the page's trace
    list: what the live view appends. Its root says the last line's id and whether the job still runs."""
    categories = categories_of(call)
    after = jobs.query_int(call.query, "after", 0, 0, bounds.MAX_ID) if call.query.get("after") else None
    job = splitting.decorate(c.db, [jobs.get_job(c.db, call.principal, call.job_id)])[0]
    window = jobs.read_trace_window(c.db, call.principal, call.job_id, categories=categories, after=after,
                                    head=TRACE_HEAD, tail=TRACE_TAIL)
    return Page("_trace.html", _trace_context(c, call, job, formatted(window), categories,
                                              after_only=after is not None))

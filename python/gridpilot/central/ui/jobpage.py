"""A job's page (/ui/jobs/{id}) and its trace as an HTML fragment for live updates (/ui/jobs/{id}/trace).
(Skeleton: the job's fields and its trace.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gridpilot.central import jobs
from gridpilot.central.ui import plots
from gridpilot.central.ui.web import Page, UiCall

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ()
TRACE_PARAMETERS: tuple[str, ...] = ()
MAX_TRACE_LINES = 10_000


def page(c: "Central", call: UiCall) -> Page:
    job = jobs.get_job(c.db, call.principal, call.job_id)
    trace = jobs.read_trace(c.db, call.principal, call.job_id, None, MAX_TRACE_LINES)
    return Page("job.html", {"job": job, "trace": trace, "plots": plots.job_plots(job, trace)})


def trace_fragment(c: "Central", call: UiCall) -> Page:
    trace = jobs.read_trace(c.db, call.principal, call.job_id, None, MAX_TRACE_LINES)
    return Page("_trace.html", {"trace": trace})

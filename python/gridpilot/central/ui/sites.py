"""The sites page (/ui/sites): the caller's jobs per site (running, waiting, done, error: summary.summary, so a user
sees its own jobs' sites and an admin every site), and for an admin the pilots each CE last reported
(central/pilots.py) and the worker nodes with their latest probe and nodeBad flag (nodes.list_nodes).

Pilots and nodes are the grid's, not a user's: GET /nodes refuses a user token and no user route shows pilot counts,
so a user's page has neither section. A CE reports its pilots by batch state only (queued, running, held now;
finished and failed since the CE process started: ce/factory.py); why a pilot ended is not reported, so the page
shows those counts and says so."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from gridpilot.central import bounds, nodes, pilots, summary
from gridpilot.central.ui.web import Page, UiCall

if TYPE_CHECKING:
    from gridpilot.central.app import Central

PARAMETERS: tuple[str, ...] = ("site",)
#: Nodes listed at most (by site and host); `nodes_more` says when there were more.
MAX_NODES = 500


def page(c: "Central", call: UiCall) -> Page:
    """Every site, or one (`site`: a site's name, up to 255 characters; `::` and any other character are fine in a
    query value, where a path segment would not take `/`): its jobs by state, its CEs' pilots, its nodes."""
    site = bounds.query_text(call.query, "site")
    query = {"running": "0", **({"site": site} if site is not None else {})}
    s = summary.summary(c.db, call.principal, query, call.now)
    context: Dict[str, Any] = {"summary": s, "site": site, "pilots": None, "nodes": None,
                               "pilot_states": pilots.PILOT_STATES}
    if call.principal.role == "admin":
        context["pilots"] = [p for p in pilots.pilot_counts(c.db) if site is None or p["site"] == site]
        node_query = {"limit": str(MAX_NODES + 1), **({"site": site} if site is not None else {})}
        listed = nodes.list_nodes(c.db, call.principal, node_query, call.now, c.node_policy)
        context["nodes"] = listed["nodes"][:MAX_NODES]
        context["nodes_more"] = len(listed["nodes"]) > MAX_NODES
        context["max_nodes"] = MAX_NODES
        context["bad_after"], context["window_s"] = listed["bad_after"], listed["window_s"]
    return Page("sites.html", context, refresh=60)

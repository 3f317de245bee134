"""Scopes: which kinds of call a token may make, after the WLCG token profile.

A token's `scope` claim lists its scopes, space-separated. Each role has its set (ROLE_SCOPES); a token is minted
with its role's set or a part of it (`central token --scope`, POST /tokens with "scope"), and a token never holds
more than its role's set, whatever it says. Each route needs one scope (ROUTE_SCOPES, checked in auth.authenticate),
and the role and ownership rules of auth.py apply on top: the scope says which kind of call, auth.py on which jobs.
A user token with only `compute.read`, say, follows its owner's jobs and can neither submit nor kill.

The compute.* scopes are the profile's (job submission); the others are gridpilot's, named the same way.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, Iterable, Optional, Tuple

#: A path parameter's converter in a route template ("{job_id:digits}"): the scope table names the bare parameter.
_CONVERTER = re.compile(r"\{(\w+):\w+\}")

#: Every scope, with what it allows.
SCOPES: Dict[str, str] = {
    "compute.read": "read jobs and their traces (a user its own, an agent or job token the jobs it runs, a CE its "
                    "site's)",
    "compute.create": "submit jobs, and resubmit ended ones (a user its own): both queue new work",
    "compute.cancel": "kill jobs (a user its own)",
    "compute.modify": "report on the jobs it runs: states, trace lines, heartbeats",
    "queue.match": "take a waiting job (agents, towers)",
    "queue.probe": "ask how much waiting work fits a slot (agents, towers, CEs)",
    "catalogue.read": "look up files and directories in the catalogue, list the storage elements",
    "catalogue.write": "register files (a job token under its job's OutputDir, a user in its own or granted areas)",
    "storage.configure": "add or change storage elements",
    "catalogue.areas": "grant users catalogue areas beyond their own, and revoke them",
    "tokens.mint": "mint tokens of any role",
    "tokens.revoke": "revoke tokens",
    "ce.tokens": "mint agent tokens for the CE's own pilots",
    "ce.pilots": "report the CE's pilot counts",
    "nodes.manage": "clear a nodeBad node, so the broker matches it again",
}

_READ = ("compute.read", "catalogue.read")
#: What each role's tokens hold unless minted with fewer.
ROLE_SCOPES: Dict[str, FrozenSet[str]] = {
    # catalogue.write: the files `gridpilot submit` ships and `gridpilot cp file:... LFN` uploads, in the user's areas.
    "user": frozenset((*_READ, "compute.create", "compute.cancel", "catalogue.write")),
    "agent": frozenset((*_READ, "compute.modify", "queue.match", "queue.probe")),
    "job": frozenset((*_READ, "compute.modify", "catalogue.write")),
    "ce": frozenset((*_READ, "compute.modify", "queue.probe", "ce.tokens", "ce.pilots")),
    # A tower (gridpilot tower) matches jobs for a site whose nodes have no network and reports on them as their
    # agent would: an agent's scopes, no more (files are registered with each job's own token).
    "tower": frozenset((*_READ, "compute.modify", "queue.match", "queue.probe")),
    "admin": frozenset(SCOPES),
}

#: The scope each route under /api/v1 needs. A route not listed needs a valid token only (GET /whoami); routes that
#: need no token (health, JWKS, metrics) are marked so in app.py.
ROUTE_SCOPES: Dict[Tuple[str, str], str] = {
    ("GET", "/jobs"): "compute.read",
    ("POST", "/jobs"): "compute.create",
    ("GET", "/jobs/{job_id}"): "compute.read",
    ("POST", "/jobs/{job_id}/kill"): "compute.cancel",
    ("POST", "/jobs/{job_id}/resubmit"): "compute.create",
    ("GET", "/jobs/{job_id}/trace"): "compute.read",
    ("GET", "/jobs/{job_id}/why"): "compute.read",
    ("GET", "/jobs/{job_id}/subjobs"): "compute.read",
    # The running job's kill poll (central/control.py): it writes nothing.
    ("GET", "/jobs/{job_id}/control"): "compute.read",
    # Its bulk form, one request for all of a pilot's jobs: a POST for the body, and it writes nothing either.
    ("POST", "/control"): "compute.read",
    ("POST", "/jobs/{job_id}/trace"): "compute.modify",
    ("POST", "/jobs/{job_id}/status"): "compute.modify",
    ("POST", "/heartbeats"): "compute.modify",
    ("POST", "/match"): "queue.match",
    ("POST", "/queue/probe"): "queue.probe",
    ("GET", "/catalogue/files"): "catalogue.read",
    ("GET", "/catalogue/dirs"): "catalogue.read",
    ("GET", "/storage"): "catalogue.read",
    ("POST", "/catalogue/files"): "catalogue.write",
    ("POST", "/storage"): "storage.configure",
    ("GET", "/areas"): "catalogue.read",
    ("POST", "/areas"): "catalogue.areas",
    ("POST", "/areas/revoke"): "catalogue.areas",
    ("POST", "/tokens"): "tokens.mint",
    ("POST", "/tokens/revoke"): "tokens.revoke",
    ("POST", "/ce/tokens"): "ce.tokens",
    ("POST", "/ce/pilots"): "ce.pilots",
    ("GET", "/nodes"): "compute.read",
    ("POST", "/nodes/events"): "compute.modify",
    ("POST", "/nodes/clear"): "nodes.manage",
    # A pilot's (or a CE's) node probe (central/nodeprobes.py); its history, read by an admin.
    ("POST", "/nodes/probe"): "compute.modify",
    ("GET", "/nodes/{host}/probes"): "compute.read",
    ("GET", "/jobs/summary"): "compute.read",
    # The files a job registered (gridpilot get): catalogue entries, read as the catalogue is.
    ("GET", "/jobs/{job_id}/files"): "catalogue.read",
    # gridpilot spy (central/spy.py): asking reads the job through its pilot; answering reports on a job one runs.
    ("POST", "/jobs/{job_id}/spy"): "compute.read",
    ("GET", "/jobs/{job_id}/spy/{request_id}"): "compute.read",
    ("POST", "/jobs/{job_id}/spy/{request_id}/answer"): "compute.modify",
    # Bulk state and trace reports (central/bulkreports.py): a tower's, or an agent's.
    ("POST", "/reports"): "compute.modify",
}

#: Longest scope claim read: every scope above fits many times over.
MAX_SCOPE_CLAIM = 2048


def for_route(method: str, path: str) -> Optional[str]:
    """The scope a route needs: `path` is its template, with or without the /api/v1 prefix."""
    return ROUTE_SCOPES.get((method, _CONVERTER.sub(r"{\1}", path).removeprefix("/api/v1")))


def requested(role: str, scope: Optional[str]) -> FrozenSet[str]:
    """The scopes a token of `role` is minted with: all its role's when `scope` is None, else the space-separated
    ones asked for, each of which the role must have (ValueError naming the first that is not)."""
    allowed = ROLE_SCOPES[role]
    if scope is None:
        return allowed
    asked = frozenset(scope.split())
    if not asked:
        raise ValueError("scope must name at least one scope")
    for s in sorted(asked):
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
        if s not in allowed:
            raise ValueError(f"a {role} token cannot have scope {s!r}; its scopes are {to_claim(allowed)}")
    return asked


def granted(role: str, claim: object) -> Optional[FrozenSet[str]]:
    """The scopes a verified token holds: those of its claim that its role may have. None when the claim is not a
    space-separated string."""
    if not isinstance(claim, str) or len(claim) > MAX_SCOPE_CLAIM:
        return None
    return frozenset(claim.split()) & ROLE_SCOPES[role]


def to_claim(scopes: Iterable[str]) -> str:
    """The `scope` claim: space-separated, in SCOPES' order (the same set always reads the same)."""
    have = set(scopes)
    return " ".join(s for s in SCOPES if s in have)


__all__ = ["ROLE_SCOPES", "ROUTE_SCOPES", "SCOPES", "for_route", "granted", "requested", "to_claim"]

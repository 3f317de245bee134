"""Who is calling, and what they may touch.

401 when the caller cannot be believed (no token, bad signature, expired, revoked); 403 when the caller is known
but the token's scopes (scopes.py), its role or its binding do not allow the call; 404, as if it did not exist, for a
job the caller may not see (found_or_absent), so that another user's job ids cannot be probed. The binding rules,
one place for every endpoint:

- admin: everything.
- user: submits; sees, kills and reads the traces of the jobs it owns.
- agent (bound to a site and a CE): matches, and reports on the jobs assigned to it (same subject, site, CE).
- job (bound to a job id and its resubmission counter): its own job only, in that attempt, and only while it is
  the token the job was last matched with.
- ce (bound to a site and a CE): sees the jobs at its site, reports heartbeats for them, probes the queue, mints
  short-lived agent tokens bound to its own site and CE for its pilots, reports its pilot counts (pilots.py).
- tower (bound to a site and a CE, like an agent): `gridpilot tower`, which runs jobs on nodes without network
  through an ARC CE. It matches and reports like an agent (holds_job: same subject, site, CE), and reports in
  bulk (bulkreports.py); it registers files only with each job's own job token.

What a role may do to a job's state is SETTABLE_STATES below, within the transition table (states.TRANSITIONS);
docs/central-api.md shows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, FrozenSet, Mapping, Optional

from sqlalchemy.engine import Connection

from gridpilot.central import scopes, tokens
from gridpilot.central.problems import ApiError, forbidden, not_found, unauthenticated
from gridpilot.central.tokens import Claims
from gridpilot.states import JobStatus


#: What a pilot reports through POST /jobs/{id}/status: the steps of a run and how it ended, KILLED (a kill it
#: carried out) and WAITING (it gives back a job it could not start: only from ASSIGNED or STARTED, see reports.py).
_PILOT_STATES: FrozenSet[JobStatus] = frozenset(
    {JobStatus.STARTED, JobStatus.RUNNING, JobStatus.SAVING, JobStatus.DONE, JobStatus.DONE_WARN, JobStatus.KILLED,
     JobStatus.WAITING}
    | {s for s in JobStatus if s.name.startswith("ERROR_")}
)

#: The states a token of each role may set through POST /jobs/{id}/status (and POST /reports), always within
#: states.TRANSITIONS. A tower stands in for the pilots of the nodes it serves: what an agent may set.
#: An admin stands in for a pilot, no more: it kills through POST /jobs/{id}/kill like a user. A user ends its jobs
#: only by killing them; a ce token reports pilot counts and heartbeats, never states.
SETTABLE_STATES: Mapping[str, FrozenSet[JobStatus]] = {
    "admin": _PILOT_STATES,
    "agent": _PILOT_STATES,
    "tower": _PILOT_STATES,
    "job": _PILOT_STATES,
    "user": frozenset(),
    "ce": frozenset(),
}

#: The states only central itself sets, and which part of it: no token may report them.
CENTRAL_STATES: Mapping[JobStatus, str] = {
    JobStatus.ASSIGNED: "the broker, when it matches the job to an agent",
    JobStatus.ZOMBIE: "the sweeper, when a held job's heartbeats stop",
    JobStatus.EXPIRED: "the sweeper, when a ZOMBIE job stays silent",
    JobStatus.FAULTY: "nothing yet (an ALICE state kept for its code)",
    JobStatus.INCORRECT: "nothing yet (a JDL central refuses is never queued)",
    JobStatus.SPLIT: "submit, when a JDL with Split becomes a masterjob and its subjobs",
}


#: The roles that take jobs through POST /match and then hold them (jobs.agent is the token's subject; site and
#: CE its binding).
MATCHING_ROLES: FrozenSet[str] = frozenset({"agent", "tower"})


@dataclass(frozen=True)
class Principal:
    claims: Claims

    @property
    def role(self) -> str:
        return self.claims.role

    @property
    def subject(self) -> str:
        return self.claims.subject

    def describe(self) -> str:
        return f"{self.role} {self.subject!r}"


def bearer(authorization: Optional[str]) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 when there is none."""
    if not authorization:
        raise unauthenticated("missing Authorization: Bearer <token> header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("the Authorization header must be `Bearer <token>`")
    return token.strip()


def authenticate(conn: Connection, verifier: tokens.Verifier, authorization: Optional[str],
                 scope: Optional[str] = None) -> Principal:
    """The caller of a request: 401 when its token is missing, not central's, expired or revoked; 403
    (insufficient_scope) when it lacks the `scope` the route needs (scopes.ROUTE_SCOPES)."""
    claims = verifier.verify(bearer(authorization), conn)
    if tokens.is_revoked(conn, claims.jti):
        raise unauthenticated("token revoked", "token_revoked")
    p = Principal(claims)
    if scope is not None and scope not in claims.scopes:
        have = scopes.to_claim(claims.scopes) or "none"
        raise ApiError(403, "insufficient_scope", f"{p.describe()} may not do this: it needs scope {scope!r}, "
                                                  f"the token's scopes are {have}")
    return p


def require_role(p: Principal, *roles: str, action: str) -> None:
    if p.role not in roles:
        raise forbidden(f"a {p.role} token may not {action} (needs {' or '.join(roles)})")


def _get(job: Any, name: str) -> Any:
    return job[name] if isinstance(job, dict) else getattr(job, name)


def holds_job(p: Principal, job: Any) -> bool:
    """The caller runs this job: the agent (or tower) it is assigned to, or its own job token in the current
    attempt."""
    c = p.claims
    if p.role in MATCHING_ROLES:
        return (_get(job, "agent") == c.subject and _get(job, "site") == c.site and _get(job, "ce") == c.ce)
    if p.role == "job":
        # The token must be the one the job was last matched with, not only one for the same attempt: if a crash
        # lost an assignment (matching.match) and the job was matched again, the first pilot's token is refused here.
        return (_get(job, "id") == c.job_id and _get(job, "resubmission") == c.resubmission
                and _get(job, "token_jti") == c.jti)
    return False


def can_view(p: Principal, job: Any) -> bool:
    if p.role == "admin" or holds_job(p, job):
        return True
    if p.role == "user":
        return bool(_get(job, "user") == p.subject)
    if p.role == "ce":
        return bool(_get(job, "site") == p.claims.site)
    return False


def can_report(p: Principal, job: Any) -> bool:
    """May change the job's state, send its heartbeats and append to its trace."""
    return p.role == "admin" or holds_job(p, job)


def can_control(p: Principal, job: Any) -> bool:
    """May kill the job: its owner or an admin."""
    return p.role == "admin" or (p.role == "user" and _get(job, "user") == p.subject)


def heartbeat_check(p: Principal) -> Callable[[Any], bool]:
    """Whether the caller may send heartbeats for a job row: can_report, or a ce token for jobs at its site and CE.

    Returned as a function, with the caller's bindings looked up once, because a bulk request checks many rows.
    """
    c = p.claims
    if p.role == "admin":
        return lambda row: True
    if p.role in MATCHING_ROLES:
        return lambda row: row.agent == c.subject and row.site == c.site and row.ce == c.ce
    if p.role == "ce":
        return lambda row: row.site == c.site and row.ce == c.ce
    return lambda row: False


def check(allowed: bool, p: Principal, action: str, job_id: int) -> None:
    if not allowed:
        raise forbidden(f"{p.describe()} may not {action} job {job_id}")


def knows_of(p: Principal, job: Any) -> bool:
    """The caller may learn that the job exists: it may see it, or its token names it (a job token of an attempt
    that has ended, say). Anyone else is answered as if the job did not exist."""
    return can_view(p, job) or (p.role == "job" and _get(job, "id") == p.claims.job_id)


def no_such_job(job_id: int) -> ApiError:
    """The one answer for a job that does not exist, or that the caller may not learn exists: alike to the byte."""
    return not_found(f"no job {job_id}", "job_not_found")


def found_or_absent(p: Principal, job: Any, job_id: int) -> Any:
    """The job row, or 404 when there is none or the caller may not know of it (see knows_of)."""
    if job is None or not knows_of(p, job):
        raise no_such_job(job_id)
    return job


def check_settable(p: Principal, state: JobStatus) -> None:
    """403 unless the caller's role may report this state (SETTABLE_STATES): before the job is looked up, so the
    refusal says nothing about which jobs exist."""
    if state in SETTABLE_STATES.get(p.role, frozenset()):
        return
    who = CENTRAL_STATES.get(state)
    why = f"only central sets it ({who})" if who else f"a {p.role} token sets no state"
    raise forbidden(f"a {p.role} token may not set {state.name}: {why}")


__all__ = ["CENTRAL_STATES", "MATCHING_ROLES", "SETTABLE_STATES", "ApiError", "Principal", "authenticate",
           "can_control", "can_report", "can_view", "check", "check_settable", "found_or_absent", "holds_job", "knows_of", "no_such_job",
           "require_role"]

"""The computing element's side of central: agent tokens for the pilots it submits, and its pilot counts.

A CE token (role `ce`, bound to a site and a CE) may mint agent tokens bound to that same site and CE, short-lived
(the pilot's longest queue wait, its wall time and a margin; at most PILOT_TOKEN_MAX_TTL_S), so a leaked pilot token
is worth little and a CE can never speak for another site. It reports how many pilots it has in its batch system by state; /metrics
shows the last report of each CE, read from the database so every central process shows the same numbers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from sqlalchemy import delete, select

from gridpilot.central import auth, bounds, schema, tokens
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import forbidden
from gridpilot.client import PILOT_TOKEN_MAX_TTL_S

#: Default life of a pilot's agent token; the longest (PILOT_TOKEN_MAX_TTL_S) is shared with the CE through client.py,
#: so a CE refuses a configuration that would need longer before it submits anything.
PILOT_TOKEN_TTL_S = tokens.DAY
#: The batch states a CE reports, in the order /metrics lists them.
PILOT_STATES: Tuple[str, ...] = ("queued", "running", "finished", "failed", "held")
#: Counts above this are a CE's bug, not a site.
MAX_COUNT = 10_000_000
#: `ended`, the pilots a CE saw end by exit reason (exitcodes.reason(): `ok`, `signal_SIGKILL`, `exit_3`...): at
#: most this many reasons, each a name of letters, digits and `_` up to MAX_REASON characters.
MAX_REASONS = 64
MAX_REASON = 64
_REASON = re.compile(r"[A-Za-z0-9_]{1,%d}" % MAX_REASON)


def _binding(p: Principal, body: Mapping[str, Any], action: str) -> Tuple[str, str]:
    """The site and CE this call is for: a CE token's own (the body may repeat them, not change them); an admin
    names them in the body."""
    auth.require_role(p, "ce", "admin", action=action)
    site, ce = body.get("site"), body.get("ce")
    for name, v in (("site", site), ("ce", ce)):
        bounds.optional_text(v, name, bounds.MAX_NAME, what=f"field '{name}'")
    if p.role == "ce":
        c = p.claims
        if (site is not None and site != c.site) or (ce is not None and ce != c.ce):
            raise forbidden(f"{p.describe()} is bound to site {c.site!r} and CE {c.ce!r}; it may not {action} "
                            f"for site {site or c.site!r}, CE {ce or c.ce!r}")
        return str(c.site), str(c.ce)
    if not (site and ce):
        raise bounds.bad_field("ce" if site else "site", f"an admin must name the 'site' and 'ce' to {action} for")
    return site, ce


def mint_pilot_token(key: tokens.Keys, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    """An agent token for one pilot, bound to the caller's site and CE. Body: {subject?, ttl_s?, site?, ce?}."""
    site, ce = _binding(p, body, "mint pilot tokens")
    subject = bounds.text(body.get("subject", f"pilot@{ce}"), "subject", bounds.MAX_NAME, what="field 'subject'")
    ttl = body.get("ttl_s", PILOT_TOKEN_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl <= PILOT_TOKEN_MAX_TTL_S):
        raise bounds.bad_field("ttl_s", f"field 'ttl_s' must be a number of seconds above 0 and at most "
                                        f"{int(PILOT_TOKEN_MAX_TTL_S)} (a pilot token is short-lived), got {ttl!r:.40}")
    token, claims = tokens.mint(key, "agent", subject, site=site, ce=ce, ttl_s=float(ttl), now=now)
    return {"token": token, "claims": claims.to_dict()}


def report_pilots(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    """Store a CE's pilot counts. Body: {"pilots": {state: count}, "ended"?: {reason: count}, "backend"?, "site"?,
    "ce"?}."""
    site, ce = _binding(p, body, "report pilots")
    counts = body.get("pilots")
    if not isinstance(counts, dict):
        raise bounds.bad_field("pilots", f"field 'pilots' must be an object of counts by state "
                                         f"({', '.join(PILOT_STATES)})")
    unknown = sorted(set(counts) - set(PILOT_STATES))
    if unknown:
        raise bounds.bad_field("pilots", f"field 'pilots' has unknown states {unknown[:10]!r:.200}; states are "
                                         f"{', '.join(PILOT_STATES)}")
    row: Dict[str, Any] = {}
    for state in PILOT_STATES:
        row[state] = bounds.whole(counts.get(state, 0), f"pilots.{state}", 0, MAX_COUNT)
    backend = bounds.text(body.get("backend", ""), "backend", 32, empty=True, what="field 'backend'")
    ended = _ended(body.get("ended"))
    with db.write(durable=False) as conn:  # the next cycle's report replaces a lost one
        t = schema.ce_pilots
        conn.execute(delete(t).where(t.c.site == site, t.c.ce == ce))
        conn.execute(t.insert().values(site=site, ce=ce, backend=backend, updated=now,
                                       ended=None if ended is None else json.dumps(ended, sort_keys=True), **row))
    return {"site": site, "ce": ce, "backend": backend, "pilots": row, "ended": ended, "updated": now}


def _ended(value: Any) -> Optional[Dict[str, int]]:
    """The optional `ended` field: {reason: count}, bounded; None when absent (a CE that does not say)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bounds.bad_field("ended", "field 'ended' must be an object of counts by exit reason")
    if len(value) > MAX_REASONS:
        raise bounds.bad_field("ended", f"field 'ended' has {len(value)} reasons; at most {MAX_REASONS}")
    out: Dict[str, int] = {}
    for reason, n in value.items():
        if not _REASON.fullmatch(reason):
            raise bounds.bad_field("ended", f"field 'ended' has a reason {reason[:80]!r}; a reason is 1 to "
                                            f"{MAX_REASON} letters, digits or _")
        out[reason] = bounds.whole(n, f"ended.{reason}", 0, MAX_COUNT)
    return out


def pilot_counts(db: Database) -> List[Dict[str, Any]]:
    """Every CE's last report, by site and CE."""
    t = schema.ce_pilots
    with db.read() as conn:
        rows = conn.execute(select(t).order_by(t.c.site, t.c.ce)).all()
    return [{**r._mapping, "ended": None if r.ended is None else json.loads(r.ended)} for r in rows]


__all__ = ["MAX_REASON", "MAX_REASONS", "PILOT_STATES", "PILOT_TOKEN_MAX_TTL_S", "PILOT_TOKEN_TTL_S", "mint_pilot_token", "pilot_counts",
           "report_pilots"]

"""Where in the catalogue each user's jobs may write: the user's own area, and the areas an admin granted it.

A job's OutputDir must lie in an area of the job's user, checked at submit (jobs.submit); the catalogue then lets
the job register files only under its OutputDir, and never over a file another user owns (catalogue.py). So a
user's jobs write only where the user may.

The own area comes from a template, the central setting `user_area` (settings.DEFAULT_USER_AREA,
"/gridpilot/user/{initial}/{user}", after ALICE's /alice/cern.ch/user/<initial>/<user>): {user} is the user's
name, {initial} its first character. A user whose name is not one path component (it holds a '/', or is '.' or
'..') has no own area, only granted ones. Grants live in the user_areas table; an admin adds and removes them
through the API (POST /api/v1/areas, POST /api/v1/areas/revoke) or `gridpilot area grant|revoke`. A grant
changes what later submissions may ask; jobs already queued keep the OutputDir they were accepted with.
"""

from __future__ import annotations

import string
from typing import Any, Dict, List, Mapping, Optional

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gridpilot.central import auth, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.paths import is_within, normalize_path
from gridpilot.central.problems import bad_request, forbidden
from gridpilot.errors import ConfigError

AREAS = schema.user_areas
TEMPLATE_FIELDS = ("user", "initial")
MAX_USER = 255  # the width of user_areas.user and jobs.user


def check_template(template: Any) -> str:
    """The `user_area` setting, checked: an absolute path with {user} (and perhaps {initial}) in it."""
    if not isinstance(template, str) or not template.startswith("/"):
        raise ConfigError(f"user_area must be an absolute catalogue path such as /gridpilot/user/{{initial}}/{{user}}, "
                          f"got {template!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConfigError(f"user_area {template!r}: {e}") from None
    if "user" not in fields or not fields <= set(TEMPLATE_FIELDS):
        raise ConfigError(f"user_area {template!r} must hold {{user}} and no placeholder but {{user}} and {{initial}}")
    try:
        normalize_path(template.format(user="u", initial="u"), "user_area")
    except Exception as e:  # an ApiError: one line for the operator instead
        raise ConfigError(str(e)) from None
    return template


def own_area(template: str, user: str) -> Optional[str]:
    """The user's own area, or None when its name cannot be one path component of it."""
    if not user or "/" in user or user in (".", "..") or any(ord(c) < 32 for c in user):
        return None
    return normalize_path(template.format(user=user, initial=user[0]), "user_area")


def granted_areas(conn: Connection, user: str) -> List[Dict[str, Any]]:
    rows = conn.execute(select(AREAS).where(AREAS.c.user == user).order_by(AREAS.c.path))
    return [{"user": r.user, "path": r.path, "granted": r.granted, "granted_by": r.granted_by} for r in rows]


def areas_of(conn: Connection, template: str, user: str) -> List[str]:
    """Every area the user's jobs may write in: its own, then the granted ones."""
    own = own_area(template, user)
    return ([own] if own else []) + [g["path"] for g in granted_areas(conn, user)]


def output_dir_for(conn: Connection, template: str, p: Principal, user: str, output_dir: Optional[str]) -> Optional[str]:
    """A submitted job's OutputDir, normalized, after checking it lies in one of `user`'s areas (400 naming
    OutputDir otherwise). None when the JDL gives none: the job then writes in <own area>/job-<id>, which needs an
    own area. An admin's submission may name any OutputDir: the admin answers for it (and the catalogue still
    keeps other users' files from being overwritten)."""
    if output_dir is None:
        if own_area(template, user) is None and p.role != "admin":
            raise bad_request(f"OutputDir: user {user!r} has no area of its own (its name is not one path "
                              "component), so the job must name an OutputDir in an area an admin granted it")
        return None
    out = normalize_path(output_dir, "OutputDir")
    if p.role == "admin":
        return out
    areas = areas_of(conn, template, user)
    if not any(is_within(out, a) for a in areas):
        where = ", ".join(areas) if areas else "none"
        raise bad_request(f"OutputDir {out} is outside {user}'s areas in the catalogue ({where}); an admin may "
                          "grant more (gridpilot area grant)", "output_dir_outside_area")
    return out


def default_output_dir(template: str, user: str, job_id: int) -> str:
    """Where a job's outputs go when its JDL names no OutputDir: job-<id> in its user's own area."""
    own = own_area(template, user)
    return f"{own.rstrip('/')}/job-{job_id}" if own else f"/gridpilot/jobs/{job_id}"


# -- the API: list, grant, revoke --


def _user_field(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_USER or any(ord(c) < 32 for c in value):
        raise bad_request(f"field 'user' must be a user name of 1 to {MAX_USER} printable characters")
    return value


def list_areas(db: Database, p: Principal, template: str, query: Mapping[str, str]) -> Dict[str, Any]:
    """A user's areas (own first, then granted); a user token sees its own, an admin anyone's, or every grant."""
    auth.require_role(p, "user", "admin", action="list catalogue areas")
    user = query.get("user") or None
    if p.role == "user":
        if user is not None and user != p.subject:
            raise forbidden(f"a user token lists only its own areas, not {user!r}'s")
        user = p.subject
    with db.read() as conn:
        if user is None:
            rows = conn.execute(select(AREAS).order_by(AREAS.c.user, AREAS.c.path))
            return {"user": None, "areas": [{"user": r.user, "path": r.path, "granted": r.granted,
                                             "granted_by": r.granted_by} for r in rows]}
        user = _user_field(user)
        own = own_area(template, user)
        areas = ([{"user": user, "path": own, "granted": None, "granted_by": None}] if own else [])
        return {"user": user, "areas": areas + granted_areas(conn, user)}


def grant(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    auth.require_role(p, "admin", action="grant catalogue areas")
    user = _user_field(body.get("user"))
    path = normalize_path(body.get("path"), "path")
    insert = postgresql.insert if db.is_postgres else sqlite.insert
    with db.write() as conn:
        # A grant given twice (two admins at once, or a repeated request) is one grant, the first.
        added = conn.execute(insert(AREAS).values(user=user, path=path, granted=now, granted_by=p.subject)
                             .on_conflict_do_nothing(index_elements=[AREAS.c.user, AREAS.c.path])
                             .returning(AREAS.c.user)).first() is not None
        row = conn.execute(select(AREAS).where(AREAS.c.user == user, AREAS.c.path == path)).one()
    return {"user": user, "path": path, "granted": row.granted, "granted_by": row.granted_by, "already": not added}


def revoke(db: Database, p: Principal, body: Mapping[str, Any]) -> Dict[str, Any]:
    auth.require_role(p, "admin", action="revoke catalogue areas")
    user = _user_field(body.get("user"))
    path = normalize_path(body.get("path"), "path")
    with db.write() as conn:
        gone = conn.execute(delete(AREAS).where(AREAS.c.user == user, AREAS.c.path == path)
                            .returning(AREAS.c.user)).first()
    return {"user": user, "path": path, "revoked": gone is not None}


__all__ = ["areas_of", "check_template", "default_output_dir", "grant", "list_areas", "output_dir_for", "own_area",
           "revoke"]

"""The file catalogue: logical file names (LFNs) with size, checksums and replicas on storage elements.

A job registers files only under its own output directory (its OutputDir, which submit checked lies in one of its
user's areas, see areas.py), a user (the files `gridpilot submit` ships, `gridpilot cp file:... LFN`) only in its
own areas, never as a job's, and neither ever over a file another user owns (a file belongs to the user whose job, or the
admin who, registered it first: its replicas change only through that user's jobs or an admin), and only on a
storage element central knows. The storage layer verifies size and checksum
on the storage element before it registers (DESIGN), so central records what it is told, but refuses a second
replica whose size or checksum disagrees with the first.

Nothing registers for a job after its kill (docs/pilot.md, "After a kill"): a job token is refused (409 job_killed)
once the job's kill was requested, and a DONE reported after the kill request, which central turns into KILLED,
takes out of the catalogue what the attempt registered after the request (forget_job_files with `since`), in case
one slipped in. What it registered before the request stays: partial outputs the user may want.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from gridpilot.central import areas, auth, bounds, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import add_trace, kill_requested_at, locked_job, output_dir_of, query_int
from gridpilot.central.paths import is_under, is_within, normalize_path, parent_of
from gridpilot.central.problems import bad_request, conflict, forbidden, not_found
from gridpilot.central.settings import DEFAULT_USER_AREA
from gridpilot.states import JobStatus

FILES = schema.files
REPLICAS = schema.replicas
SE = schema.storage_elements

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(::[A-Za-z0-9_.-]+)*$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
SE_KINDS = ("disk", "tape")


def _checksum(body: Mapping[str, Any], key: str, width: int) -> Optional[str]:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not _HEX.match(v) or len(v) > width:
        raise bounds.bad_field(key, f"{key} must be at most {width} hexadecimal digits")
    return v.lower().rjust(width, "0")


def _file_dict(conn: Connection, lfn: str) -> Optional[Dict[str, Any]]:
    f = conn.execute(select(FILES).where(FILES.c.lfn == lfn)).first()
    if f is None:
        return None
    reps = conn.execute(select(REPLICAS.c.se, REPLICAS.c.pfn).where(REPLICAS.c.lfn == lfn)
                        .order_by(REPLICAS.c.created, REPLICAS.c.se)).all()
    return {"lfn": f.lfn, "size": f.size, "adler32": f.adler32, "md5": f.md5, "job_id": f.job_id,
            "owner": f.owner, "created": f.created, "replicas": [{"se": r.se, "pfn": r.pfn} for r in reps]}


def register_file(db: Database, p: Principal, body: Mapping[str, Any], now: float,
                  user_area: str = DEFAULT_USER_AREA) -> Dict[str, Any]:
    """Register a verified replica of `lfn`. `user_area` is central's `user_area` setting: a user token registers
    only in that user's areas (areas.py)."""
    auth.require_role(p, "job", "user", "admin", action="register files")
    lfn = normalize_path(body.get("lfn"))
    size = bounds.whole(body.get("size"), "size", 0, bounds.MAX_FILE_SIZE, what="size (bytes)")
    adler32, md5 = _checksum(body, "adler32", 8), _checksum(body, "md5", 32)
    se = bounds.text(body.get("se"), "se", bounds.MAX_NAME, what="se (the storage element's name)")
    pfn = bounds.text(body.get("pfn"), "pfn", bounds.MAX_URL, what="pfn (the physical URL of the replica)")
    job_id = body.get("job_id")
    if job_id is not None:
        bounds.whole(job_id, "job_id", 1, bounds.MAX_ID)
    if p.role == "job":
        if job_id is None:
            job_id = p.claims.job_id
        if job_id != p.claims.job_id:
            raise forbidden(f"this job token may register files only for job {p.claims.job_id}")
    if p.role == "user" and job_id is not None:
        # A job's outputs are its job token's to register: they leave the catalogue when the job is resubmitted.
        raise forbidden("a user token registers files of its own, not a job's: omit job_id")

    with db.write() as conn:
        owner = p.subject
        if job_id is not None:
            # Locked (PostgreSQL) so a kill request, which locks the row too, is either seen here or comes after
            # this registration's commit: the files of a killed attempt are then exactly those registered at or
            # after the request's time (reports.py removes them).
            job = locked_job(conn, db, job_id)
            if p.role == "job":
                auth.check(auth.holds_job(p, job), p, "register files for", job_id)
                if job.kill_requested or job.state == int(JobStatus.KILLED):
                    # The pilot uploaded before it learned of the kill: nothing is uploaded after a kill.
                    raise conflict(f"job {job_id} was killed: it may not register {lfn} (nothing is uploaded "
                                   "after a kill)", "job_killed", job_id=job_id)
                out = normalize_path(output_dir_of(job), "the job's OutputDir")
                if not is_under(lfn, out):
                    raise forbidden(f"job {job_id} may register files only under its OutputDir {out}, not {lfn}")
            owner = job.user
        if p.role == "user":
            allowed = areas.areas_of(conn, user_area, p.subject)
            if not any(is_within(lfn, a) for a in allowed):
                where = ", ".join(allowed) if allowed else "none"
                raise forbidden(f"{lfn} is outside {p.subject}'s areas in the catalogue ({where}): a user registers "
                                "files only in its own area or one an admin granted it")
        if conn.execute(select(SE.c.name).where(SE.c.name == se)).first() is None:
            raise bad_request(f"unknown storage element {se!r}", "unknown_se", field="se")
        q = select(FILES).where(FILES.c.lfn == lfn)
        if db.is_postgres:
            q = q.with_for_update()
        existing = conn.execute(q).first()
        if existing is not None and p.role in ("job", "user") and existing.owner != owner:
            # The OutputDir check alone lets a job into any directory a grant or an admin's submission shares;
            # what another user already has there stays theirs.
            who = f"job {job_id} of {owner}" if p.role == "job" else f"user {owner}"
            raise forbidden(f"{lfn} belongs to {existing.owner}: {who} may not add or change its replicas")
        if existing is None:
            conn.execute(FILES.insert().values(lfn=lfn, dir=parent_of(lfn), size=size, adler32=adler32, md5=md5,
                                           job_id=job_id, owner=owner, created=now))
        else:
            for name, mine, theirs in (("size", size, existing.size), ("adler32", adler32, existing.adler32),
                                       ("md5", md5, existing.md5)):
                if mine is not None and theirs is not None and mine != theirs:
                    raise conflict(f"{lfn} is registered with {name} {theirs}, this replica has {mine}",
                                   "file_conflict")
            fill = {k: v for k, v in (("adler32", adler32), ("md5", md5))
                    if v is not None and getattr(existing, k) is None}
            if fill:
                conn.execute(update(FILES).where(FILES.c.lfn == lfn).values(**fill))
        rep = conn.execute(select(REPLICAS.c.pfn).where(REPLICAS.c.lfn == lfn, REPLICAS.c.se == se)).first()
        if rep is None:
            conn.execute(REPLICAS.insert().values(lfn=lfn, se=se, pfn=pfn, created=now))
        elif rep.pfn != pfn:
            conn.execute(update(REPLICAS).where(REPLICAS.c.lfn == lfn, REPLICAS.c.se == se)
                         .values(pfn=pfn, created=now))
        result = _file_dict(conn, lfn)
    assert result is not None
    return result


def forget_job_files(conn: Connection, job_id: int, since: Optional[float] = None) -> List[str]:
    """Remove from the catalogue the files job `job_id` registered (their `job_id`), with all their replicas: what
    a resubmission does with an ended attempt's outputs, as JAliEn's does; with `since`, only those registered at or
    after it (central's clock: what a killed attempt registered after the kill request). The LFNs removed, sorted.
    The copies stay on their storage elements: central does not delete from them."""
    mine = FILES.c.job_id == job_id
    if since is not None:
        mine = mine & (FILES.c.created >= since)
    lfns = [r.lfn for r in conn.execute(select(FILES.c.lfn).where(mine).order_by(FILES.c.lfn))]
    if lfns:
        # Replicas first, by the files' job rather than a list of LFNs: no foreign-key cascade is relied on (SQLite
        # enforces none unless asked) and no bound on how many parameters one statement takes.
        conn.execute(delete(REPLICAS).where(REPLICAS.c.lfn.in_(select(FILES.c.lfn).where(mine))))
        conn.execute(delete(FILES).where(mine))
    return lfns


#: The removed files a trace names one by one; beyond these, one line counts the rest.
MAX_TRACED_FILES = 50


def trace_removed_files(conn: Connection, job_id: int, now: float, lfns: List[str], why: str) -> None:
    """The job's trace lines for files forget_job_files removed, in JAliEn's resubmit wording with `why` ("Resubmit",
    "Kill") in front: "Resubmit: removing output file: LFN"."""
    for lfn in lfns[:MAX_TRACED_FILES]:
        add_trace(conn, job_id, now, "trace", f"{why}: removing output file: {lfn}")
    if len(lfns) > MAX_TRACED_FILES:
        add_trace(conn, job_id, now, "trace", f"{why}: removing {len(lfns) - MAX_TRACED_FILES} more output files")


def forget_files_after_kill(conn: Connection, job_id: int, now: float) -> List[str]:
    """A killed attempt's files registered at or after its kill request (none, normally: register_file refuses them
    once the request is in), removed and traced ("Kill: removing output file: LFN"). Those registered before stay."""
    since = kill_requested_at(conn, job_id)
    if since is None:
        return []
    removed = forget_job_files(conn, job_id, since)
    trace_removed_files(conn, job_id, now, removed, "Kill")
    return removed


#: Who reads the catalogue: users and admins all of it (the VO's shared namespace, as ALICE's catalogue is readable
#: by every member), a job what its user may read (its inputs may be anyone's). Agent and ce tokens, on every
#: worker node and CE of a site, never need it, so they may not.
READERS = ("user", "job", "admin")


def lookup(db: Database, p: Principal, lfn: Any) -> Dict[str, Any]:
    auth.require_role(p, *READERS, action="read the catalogue")
    path = normalize_path(lfn)
    with db.read() as conn:
        f = _file_dict(conn, path)
    if f is None:
        raise not_found(f"no file {path} in the catalogue", "file_not_found")
    return f


def list_dir(db: Database, p: Principal, path: Any) -> List[Dict[str, Any]]:
    """The files and subdirectories directly under `path`, by name. 404 when nothing is under it."""
    auth.require_role(p, *READERS, action="read the catalogue")
    d = normalize_path(path, "path", "path")
    prefix = "/" if d == "/" else d + "/"
    entries: Dict[str, Dict[str, Any]] = {}
    with db.read() as conn:
        # Replicas counted in one grouped query for the whole directory, not one query per file.
        in_dir = select(FILES.c.lfn).where(FILES.c.dir == d)
        counted = select(REPLICAS.c.lfn, func.count()).where(REPLICAS.c.lfn.in_(in_dir)).group_by(REPLICAS.c.lfn)
        counts: Dict[str, int] = {r[0]: int(r[1]) for r in conn.execute(counted)}
        for f in conn.execute(select(FILES).where(FILES.c.dir == d)):
            name = f.lfn[len(prefix):]
            entries[name] = {"name": name, "lfn": f.lfn, "type": "file", "size": f.size, "adler32": f.adler32,
                             "md5": f.md5, "owner": f.owner, "job_id": f.job_id, "created": f.created,
                             "replicas": counts.get(f.lfn, 0)}
        subdirs = select(FILES.c.dir).distinct().where(FILES.c.dir.startswith(prefix, autoescape=True))
        for (sub,) in conn.execute(subdirs):
            name = sub[len(prefix):].split("/", 1)[0]
            if name and name not in entries:
                entries[name] = {"name": name, "lfn": prefix + name, "type": "dir"}
    if not entries and d != "/":
        raise not_found(f"no directory {d} in the catalogue", "dir_not_found")
    return [entries[k] for k in sorted(entries)]


#: The storage element `central init` configures when given none (serve.py names it too).
INIT_SE_NAME = "LOCAL::GRIDPILOT::FILE"


def default_storage_element(elements: List[Dict[str, Any]], configured: Optional[str]) -> Optional[str]:
    """Where users' own files go unless they name a storage element: the `default_se` setting (when configured on
    this central), else the element `central init` made, else the only one; None when none of these holds (several
    elements and no choice made: the user must name one)."""
    names = {e["name"].upper(): e["name"] for e in elements}
    for want in (configured, INIT_SE_NAME):
        if want is not None and want.upper() in names:
            return names[want.upper()]
    return elements[0]["name"] if len(elements) == 1 else None


def storage_elements(db: Database) -> List[Dict[str, Any]]:
    with db.read() as conn:
        return [{"name": r.name, "url": r.url, "kind": r.kind}
                for r in conn.execute(select(SE).order_by(SE.c.name))]


def check_storage_element(body: Mapping[str, Any]) -> Dict[str, str]:
    name, url, kind = body.get("name"), body.get("url"), body.get("kind", "disk")
    if not isinstance(name, str) or not _SE_NAME.match(name) or len(name) > bounds.MAX_NAME:
        raise bounds.bad_field("name", "name must be a storage element name such as ALICE::CERN::EOS, at most "
                                       f"{bounds.MAX_NAME} characters")
    if not isinstance(url, str) or not _URL.match(url):
        raise bounds.bad_field("url", "url must be a URL such as file:///data/se or root://host//data")
    bounds.text(url, "url", bounds.MAX_URL)
    if kind not in SE_KINDS:
        raise bounds.bad_field("kind", f"kind must be one of {', '.join(SE_KINDS)}")
    return {"name": name, "url": url, "kind": kind}


def put_storage_element(conn: Connection, se: Mapping[str, str]) -> None:
    """Add or change a storage element (by name)."""
    if conn.execute(select(SE.c.name).where(SE.c.name == se["name"])).first() is None:
        conn.execute(SE.insert().values(**se))
    else:
        conn.execute(update(SE).where(SE.c.name == se["name"]).values(url=se["url"], kind=se["kind"]))


def add_storage_element(db: Database, p: Principal, body: Mapping[str, Any]) -> Dict[str, str]:
    auth.require_role(p, "admin", action="configure storage elements")
    se = check_storage_element(body)
    with db.write() as conn:
        put_storage_element(conn, se)
    return se


#: The most files one GET /jobs/{id}/files answers (and its default): `offset` pages through more.
MAX_JOB_FILES = 1000


def job_files(db: Database, p: Principal, job_id: int, query: Mapping[str, str]) -> Dict[str, Any]:
    """GET /jobs/{id}/files: the files job `job_id` registered, by LFN, with their replicas: those of its current
    attempt, or of its last one once it ended (a resubmission removes an ended attempt's, resubmit.py), which is
    what `gridpilot get` downloads. The job's owner or an admin; another user's job is a 404 as for every job read.
    The catalogue itself stays readable by every user (lookup, list_dir): this only answers which files are a job's.

    Files are found through ix_files_job (job_id, lfn; schema step 12), as forget_job_files finds them: the page in
    LFN order from the index, never a scan of the files table (tests/integration/test_catalogue_index.py)."""
    auth.require_role(p, "user", "admin", action="list a job's files")
    limit = query_int(query, "limit", MAX_JOB_FILES, 1, MAX_JOB_FILES)
    offset = query_int(query, "offset", 0, 0, 1 << 40)
    with db.read() as conn:
        row = conn.execute(select(schema.jobs).where(schema.jobs.c.id == job_id)).first()
        row = auth.found_or_absent(p, row, job_id)
        auth.check(auth.can_view(p, row), p, "list the files of", job_id)
        # One more than asked says whether another page follows.
        rows = conn.execute(select(FILES).where(FILES.c.job_id == job_id).order_by(FILES.c.lfn)
                            .limit(limit + 1).offset(offset)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        reps: Dict[str, List[Dict[str, str]]] = {}
        if rows:
            # The page's replicas in one query, bounded by the page's first and last LFN (no list of parameters).
            page = select(FILES.c.lfn).where(FILES.c.job_id == job_id, FILES.c.lfn >= rows[0].lfn,
                                             FILES.c.lfn <= rows[-1].lfn)
            for r in conn.execute(select(REPLICAS.c.lfn, REPLICAS.c.se, REPLICAS.c.pfn)
                                  .where(REPLICAS.c.lfn.in_(page))
                                  .order_by(REPLICAS.c.lfn, REPLICAS.c.created, REPLICAS.c.se)):
                reps.setdefault(r.lfn, []).append({"se": r.se, "pfn": r.pfn})
    files = [{"lfn": f.lfn, "size": f.size, "adler32": f.adler32, "md5": f.md5, "job_id": f.job_id, "owner": f.owner,
              "created": f.created, "replicas": reps.get(f.lfn, [])} for f in rows]
    return {"id": job_id, "state": JobStatus(row.state).name, "resubmission": row.resubmission,
            "output_dir": output_dir_of(row), "files": files, "offset": offset, "limit": limit, "more": more}

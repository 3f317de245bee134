"""Masterjobs: a JDL with `Split` becomes a masterjob and its subjobs (POST /jobs), all in one transaction, or
nothing; GET /jobs/{id}/subjobs counts its subjobs by state; kill and resubmit of a masterjob act on its subjobs.

What JAliEn does (alien.taskQueue.jobsplit, JobStatus): the submitted job is inserted, the JobOptimizer splits it
(state SPLITTING, code 2) into subjobs that carry `MasterJobID`, and the masterjob stays SPLIT (code 3) while they
run; a split that fails leaves it ERROR_SPLT (-8). gridpilot splits at submit time, inside the submission's
transaction, so there is no SPLITTING and no ERROR_SPLT: a split that cannot be made (an unknown input file, a
collection that was not sent, more subjobs than CentralSettings.max_subjobs) is the submission's 400 and nothing is
queued. The masterjob's row stays SPLIT (it never runs, the broker never sees it); the API shows as its `state`
the summary of its subjobs' states (summary_state), so that `gridpilot submit --wait` and `gridpilot job` on a
masterjob end when its subjobs have ended, and `masterjob.stored_state` keeps SPLIT.

The splitting rules themselves (strategies, limits, placeholders) are jdl/split.py's; collections jdl/collection.py's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from gridpilot.central import areas, auth, bounds, broker, jobs, resubmit, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError, bad_request, conflict
from gridpilot.central.settings import DEFAULT_MAX_SUBJOBS, DEFAULT_MAX_USER_RESUBMITS, DEFAULT_USER_AREA
from gridpilot.errors import JdlError
from gridpilot.jdl import ListValue, String, parse, parse_input_entry, write
from gridpilot.jdl.collection import parse_collection
from gridpilot.jdl.nodes import JdlDocument
from gridpilot.jdl.split import InputFile, Piece, SplitSpec, pieces, split_spec, substitute
from gridpilot import tracefmt
from gridpilot.states import RESUBMITTABLE_STATES, JobStatus, KillReason

JOBS = schema.jobs
SUBJOBS = schema.subjobs
FILES = schema.files
REPLICAS = schema.replicas

#: The keys a subjob's JDL does not keep: they say how to split, and a subjob is not split again.
_SPLIT_KEYS = ("Split", "SplitMaxInputFileNumber", "SplitMaxInputFileSize", "SplitArguments", "InputDataCollection")
#: The most collections one submission may send, and the most LFNs an error message names.
MAX_COLLECTIONS = 16
_NAMED = 5
#: How many LFNs one catalogue query asks for (SQLite's parameter limit is 32,766 on current builds, 999 on old).
_CHUNK = 500


# -- submit --


def submit(db: Database, p: Principal, body: Mapping[str, Any], now: float,
           requirements: Optional[broker.RequirementCache] = None, *, user_area: str = DEFAULT_USER_AREA,
           max_subjobs: int = DEFAULT_MAX_SUBJOBS) -> Dict[str, Any]:
    """POST /jobs: a JDL without Split is one job (jobs.submit); with Split, a masterjob in state SPLIT and its
    subjobs in WAITING, each with its InputData share and its placeholders replaced, in one transaction."""
    s = jobs.check_submission(p, body)
    try:
        spec = split_spec(s.job.document)
    except JdlError as e:
        raise bad_request(e.message, "invalid_jdl", field="jdl", line=e.line, column=e.column) from None
    if spec is None:
        if body.get("collections"):
            raise bounds.bad_field("collections", "field 'collections' is for a JDL with Split (its "
                                                  "InputDataCollection); this JDL has no Split")
        return jobs.submit(db, p, body, now, requirements, user_area=user_area)
    texts = _collections(body)
    with db.write() as conn:
        files = [] if spec.is_production else _input_files(conn, s.job, texts)
        shares = pieces(spec, files)
        if len(shares) > max_subjobs:
            raise bounds.bad_field("Split", f"Split = {spec.describe()!r} makes {len(shares)} subjobs, more than "
                                            f"this central allows in one masterjob ({max_subjobs}): split coarser "
                                            "(SplitMaxInputFileNumber) or submit the inputs in parts",
                                   "too_many_subjobs", subjobs=len(shares), limit=max_subjobs)
        master_dir = s.job.output_dir if s.job.output_dir else None
        master = jobs.insert_job(conn, s, now, text=s.text, output_dir=master_dir, user_area=user_area,
                                 state=JobStatus.SPLIT)
        ids = _insert_subjobs(conn, p, s, spec, master, shares, now, user_area)
        jobs.add_trace(conn, master, now, "state", f"SPLIT: submitted by {jobs.submitted_by(p, s)}; split by "
                                                   f"{spec.describe()} into {len(ids)} subjobs ({ids[0]} to {ids[-1]})")
    jobs.learn_requirements(s, requirements)
    return {"id": master, "state": JobStatus.SPLIT.name, "subjobs": len(ids), "first_subjob": ids[0],
            "last_subjob": ids[-1], "split": spec.describe()}


def _collections(body: Mapping[str, Any]) -> Dict[str, str]:
    """The `collections` field: {name as InputDataCollection writes it (without LF: and options): its text}, what the
    CLI read for a collection central cannot (a local file; central does not read storage elements)."""
    raw = body.get("collections")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_COLLECTIONS:
        raise bounds.bad_field("collections", f"field 'collections' must be an object of at most {MAX_COLLECTIONS} "
                                              "{name: text} entries")
    for k, v in raw.items():
        bounds.text(k, "collections", bounds.MAX_LFN, what="a collection's name")
        bounds.text(v, f"collections.{k[:80]}", bounds.MAX_JDL << 4, empty=True, what=f"collection {k[:80]}'s text")
    return dict(raw)


def _input_files(conn: Connection, job: Any, texts: Mapping[str, str]) -> List[InputFile]:
    """The files to split, in order: InputData's, then each InputDataCollection's, with their sizes and the storage
    elements of their replicas from the catalogue. 400 naming the key for anything not in the catalogue."""
    wanted: List[Tuple[str, str]] = []
    for e in job.input_data:
        if not e.catalogue:
            raise bounds.bad_field("InputData", f"InputData entry {e.path!r} is not an LFN (LF:...): a split job's "
                                                "inputs come from the catalogue")
        wanted.append((e.path, "InputData"))
    for c in job.input_data_collection:
        text = texts.get(c.path)
        if text is None:
            raise bounds.bad_field("InputDataCollection", f"InputDataCollection {c.path} was not sent with the "
                                                          "submission: "
                                                          "`gridpilot submit` reads it (a local file, or an LFN it "
                                                          "downloads) and sends its text", "collection_not_sent")
        try:
            wanted += [(lfn, "InputDataCollection") for lfn in parse_collection(text, c.path)]
        except JdlError as e:
            raise bad_request(f"InputDataCollection: {e.message}", "invalid_collection", field="InputDataCollection",
                              line=e.line,
                              column=e.column) from None
    if not wanted:
        raise bounds.bad_field("InputData", "the split has no input files")
    found = _catalogue(conn, sorted({lfn for lfn, _ in wanted}))
    missing = [(lfn, key) for lfn, key in wanted if lfn not in found]
    if missing:
        names = ", ".join(lfn for lfn, _ in missing[:_NAMED]) + (f" and {len(missing) - _NAMED} more"
                                                                  if len(missing) > _NAMED else "")
        raise bounds.bad_field(missing[0][1], f"{missing[0][1]}: {len(missing)} input file(s) not in the catalogue: {names}",
                               "input_not_found", missing=len(missing))
    return [found[lfn] for lfn, _ in wanted]


def _catalogue(conn: Connection, lfns: Sequence[str]) -> Dict[str, InputFile]:
    sizes: Dict[str, int] = {}
    ses: Dict[str, List[str]] = {}
    for i in range(0, len(lfns), _CHUNK):
        part = lfns[i:i + _CHUNK]
        for row in conn.execute(select(FILES.c.lfn, FILES.c.size).where(FILES.c.lfn.in_(part))):
            sizes[row.lfn] = int(row.size)
        for row in conn.execute(select(REPLICAS.c.lfn, REPLICAS.c.se).where(REPLICAS.c.lfn.in_(part))):
            ses.setdefault(row.lfn, []).append(row.se)
    return {lfn: InputFile(lfn, size, tuple(sorted(ses.get(lfn, ())))) for lfn, size in sizes.items()}


def subjob_document(doc: JdlDocument, master: int, counter: int, piece: Piece) -> JdlDocument:
    """The JDL of the subjob numbered `counter` of masterjob `master` that got `piece`: InputData its files (the
    options of an InputData entry kept), the split keys gone, placeholders replaced, SplitArguments appended to
    Arguments, MasterJobID set (JAliEn's JobSplitter.prepareSubJobJDL does the same)."""
    split_args = doc.get("SplitArguments")
    for key in _SPLIT_KEYS:
        doc = doc.without(key)
    if piece.files:
        nodownload = {e.path for e in _entries(doc.get("InputData")) if e.nodownload}
        items = tuple(String("LF:" + f.lfn + (",nodownload" if f.lfn in nodownload else "")) for f in piece.files)
        doc = doc.with_value("InputData", ListValue(items))
    for key in ("OutputDir", "Output", "OutputFile", "OutputArchive"):
        value = doc.get(key)
        if value is not None:
            doc = doc.with_value(key, _substituted(value, counter, piece))
    if split_args is not None:
        extra = " ".join(i.value for i in _strings(_substituted(split_args, counter, piece)))
        args = doc.get("Arguments")
        before = " ".join(i.value for i in _strings(args)) if args is not None else ""
        doc = doc.with_value("Arguments", String(f"{before} {extra}".strip()))
    return doc.with_value("MasterJobID", String(str(master)))


def _strings(value: Any) -> List[String]:
    items = value.items if isinstance(value, ListValue) else (value,)
    return [i for i in items if isinstance(i, String)]


def _entries(value: Any) -> List[Any]:
    return [parse_input_entry(i.value) for i in _strings(value)] if value is not None else []


def _substituted(value: Any, counter: int, piece: Piece) -> Any:
    if isinstance(value, ListValue):
        return ListValue(tuple(_substituted(i, counter, piece) for i in value.items))
    if isinstance(value, String):
        return String(substitute(value.value, counter, piece))
    return value


def _insert_subjobs(conn: Connection, p: Principal, s: jobs.Submission, spec: SplitSpec, master: int,
                    shares: Sequence[Piece], now: float, user_area: str) -> List[int]:
    """The subjobs' rows, their `subjobs` rows and first trace lines, each kind in one multi-row statement (10,000
    subjobs one at a time held SQLite's write lock for 6 s and took 15 s on PostgreSQL)."""
    rows: List[Dict[str, Any]] = []
    for counter, piece in enumerate(shares, 1):
        doc = subjob_document(s.job.document, master, counter, piece)
        out = doc.get("OutputDir")
        written = _strings(out)[0].value if out is not None and _strings(out) else None
        try:
            output_dir = areas.output_dir_for(conn, user_area, p, s.user, written)
        except ApiError as e:
            # Said of the subjob whose OutputDir it is, and naming the field (areas.py's own message names it).
            raise ApiError(e.status, e.code, f"subjob {counter}: {e.message}", **{**e.extra, "field": "OutputDir"}
                           ) from None
        if output_dir is not None and len(output_dir) > bounds.MAX_LFN:
            raise bounds.bad_field("OutputDir", f"subjob {counter}'s OutputDir is over {bounds.MAX_LFN} characters")
        rows.append(jobs.job_values(s, now, text=write(doc), output_dir=output_dir))
    ids = [int(i) for i in conn.execute(JOBS.insert().returning(JOBS.c.id, sort_by_parameter_order=True),
                                        rows).scalars()]
    defaults = [{"b_id": job_id, "b_dir": areas.default_output_dir(user_area, s.user, job_id)}
                for job_id, row in zip(ids, rows) if row["output_dir"] is None]
    if defaults:
        conn.execute(update(JOBS).where(JOBS.c.id == bindparam("b_id")).values(output_dir=bindparam("b_dir")),
                     defaults)
    conn.execute(SUBJOBS.insert(), [{"job_id": job_id, "master_id": master, "counter": counter}
                                    for counter, job_id in enumerate(ids, 1)])
    by = jobs.submitted_by(p, s)
    conn.execute(schema.traces.insert(), [
        {"job_id": job_id, "ts": now, "category": "state", "reported_ts": None,
         "text": f"WAITING: submitted by {by}, subjob {counter} of {len(ids)} of masterjob {master} "
                 f"({spec.describe()})"} for counter, job_id in enumerate(ids, 1)])
    return ids


# -- what a masterjob is: its subjobs' states --


def summary_state(counts: Mapping[JobStatus, int]) -> JobStatus:
    """A masterjob's state as the API shows it: SPLIT while any subjob has not ended; then DONE when every subjob
    succeeded (DONE_WARN when one of them is DONE_WARN); else the state most of its failed subjobs ended in (the
    lowest code among equals), so that a masterjob whose subjobs were killed reads KILLED."""
    if not counts or any(not s.is_final for s, n in counts.items() if n):
        return JobStatus.SPLIT
    failed = Counter({s: n for s, n in counts.items() if n and s.is_error})
    if not failed:
        return JobStatus.DONE_WARN if counts.get(JobStatus.DONE_WARN) else JobStatus.DONE
    return min(failed, key=lambda s: (-failed[s], int(s)))


def _counts(conn: Connection, masters: Iterable[int]) -> Dict[int, Dict[JobStatus, int]]:
    out: Dict[int, Dict[JobStatus, int]] = {}
    ids = list(masters)
    for i in range(0, len(ids), _CHUNK):
        q = (select(SUBJOBS.c.master_id, JOBS.c.state, func.count())
             .select_from(SUBJOBS.join(JOBS, JOBS.c.id == SUBJOBS.c.job_id))
             .where(SUBJOBS.c.master_id.in_(ids[i:i + _CHUNK])).group_by(SUBJOBS.c.master_id, JOBS.c.state))
        for master, state, n in conn.execute(q):
            out.setdefault(int(master), {})[JobStatus(state)] = int(n)
    return out


def _masterjob_fields(counts: Mapping[JobStatus, int]) -> Dict[str, Any]:
    return {"stored_state": JobStatus.SPLIT.name, "subjobs": sum(counts.values()),
            "states": {s.name: n for s, n in sorted(counts.items(), key=lambda kv: int(kv[0]))}}


def decorate(db: Database, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Jobs as the API shows them, each masterjob among them with its summary `state` and a `masterjob` object
    ({stored_state, subjobs, states: {name: count}}); one query for all of them."""
    masters = [r["id"] for r in rows if r["state_code"] == int(JobStatus.SPLIT)]
    if not masters:
        return rows
    with db.read() as conn:
        counts = _counts(conn, masters)
    for r in rows:
        if r["id"] in counts or r["state_code"] == int(JobStatus.SPLIT):
            c = counts.get(r["id"], {})
            state = summary_state(c)
            r.update(state=state.name, state_code=int(state), masterjob=_masterjob_fields(c))
    return rows


def masterjob(db: Database, p: Principal, job_id: int, query: Mapping[str, str]) -> Dict[str, Any]:
    """GET /jobs/{id}/subjobs: a masterjob's subjobs counted by state, and with `ids=1` their ids by state. 409
    not_a_masterjob for a job that was not split; another user's answered as if absent."""
    flag = (query.get("ids") or "0").lower()
    if flag not in ("0", "1", "true", "false"):
        raise bounds.bad_field("ids", f"query parameter ids must be 1 or 0, got {flag[:40]!r}")
    with db.read() as conn:
        row = auth.found_or_absent(p, conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first(), job_id)
        auth.check(auth.can_view(p, row), p, "see", job_id)
        if row.state != int(JobStatus.SPLIT):
            raise conflict(f"job {job_id} is not a masterjob (its JDL has no Split)", "not_a_masterjob",
                           state=JobStatus(row.state).name)
        subs = conn.execute(select(SUBJOBS.c.job_id, SUBJOBS.c.counter, JOBS.c.state)
                            .select_from(SUBJOBS.join(JOBS, JOBS.c.id == SUBJOBS.c.job_id))
                            .where(SUBJOBS.c.master_id == job_id).order_by(SUBJOBS.c.counter)).all()
    counts = Counter(JobStatus(r.state) for r in subs)
    out = {"id": job_id, "user": row.user, "name": row.name, "state": summary_state(counts).name,
           "split": _split_of(row.jdl), **_masterjob_fields(counts)}
    if flag in ("1", "true"):
        ids: Dict[str, List[int]] = {}
        for r in subs:
            ids.setdefault(JobStatus(r.state).name, []).append(int(r.job_id))
        out["ids"] = ids
    return out


def _split_of(jdl: str) -> Optional[str]:
    try:
        spec = split_spec(parse(jdl))
    except JdlError:
        return None
    return None if spec is None else spec.describe()


# -- kill and resubmit of a masterjob: of its subjobs, each as on its own --


def _master_row(db: Database, p: Principal, job_id: int, action: str) -> Optional[Any]:
    """The masterjob's row, checked for the caller; None when job_id is not a masterjob (the caller goes on as for
    one job, with that path's own checks)."""
    with db.read() as conn:
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
    if row is None or row.state != int(JobStatus.SPLIT):
        return None
    auth.require_role(p, "user", "admin", action=f"{action} jobs")
    auth.found_or_absent(p, row, job_id)
    auth.check(auth.can_control(p, row), p, action, job_id)
    return row


def _subjob_ids(db: Database, master: int, states: Iterable[JobStatus]) -> List[int]:
    with db.read() as conn:
        q = (select(SUBJOBS.c.job_id).select_from(SUBJOBS.join(JOBS, JOBS.c.id == SUBJOBS.c.job_id))
             .where(SUBJOBS.c.master_id == master, JOBS.c.state.in_([int(s) for s in states]))
             .order_by(SUBJOBS.c.counter))
        return [int(r.job_id) for r in conn.execute(q)]


def _error(e: ApiError) -> Dict[str, Any]:
    return {"status": e.status, "code": e.code, "message": e.message}


def _after(db: Database, master: int) -> str:
    with db.read() as conn:
        return summary_state(_counts(conn, [master]).get(master, {})).name


def kill(db: Database, p: Principal, job_id: int, now: float) -> Dict[str, Any]:
    """POST /jobs/{id}/kill: one job (jobs.kill), or every unfinished subjob of a masterjob. Its WAITING subjobs end
    KILLED together in one statement, with the lines jobs.kill writes for one (10,000 kills one by one took 6 s on
    SQLite, 15 s on PostgreSQL); the held ones, each through jobs.kill, are flagged for their pilots. A subjob that
    ends meanwhile is reported, not an error of the whole. 409 already_final when none is left to kill."""
    row = _master_row(db, p, job_id, "kill")
    if row is None:
        return jobs.kill(db, p, job_id, now)
    results: List[Dict[str, Any]] = [{"id": i, "state": "KILLED", "kill_requested": False}
                                     for i in _kill_waiting(db, p, job_id, now)]
    held = _subjob_ids(db, job_id, [s for s in JobStatus if not s.is_final and s not in (JobStatus.SPLIT,
                                                                                      JobStatus.WAITING)])
    if not results and not held:
        raise conflict(f"masterjob {job_id} has no unfinished subjob", "already_final", state=_after(db, job_id))
    for sub in held:
        try:
            results.append(jobs.kill(db, p, sub, now))
        except ApiError as e:
            results.append({"id": sub, "error": _error(e)})
    results.sort(key=lambda r: int(r["id"]))
    killed = sum(1 for r in results if r.get("state") == "KILLED")
    requested = sum(1 for r in results if r.get("kill_requested"))
    with db.write() as conn:
        jobs.add_trace(conn, job_id, now, "trace", f"kill of the masterjob by {p.describe()}: {killed} subjob(s) "
                                                   f"KILLED, {requested} told to stop")
    return {"id": job_id, "state": _after(db, job_id), "kill_requested": requested > 0, "masterjob": True,
            "killed": killed, "requested": requested, "subjobs": results}


def _kill_waiting(db: Database, p: Principal, master: int, now: float) -> List[int]:
    """End the masterjob's WAITING subjobs KILLED, as jobs.kill ends one: the ids ended. The state is tested in the
    UPDATE itself, so a subjob the broker assigns meanwhile is left to the held path."""
    with db.write() as conn:
        q = (update(JOBS).where(JOBS.c.id.in_(select(SUBJOBS.c.job_id).where(SUBJOBS.c.master_id == master)),
                                JOBS.c.state == int(JobStatus.WAITING))
             .values(state=int(JobStatus.KILLED), state_since=now, updated=now, kill_reason=int(KillReason.KILLED))
             .returning(JOBS.c.id))
        ids = sorted(int(i) for i in conn.execute(q).scalars())
        if ids:
            lines = [(tracefmt.transition("WAITING", "KILLED"), "state"),
                     (f"KILLED by {p.describe()} while WAITING", "trace")]
            conn.execute(schema.traces.insert(), [{"job_id": i, "ts": now, "category": cat, "text": text,
                                                   "reported_ts": None} for i in ids for text, cat in lines])
    return ids


def resubmit_master(db: Database, p: Principal, job_id: int, now: float,
                    max_user: int = DEFAULT_MAX_USER_RESUBMITS) -> Dict[str, Any]:
    """POST /jobs/{id}/resubmit: one job (resubmit.resubmit), or every subjob of a masterjob in an error state
    (states.RESUBMITTABLE_STATES), each as resubmit.resubmit does it (resubmit_row), with its own limit; the answer
    lists each subjob's result. 409 not_resubmittable when none is in an error state."""
    row = _master_row(db, p, job_id, "resubmit")
    if row is None:
        return resubmit.resubmit(db, p, job_id, now, max_user)
    results: List[Dict[str, Any]] = []
    # One transaction for all of them (10,000 one by one took seconds): resubmit_row checks each subjob before it
    # writes anything of it, so a refusal (its own limit) is that subjob's answer and the others go on.
    with db.write() as conn:
        q = (select(JOBS).where(JOBS.c.id.in_(select(SUBJOBS.c.job_id).where(SUBJOBS.c.master_id == job_id)),
                                JOBS.c.state.in_([int(s) for s in RESUBMITTABLE_STATES])).order_by(JOBS.c.id))
        if db.is_postgres:
            q = q.with_for_update()
        for sub in conn.execute(q).all():
            try:
                results.append(resubmit.resubmit_row(conn, p, sub, now, max_user))
            except ApiError as e:
                results.append({"id": int(sub.id), "error": _error(e)})
    if not results:
        raise conflict(f"masterjob {job_id} has no subjob in an error state to resubmit", "not_resubmittable",
                       state=_after(db, job_id))
    done = sum(1 for r in results if "error" not in r)
    with db.write() as conn:
        jobs.add_trace(conn, job_id, now, "trace", f"resubmit of the masterjob by {p.describe()}: {done} of "
                                                   f"{len(results)} subjob(s) in error back to WAITING")
    return {"id": job_id, "state": _after(db, job_id), "masterjob": True, "resubmitted": done,
            "refused": len(results) - done, "subjobs": results}


__all__ = ["MAX_COLLECTIONS", "decorate", "kill", "masterjob", "resubmit_master", "subjob_document", "submit",
           "summary_state"]
